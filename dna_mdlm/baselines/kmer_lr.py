"""k-mer frequency + logistic regression classifier: the non-neural baseline for labelled DNA tasks.

Owns the vectorised k-mer featuriser (a scikit-learn transformer, so it sits inside a `Pipeline`), the
`KmerLRClassifier` wrapper that keeps the class names, `fit_kmer_lr`, and `logistic_regression_cv`: the one
recipe for "standardised features -> L2 logistic regression with C chosen by inner cross-validation on the
training data only" that both this baseline and the frozen-encoder probe (`training/finetune.py`) use, so the
two are compared under the same protocol.

Features: for each k in `k_values`, the k-mer counts of a sequence divided by its number of valid k-mers
(a frequency profile, so sequences of different lengths are comparable). k-mers that touch an N (or an
IUPAC code mapped to N) are skipped. With `canonical=True` a k-mer and its reverse complement share one
column (both strands merged), which halves the width and encodes the strand symmetry most GB labels have.
Counting is one numpy pass per k over all sequences concatenated, then a sparse COO->CSR sum.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import accuracy_score, log_loss, make_scorer
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..data.labelled import LabelledSequences
from ..errors import InputError
from ..kmers import canonical_columns, iter_kmer_codes, joined_codes, kmer_labels

MAX_K = 8  # 4**8 columns per block; beyond this the features are mostly singletons


def _column_map(k: int, canonical: bool) -> tuple[np.ndarray, list[str]]:
    """code -> column index, and the column names (with `canonical`, both strands share the column of the
    lexicographically smaller k-mer; `kmers.canonical_columns`)."""
    if canonical:
        return canonical_columns(k)
    return np.arange(4**k, dtype=np.int64), kmer_labels(k)


def kmer_frequencies(seqs: Sequence[str], k_values: Sequence[int] = (1, 2, 3, 4, 5, 6),
                     canonical: bool = True) -> tuple[sp.csr_matrix, list[str]]:
    """(n, n_features) CSR float32 matrix of per-k normalised k-mer counts, and the feature names.

    k-mers touching N (or any non-ACGT character) are skipped; each row's k-block sums to 1 (or 0 when the
    sequence has no valid k-mer). Codes come from `dna_mdlm.kmers` (the project's one k-mer encoding)."""
    n = len(seqs)
    codes = joined_codes(seqs)  # sequence i occupies len(seqs[i]) codes followed by one -1 separator
    owner = np.repeat(np.arange(n, dtype=np.int64), [len(s) + 1 for s in seqs]) if n else np.zeros(0, dtype=np.int64)
    blocks, names = [], []
    for k, packed, valid in iter_kmer_codes(codes, max(k_values)):
        if k not in k_values:
            continue
        rows = owner[:packed.size][valid]  # a valid k-mer never spans a separator, so its start row owns it
        col_map, col_names = _column_map(k, canonical)
        totals = np.bincount(rows, minlength=n).astype(np.float32)
        weights = 1.0 / np.maximum(totals, 1.0)[rows]
        block = sp.coo_matrix((weights.astype(np.float32), (rows, col_map[packed[valid].astype(np.int64)])),
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


DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 1, 11))  # 1e-4 .. 10, half a decade apart (C > 10 ~ unregularised, slow)
_LRCV_PARAMS = inspect.signature(LogisticRegressionCV).parameters


def _accuracy_then_log_loss(y_true, proba, labels=None) -> float:
    """accuracy - 1e-3 * log-loss: on validation folds of up to ~1,000 sequences one sequence's share of accuracy
    outweighs a log-loss difference of up to ~1 nat, so log-loss in effect only breaks accuracy ties."""
    proba = np.asarray(proba)
    if proba.ndim == 1:  # binary: the positive class's probability
        proba = np.stack([1 - proba, proba], axis=1)
    return float(accuracy_score(y_true, proba.argmax(1)) - 1e-3 * log_loss(y_true, proba, labels=labels))


ACCURACY_THEN_LOG_LOSS = make_scorer(_accuracy_then_log_loss, response_method="predict_proba")


