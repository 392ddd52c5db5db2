"""Opening text inputs the same way for every verb.

* Compression is sniffed from the first bytes, never from the file name: gzip (including BGZF, which is a series of
  gzip members) is read transparently; bzip2, xz, zstd and zip are refused by name with a hint.
* A UTF-8 byte-order mark (what Excel and Notepad write) is dropped (`utf-8-sig`).
* `\\n`, `\\r\\n` and `\\r` line ends are all read as line ends.
* Read errors become one-line `InputError`s naming the file and line: a truncated or corrupt gzip stream (a
  half-copied `.gz`), bytes that are not UTF-8 text (a binary file given by mistake).
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError

_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
)
UNSUPPORTED = {"bzip2", "xz", "zstd", "zip"}


def _where(what: str, path: Path) -> str:
    return f"{what} {path}" if what else str(path)


def check_file(path: str | os.PathLike, what: str = "") -> Path:
    """`Path(path)` if it is a readable, non-empty regular file; else a one-line InputError naming `what` (a flag)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{_where(what, p)}: no such file")
    if not p.is_file():
        raise InputError(f"{_where(what, p)}: not a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{_where(what, p)}: not readable (permission denied)")
    if p.stat().st_size == 0:
        raise InputError(f"{_where(what, p)}: empty file")
    return p


def compression(path: str | os.PathLike) -> str | None:
    """'gzip', 'bzip2', 'xz', 'zstd', 'zip' from the file's first bytes, or None for plain text."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def is_bgzf(path: str | os.PathLike) -> bool:
    """True for BGZF (bgzip): a gzip member with FEXTRA set and a 'BC' extra subfield (SAM spec, section 4.1)."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    return len(head) == 18 and head[:4] == b"\x1f\x8b\x08\x04" and head[12:14] == b"BC"


def has_bom(path: str | os.PathLike) -> bool:
    """True when the (decompressed) text starts with a UTF-8 byte-order mark."""
    opener = gzip.open if compression(path) == "gzip" else open
    try:
        with opener(path, "rb") as fh:
            return fh.read(3) == b"\xef\xbb\xbf"
    except (OSError, EOFError, zlib.error):
        return False  # reported properly by the reader


def read_lines(path: str | os.PathLike, what: str = "", newline: str | None = None) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, line)` (1-based, line ends kept as `\\n` unless `newline=""`) of a text file.

    gzip/BGZF decompressed, a byte-order mark dropped; errors while reading are one-line InputErrors naming
    `what` (the flag), the file and the line. `newline=""` keeps line ends untranslated (what the csv module needs).
    """
    p = check_file(path, what)
    kind = compression(p)
    if kind in UNSUPPORTED:
        raise InputError(f"{_where(what, p)}: {kind}-compressed input is not supported; decompress it or "
                         f"recompress it with gzip or bgzip")
    raw = gzip.open(p, "rb") if kind == "gzip" else open(p, "rb")
    handle = io.TextIOWrapper(raw, encoding="utf-8-sig", newline=newline)
    lineno = 0
    try:
        with handle:
            for lineno, line in enumerate(handle, start=1):
                if "\x00" in line:
                    raise InputError(f"{_where(what, p)}:{lineno}: binary data (NUL bytes); expected a text file")
                yield lineno, line
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"{_where(what, p)}: truncated or corrupt gzip data after line {lineno} "
                         f"({type(err).__name__}: {err}); the file is damaged or was only partly copied") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{_where(what, p)}:{lineno + 1}: not UTF-8 text (byte 0x{err.object[err.start]:02x}); "
                         f"expected a text file") from None
