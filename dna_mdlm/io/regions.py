"""Regions and intervals: `chr:start-end` strings, BED files, interval arithmetic and contig-name aliasing.

Coordinates: region strings are 1-based inclusive like samtools (`20:40,000,001-41,000,000`, commas allowed; a bare
record name means the whole record; a record whose name itself looks like a region is matched whole first, as
samtools does). BED is 0-based half-open. Internally everything is an `Interval` (0-based half-open).

Every interval a user gives is checked against the records it names: an unknown record, a reversed or empty
interval, or one running past the end of its record is a one-line InputError. Nothing is ever clipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from ..errors import InputError
from .text import read_lines


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


_REGION_RE = re.compile(r"^(?P<record>.+):(?P<start>[0-9][0-9,]*)-(?P<end>[0-9][0-9,]*)$")


def _known(lengths: Mapping[str, int]) -> str:
    names = list(lengths)
    return ", ".join(names[:5]) + (f" ... ({len(names)} records)" if len(names) > 5 else "")


def _alias_hint(name: str, lengths: Mapping[str, int]) -> str:
    alias = ContigResolver(list(lengths))(name)
    return f"; did you mean {alias!r}?" if alias is not None and alias != name else ""


def parse_region(text: str, flag: str = "--region", lengths: Mapping[str, int] | None = None) -> Interval:
    """A region string -> `Interval`; with `lengths` it is also checked (see `check_interval`).

    Forms: `NAME:START-END` (1-based inclusive) or, when `lengths` is given, a bare record `NAME` (the whole
    record; also how a record literally named like a region is read)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{flag} {text!r}: empty region; expected chr:start-end, 1-based inclusive "
                         f"(e.g. 20:40,000,001-41,000,000)")
    text = text.strip()
    if lengths is not None and text in lengths:
        return Interval(text, 0, lengths[text])
    match = _REGION_RE.match(text)
    if match is None:
        if lengths is not None and ":" not in text:
            raise InputError(f"{flag} {text}: neither a record of the FASTA ({_known(lengths)}) nor a region "
                             f"chr:start-end (1-based inclusive){_alias_hint(text, lengths)}")
        raise InputError(f"{flag} {text}: cannot parse the region; expected chr:start-end, 1-based inclusive "
                         f"(e.g. 20:40,000,001-41,000,000)")
    start = int(match["start"].replace(",", ""))
    end = int(match["end"].replace(",", ""))
    if start < 1 or end < start:
        raise InputError(f"{flag} {text}: start {start:,} and end {end:,}; expected 1 <= start <= end "
                         f"(1-based inclusive, never reversed)")
    interval = Interval(match["record"], start - 1, end)
    if lengths is not None:
        check_interval(interval, lengths, f"{flag} {text}")
    return interval


def check_interval(interval: Interval, lengths: Mapping[str, int], where: str) -> None:
    """InputError naming `where` unless `interval` is a non-empty interval inside a known record."""
    if interval.record not in lengths:
        raise InputError(f"{where}: unknown record {interval.record!r} (the FASTA has {_known(lengths)})"
                         f"{_alias_hint(interval.record, lengths)}")
    length = lengths[interval.record]
    if interval.start < 0 or interval.end <= interval.start:
        raise InputError(f"{where}: empty or reversed interval {interval.record}:{interval.start}-{interval.end} "
                         f"(0-based half-open)")
    if interval.end > length:
        raise InputError(f"{where}: ends at base {interval.end:,}, past the end of record {interval.record!r} "
                         f"({length:,} bp); regions are never clipped")


def parse_regions(texts: Iterable[str] | str | None, lengths: Mapping[str, int], flag: str) -> list[Interval]:
    """Several region strings, each checked against `lengths`."""
    if texts is None:
        return []
    if isinstance(texts, str):
        texts = [texts]
    return [parse_region(t, flag, lengths) for t in texts]


def read_bed(path: str | os.PathLike, lengths: Mapping[str, int], flag: str = "--bed") -> list[Interval]:
    """BED intervals (first three columns, 0-based half-open), each checked against `lengths`.

    Blank, `#`, `track` and `browser` lines are skipped; gzip, a byte-order mark and `\\r\\n` are read."""
    intervals = []
    for line_no, line in read_lines(path, flag):
        fields = line.split()
        if not fields or fields[0].startswith(("#", "track", "browser")):
            continue
        where = f"{flag} {path}:{line_no}"
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
        raise InputError(f"{flag} {path}: no intervals")
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


class ContigResolver:
    """Map contig names between naming styles (UCSC `chr1`, Ensembl `1`/`MT`, versioned `ENST....5`).

    Exact match wins; then the `chr` prefix is toggled (`chrM` <-> `MT`); then a version suffix is dropped. Never
    guesses beyond that. Used to read Genomic Benchmarks coordinates and VCF contigs against a user's FASTA, and
    to suggest a name when a region names an unknown record.
    """

    def __init__(self, names: Sequence[str]):
        self.names = set(names)
        self.unversioned: dict[str, str] = {}
        for n in names:
            base = n.rsplit(".", 1)[0] if re.search(r"\.\d+$", n) else n
            self.unversioned.setdefault(base, n)

    def __call__(self, region: str) -> str | None:
        if region.startswith("chr"):
            bare = region[3:]
            tries = [region, "MT" if bare == "M" else bare]
        else:
            tries = [region, "chrM" if region == "MT" else "chr" + region]
        for t in tries:
            if t in self.names:
                return t
        for t in tries:
            if t in self.unversioned:
                return self.unversioned[t]
        return None
