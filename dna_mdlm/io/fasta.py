"""FASTA input: streamed records and random access, with the same rules for every verb.

Rules (the README's input table states them for users):

* A record's name is the text after `>` up to the first whitespace, as samtools reads it (`> seq 0` is named
  `seq`). Two records with the same name, a header with no name, a record with no sequence, and non-blank text
  before the first header are one-line errors naming the lines. Nothing is skipped silently.
* Compression is read from the bytes (`io.text`): plain, gzip and BGZF FASTA all work; a truncated gzip is an
  error naming the file. A UTF-8 byte-order mark, `\\r\\n` line ends, blank lines and lines of any width are read.
* Sequence characters: A/C/G/T/N in either case; IUPAC ambiguity codes are an error unless `unknown="N"`
  (`--unknown N`); anything else is always an error naming file, line, column and record.

`iter_fasta` streams records with Biopython's `SimpleFastaParser` (memory bounded by one record). `FastaFile`
gives random access through pyfaidx: the file is validated once by a streaming pass, then indexed with a `.fai`
built in the cache directory (`$DNA_MDLM_CACHE`, default `~/.cache/dna_mdlm`; nothing is ever written beside the
user's file, and an index found beside it is not used, so a stale one cannot be trusted by mistake). When pyfaidx
cannot read the file as it is (gzip, a byte-order mark, lines of uneven width) or reads it differently from the
streaming parser, a normalised copy is written to the cache and indexed instead. What was learnt about a file
(names, lengths, header lines) is kept in a small manifest keyed by the file's path, size, time and a hash of its
first and last 64 KiB, so the next open is instant and a changed file is read afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyfaidx
from Bio.SeqIO.FastaIO import SimpleFastaParser

from ..errors import InputError
from ..tokenizer import IUPAC_AMBIGUOUS, InvalidSequenceError, decode_dna, encode_dna
from .regions import parse_region
from .text import check_file, compression, has_bom, read_lines
from .writers import atomic_path, atomic_write_text

NAME_RULE = "a record's name is the text after '>' up to the first whitespace, as samtools reads it"
MANIFEST_VERSION = 2
NORMALISED_WIDTH = 60
_SPOT_CHECK = 64  # bases per record compared between the streaming parser and pyfaidx
_SPOT_RECORDS = 1000


def default_cache_dir() -> Path:
    """`$DNA_MDLM_CACHE` if set, else `~/.cache/dna_mdlm`."""
    env = os.environ.get("DNA_MDLM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dna_mdlm"


def _where(what: str, path: Path) -> str:
    return f"{what} {path}" if what else str(path)


# ----------------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FastaRecord:
    """One record: `name` (first word of the header), `sequence` (as in the file, whitespace removed), `line`
    (1-based line number of its header in the file) and `title` (the whole header after '>')."""

    name: str
    sequence: str
    line: int
    title: str


def iter_fasta(path: str | os.PathLike, what: str = "") -> Iterator[FastaRecord]:
    """Stream the records of a FASTA file (plain, gzip or BGZF) under the module's rules.

    Raises InputError (naming `what`, the file and the line) for: a missing/empty/unreadable file, unsupported
    compression, truncated gzip, text before the first header, a header without a name, a record without
    sequence, two records with the same name, or a file with no records. Sequence characters are not checked
    here; see `encode_record`.
    """
    path = check_file(path, what)
    header_lines: deque[int] = deque()
    seen_header = False

    def lines() -> Iterator[str]:
        nonlocal seen_header
        for lineno, line in read_lines(path, what):
            if line.startswith(">"):
                header_lines.append(lineno)
                seen_header = True
            elif not seen_header and line.strip():
                shown = line.strip()[:40]
                raise InputError(f"{_where(what, path)}:{lineno}: not FASTA: text before the first '>' header "
                                 f"({shown!r})")
            yield line

    first_line: dict[str, int] = {}
    # SimpleFastaParser reads one header ahead, so the header lines are kept in a queue and popped in order.
    for title, seq in SimpleFastaParser(lines()):
        line = header_lines.popleft()
        words = title.split(None, 1)
        if not words:
            raise InputError(f"{_where(what, path)}:{line}: header line has no name (expected '>NAME ...')")
        name = words[0]
        if name in first_line:
            raise InputError(f"{_where(what, path)}: lines {first_line[name]} and {line} both name a record "
                             f"{name!r} ({NAME_RULE}); record names must be unique")
        first_line[name] = line
        if not seq:
            raise InputError(f"{_where(what, path)}:{line}: record {name!r} has no sequence; remove it or fill it")
        yield FastaRecord(name, seq, line, title)
    if not first_line:
        raise InputError(f"{_where(what, path)}: no FASTA records (expected '>' header lines)")


def read_fasta(path: str | os.PathLike, what: str = "") -> list[FastaRecord]:
    """All records of a (small) FASTA file; see `iter_fasta`."""
    return list(iter_fasta(path, what))


def batched(items: Iterable, n: int) -> Iterator[list]:
    """Consecutive lists of `n` items (the last may be shorter)."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def locate_base(path: str | os.PathLike, header_line: int, position: int) -> tuple[int, int]:
    """(line, column), both 1-based, of base `position` (0-based) of the record whose header is on `header_line`.

    Re-reads the file up to that base; used only to word error messages."""
    seen = 0
    for lineno, line in read_lines(path):
        if lineno <= header_line:
            continue
        bases = line.rstrip("\r\n").replace(" ", "")
        if seen + len(bases) > position:
            # Columns count the characters on the line as the user sees them (spaces included).
            raw = line.rstrip("\r\n")
            k = -1
            for col, ch in enumerate(raw):
                if ch != " ":
                    k += 1
                    if seen + k == position:
                        return lineno, col + 1
        seen += len(bases)
    return header_line, 0


