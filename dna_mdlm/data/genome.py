"""Genome windows: FASTA (+ optional BED) -> token windows for pretraining and evaluation.

This module owns everything between a genome file on disk and a `(L,)` window of token ids:

* the records of one or more FASTA files, read through `dna_mdlm.io.fasta.FastaFile` (which owns file formats,
  names, indexes and the cache) with names unique across files;
* regions and BED intervals parsed and checked by `dna_mdlm.io.regions` (never clipped);
* the train / validation / test split by held-out records or regions, done by interval subtraction so that no
  base belongs to two splits;
* the N policy of DESIGN.md: N is kept as an input token but `loss_mask` is False there, and windows whose N
  fraction exceeds `max_n_frac` are skipped;
* two datasets, both map-style so that any number of DataLoader workers gives the same items:
  `RandomWindows` (training: item `g` is a pure function of `(seed, g)`, which is what makes a resumed run
  continue with the same data stream) and `TiledWindows` (evaluation: deterministic tiling).

Items are dicts:
    input_ids  int64 (L,)  token ids (tokenizer vocabulary), reverse-complemented when strand == "-"
    loss_mask  bool  (L,)  True where the base is A/C/G/T and the position is scored (see TiledWindows)
    record     str         FASTA record name (first word of the header)
    start, end int         0-based half-open forward-strand coordinates of the window in the record
    strand     str         "+" or "-" ("-" = the window was reverse-complemented by RC augmentation)
    index      int         the dataset index the item was produced for (provenance / reproducibility)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import InputError
from ..io.fasta import FastaFile, batched, encode_record, iter_fasta
from ..io.regions import (
    Interval,
    check_interval,
    intersect_intervals,
    merge_intervals,
    parse_region,
    parse_regions,
    read_bed,
    subtract_intervals,
)
from ..tokenizer import BASE_IDS, DEFAULT_WINDOW, N_ID, complement_map

DEFAULT_MAX_N_FRAC = 0.5
# Rejection sampling of N-heavy windows gives up after this many draws for one item, so a training set made
# almost entirely of N fails loudly instead of spinning forever.
MAX_DRAWS_PER_ITEM = 1000

_COMPLEMENT = np.asarray(complement_map(), dtype=np.int64)
_IS_BASE = np.zeros(len(_COMPLEMENT), dtype=bool)
_IS_BASE[list(BASE_IDS)] = True

__all__ = ["Interval", "parse_region", "merge_intervals", "subtract_intervals", "intersect_intervals", "GenomeWindows",
           "RandomWindows", "TiledWindows", "EpochSampler", "make_item", "iter_fasta_batches"]


# ----------------------------------------------------------------------------------------------------------
# The genome
# ----------------------------------------------------------------------------------------------------------
class GenomeWindows:
    """One or more FASTA files (+ optional BED), split into train / val / test intervals, read as token windows.

    Args:
        fasta: a path or a list of paths (plain, BGZF or gzip FASTA; many records each; names unique overall).
        bed: optional BED of intervals to draw from (0-based half-open); default is every whole record.
        window: window length L.
        max_n_frac: windows whose fraction of N exceeds this are skipped.
        val_records / test_records: whole records held out for validation / test.
        val_regions / test_regions: region strings (`chr:start-end`, 1-based inclusive) held out.
        unknown: "error" (IUPAC codes other than N are an error) or "N" (map them to N).
        cache_dir: where indexes and normalised copies go (default `$DNA_MDLM_CACHE` or ~/.cache/dna_mdlm).
        flag: the command-line flag the files came from, for error messages.

    Attributes `train_intervals`, `val_intervals`, `test_intervals` are disjoint lists of `Interval`; `lengths`
    maps record names (file order) to lengths. Raises InputError for any bad file, region or BED line.
    """

    def __init__(
        self,
        fasta: str | os.PathLike | Sequence[str | os.PathLike],
        bed: str | os.PathLike | None = None,
        window: int = DEFAULT_WINDOW,
        max_n_frac: float = DEFAULT_MAX_N_FRAC,
        val_records: Sequence[str] = (),
        val_regions: Sequence[str] = (),
        test_records: Sequence[str] = (),
        test_regions: Sequence[str] = (),
        unknown: str = "error",
        cache_dir: str | os.PathLike | None = None,
        flag: str = "--fasta",
    ):
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise InputError(f"window: expected a positive integer, got {window!r}")
        if not 0.0 <= float(max_n_frac) <= 1.0:
            raise InputError(f"max_n_frac: expected a fraction in [0, 1], got {max_n_frac!r}")
        if unknown not in ("error", "N"):
            raise InputError(f"--unknown: expected 'error' or 'N', got {unknown!r}")
        self.window = int(window)
        self.max_n_frac = float(max_n_frac)
        self.unknown = unknown
        paths = [fasta] if isinstance(fasta, (str, os.PathLike)) else list(fasta)
        if not paths:
            raise InputError(f"{flag}: expected at least one FASTA file")
        self.files = [FastaFile(p, flag, cache_dir) for p in paths]
        self.file_of: dict[str, FastaFile] = {}
        for f in self.files:
            for name in f.names:
                if name in self.file_of:
                    other = self.file_of[name]
                    raise InputError(f"{flag}: record {name!r} is in both {other.source}:{other.lines[name]} and "
                                     f"{f.source}:{f.lines[name]}; record names must be unique across files")
                self.file_of[name] = f
        self.lengths = {name: f.lengths[name] for name, f in self.file_of.items()}
        longest = max(self.lengths.values())
        if self.window > longest:
            names = ", ".join(str(f.source) for f in self.files)
            raise InputError(f"--window {self.window} is longer than every record in {flag} {names} (the longest is "
                             f"{longest} bp); give a smaller --window or longer sequences")

        if bed is not None:
            source = merge_intervals(read_bed(bed, self.lengths))
        else:
            source = [Interval(name, 0, length) for name, length in self.lengths.items()]
        val_held = self._held_out(val_records, val_regions, "val")
        test_held = self._held_out(test_records, test_regions, "test")
        overlap = intersect_intervals(val_held, test_held)
        if overlap:
            raise InputError(f"val and test hold-outs overlap at {overlap[0].region_string()}; a base may be in one split only")
        self.val_intervals = intersect_intervals(source, val_held)
        self.test_intervals = intersect_intervals(source, test_held)
        self.train_intervals = subtract_intervals(source, val_held + test_held)

    def require_training_window(self) -> None:
        """InputError unless some training interval holds a whole window (what pretraining needs)."""
        if not any(len(iv) >= self.window for iv in self.train_intervals):
            raise InputError(
                f"the split leaves no training window of length {self.window}: after the hold-outs no training "
                f"interval is that long"
            )

    def _held_out(self, records: Sequence[str], regions: Sequence[str], split: str) -> list[Interval]:
        records = [records] if isinstance(records, str) else list(records)
        held = []
        for name in records:
            if name not in self.lengths:
                check_interval(Interval(name, 0, 1), self.lengths, f"--{split}-records {name}")
            held.append(Interval(name, 0, self.lengths[name]))
        return held + parse_regions(regions, self.lengths, f"--{split}-region")

    def intervals(self, split: str) -> list[Interval]:
        """The intervals of split "train", "val" or "test"."""
        try:
            return {"train": self.train_intervals, "val": self.val_intervals, "test": self.test_intervals}[split]
        except KeyError:
            raise InputError(f"split: expected 'train', 'val' or 'test', got {split!r}") from None

    # --- reading ----------------------------------------------------------------------------------------
    def fetch(self, record: str, start: int, end: int) -> str:
        """Forward-strand text of `record[start:end]` (0-based half-open), case as in the file."""
        return self.file_of[record].fetch(record, start, end)

    def read(self, record: str, start: int, end: int) -> np.ndarray:
        """Token ids of `record[start:end]`; an invalid character is an InputError naming file, line and column."""
        return self.file_of[record].read(record, start, end, self.unknown)

    def n_fraction_ok(self, ids: np.ndarray) -> bool:
        return np.count_nonzero(ids == N_ID) <= self.max_n_frac * len(ids)

    # --- datasets ---------------------------------------------------------------------------------------
    def train_dataset(self, num_samples: int, seed: int = 0, rc_aug: bool = True) -> RandomWindows:
        return RandomWindows(self, self.train_intervals, num_samples=num_samples, seed=seed, rc_aug=rc_aug)

    def eval_dataset(self, split: str = "val", max_windows: int | None = None) -> TiledWindows:
        return TiledWindows(self, self.intervals(split), max_windows=max_windows)


def make_item(ids: np.ndarray, record: str, start: int, strand: str, index: int,
              score_from: int = 0) -> dict:
    """Assemble one item; `strand == "-"` reverse-complements the ids (and so the mask) before returning."""
    loss_mask = _IS_BASE[ids]
    if score_from:
        loss_mask = loss_mask.copy()
        loss_mask[:score_from] = False
    if strand == "-":
        ids = _COMPLEMENT[ids[::-1]]
        loss_mask = loss_mask[::-1]
    return {
        "input_ids": torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
        "loss_mask": torch.from_numpy(np.ascontiguousarray(loss_mask)),
        "record": record,
        "start": int(start),
        "end": int(start + len(ids)),
        "strand": strand,
        "index": int(index),
    }


class RandomWindows(Dataset):
    """Training windows drawn uniformly over every valid start in `intervals`, with optional RC augmentation.

    Map-style with `num_samples` items per epoch, but `__getitem__` accepts any index `g >= 0` and the item is
    a pure function of `(seed, g)`: use `EpochSampler`, which hands out `g = epoch * num_samples + k`, so every
    epoch sees fresh windows, any number of workers yields identical items, and a resumed run that skips the
    batches it already consumed continues with exactly the same stream. Windows with too many N are redrawn
    (from the same per-item generator, so still deterministic).
    """

    def __init__(self, genome: GenomeWindows, intervals: Sequence[Interval], num_samples: int, seed: int = 0,
                 rc_aug: bool = True):
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise InputError(f"num_samples: expected a positive integer, got {num_samples!r}")
        self.genome = genome
        self.window = genome.window
        self.intervals = [iv for iv in intervals if len(iv) >= self.window]
        if not self.intervals:
            raise InputError(f"no interval is at least {self.window} bp long, so no training window can be drawn")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.rc_aug = bool(rc_aug)
        starts_per_interval = np.array([len(iv) - self.window + 1 for iv in self.intervals], dtype=np.int64)
        self._cumulative = np.cumsum(starts_per_interval)

    def __len__(self) -> int:
        return self.num_samples

    def candidates(self, g: int):
        """Yield item `g`'s candidate draws (interval, start, strand, draw number) until one passes the N policy."""
        rng = np.random.default_rng([self.seed, int(g)])
        for draw in range(1, MAX_DRAWS_PER_ITEM + 1):
            k = int(rng.integers(self._cumulative[-1]))
            which = int(np.searchsorted(self._cumulative, k, side="right"))
            offset = k - (int(self._cumulative[which - 1]) if which else 0)
            interval = self.intervals[which]
            strand = "-" if self.rc_aug and rng.random() < 0.5 else "+"
            yield interval, interval.start + offset, strand, draw

    def __getitem__(self, g: int) -> dict:
        if g < 0:
            raise IndexError(f"RandomWindows index must be >= 0, got {g}")
        for interval, start, strand, _ in self.candidates(g):
            ids = self.genome.read(interval.record, start, start + self.window)
            if self.genome.n_fraction_ok(ids):
                return make_item(ids, interval.record, start, strand, g)
        raise InputError(
            f"no window with N fraction <= {self.genome.max_n_frac} found in {MAX_DRAWS_PER_ITEM} draws; "
            f"the training intervals are almost all N (raise max_n_frac or choose other intervals)"
        )