def logistic_regression_cv(labels: np.ndarray, Cs: Sequence[float] = DEFAULT_CS, folds: int = 5, seed: int = 0,
                           scoring=ACCURACY_THEN_LOG_LOSS, class_weight: str | None = None,
                           max_iter: int = 3000) -> LogisticRegressionCV:
    """An unfitted L2 `LogisticRegressionCV` whose C is picked by stratified inner `folds`-fold CV (fewer when
    the smallest class of `labels` has fewer members), lbfgs, multinomial for more than two classes.

    Scored by accuracy (the metric the benchmarks report), ties broken by log-loss. Measured on four Genomic
    Benchmarks tasks (1,000 sequences, frozen-encoder features), selecting C by log-loss alone picked C 3-100x
    below the accuracy optimum on noisy tasks and lost up to 0.036 accuracy to a fixed C = 1; this rule
    stayed within 0.01 of it (benchmarks/RESULTS.md). Fit it on standardised features (`StandardScaler` first).
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    k = int(max(2, min(folds, counts[counts > 0].min())))
    kwargs = dict(Cs=list(Cs), cv=StratifiedKFold(k, shuffle=True, random_state=seed), scoring=scoring,
                  max_iter=max_iter, class_weight=class_weight, random_state=seed)
    # scikit-learn >= 1.8 wants the L2 penalty spelled as l1_ratios=(0,) and warns about legacy attributes.
    if "use_legacy_attributes" in _LRCV_PARAMS:
        kwargs.update(l1_ratios=(0.0,), use_legacy_attributes=False)
    return LogisticRegressionCV(**kwargs)


def cv_summary(lrcv: LogisticRegressionCV) -> tuple[float, float]:
    """(chosen C, mean inner-CV score at that C) of a fitted `logistic_regression_cv`, on any sklearn version
    (with the default scoring the score is accuracy - 1e-3 * log-loss)."""
    scores = lrcv.scores_
    if isinstance(scores, dict):  # legacy layout: {class: (n_folds, n_Cs)}, identical for every class
        scores = next(iter(scores.values()))
    scores = np.asarray(scores).reshape(np.asarray(scores).shape[0], -1)
    return float(np.ravel(lrcv.C_)[0]), float(scores.mean(0).max())


@dataclass
class KmerLRClassifier:
    """A fitted k-mer LR pipeline plus the class names its probability columns belong to."""

    pipeline: Pipeline
    classes: list[str]
    C: float
    cv_score: float | None = None  # mean inner-CV score (accuracy - 1e-3 log-loss) at the chosen C; None when C was given

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
                folds: int = 5, max_iter: int = 2000, seed: int = 0) -> KmerLRClassifier:
    """Fit the k-mer LR baseline on `train` plus `val` (both are training data here; nothing is held out).

    Without `C`, C is chosen from `Cs` by stratified inner `folds`-fold CV with `logistic_regression_cv` (the
    frozen probe's recipe) and the model is refitted on all of it; the features are computed once. With `C`,
    that value is used directly.
    """
    if not 1 <= k_max <= MAX_K:
        raise InputError(f"k_max must lie in 1..{MAX_K}, got {k_max}")
    if val is not None:
        if val.classes != train.classes:
            raise InputError(f"val classes {val.classes} differ from train classes {train.classes}")
        train = LabelledSequences(list(train.seqs) + list(val.seqs), np.concatenate([train.labels, val.labels]),
                                  list(train.classes), f"{train.source} + {val.source}")
    if len(np.unique(train.labels)) < 2:
        raise InputError(f"training data {train.source} holds only one class; need at least two")
    featurizer = KmerFeaturizer(tuple(range(1, k_max + 1)), canonical).fit(train.seqs)
    scaler = StandardScaler(with_mean=False)  # sparse input: scale only
    x = scaler.fit_transform(featurizer.transform(train.seqs))
    cv_score = None
    if C is None:
        lr = logistic_regression_cv(train.labels, Cs, folds, seed, max_iter=max_iter).fit(x, train.labels)
        C, cv_score = cv_summary(lr)
    else:
        lr = LogisticRegression(C=C, max_iter=max_iter, random_state=seed).fit(x, train.labels)
    pipeline = Pipeline([("kmers", featurizer), ("scale", scaler), ("lr", lr)])
    return KmerLRClassifier(pipeline, list(train.classes), C, cv_score)