def invalid_character_error(source: Path, what: str, record: str, header_line: int, sequence: str,
                            offset: int, unknown: str) -> InputError:
    """The one-line error for the first invalid character of `sequence` (which starts at base `offset` of
    `record`): file, line and column in the user's file, the record, and a hint only where `--unknown N` helps."""
    allowed = "ACGTNacgtn" + ("".join(sorted(IUPAC_AMBIGUOUS | {c.lower() for c in IUPAC_AMBIGUOUS}))
                              if unknown == "N" else "")
    bad = re.search(f"[^{allowed}]", sequence)
    char = bad.group() if bad else "?"
    position = offset + (bad.start() if bad else 0)
    line, column = locate_base(source, header_line, position)
    hint = ""
    if unknown != "N" and char.upper() in IUPAC_AMBIGUOUS:
        hint = "; pass --unknown N to read IUPAC ambiguity codes as N"
    return InputError(f"{_where(what, source)}:{line}: invalid character {char!r} at column {column} "
                      f"(base {position + 1} of record {record!r}); expected A, C, G, T or N{hint}")


def encode_record(record: FastaRecord, path: str | os.PathLike, unknown: str = "error", what: str = "") -> np.ndarray:
    """Token ids of a streamed record; an invalid character is an InputError naming file, line, column, record."""
    try:
        return encode_dna(record.sequence, unknown)
    except InvalidSequenceError:
        raise invalid_character_error(Path(path), what, record.name, record.line, record.sequence, 0,
                                      unknown) from None


# ----------------------------------------------------------------------------------------------------------
# Random access
# ----------------------------------------------------------------------------------------------------------
def fingerprint(path: Path) -> str:
    """A key that changes when the file does: path, size, mtime and a hash of its first and last 64 KiB."""
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{MANIFEST_VERSION}".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 16))
        if st.st_size > 1 << 17:
            fh.seek(-(1 << 16), os.SEEK_END)
            h.update(fh.read(1 << 16))
    return h.hexdigest()[:24]


def _read_fai(fai: Path) -> list[tuple[str, int]]:
    out = []
    with open(fai) as fh:
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            out.append((fields[0], int(fields[1])))
    return out


def _build_fai(target: Path, fai: Path) -> None:
    with atomic_path(fai) as tmp:
        pyfaidx.Faidx(str(target), indexname=str(tmp)).close()


