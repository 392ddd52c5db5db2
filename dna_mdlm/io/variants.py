"""Variant files: read a VCF (plain, gzip or bgzip) or a chrom/pos/ref/alt TSV as one `Variant` per allele,
and write per-allele scores back as TSV or as a sites-only VCF with INFO fields.

Reading streams (one record in memory at a time) and never drops a line: a malformed line is an `InputError`
naming `file:line`; a record with several ALT alleles becomes one `Variant` per allele (in ALT order, sharing
the record's line number); a record with ALT `.` or a symbolic / breakend / `*` allele still yields a `Variant`,
flagged by `Variant.problem`, so that a caller can write one output row per input allele.

VCF parsing is vcfpy's (pure Python, github.com/bihealth/vcfpy); it has no line numbers, so the stream is
wrapped in a line counter. VCF positions are 1-based and REF/ALT of an indel share an anchor base (VCF 4.2
§1.6.1). The TSV (or CSV: read by `io.tables`, delimiter from the extension or sniffed) needs a header naming
`chrom`, `pos`, `ref` and `alt` columns (any case; a leading `#` is
allowed; an `id` column is optional, other columns are ignored); positions are 1-based, and `-` stands for an
empty allele: REF `C` ALT `-` deletes the C at `pos`; REF `-` ALT `T` inserts a T before the base at `pos`.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vcfpy

from ..errors import InputError
from .tables import Table
from .text import read_lines
from .writers import atomic_path, check_outputs

# vcfpy warns about header incompleteness (an INFO key without a ##INFO line, ...): nothing that changes
# which alleles are read, so its own warning category is silenced for the whole process.
warnings.filterwarnings("ignore", category=vcfpy.exceptions.VCFPyWarning)

VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz")
_BASES = re.compile(r"^[ACGTNacgtn]+$")
_TSV_ALLELE = re.compile(r"^([ACGTNacgtn]+|-)$")
_TSV_COLUMNS = {
    "chrom": ("chrom", "chr", "chromosome", "contig", "seqname"),
    "pos": ("pos", "position"),
    "ref": ("ref", "reference"),
    "alt": ("alt", "alternate", "alts"),
    "id": ("id", "name", "variant_id", "rsid"),
}

PROBLEM_NO_ALT = "no_alt"
PROBLEM_UNSUPPORTED = "unsupported_allele"
PROBLEM_SAME = "alt_equals_ref"


@dataclass(frozen=True)
class Variant:
    """One allele of one input record.

    chrom/pos/ref/alt are as written (pos 1-based, ref/alt upper-cased; an empty string is a TSV `-`);
    `line` is the 1-based line of the record in `source`; `record` counts input records from 0 and `allele`
    is the index of this ALT within its record (`n_alleles` ALTs in all).
    """

    chrom: str
    pos: int
    ref: str
    alt: str
    id: str = "."
    source: str = ""
    line: int = 0
    record: int = 0
    allele: int = 0
    n_alleles: int = 1
    vcf: Any = field(default=None, compare=False, repr=False)  # the vcfpy.Record it came from, for VCF output

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def problem(self) -> str | None:
        """Why this allele cannot be scored (None if it can): no ALT, a non-ACGT allele, or ALT == REF."""
        if self.alt == "." and self.vcf is not None:
            return PROBLEM_NO_ALT
        if not re.fullmatch(r"[ACGT]*", self.ref) or not re.fullmatch(r"[ACGT]*", self.alt):
            return PROBLEM_UNSUPPORTED
        if self.ref == self.alt:
            return PROBLEM_SAME
        return None

    def trimmed(self) -> tuple[int, str, str]:
        """(0-based start, ref, alt) with the shared suffix and then prefix removed (an SNV becomes one base).

        The allele replaces `ref` at the returned start; either side may be empty (deletion / insertion).
        """
        ref, alt, start = self.ref, self.alt, self.pos - 1
        while ref and alt and ref[-1] == alt[-1]:
            ref, alt = ref[:-1], alt[:-1]
        while ref and alt and ref[0] == alt[0]:
            ref, alt, start = ref[1:], alt[1:], start + 1
        return start, ref, alt


# ------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------


def sniff_format(path: str | os.PathLike) -> str:
    """'vcf' when the file starts with `##fileformat=VCF` (or is named *.vcf[.gz|.bgz]), else 'tsv' (a delimited
    table: TSV or CSV). Read through `io.text.read_lines`: gzip, a byte-order mark and CRLF are handled there."""
    path = Path(path)
    first = next((line for _, line in read_lines(path)), "")
    if first.startswith("##fileformat=VCF") or str(path).lower().endswith(VCF_SUFFIXES):
        return "vcf"
    return "tsv"


class _LineCounter:
    """A line stream (from `io.text.read_lines`) that counts the lines vcfpy reads (vcfpy's parser only calls
    `readline`); read errors are already one-line InputErrors naming the file and line."""

    def __init__(self, path: Path):
        self._lines = read_lines(path)
        self.lines, self.last = 0, ""

    def readline(self) -> str:
        line = next(self._lines, ("", ""))[1]
        if line:
            self.lines += 1
        self.last = line
        return line

    def current(self) -> int:
        """Line number of the record vcfpy just returned (its parser reads one line ahead)."""
        return self.lines - 1 if self.last else self.lines

    def close(self) -> None:
        self._lines.close()


class VariantFile:
    """A variant file: each iteration re-reads it from the start and yields `Variant`s; `format` is 'vcf' or
    'tsv'; `header` is the vcfpy Header of a VCF (read, and checked, on construction)."""

    def __init__(self, path: str | os.PathLike, fmt: str = "auto", flag: str = "variants"):
        self.path = Path(path)
        self.flag = flag
        if not self.path.is_file():
            raise InputError(f"--{flag} {self.path}: no such file")
        if self.path.stat().st_size == 0:
            raise InputError(f"--{flag} {self.path}: the file is empty")
        if fmt not in ("auto", "vcf", "tsv"):
            raise InputError(f"format: expected 'auto', 'vcf' or 'tsv', got {fmt!r}")
        self.format = sniff_format(self.path) if fmt == "auto" else fmt
        self.header: vcfpy.Header | None = None
        if self.format == "vcf":
            reader, counter = self._open_vcf()
            self.header = reader.header
            reader.close()

    # --- VCF ---------------------------------------------------------------------------------------
    def _open_vcf(self):
        counter = _LineCounter(self.path)
        try:
            return vcfpy.Reader.from_stream(counter, path=str(self.path)), counter
        except InputError:
            counter.close()
            raise
        except (vcfpy.exceptions.VCFPyException, ValueError, IndexError, KeyError) as exc:
            counter.close()
            raise InputError(f"{self.path}:{counter.lines}: malformed VCF header ({_first_line(exc)}); "
                             f"expected ##fileformat=VCF..., ## meta lines, then the #CHROM header line") from None

    def _iter_vcf(self) -> Iterator[Variant]:
        reader, counter = self._open_vcf()
        with reader:
            yield from self._vcf_records(reader, counter)

    def _vcf_records(self, reader, counter: _LineCounter) -> Iterator[Variant]:
        source = str(self.path)
        index = 0
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                break
            except (vcfpy.exceptions.VCFPyException, ValueError, IndexError, KeyError) as exc:
                raise InputError(f"{source}:{counter.current()}: malformed VCF record ({_first_line(exc)}); "
                                 f"expected tab-separated CHROM POS ID REF ALT QUAL FILTER INFO") from None
            line = counter.current()
            where = f"{source}:{line}"
            if rec.POS < 1:
                raise InputError(f"{where}: POS {rec.POS} is not a 1-based position (expected >= 1)")
            if not _BASES.match(rec.REF):
                raise InputError(f"{where}: REF {rec.REF!r} is not a DNA allele (expected A, C, G, T or N)")
            ids = ";".join(rec.ID) or "."
            alts = [a.serialize() if isinstance(a, vcfpy.Substitution) else None for a in rec.ALT]
            if not alts:
                yield Variant(rec.CHROM, rec.POS, rec.REF.upper(), ".", ids, source, line, index, 0, 1, rec)
            for i, alt in enumerate(alts):
                text = alt.upper() if alt is not None else rec.ALT[i].serialize()
                yield Variant(rec.CHROM, rec.POS, rec.REF.upper(), text, ids, source, line, index, i, len(alts), rec)
            index += 1
        # vcfpy stops at the first blank line: anything after it would be lost without a word.
        rest = counter.last + "".join(iter(counter.readline, ""))
        if rest.strip():
            blank = counter.lines - rest.count("\n") + (0 if rest.endswith("\n") else 1)
            raise InputError(f"{source}:{blank}: blank line before more records (remove it; every record line "
                             f"must hold CHROM POS ID REF ALT QUAL FILTER INFO)")

    # --- TSV ---------------------------------------------------------------------------------------
    def _iter_tsv(self) -> Iterator[Variant]:
        # One table reader for every verb (io.tables): TSV or CSV by extension, else the delimiter sniffed from
        # the header; gzip, a byte-order mark, CRLF and quoted fields handled there.
        table = Table(self.path, f"--{self.flag}", skip_prefix="##")
        source = str(self.path)
        columns = _tsv_columns(table.columns, f"{source}:{table.header_line}")
        index = 0
        for line_no, row in table.rows():
            where = f"{source}:{line_no}"
            chrom = row[columns["chrom"]].strip()
            pos_text, ref = row[columns["pos"]].strip(), row[columns["ref"]].strip()
            if not chrom:
                raise InputError(f"{where}: empty chrom")
            try:
                pos = int(pos_text)
            except ValueError:
                raise InputError(f"{where}: pos {pos_text!r} is not an integer (1-based position)") from None
            if pos < 1:
                raise InputError(f"{where}: pos {pos} is not a 1-based position (expected >= 1)")
            alts = row[columns["alt"]].strip().split(",")
            for allele in [ref] + alts:
                if not _TSV_ALLELE.match(allele):
                    raise InputError(f"{where}: allele {allele!r} is not A/C/G/T/N bases or '-' (empty allele)")
            vid = row[columns["id"]].strip() if "id" in columns else ""
            ref = "" if ref == "-" else ref.upper()
            for i, alt in enumerate(alts):
                alt = "" if alt == "-" else alt.upper()
                if not ref and not alt:
                    raise InputError(f"{where}: both REF and ALT are '-' (empty)")
                yield Variant(chrom, pos, ref, alt, vid or ".", source, line_no, index, i, len(alts))
            index += 1

    def __iter__(self) -> Iterator[Variant]:
        return self._iter_vcf() if self.format == "vcf" else self._iter_tsv()


def _tsv_columns(fields: list[str], where: str) -> dict[str, str]:
    """{chrom, pos, ref, alt[, id]} -> the header column holding it (aliases, any case, a leading `#` allowed)."""
    names = [f.strip().lstrip("#").strip().lower() for f in fields]
    found: dict[str, str] = {}
    for key, aliases in _TSV_COLUMNS.items():
        for i, name in enumerate(names):
            if name in aliases:
                found[key] = fields[i]
                break
    missing = [k for k in ("chrom", "pos", "ref", "alt") if k not in found]
    if missing:
        raise InputError(f"{where}: the header has no {'/'.join(missing)} column (found: {', '.join(fields)}); "
                         f"expected columns chrom, pos, ref, alt (any case, optional id), tab- or comma-separated")
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def iter_variants(path: str | os.PathLike, fmt: str = "auto", flag: str = "variants") -> Iterator[Variant]:
    """Stream the `Variant`s of a VCF or TSV file (see the module docstring)."""
    return iter(VariantFile(path, fmt, flag))


# ------------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreColumn:
    """One output column: its TSV name, its VCF INFO key, type and description."""

    name: str
    info: str
    type: str  # "Float", "Integer" or "String"
    description: str


def _format_value(value) -> str:
    if value is None:
        return "NA"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class TsvScoreWriter:
    """chrom, pos, id, ref, alt (as read; `-` for an empty allele), then one column per ScoreColumn."""

    def __init__(self, fh, columns: Sequence[ScoreColumn]):
        self.fh, self.columns = fh, list(columns)
        fh.write("\t".join(["chrom", "pos", "id", "ref", "alt"] + [c.name for c in self.columns]) + "\n")

    def write(self, variant: Variant, values: dict) -> None:
        head = [variant.chrom, str(variant.pos), variant.id, variant.ref or "-", variant.alt or "-"]
        self.fh.write("\t".join(head + [_format_value(values.get(c.name)) for c in self.columns]) + "\n")


class VcfScoreWriter:
    """A sites-only VCF: one record per allele (multi-allelic records split, Number=A/R INFO subset, Number=G
    INFO dropped, FORMAT and sample columns dropped), the scores as INFO fields. TSV input gets a minimal header;
    an empty TSV allele is written with the preceding base as the VCF anchor (`values['anchor']`)."""

    def __init__(self, path: Path, columns: Sequence[ScoreColumn], header: vcfpy.Header | None):
        self.columns = list(columns)
        ours = {c.info for c in self.columns}
        if header is None:
            lines = [vcfpy.HeaderLine("fileformat", "VCFv4.2")]
        else:
            # Drop our own INFO lines from an earlier run (rescoring replaces them) and the FORMAT lines.
            lines = [ln for ln in header.lines
                     if not (ln.key == "INFO" and getattr(ln, "mapping", {}).get("ID") in ours) and ln.key != "FORMAT"]
        self.source_header = header
        out = vcfpy.Header(lines=[ln.copy() for ln in lines], samples=vcfpy.SamplesInfos([]))
        out.add_line(vcfpy.HeaderLine("source", "dna-mdlm score-variants"))
        for c in self.columns:
            out.add_info_line({"ID": c.info, "Number": 1, "Type": c.type, "Description": c.description})
        self.writer = vcfpy.Writer.from_path(str(path), out)

    def write(self, variant: Variant, values: dict) -> None:
        info: dict[str, Any] = {}
        rec = variant.vcf
        if rec is not None:
            info.update(self._split_info(rec, variant.allele, variant.n_alleles))
            chrom, pos, ids, ref, qual, filt = rec.CHROM, rec.POS, rec.ID, rec.REF, rec.QUAL, rec.FILTER
            alt = [] if variant.alt == "." else [rec.ALT[variant.allele]]
        else:
            chrom, pos, ids, qual, filt = variant.chrom, variant.pos, ([] if variant.id == "." else [variant.id]), None, []
            ref, alt_text = variant.ref, variant.alt
            if not ref or not alt_text:
                anchor = values.get("anchor")
                if not anchor:
                    raise InputError(f"{variant.where}: an empty allele needs the neighbouring reference base to be "
                                     f"written as VCF (write TSV instead)")
                if pos > 1:
                    pos, ref, alt_text = pos - 1, anchor + ref, anchor + alt_text
                else:  # no base before the first one: VCF anchors on the base after
                    ref, alt_text = ref + anchor, alt_text + anchor
            alt = [vcfpy.Substitution(vcfpy.SNV if len(ref) == len(alt_text) == 1 else vcfpy.INDEL, alt_text)]
        for c in self.columns:
            value = values.get(c.name)
            if value is not None:
                info[c.info] = float(f"{value:.6g}") if isinstance(value, float) else value
        self.writer.write_record(vcfpy.Record(chrom, pos, list(ids), ref, alt, qual, list(filt), info))

    def _split_info(self, rec, allele: int, n_alleles: int) -> dict[str, Any]:
        ours = {c.info for c in self.columns}
        out: dict[str, Any] = {}
        for key, value in rec.INFO.items():
            if key in ours:
                continue
            number = self.source_header.get_info_field_info(key).number if self.source_header else "."
            if n_alleles > 1 and number == "A" and isinstance(value, list) and len(value) == n_alleles:
                value = [value[allele]]
            elif n_alleles > 1 and number == "R" and isinstance(value, list) and len(value) == n_alleles + 1:
                value = [value[0], value[allele + 1]]
            elif n_alleles > 1 and number == "G":
                continue  # genotype-ordered values have no meaning once the record is split
            out[key] = value
        return out

    def close(self) -> None:
        self.writer.close()


@contextlib.contextmanager
def open_score_writer(out: str | os.PathLike, columns: Sequence[ScoreColumn], header: vcfpy.Header | None = None):
    """Yield a writer with `.write(variant, values)`; `out` appears (renamed into place) only on success.

    `out` ending in .vcf / .vcf.gz / .vcf.bgz gives a VCF (bgzip-compressed for .gz/.bgz), anything else a TSV.
    """
    out = Path(out)
    check_outputs(files=[("--out", out)])  # the one output rule: never a file over a directory
    with atomic_path(out) as tmp:
        if str(out).lower().endswith(VCF_SUFFIXES):
            target = tmp.with_name(tmp.name[:-4] + ".gz") if str(tmp).lower().endswith(".bgz") else tmp
            writer = VcfScoreWriter(target, columns, header)
            try:
                yield writer
            finally:
                writer.close()
            if target != tmp:
                os.replace(target, tmp)
        else:
            with open(tmp, "w") as fh:
                yield TsvScoreWriter(fh, columns)
