"""k-mers of DNA: the one home for 2-bit base codes, packed k-mer codes, counts, labels and reverse complements.

Encoding (shared by the sample-quality metrics, the k-mer logistic-regression baseline and the Markov LM): a base is
a 2-bit code A=0, C=1, G=2, T=3 and anything else (N, IUPAC codes mapped to N, special tokens) is -1; a k-mer is
packed base-4 with its first base most significant, so `code = sum_j base_j * 4**(k-1-j)` and codes sort in
lexicographic ACGT order. Sequences are joined with a -1 separator, so no k-mer ever spans two sequences, and a
k-mer touching a non-base is marked invalid, never counted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .tokenizer import A_ID, T_ID

ALPHABET = "ACGT"
MAX_PACKED_K = 32  # 2 bits per base in a uint64

_STRING_CODE = np.full(256, -1, dtype=np.int8)
for _i, _b in enumerate(ALPHABET):
    _STRING_CODE[ord(_b)] = _i
    _STRING_CODE[ord(_b.lower())] = _i


def base_codes(seq) -> np.ndarray:
    """int8 codes (0..3 for A/C/G/T, -1 otherwise) of a DNA string (either case) or a 1-D array of token ids."""
    if isinstance(seq, (str, bytes)):
        raw = seq.encode("ascii", "replace") if isinstance(seq, str) else seq
        return _STRING_CODE[np.frombuffer(raw, dtype=np.uint8)]
    ids = np.asarray(seq)
    if ids.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    codes = ids - A_ID
    codes[(ids < A_ID) | (ids > T_ID)] = -1
    return codes.astype(np.int8)


def joined_codes(seqs: Sequence) -> np.ndarray:
    """All sequences' codes concatenated, each followed by a -1 separator (so no k-mer spans two)."""
    parts = []
    for s in seqs:
        parts.append(base_codes(s))
        parts.append(np.array([-1], dtype=np.int8))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int8)


def iter_kmer_codes(codes: np.ndarray, max_k: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For k = 1..max_k: (k, packed uint64 code of the k-mer starting at each position, whether it is all-base).

    Arrays have `len(codes) - k + 1` entries. Built by rolling the code of the (k-1)-mer, one pass per k."""
    if not 1 <= max_k <= MAX_PACKED_K:
        raise ValueError(f"k must be in 1..{MAX_PACKED_K}, got {max_k}")
    bad = np.concatenate([[0], np.cumsum(codes < 0)])
    digit = np.maximum(codes, 0).astype(np.uint64)
    packed = np.zeros(codes.size, dtype=np.uint64)
    for k in range(1, max_k + 1):
        n = codes.size - k + 1
        if n <= 0:
            yield k, np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=bool)
            continue
        packed = (packed[:n] << np.uint64(2)) | digit[k - 1:]
        yield k, packed, (bad[k:] - bad[:n]) == 0


def kmer_codes(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed code of every k-mer start, whether that k-mer is all A/C/G/T) for one k."""
    for kk, packed, valid in iter_kmer_codes(codes, k):
        if kk == k:
            return packed, valid
    raise AssertionError("unreachable")


def kmer_counts(seqs: Sequence, k: int) -> np.ndarray:
    """Counts of all 4**k k-mers (lexicographic ACGT order) over the sequences; k-mers touching N are skipped."""
    packed, valid = kmer_codes(joined_codes(seqs), k)
    return np.bincount(packed[valid].astype(np.int64), minlength=4**k).astype(np.float64)


def kmer_labels(k: int) -> list[str]:
    """The 4**k k-mers as strings, in code order."""
    return ["".join(ALPHABET[(c >> (2 * (k - 1 - j))) & 3] for j in range(k)) for c in range(4**k)]


def reverse_complement_codes(k: int) -> np.ndarray:
    """rc[code] for every k-mer code (the last base, complemented, becomes the first)."""
    codes = np.arange(4**k, dtype=np.int64)
    rc = np.zeros_like(codes)
    rest = codes.copy()
    for _ in range(k):
        rc = rc * 4 + (3 - rest % 4)
        rest //= 4
    return rc


def canonical_columns(k: int) -> tuple[np.ndarray, list[str]]:
    """code -> column of its canonical k-mer (the lexicographically smaller of the k-mer and its reverse
    complement), and the column names: both strands share a column."""
    codes = np.arange(4**k, dtype=np.int64)
    rep = np.minimum(codes, reverse_complement_codes(k))
    keep = np.unique(rep)
    col_of_rep = np.full(4**k, -1, dtype=np.int64)
    col_of_rep[keep] = np.arange(keep.size)
    labels = kmer_labels(k)
    return col_of_rep[rep], [labels[c] for c in keep]