class FastaFile:
    """One FASTA file, validated and indexed, read by record name and 0-based half-open coordinates.

    Attributes: `source` (the user's path), `names` (file order), `lengths` {name: bases}, `lines` {name: 1-based
    header line}. Construction raises InputError for anything `iter_fasta` rejects. The pyfaidx handle is opened
    lazily per process, so the object can be shipped to DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike, what: str = "", cache_dir: str | os.PathLike | None = None):
        self.source = check_file(path, what)
        self.what = what
        kind = compression(self.source)
        if kind not in (None, "gzip"):
            list(read_lines(self.source, what))  # raises the one-line "not supported" error
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        try:
            (cache / "fasta").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create the cache directory {cache / 'fasta'} ({err.strerror}); "
                             f"set DNA_MDLM_CACHE to a writable folder") from None
        key = fingerprint(self.source)
        manifest_path = cache / "fasta" / f"{key}.json"
        manifest = self._load_manifest(manifest_path)
        if manifest is None:
            manifest = self._prepare(cache / "fasta" / key, kind, manifest_path)
        self.path, self.fai = Path(manifest["target"]), Path(manifest["fai"])
        self.normalised = bool(manifest["normalised"])
        self.names = [r[0] for r in manifest["records"]]
        self.lengths = {r[0]: int(r[1]) for r in manifest["records"]}
        self.lines = {r[0]: int(r[2]) for r in manifest["records"]}
        self._handle: pyfaidx.Fasta | None = None
        self._pid: int | None = None

    # --- preparation -------------------------------------------------------------------------------
    def _load_manifest(self, path: Path) -> dict | None:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if manifest.get("version") != MANIFEST_VERSION:
            return None
        fai, target = Path(manifest.get("fai", "")), Path(manifest.get("target", ""))
        if not (fai.is_file() and target.is_file()):
            return None
        try:  # the index must still describe what the manifest says (a damaged cache is rebuilt, never trusted)
            if _read_fai(fai) != [(r[0], int(r[1])) for r in manifest["records"]]:
                return None
        except (OSError, ValueError, IndexError):
            return None
        return manifest

    def _prepare(self, stem: Path, kind: str | None, manifest_path: Path) -> dict:
        plain = kind is None and not has_bom(self.source)
        records: list[list] = []
        heads: dict[str, str] = {}
        normalised = not plain
        target = stem.with_suffix(".fa") if normalised else self.source
        if normalised:
            self._write_normalised(target, records)
        else:
            for rec in iter_fasta(self.source, self.what):
                records.append([rec.name, len(rec.sequence), rec.line])
                if len(heads) < _SPOT_RECORDS:
                    heads[rec.name] = rec.sequence[:_SPOT_CHECK]
        fai = Path(str(target) + ".fai") if normalised else stem.with_suffix(".fai")
        if not normalised:
            try:
                _build_fai(self.source, fai)
                agrees = self._agrees(self.source, fai, records, heads)
            except (pyfaidx.FastaIndexingError, ValueError, IndexError, OSError):
                agrees = False  # e.g. lines of uneven width, which pyfaidx cannot index
            if not agrees:
                fai.unlink(missing_ok=True)
                normalised, target = True, stem.with_suffix(".fa")
                fai = Path(str(target) + ".fai")
                records = []
                self._write_normalised(target, records)
        if normalised:
            _build_fai(target, fai)
        manifest = {"version": MANIFEST_VERSION, "source": str(self.source), "target": str(target), "fai": str(fai),
                    "normalised": normalised, "records": records}
        atomic_write_text(manifest_path, json.dumps(manifest))
        return manifest

    def _write_normalised(self, target: Path, records: list) -> None:
        """Stream the source into a plain FASTA with uniform lines that pyfaidx can index."""
        with atomic_path(target) as tmp, open(tmp, "w") as out:
            for rec in iter_fasta(self.source, self.what):
                records.append([rec.name, len(rec.sequence), rec.line])
                out.write(f">{rec.name}\n")
                seq = rec.sequence
                for i in range(0, len(seq), NORMALISED_WIDTH):
                    out.write(seq[i:i + NORMALISED_WIDTH])
                    out.write("\n")

    @staticmethod
    def _agrees(target: Path, fai: Path, records: list, heads: dict[str, str]) -> bool:
        """Does pyfaidx read the file as the streaming parser did (names, lengths, first bases)?"""
        if _read_fai(fai) != [(r[0], int(r[1])) for r in records]:
            return False
        with pyfaidx.Fasta(str(target), indexname=str(fai), as_raw=True, sequence_always_upper=False,
                           build_index=False, rebuild=False) as fa:
            return all(fa[name][0:len(head)] == head for name, head in heads.items())

    # --- reading -----------------------------------------------------------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None  # open files are never shipped to worker processes
        return state

    def _fasta(self) -> pyfaidx.Fasta:
        if self._handle is None or self._pid != os.getpid():
            self._handle = pyfaidx.Fasta(str(self.path), indexname=str(self.fai), as_raw=True,
                                         sequence_always_upper=False, build_index=False, rebuild=False)
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def fetch(self, name: str, start: int = 0, end: int | None = None) -> str:
        """Text of `name[start:end]` (0-based half-open, forward strand, case as in the file)."""
        length = self.lengths[name]
        end = length if end is None else end
        if not 0 <= start <= end <= length:
            raise ValueError(f"{name}:{start}-{end} lies outside the record ({length} bp)")  # callers validate first
        return self._fasta()[name][start:end]

    def read(self, name: str, start: int = 0, end: int | None = None, unknown: str = "error") -> np.ndarray:
        """Token ids of `name[start:end]`; an invalid character is an InputError naming file, line and column."""
        text = self.fetch(name, start, end)
        try:
            return encode_dna(text, unknown)
        except InvalidSequenceError:
            raise invalid_character_error(self.source, self.what, name, self.lines[name], text, start,
                                          unknown) from None

    def records(self) -> Iterator[tuple[str, str]]:
        """(name, sequence) of every record, in file order, read one at a time."""
        for name in self.names:
            yield name, self.fetch(name)


def read_sequences(path: str | os.PathLike, what: str = "", region: str | None = None,
                   unknown: str = "error") -> list[str]:
    """Upper-case sequences of every record of a FASTA file, or of one region (`chr:start-end`, 1-based inclusive,
    or a record name; checked, never clipped). Characters are validated (file, line and column on error); with
    `unknown="N"` IUPAC codes come back as N. Holds the sequences in memory: for small and medium files."""
    if region is not None:
        fasta = FastaFile(path, what)
        interval = parse_region(region, "--region", fasta.lengths)
        ids = fasta.read(interval.record, interval.start, interval.end, unknown)
        fasta.close()
        return [decode_dna(ids)]
    out = []
    for rec in iter_fasta(path, what):
        ids = encode_record(rec, path, unknown, what)
        out.append(decode_dna(ids) if unknown == "N" else rec.sequence.upper())
    return out
