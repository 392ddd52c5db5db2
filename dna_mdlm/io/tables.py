"""Delimited tables with a header row (CSV, TSV; optionally gzip), read with the csv module.

The delimiter comes from the extension (`.tsv` tab, `.csv` comma, ignoring a `.gz`), else it is sniffed from the
header line among comma, tab and semicolon. A byte-order mark, `\\r\\n` line ends and quoted fields are read. Column
names are matched case-insensitively and with surrounding spaces ignored. Rows with fewer or more fields than the
header are errors naming the line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import InputError
from .text import check_file, read_lines


def plain_suffix(path: str | os.PathLike) -> str:
    """The extension that says the format, lower case, ignoring a trailing `.gz` (`x.tsv.gz` -> `.tsv`)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


class Table:
    """A header and its rows: `columns` (as written), and `rows()` yielding (line number, {column: value})."""

    def __init__(self, path: str | os.PathLike, what: str = "", delimiter: str | None = None,
                 skip_prefix: str | None = None):
        """`skip_prefix`: lines starting with it (e.g. `##` meta lines) are skipped, before and after the header."""
        self.path = check_file(path, what)
        self.what = what
        self.skip_prefix = skip_prefix
        self._where = f"{what} {self.path}" if what else str(self.path)
        header = None
        for lineno, line in read_lines(self.path, what, newline=""):
            if line.strip() and not (skip_prefix and line.startswith(skip_prefix)):
                header = (lineno, line)
                break
        if header is None:
            raise InputError(f"{self._where}: empty table (no header line)")
        if delimiter is None:
            ext = plain_suffix(self.path)
            if ext == ".tsv":
                delimiter = "\t"
            elif ext == ".csv":
                delimiter = ","
            else:
                try:
                    delimiter = csv.Sniffer().sniff(header[1], delimiters=",\t;").delimiter
                except csv.Error:
                    raise InputError(f"{self._where}:{header[0]}: cannot tell the delimiter; name the file .csv "
                                     f"or .tsv") from None
        self.delimiter = delimiter
        self.header_line = header[0]
        self.columns = [c.strip() for c in next(csv.reader([header[1]], delimiter=delimiter))]
        seen = set()
        for c in self.columns:
            if c.lower() in seen:
                raise InputError(f"{self._where}:{header[0]}: column {c!r} appears twice in the header")
            seen.add(c.lower())

    def find_column(self, wanted: str | None, defaults: Sequence[str], what: str) -> str:
        """The column named `wanted`, else the first of `defaults` present (case-insensitive)."""
        lower = {c.lower(): c for c in self.columns}
        if wanted is not None:
            if wanted.lower() not in lower:
                raise InputError(f"{self._where}:{self.header_line}: {what} column {wanted!r} not found; "
                                 f"columns: {', '.join(self.columns)}")
            return lower[wanted.lower()]
        for d in defaults:
            if d in lower:
                return lower[d]
        raise InputError(f"{self._where}:{self.header_line}: no {what} column (expected one of "
                         f"{', '.join(defaults)}); columns found: {', '.join(self.columns)}")

    def rows(self) -> Iterator[tuple[int, dict[str, str]]]:
        """(1-based line number, {column: value}) of every non-blank data row."""
        # A skipped line becomes a blank one (which the loop below passes over), so line numbers stay true.
        lines = ("\n" if self.skip_prefix and line.startswith(self.skip_prefix) else line
                 for n, line in read_lines(self.path, self.what, newline="") if n > self.header_line)
        reader = csv.reader(lines, delimiter=self.delimiter)
        width = len(self.columns)
        consumed = 0  # lines the reader had consumed before this row (a quoted field may span several)
        for fields in reader:
            start, consumed = self.header_line + consumed + 1, reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != width:
                raise InputError(f"{self._where}:{start}: {len(fields)} fields but the header has {width} "
                                 f"({', '.join(self.columns)})")
            yield start, dict(zip(self.columns, fields))
