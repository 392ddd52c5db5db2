"""Genome windows: FASTA (+ optional BED) -> token windows for pretraining and evaluation.

This module owns everything between a genome file on disk and a `(L,)` window of token ids:

* opening FASTA files through pyfaidx without loading them into memory: plain FASTA, BGZF (bgzip) and plain
  gzip. pyfaidx cannot index plain gzip, and BGZF is ~14x slower per window than plain text, so both are
  decompressed once into a cache directory (`$DNA_MDLM_CACHE/fasta`, default `~/.cache/dna_mdlm/fasta`) keyed by
  the source's path, mtime and size; a `.fai` index is never written next to the user's file (shared data
  directories are read-only), it is built in the cache directory instead when no usable one sits beside the file;
* region strings (`chr:start-end`, 1-based inclusive like samtools, commas allowed) and BED intervals
  (0-based half-open), validated against the record lengths;
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

import bisect
import gzip
import hashlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import pyfaidx
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import InputError, atomic_path
from ..tokenizer import BASE_IDS, IUPAC_AMBIGUOUS, N_ID, InvalidSequenceError, complement_map, encode_dna

DEFAULT_WINDOW = 1024
DEFAULT_MAX_N_FRAC = 0.5
# Rejection sampling of N-heavy windows gives up after this many draws for one item, so a training set made
# almost entirely of N fails loudly instead of spinning forever.
MAX_DRAWS_PER_ITEM = 1000

_COMPLEMENT = np.asarray(complement_map(), dtype=np.int64)
_IS_BASE = np.zeros(len(_COMPLEMENT), dtype=bool)
_IS_BASE[list(BASE_IDS)] = True


class Interval(NamedTuple):
    """A 0-based half-open interval `[start, end)` on one record."""

    record: str
    start: int
    end: int

    def __len__(self) -> int:  # type: ignore[override]
        return self.end - self.start

    def region_string(self) -> str:
        """Back to samtools form (1-based inclusive)."""
        return f"{self.record}:{self.start + 1}-{self.end}"


# ----------------------------------------------------------------------------------------------------------
# Regions and BED
# ----------------------------------------------------------------------------------------------------------
_REGION_RE = re.compile(r"^(?P<record>.+):(?P<start>[0-9][0-9,]*)-(?P<end>[0-9][0-9,]*)$")


def parse_region(text: str, argument: str = "region") -> Interval:
    """`chr:start-end` (1-based inclusive, commas allowed, like samtools) -> 0-based half-open `Interval`.

    The record name may itself contain ':' (e.g. `20:30000001-32000000:100-200`); the last ':' splits.
    """
    match = _REGION_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InputError(
            f"{argument}: cannot parse region {text!r}; expected chr:start-end, 1-based inclusive "
            f"(e.g. 20:40,000,001-41,000,000)"
        )
    start = int(match["start"].replace(",", ""))
    end = int(match["end"].replace(",", ""))
    if start < 1 or end < start:
        raise InputError(
            f"{argument}: region {text!r} has start {start} and end {end}; expected 1 <= start <= end (1-based inclusive)"
        )
    return Interval(match["record"], start - 1, end)


def check_interval(interval: Interval, lengths: dict[str, int], where: str) -> None:
    """InputError naming `where` unless the interval lies inside a known record."""
    if interval.record not in lengths:
        known = ", ".join(list(lengths)[:5]) + (" ..." if len(lengths) > 5 else "")
        raise InputError(f"{where}: unknown record {interval.record!r} (the FASTA has {known})")
    length = lengths[interval.record]
    if interval.end > length:
        raise InputError(
            f"{where}: interval {interval.record}:{interval.start}-{interval.end} (0-based) ends past the end "
            f"of record {interval.record!r} (length {length})"
        )


def read_bed(path: str | os.PathLike, lengths: dict[str, int]) -> list[Interval]:
    """Read BED intervals (first three columns, 0-based half-open); comments, track and browser lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"BED file not found: {path}")
    opener = gzip.open if _is_gzip(path) else open
    intervals = []
    with opener(path, "rt") as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0].startswith(("#", "track", "browser")):
                continue
            where = f"{path}:{line_no}"
            if len(fields) < 3:
                raise InputError(f"{where}: expected at least 3 columns (chrom start end), got {len(fields)}")
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                raise InputError(f"{where}: start and end must be integers, got {fields[1]!r} {fields[2]!r}") from None
            if start < 0 or end <= start:
                raise InputError(f"{where}: expected 0 <= start < end (0-based half-open), got {start} {end}")
            interval = Interval(fields[0], start, end)
            check_interval(interval, lengths, where)
            intervals.append(interval)
    if not intervals:
        raise InputError(f"BED file {path} has no intervals")
    return intervals


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, overlapping or touching intervals merged (so a base is never drawn twice as often)."""
    merged: list[Interval] = []
    for iv in sorted(intervals):
        if merged and merged[-1].record == iv.record and iv.start <= merged[-1].end:
            if iv.end > merged[-1].end:
                merged[-1] = Interval(iv.record, merged[-1].start, iv.end)
        else:
            merged.append(iv)
    return merged


def subtract_intervals(intervals: Sequence[Interval], holes: Sequence[Interval]) -> list[Interval]:
    """`intervals` minus every base in `holes` (both any order; result sorted and merged)."""
    holes_by_record: dict[str, list[Interval]] = {}
    for hole in merge_intervals(holes):
        holes_by_record.setdefault(hole.record, []).append(hole)
    out = []
    for iv in merge_intervals(intervals):
        cursor = iv.start
        for hole in holes_by_record.get(iv.record, []):
            if hole.end <= cursor or hole.start >= iv.end:
                continue
            if hole.start > cursor:
                out.append(Interval(iv.record, cursor, hole.start))
            cursor = max(cursor, hole.end)
        if cursor < iv.end:
            out.append(Interval(iv.record, cursor, iv.end))
    return out


def intersect_intervals(intervals: Sequence[Interval], mask: Sequence[Interval]) -> list[Interval]:
    """Bases in both `intervals` and `mask` (result sorted and merged)."""
    out = []
    mask_by_record: dict[str, list[Interval]] = {}
    for m in merge_intervals(mask):
        mask_by_record.setdefault(m.record, []).append(m)
    for iv in merge_intervals(intervals):
        for m in mask_by_record.get(iv.record, []):
            start, end = max(iv.start, m.start), min(iv.end, m.end)
            if start < end:
                out.append(Interval(iv.record, start, end))
    return merge_intervals(out)


# ----------------------------------------------------------------------------------------------------------
# Opening FASTA files
# ----------------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """`$DNA_MDLM_CACHE` if set, else `~/.cache/dna_mdlm`."""
    env = os.environ.get("DNA_MDLM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dna_mdlm"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _is_bgzf(path: Path) -> bool:
    # A BGZF block is a gzip member with FEXTRA set and a 'BC' extra subfield (SAM spec, section 4.1).
    with open(path, "rb") as handle:
        head = handle.read(18)
    return len(head) == 18 and head[:4] == b"\x1f\x8b\x08\x04" and head[12:14] == b"BC"


def _first_nonempty_line(path: Path, compressed: bool) -> bytes | None:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            for line in handle:
                if line.strip():
                    return line
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: cannot read FASTA ({err})") from None
    return None


def _cache_key(path: Path) -> str:
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def _usable_sibling(index: Path, source: Path) -> bool:
    return index.is_file() and index.stat().st_size > 0 and index.stat().st_mtime >= source.stat().st_mtime


@dataclass(frozen=True)
class IndexedFasta:
    """Where pyfaidx should read one FASTA from: the file to open and its index file(s)."""

    source: Path  # what the user gave (used in messages)
    path: Path  # the file pyfaidx opens (the source, or a decompressed cached copy)
    fai: Path
    gzi: Path | None = None  # only when reading BGZF directly

    def open(self) -> pyfaidx.Fasta:
        return pyfaidx.Fasta(
            str(self.path),
            indexname=str(self.fai),
            gzi_indexname=str(self.gzi) if self.gzi else None,
            as_raw=True,
            sequence_always_upper=False,
            build_index=False,
            rebuild=False,
        )


def _build_fai(fasta: Path, fai: Path, gzi: Path | None, source: Path) -> None:
    """Build the pyfaidx index into the cache atomically (a crash never leaves a truncated .fai)."""
    try:
        with atomic_path(fai) as tmp_fai:
            if gzi is None:
                pyfaidx.Faidx(str(fasta), indexname=str(tmp_fai)).close()
            else:
                with atomic_path(gzi) as tmp_gzi:
                    pyfaidx.Faidx(str(fasta), indexname=str(tmp_fai), gzi_indexname=str(tmp_gzi)).close()
    except pyfaidx.FastaIndexingError as err:
        detail = " ".join(str(err).split())
        raise InputError(f"{source}: malformed FASTA, cannot index it ({detail})") from None


def index_fasta(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                decompress_bgzf: bool = True) -> IndexedFasta:
    """Validate one FASTA file and return how to read it with pyfaidx, building indexes in the cache if needed.

    Plain gzip is always decompressed into the cache (pyfaidx cannot read it); BGZF is too when
    `decompress_bgzf` (the default: ~20 us instead of ~300 us per window), else read in place through its
    `.fai`/`.gzi`. Nothing is ever written next to `path`.
    """
    source = Path(path)
    if not source.exists():
        raise InputError(f"FASTA file not found: {source}")
    if not source.is_file():
        raise InputError(f"FASTA path is not a file: {source}")
    if source.stat().st_size == 0:
        raise InputError(f"FASTA file is empty: {source}")
    compressed = _is_gzip(source)
    first = _first_nonempty_line(source, compressed)
    if first is None:
        raise InputError(f"FASTA file has no sequence (only blank lines): {source}")
    if not first.startswith(b">"):
        shown = first[:40].decode("ascii", "replace").rstrip()
        raise InputError(f"{source}: not FASTA, the first non-empty line should start with '>' but is {shown!r}")

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _cache_key(source)
    bgzf = compressed and _is_bgzf(source)
    if not compressed:
        sibling = Path(str(source) + ".fai")
        if _usable_sibling(sibling, source):
            return IndexedFasta(source, source, sibling)
        fai = cache / "fasta" / f"{key}.fai"
        if not fai.is_file():
            _build_fai(source, fai, None, source)
        return IndexedFasta(source, source, fai)
    if bgzf and not decompress_bgzf:
        sibling_fai, sibling_gzi = Path(str(source) + ".fai"), Path(str(source) + ".gzi")
        if _usable_sibling(sibling_fai, source) and _usable_sibling(sibling_gzi, source):
            return IndexedFasta(source, source, sibling_fai, sibling_gzi)
        fai, gzi = cache / "fasta" / f"{key}.fai", cache / "fasta" / f"{key}.gzi"
        if not (fai.is_file() and gzi.is_file()):
            _build_fai(source, fai, gzi, source)
        return IndexedFasta(source, source, fai, gzi)

    plain = cache / "fasta" / f"{key}.fa"
    fai = cache / "fasta" / f"{key}.fa.fai"
    if not plain.is_file():
        try:
            with atomic_path(plain) as tmp, gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 22)
        except (OSError, EOFError) as err:
            raise InputError(f"{source}: cannot decompress ({err})") from None
        kind = "BGZF" if bgzf else "gzip"
        print(f"dna-mdlm: decompressed {kind} FASTA {source} once into the cache {plain} "
              f"(reused while the source is unchanged; set DNA_MDLM_CACHE to move it)", file=sys.stderr)
    if not fai.is_file():
        _build_fai(plain, fai, None, source)
    return IndexedFasta(source, plain, fai)


# ----------------------------------------------------------------------------------------------------------
# The genome
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _RecordInfo:
    name: str
    length: int
    file_index: int
    offset: int  # byte offset of the first base in the (decompressed) file, from the .fai
    line_bases: int


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
        cache_dir: where decompressed copies and indexes go (default `$DNA_MDLM_CACHE` or ~/.cache/dna_mdlm).
        decompress_bgzf: cache a decompressed copy of BGZF input (default; ~15x faster reads).

    Attributes `train_intervals`, `val_intervals`, `test_intervals` are disjoint lists of `Interval`.
    The pyfaidx handles are opened lazily in each process that reads (so DataLoader workers each get their own).
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
        decompress_bgzf: bool = True,
    ):
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise InputError(f"window: expected a positive integer, got {window!r}")
        if not 0.0 <= float(max_n_frac) <= 1.0:
            raise InputError(f"max_n_frac: expected a fraction in [0, 1], got {max_n_frac!r}")
        if unknown not in ("error", "N"):
            raise InputError(f"unknown: expected 'error' or 'N', got {unknown!r}")
        self.window = int(window)
        self.max_n_frac = float(max_n_frac)
        self.unknown = unknown
        paths = [fasta] if isinstance(fasta, (str, os.PathLike)) else list(fasta)
        if not paths:
            raise InputError("fasta: expected at least one FASTA file")
        self.files = [index_fasta(p, cache_dir, decompress_bgzf) for p in paths]

        self.records: dict[str, _RecordInfo] = {}
        for file_index, indexed in enumerate(self.files):
            handle = indexed.open()
            try:
                for name, entry in handle.faidx.index.items():
                    if name in self.records:
                        other = self.files[self.records[name].file_index].source
                        raise InputError(f"{indexed.source}: record {name!r} also appears in {other}; names must be unique")
                    self.records[name] = _RecordInfo(name, entry.rlen, file_index, entry.offset, entry.lenc)
            finally:
                handle.close()
        self.lengths = {name: info.length for name, info in self.records.items()}
        if not self.records:
            raise InputError(f"{self.files[0].source}: no FASTA records")
        longest = max(self.lengths.values())
        if self.window > longest:
            raise InputError(f"window: {self.window} is longer than every record (the longest is {longest} bp)")

        if bed is not None:
            source = merge_intervals(read_bed(bed, self.lengths))
        else:
            source = [Interval(name, 0, length) for name, length in self.lengths.items() if length > 0]
        val_held = self._held_out(val_records, val_regions, "val")
        test_held = self._held_out(test_records, test_regions, "test")
        overlap = intersect_intervals(val_held, test_held)
        if overlap:
            raise InputError(f"val and test hold-outs overlap at {overlap[0].region_string()}; a base may be in one split only")
        self.val_intervals = intersect_intervals(source, val_held)
        self.test_intervals = intersect_intervals(source, test_held)
        self.train_intervals = subtract_intervals(source, val_held + test_held)
        if not any(len(iv) >= self.window for iv in self.train_intervals):
            raise InputError(
                f"the split leaves no training window of length {self.window}: after holding out "
                f"{len(val_held)} val and {len(test_held)} test interval(s) no training interval is that long"
            )
        self._handles: dict[int, pyfaidx.Fasta] = {}
        self._handles_pid: int | None = None
        self._first_lines: dict[str, int] = {}

    def _held_out(self, records: Sequence[str], regions: Sequence[str], split: str) -> list[Interval]:
        records = [records] if isinstance(records, str) else list(records)
        regions = [regions] if isinstance(regions, str) else list(regions)
        held = []
        for name in records:
            if name not in self.lengths:
                check_interval(Interval(name, 0, 0), self.lengths, f"--{split}-records")
            held.append(Interval(name, 0, self.lengths[name]))
        for text in regions:
            interval = parse_region(text, f"--{split}-region")
            check_interval(interval, self.lengths, f"--{split}-region {text}")
            held.append(interval)
        return held

    def intervals(self, split: str) -> list[Interval]:
        """The intervals of split "train", "val" or "test"."""
        try:
            return {"train": self.train_intervals, "val": self.val_intervals, "test": self.test_intervals}[split]
        except KeyError:
            raise InputError(f"split: expected 'train', 'val' or 'test', got {split!r}") from None

    # --- reading ----------------------------------------------------------------------------------------
    def __getstate__(self):
        # pyfaidx handles hold open files: never ship them to workers (each worker opens its own lazily).
        state = dict(self.__dict__)
        state["_handles"], state["_handles_pid"] = {}, None
        return state

    def _handle(self, file_index: int) -> pyfaidx.Fasta:
        if self._handles_pid != os.getpid():  # forked after a handle was opened: never share file offsets
            self._handles, self._handles_pid = {}, os.getpid()
        handle = self._handles.get(file_index)
        if handle is None:
            handle = self._handles[file_index] = self.files[file_index].open()
        return handle

    def fetch(self, record: str, start: int, end: int) -> str:
        """Forward-strand text of `record[start:end]` (0-based half-open), case as in the file."""
        info = self.records[record]
        return self._handle(info.file_index)[record][start:end]

    def read(self, record: str, start: int, end: int) -> np.ndarray:
        """Token ids of `record[start:end]`; an invalid character is an InputError naming file, record and line."""
        text = self.fetch(record, start, end)
        try:
            return encode_dna(text, self.unknown)
        except InvalidSequenceError:
            allowed = "ACGTN" + ("".join(sorted(IUPAC_AMBIGUOUS)) if self.unknown == "N" else "")
            bad = re.search(f"[^{allowed}{allowed.lower()}]", text)
            position = start + (bad.start() if bad else 0)
            self._raise_invalid(record, position, bad.group() if bad else "?")

    def _raise_invalid(self, record: str, position: int, char: str) -> None:
        info = self.records[record]
        line = self._first_line(record) + position // info.line_bases
        column = position % info.line_bases + 1
        source = self.files[info.file_index].source
        hint = "" if self.unknown == "N" else "; pass --unknown N (unknown='N') to read IUPAC ambiguity codes as N"
        raise InputError(
            f"{source}:{line}: invalid character {char!r} in record {record!r} at column {column} "
            f"(base {position + 1}); expected A, C, G, T or N{hint}"
        )

    def _first_line(self, record: str) -> int:
        # Only on the error path: count newlines before the record's first base (the .fai byte offset).
        if record not in self._first_lines:
            info = self.records[record]
            indexed = self.files[info.file_index]
            opener = gzip.open if indexed.gzi is not None else open
            newlines, remaining = 0, info.offset
            with opener(indexed.path, "rb") as handle:
                while remaining > 0:
                    chunk = handle.read(min(remaining, 1 << 22))
                    if not chunk:
                        break
                    newlines += chunk.count(b"\n")
                    remaining -= len(chunk)
            self._first_lines[record] = newlines + 1
        return self._first_lines[record]

    def n_fraction_ok(self, ids: np.ndarray) -> bool:
        return np.count_nonzero(ids == N_ID) <= self.max_n_frac * len(ids)

    # --- datasets ---------------------------------------------------------------------------------------
    def train_dataset(self, num_samples: int, seed: int = 0, rc_aug: bool = True) -> "RandomWindows":
        return RandomWindows(self, self.train_intervals, num_samples=num_samples, seed=seed, rc_aug=rc_aug)

    def eval_dataset(self, split: str = "val", max_windows: int | None = None) -> "TiledWindows":
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


def iter_fasta_batches(fasta: str | os.PathLike, n: int) -> Iterable[list[tuple[str, str]]]:
    """Chunks of `n` (record id, sequence) pairs, streamed; gzip allowed; empty records are an error."""
    import gzip

    from Bio.SeqIO.FastaIO import SimpleFastaParser

    path = Path(fasta)
    if not path.is_file():
        raise InputError(f"--fasta {path}: no such file")
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    chunk, count = [], 0
    with opener(path, "rt") as fh:
        for title, seq in SimpleFastaParser(fh):
            count += 1
            rid = title.split(None, 1)[0] if title.strip() else f"record{count}"
            if not seq:
                raise InputError(f"--fasta {path}: record {count} ({rid}) has an empty sequence")
            chunk.append((rid, seq))
            if len(chunk) == n:
                yield chunk
                chunk = []
    if chunk:
        yield chunk
    if count == 0:
        raise InputError(f"--fasta {path}: no FASTA records found (expected '>' header lines)")