class EpochSampler(Sampler[int]):
    """Yields this rank's global item indices of one epoch: `epoch * num_samples + rank + k * num_replicas`.

    With one process that is every `g` in `[epoch * num_samples, (epoch + 1) * num_samples)`; under DDP each
    rank takes a disjoint interleaved share, so no window is trained twice per step and the union over
    ranks is the single-process stream. Lightning calls `set_epoch` at each epoch start. `skip` (items this
    rank already consumed) is for resuming mid-epoch and applies to the next iteration only.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.num_samples = int(num_samples)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.per_rank = self.num_samples // self.num_replicas
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank - self.skip

    def __iter__(self):
        skip, self.skip = self.skip, 0
        base = self.epoch * self.num_samples + self.rank
        return iter(range(base + skip * self.num_replicas, base + self.per_rank * self.num_replicas, self.num_replicas))


class TiledWindows(Dataset):
    """Evaluation windows: each interval tiled from its start in steps of L, deterministic.

    Last partial tile: when an interval's length is not a multiple of L, one extra tile is right-aligned to
    the interval's end, and its positions already covered by the previous tile get `loss_mask` False, so every
    base is scored exactly once and nothing is dropped. Intervals shorter than L cannot hold a window and are
    dropped: `dropped_intervals` / `dropped_bases` count them. Tiles with an N fraction above `max_n_frac` are
    skipped (`skipped_n_windows`), which needs one sequential read of the intervals at construction.
    `max_windows` keeps that many tiles spread evenly over the rest (`np.linspace` over tile order).
    """

    def __init__(self, genome: GenomeWindows, intervals: Sequence[Interval], max_windows: int | None = None):
        self.genome = genome
        L = self.window = genome.window
        tiles: list[tuple[str, int, int]] = []  # (record, start, score_from)
        self.dropped_intervals = self.dropped_bases = self.skipped_n_windows = 0
        for iv in intervals:
            if len(iv) < L:
                self.dropped_intervals += 1
                self.dropped_bases += len(iv)
                continue
            starts = list(range(iv.start, iv.end - L + 1, L))
            score_from = [0] * len(starts)
            if starts[-1] + L < iv.end:
                score_from.append(starts[-1] + L - (iv.end - L))
                starts.append(iv.end - L)
            n_counts = self._n_counts(iv, starts)
            for start, first_scored, n_count in zip(starts, score_from, n_counts):
                if n_count > genome.max_n_frac * L:
                    self.skipped_n_windows += 1
                else:
                    tiles.append((iv.record, start, first_scored))
        self.total_tiles = len(tiles)
        if max_windows is not None:
            if isinstance(max_windows, bool) or not isinstance(max_windows, (int, np.integer)) or max_windows < 1:
                raise InputError(f"max_windows: expected a positive integer or None, got {max_windows!r}")
            if max_windows < len(tiles):
                keep = np.unique(np.linspace(0, len(tiles) - 1, int(max_windows)).round().astype(np.int64))
                tiles = [tiles[i] for i in keep]
        self.tiles = tiles

    def _n_counts(self, interval: Interval, starts: list[int]) -> list[int]:
        # Read in blocks of whole tiles (about 4 Mb) rather than tile by tile; validates every character too.
        L = self.window
        counts = []
        per_block = max(1, (1 << 22) // L)
        for b in range(0, len(starts), per_block):
            block = starts[b:b + per_block]
            lo, hi = block[0], block[-1] + L
            ids = self.genome.read(interval.record, lo, hi)
            is_n = np.concatenate([[0], np.cumsum(ids == N_ID)])
            counts.extend(int(is_n[s - lo + L] - is_n[s - lo]) for s in block)
        return counts

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> dict:
        record, start, score_from = self.tiles[i]
        ids = self.genome.read(record, start, start + self.window)
        return make_item(ids, record, start, "+", i, score_from=score_from)


def iter_fasta_batches(fasta: str | os.PathLike, n: int, unknown: str = "error",
                       flag: str = "--fasta") -> Iterable[list[tuple[str, np.ndarray]]]:
    """Chunks of `n` (record name, token ids), streamed from a FASTA under the `dna_mdlm.io.fasta` rules."""
    records = ((r.name, encode_record(r, fasta, unknown, flag)) for r in iter_fasta(fasta, flag))
    return batched(records, n)
