"""Memorisation: the longest exact match of each generated sequence with the training genome, either strand.

`TrainIndex` packs every all-ACGT k-mer of the training sequence 2 bits per base (`dna_mdlm.kmers`), sorts them
with their positions, and finds a sample's longest exact match as the longest run of consecutive sample k-mers
that hit the same training diagonal (train_pos - sample_pos), plus k - 1. `memorisation` turns the matches into
the fraction of samples that count as copies. The same check is what DNA-Diffusion and D3 report as
"% identity to train" (they use BLAT/alignment; an exact-match index is exact for the copies that matter).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..io.fasta import read_sequences
from ..kmers import joined_codes, kmer_codes
from ..tokenizer import rc_string

DEFAULT_INDEX_K = 24
DEFAULT_COPY_MIN_BP = 100
DEFAULT_COPY_FRACTION = 0.5


class TrainIndex:
    """Exact longest-match index of a training genome: every all-ACGT k-mer packed 2 bits per base
    into a uint64, sorted, with its position. A sample's longest exact match (>= k) with the training
    sequence, on either strand, is the longest run of consecutive sample k-mers that hit the same
    training diagonal (train_pos - sample_pos), plus k - 1.

    Memory ~12-16 bytes per training base (60 Mb chromosome: ~1 GB while building, ~0.8 GB after).
    Matches shorter than k are reported as 0. A k-mer occurring more than `max_occurrences` times (long
    satellite / poly-A runs) is chained through its first `max_occurrences` copies only, so a match
    inside such a repeat can be under-reported."""

    def __init__(self, sequences: Sequence[str], k: int = DEFAULT_INDEX_K, max_occurrences: int = 1000):
        if not 8 <= k <= 32:
            raise InputError(f"memorisation index k must be in 8..32, got {k}")
        self.k = int(k)
        self.max_occurrences = int(max_occurrences)
        codes = joined_codes(sequences)
        self.n_bases = int((codes >= 0).sum())
        packed, valid = kmer_codes(codes, self.k)
        positions = np.flatnonzero(valid)
        keys = packed[positions]
        del packed, valid
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        pos_dtype = np.uint32 if codes.size < 2 ** 32 else np.int64
        self.positions = positions[order].astype(pos_dtype)

    @classmethod
    def from_fasta(cls, path, k: int = DEFAULT_INDEX_K, region: str | None = None, unknown: str = "error",
                   **kwargs) -> TrainIndex:
        """Index every record (or one region) of a training FASTA (`io.fasta` rules; errors name `--train`)."""
        return cls(read_sequences(path, "--train", region=region, unknown=unknown), k=k, **kwargs)

    def _longest_one_strand(self, seqs: Sequence[str]) -> np.ndarray:
        codes = joined_codes(seqs)
        owner = np.repeat(np.arange(len(seqs)), [len(s) + 1 for s in seqs])
        packed, valid = kmer_codes(codes, self.k)
        best = np.zeros(len(seqs), dtype=np.int64)
        qpos = np.flatnonzero(valid)
        if qpos.size == 0 or self.keys.size == 0:
            return best
        q = packed[qpos]
        lo = np.searchsorted(self.keys, q, side="left")
        cnt = np.minimum(np.searchsorted(self.keys, q, side="right") - lo, self.max_occurrences)
        hit = cnt > 0
        qpos, lo, cnt = qpos[hit], lo[hit], cnt[hit]
        if qpos.size == 0:
            return best
        total = int(cnt.sum())
        offsets = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        train_pos = self.positions[np.repeat(lo, cnt) + offsets].astype(np.int64)
        sample_pos = np.repeat(qpos, cnt).astype(np.int64)
        diag = train_pos - sample_pos
        order = np.lexsort((sample_pos, diag))
        diag, sample_pos = diag[order], sample_pos[order]
        new_run = np.ones(diag.size, dtype=bool)
        new_run[1:] = (diag[1:] != diag[:-1]) | (sample_pos[1:] != sample_pos[:-1] + 1)
        run_id = np.cumsum(new_run) - 1
        run_len = np.bincount(run_id)
        run_start = sample_pos[new_run]
        np.maximum.at(best, owner[run_start], run_len + self.k - 1)
        return best

    def longest_matches(self, seqs: Sequence[str]) -> np.ndarray:
        """Longest exact match (bp) of each sequence with the training sequence, either strand."""
        seqs = [s.upper() for s in seqs]
        forward = self._longest_one_strand(seqs)
        reverse = self._longest_one_strand([rc_string(s) for s in seqs])
        return np.maximum(forward, reverse)


def memorisation(seqs: Sequence[str], index: TrainIndex, copy_min_bp: int = DEFAULT_COPY_MIN_BP,
                 copy_fraction: float = DEFAULT_COPY_FRACTION) -> dict:
    """Longest train match per sequence and the fraction counted as copies: a match of at least
    `copy_min_bp` bp or at least `copy_fraction` of the sequence's length."""
    lengths = np.array([len(s) for s in seqs])
    longest = index.longest_matches(seqs)
    copied = (longest >= copy_min_bp) | (longest >= np.ceil(copy_fraction * lengths))
    copied &= longest > 0
    return {
        "longest_match_bp": longest.tolist(),
        "max_match_bp": int(longest.max()) if longest.size else 0,
        "mean_match_bp": float(longest.mean()) if longest.size else 0.0,
        "fraction_copied": float(copied.mean()) if copied.size else 0.0,
        "n_copied": int(copied.sum()),
    }
