"""k-mer frequency + logistic regression classifier: the non-neural baseline for labelled DNA tasks.

Owns the vectorised k-mer featuriser (a scikit-learn transformer, so it sits inside a `Pipeline`), the
`KmerLRClassifier` wrapper that keeps the class names, and `fit_kmer_lr`, which picks the L2 strength on a
validation set when one is given.

Features: for each k in `k_values`, the k-mer counts of a sequence divided by its number of valid k-mers
(a frequency profile, so sequences of different lengths are comparable). k-mers that touch an N (or an
IUPAC code mapped to N) are skipped. With `canonical=True` a k-mer and its reverse complement share one
column (both strands merged), which halves the width and encodes the strand symmetry most GB labels have.
Counting is one numpy pass per k over all sequences concatenated, then a sparse COO->CSR sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..data.labelled import LabelledSequences
from ..errors import InputError

_BASE_CODE = np.full(256, 4, dtype=np.int64)  # 4 = not a base (N); such k-mers are skipped
for _i, _b in enumerate("ACGT"):
    _BASE_CODE[ord(_b)] = _i
    _BASE_CODE[ord(_b.lower())] = _i
MAX_K = 8  # 4**8 columns per block; beyond this the features are mostly singletons


def _rc_codes(k: int) -> np.ndarray:
    """rc[code] for every k-mer code (base-4, first base most significant; A=0 C=1 G=2 T=3)."""
    codes = np.arange(4**k, dtype=np.int64)
    rc = np.zeros_like(codes)
    rest = codes.copy()
    for _ in range(k):
        rc = rc * 4 + (3 - rest % 4)  # the last base, complemented, becomes the first
        rest //= 4
    return rc


def _column_map(k: int, canonical: bool) -> tuple[np.ndarray, list[str]]:
    """code -> column index, and the column names (the canonical k-mer, lexicographically smallest)."""
    codes = np.arange(4**k, dtype=np.int64)
    names_all = ["".join("ACGT"[(c >> (2 * (k - 1 - j))) & 3] for j in range(k)) for c in codes]
    if not canonical:
        return codes, names_all
    rep = np.minimum(codes, _rc_codes(k))
    keep = np.unique(rep)
    col_of_rep = np.full(4**k, -1, dtype=np.int64)
    col_of_rep[keep] = np.arange(keep.size)
    return col_of_rep[rep], [names_all[c] for c in keep]


def kmer_frequencies(seqs: Sequence[str], k_values: Sequence[int] = (1, 2, 3, 4, 5, 6),
                     canonical: bool = True) -> tuple[sp.csr_matrix, list[str]]:
    """(n, n_features) CSR float32 matrix of per-k normalised k-mer counts, and the feature names."""
    n = len(seqs)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=n)
    codes = _BASE_CODE[np.frombuffer("".join(seqs).encode("ascii", "replace"), dtype=np.uint8)]
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    not_base = np.concatenate([[0], np.cumsum(codes == 4)])
    blocks, names = [], []
    kmer = np.zeros(codes.size, dtype=np.int64)  # kmer[i] = code of the k-mer starting at i (rolled per k)
    for k in range(1, max(k_values) + 1):
        m = codes.size - k + 1
        if m <= 0:
            kmer = kmer[:0]
        else:
            kmer = kmer[:m] * 4 + np.minimum(codes[k - 1:], 3)
        if k not in k_values:
            continue
        if m > 0:
            valid = (owner[:m] == owner[k - 1:]) & (not_base[k:] - not_base[:m] == 0)
            rows, kcodes = owner[:m][valid], kmer[valid]
        else:
            rows = kcodes = np.zeros(0, dtype=np.int64)
        col_map, col_names = _column_map(k, canonical)
        totals = np.bincount(rows, minlength=n).astype(np.float32)
        weights = 1.0 / np.maximum(totals, 1.0)[rows]
        block = sp.coo_matrix((weights.astype(np.float32), (rows, col_map[kcodes])),
                              shape=(n, len(col_names))).tocsr()
        blocks.append(block)
        names += col_names
    return sp.hstack(blocks, format="csr", dtype=np.float32), names


class KmerFeaturizer(TransformerMixin, BaseEstimator):
    """scikit-learn transformer: list of DNA strings -> sparse k-mer frequency matrix."""

    def __init__(self, k_values: Sequence[int] = (1, 2, 3, 4, 5, 6), canonical: bool = True):
        self.k_values = k_values
        self.canonical = canonical

    def fit(self, X, y=None):
        ks = list(self.k_values)
        if not ks or min(ks) < 1 or max(ks) > MAX_K:
            raise InputError(f"k_values must lie in 1..{MAX_K}, got {ks}")
        self.feature_names_ = kmer_frequencies(["A" * max(ks)], ks, self.canonical)[1]
        return self

    def transform(self, X):
        return kmer_frequencies(list(X), list(self.k_values), self.canonical)[0]

    def get_feature_names_out(self, input_features=None):
        return np.array(self.feature_names_, dtype=object)


def make_kmer_lr_pipeline(k_max: int = 6, canonical: bool = True, C: float = 0.01, max_iter: int = 2000,
                          seed: int = 0) -> Pipeline:
    """featurise -> scale (sparse-safe: no centring) -> L2 logistic regression (multinomial for >2 classes)."""
    return Pipeline([
        ("kmers", KmerFeaturizer(tuple(range(1, k_max + 1)), canonical)),
        ("scale", StandardScaler(with_mean=False)),
        ("lr", LogisticRegression(C=C, max_iter=max_iter, random_state=seed)),
    ])


@dataclass
class KmerLRClassifier:
    """A fitted k-mer LR pipeline plus the class names its probability columns belong to."""

    pipeline: Pipeline
    classes: list[str]
    C: float
    val_accuracy: float | None = None
    val_scores: dict[float, float] | None = None

    def predict_proba(self, seqs: Sequence[str]) -> np.ndarray:
        """(n, n_classes) probabilities, column j = class id j (`classes[j]`)."""
        proba = self.pipeline.predict_proba(list(seqs))
        # LogisticRegression orders columns by the label values it saw; map them onto class ids.
        out = np.zeros((proba.shape[0], len(self.classes)), dtype=np.float64)
        out[:, self.pipeline.named_steps["lr"].classes_] = proba
        return out

    def predict(self, seqs: Sequence[str]) -> np.ndarray:
        return self.predict_proba(seqs).argmax(axis=1)

    def accuracy(self, data: LabelledSequences) -> float:
        return float((self.predict(data.seqs) == data.labels).mean())


def fit_kmer_lr(train: LabelledSequences, val: LabelledSequences | None = None, k_max: int = 6,
                canonical: bool = True, C: float | None = None, Cs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0),
                max_iter: int = 2000, seed: int = 0) -> KmerLRClassifier:
    """Fit the k-mer LR baseline on `train`.

    With `val` and no `C`, each C in `Cs` is fitted on train and the one with the best val accuracy is kept
    (ties -> stronger regularisation); the features are computed once for all of them. Without `val`,
    `C` (default 0.01, a good choice for k_max=6 on the GB tasks) is used directly.
    """
    if not 1 <= k_max <= MAX_K:
        raise InputError(f"k_max must lie in 1..{MAX_K}, got {k_max}")
    if len(np.unique(train.labels)) < 2:
        raise InputError(f"training data {train.source} holds only one class; need at least two")
    if val is not None and val.classes != train.classes:
        raise InputError(f"val classes {val.classes} differ from train classes {train.classes}")
    featurizer = KmerFeaturizer(tuple(range(1, k_max + 1)), canonical).fit(train.seqs)
    x_train = featurizer.transform(train.seqs)
    candidates = [C] if C is not None else (list(Cs) if val is not None else [0.01])
    x_val = featurizer.transform(val.seqs) if val is not None else None
    best, scores = None, {}
    for c in candidates:
        scaler = StandardScaler(with_mean=False).fit(x_train)
        lr = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(scaler.transform(x_train), train.labels)
        if x_val is not None:
            scores[c] = float((lr.predict(scaler.transform(x_val)) == val.labels).mean())
        if best is None or (x_val is not None and scores[c] > scores[best[0]]):
            best = (c, scaler, lr)
    c, scaler, lr = best
    pipeline = Pipeline([("kmers", featurizer), ("scale", scaler), ("lr", lr)])
    return KmerLRClassifier(pipeline, list(train.classes), c, scores.get(c), scores or None)
