"""Labelled-sequence readers: Genomic Benchmarks (both on-disk layouts), labelled CSV/TSV/FASTA, and batching.

Owns everything between a file of labelled DNA and a padded `(input_ids, attention_mask, labels)` batch:

* `LabelledSequences` — sequences, integer labels and the class-name <-> id map that travels with them,
  plus stratified split / fold helpers (scikit-learn), so no caller ever has to guess what label 2 means.
* `read_gb_directory` — the layout the `genomic-benchmarks` package downloads (`<task>/<split>/<class>/*.txt`).
* `read_gb_coordinates` — the official GB interval lists (`<task>/<split>/<class>.csv.gz`) cut out of a
  user's reference FASTA with pyfaidx: how a user with GRCh38 rebuilds a benchmark.
* `read_table` (CSV/TSV with a sequence and a label column), `read_labelled_fasta` (label in the header),
  `load_local_gb` (the GB splits that ship in shared/data) and the front door `read_labelled`.
* `collate_labelled` — right-padding collate that never truncates unless the caller opts in.

Class-id convention: for Genomic Benchmarks tasks the class ids are the **sorted class names** (the sorted
folder / file names, e.g. negative=0, positive=1; enhancer=0, ocr=1, promoter=2), whatever reader produced
them, so a model trained from one layout scores data read from another. For plain tables the ids are the
sorted distinct labels (integers sorted numerically) unless the caller passes `classes`.

All sequences are upper-cased (soft-masking carries no label information and the tokenizer folds case
anyway) and validated with `encode_dna`; every rejection is a one-line `InputError` naming file and line.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

from ..errors import InputError
from ..io.fasta import FastaFile, encode_record, iter_fasta
from ..io.regions import ContigResolver
from ..io.tables import Table, plain_suffix
from ..io.text import read_lines
from ..tokenizer import PAD_ID, decode_dna, encode_dna, rc_string

SHARED_DATA_ENV = "DNA_MDLM_SHARED_DATA"


# --------------------------------------------------------------------------------------------------
# The container
# --------------------------------------------------------------------------------------------------


@dataclass
class LabelledSequences:
    """Labelled DNA: `seqs[i]` has class id `labels[i]`, whose name is `classes[labels[i]]`."""

    seqs: list[str]
    labels: np.ndarray
    classes: list[str]
    source: str
    ids: list[str] | None = None

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.seqs) != len(self.labels):
            raise ValueError(f"{len(self.seqs)} sequences but {len(self.labels)} labels")
        if self.ids is not None and len(self.ids) != len(self.seqs):
            raise ValueError(f"{len(self.seqs)} sequences but {len(self.ids)} ids")
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), the range of classes {self.classes}")

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.seqs[i], int(self.labels[i])

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return (self[i] for i in range(len(self)))

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.seqs), dtype=np.int64, count=len(self.seqs))

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return {name: int(c) for name, c in zip(self.classes, counts)}

    def subset(self, indices, source: str | None = None) -> LabelledSequences:
        idx = np.asarray(indices, dtype=np.int64)
        return LabelledSequences(
            seqs=[self.seqs[i] for i in idx],
            labels=self.labels[idx],
            classes=list(self.classes),
            source=source or f"{self.source} [subset of {len(idx)}]",
            ids=None if self.ids is None else [self.ids[i] for i in idx],
        )

    def shuffled(self, seed: int = 0) -> LabelledSequences:
        """A seeded permutation; needed because some GB files are sorted by class."""
        return self.subset(np.random.default_rng(seed).permutation(len(self)), f"{self.source} [shuffled, seed {seed}]")

    def with_class_order(self, classes: Sequence[str]) -> LabelledSequences:
        """Same data, labels renumbered so that `classes[i]` gets id i (every current class must appear)."""
        missing = [c for c in self.classes if c not in classes]
        if missing:
            raise InputError(f"classes {missing} of {self.source} are not in the requested class list {list(classes)}")
        remap = np.array([list(classes).index(c) for c in self.classes], dtype=np.int64)
        return LabelledSequences(list(self.seqs), remap[self.labels], list(classes), self.source,
                                 None if self.ids is None else list(self.ids))

    def stratified_split(self, test_size: float | int = 0.1, seed: int = 0) -> tuple[LabelledSequences, LabelledSequences]:
        """One seeded stratified (train, held-out) split — the Caduceus GB protocol's 90/10 train/val split.

        A fraction is rounded up to at least one sequence per class present on the held-out side; a set too small
        for that is a one-line InputError instead of scikit-learn's traceback."""
        k = int(np.unique(self.labels).size)
        n_test = test_size if isinstance(test_size, (int, np.integer)) else max(k, math.ceil(test_size * len(self)))
        if n_test >= len(self) or len(self) - n_test < k:
            raise InputError(f"{self.source}: {len(self)} sequences in {k} classes are too few to hold out {n_test} "
                             f"stratified for validation (need at least {n_test + k})")
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=int(n_test), random_state=seed)
        train_idx, test_idx = next(splitter.split(np.zeros(len(self)), self.labels))
        return (self.subset(train_idx, f"{self.source} [split seed {seed}, train {len(train_idx)}]"),
                self.subset(test_idx, f"{self.source} [split seed {seed}, held-out {len(test_idx)}]"))

    def stratified_folds(self, n_splits: int = 5, seed: int = 0) -> Iterator[tuple[LabelledSequences, LabelledSequences]]:
        """Shuffled stratified K-fold: yields (train, held-out) per fold."""
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        for k, (train_idx, test_idx) in enumerate(folds.split(np.zeros(len(self)), self.labels)):
            yield (self.subset(train_idx, f"{self.source} [fold {k}/{n_splits} train]"),
                   self.subset(test_idx, f"{self.source} [fold {k}/{n_splits} held-out]"))

    def encoded(self, unknown: str = "error") -> list[np.ndarray]:
        """Token ids per sequence (variable length)."""
        return [encode_dna(s, unknown) for s in self.seqs]


# --------------------------------------------------------------------------------------------------
# Genomic Benchmarks task table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GBTask:
    """One Genomic Benchmarks task. `classes` are sorted, so `classes.index(name)` is the class id.

    `local_file` (relative to `<shared data>/genomic_benchmarks/sequences/`) is the split that ships offline,
    and `local_label_names[i]` is the class name of integer label i *in that file*.
    """

    name: str
    classes: tuple[str, ...]
    local_file: str | None = None
    local_split: str | None = None
    local_label_names: tuple[str, ...] | None = None
    local_note: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def has_local_data(self) -> bool:
        return self.local_file is not None


GB_TASKS: dict[str, GBTask] = {t.name: t for t in [
    GBTask("demo_coding_vs_intergenomic_seqs", ("coding_seqs", "intergenomic_seqs")),
    GBTask("demo_human_or_worm", ("human", "worm")),
    GBTask("dummy_mouse_enhancers_ensembl", ("negative", "positive")),
    GBTask("human_enhancers_cohn", ("negative", "positive"),
           "human_enhancers_cohn/test.csv", "test", ("negative", "positive"),
           "official full test split; label 1 = positive inferred from GC content; rows sorted by class"),
    GBTask("human_enhancers_ensembl", ("negative", "positive")),
    GBTask("human_ensembl_regulatory", ("enhancer", "ocr", "promoter"),
           "human_ensembl_regulatory/train_subsample1500.tsv", "train", ("promoter", "enhancer", "ocr"),
           "stratified 1,500-row subsample of the official train split; file labels inferred from lengths"),
    GBTask("human_nontata_promoters", ("negative", "positive"),
           "human_nontata_promoters/test.csv", "test", ("negative", "positive"),
           "official full test split; rows sorted by class"),
    GBTask("human_ocr_ensembl", ("negative", "positive"),
           "human_ocr_ensembl/train_subsample1000.tsv", "train", ("negative", "positive"),
           "stratified 1,000-row subsample of the official train split"),
]}


def _gb_task(task: str) -> GBTask:
    if task not in GB_TASKS:
        raise InputError(f"unknown Genomic Benchmarks task {task!r}; known tasks: {', '.join(sorted(GB_TASKS))}")
    return GB_TASKS[task]


def default_shared_data_dir() -> Path:
    """$DNA_MDLM_SHARED_DATA, else `shared/data` beside the repository checkout."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def load_local_gb(task: str, data_dir: str | os.PathLike | None = None) -> LabelledSequences:
    """The offline GB split of `task` (see `GB_TASKS[task].local_note`), with the task's sorted class ids.

    `data_dir` is the shared data folder (holding `genomic_benchmarks/sequences/`) or the `sequences/`
    folder itself; default `default_shared_data_dir()`. The returned rows keep the file order, which for
    the two test sets is sorted by class: shuffle or split stratified before use.
    """
    spec = _gb_task(task)
    if not spec.has_local_data:
        local = sorted(n for n, t in GB_TASKS.items() if t.has_local_data)
        raise InputError(f"task {task!r} has no offline sequences; offline tasks: {', '.join(local)} "
                         f"(rebuild others from coordinates with read_gb_coordinates)")
    base = Path(data_dir) if data_dir is not None else default_shared_data_dir()
    candidates = [base / "genomic_benchmarks" / "sequences" / spec.local_file, base / spec.local_file]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise InputError(f"offline file for {task!r} not found: looked for {candidates[0]} and {candidates[1]} "
                         f"(give the shared data folder with --data-dir, or set {SHARED_DATA_ENV})")
    table = read_table(path, classes=list(spec.local_label_names))
    out = table.with_class_order(spec.classes)
    out.source = f"{task} {spec.local_split} ({spec.local_note}) from {path}"
    return out


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def _clean_seq(seq: str, unknown: str) -> str:
    """Upper-cased, stripped sequence; raises InputError with a bare reason (callers add file and line)."""
    seq = seq.strip().upper()
    if not seq:
        raise InputError("empty sequence")
    ids = encode_dna(seq, unknown)  # InvalidSequenceError (an InputError) names the position
    # With unknown="N" the stored string shows the N the model will see, not the IUPAC code.
    return decode_dna(ids) if unknown == "N" else seq


def _checked_seq(seq: str, where: str, unknown: str) -> str:
    try:
        return _clean_seq(seq, unknown)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


def _need_two_classes(classes: Sequence[str], where: str) -> None:
    if len(classes) < 2:
        raise InputError(f"{where}: only one class ({', '.join(map(str, classes)) or 'none'}) found; "
                         f"classification needs at least two")


# --------------------------------------------------------------------------------------------------
# Genomic Benchmarks: downloaded directory layout
# --------------------------------------------------------------------------------------------------


def _natural_key(name: str):
    # GB names its files 0.txt, 1.txt, ..., 10.txt: numeric order keeps them in interval-list order.
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def read_gb_directory(root: str | os.PathLike, task: str, split: str, unknown: str = "error") -> LabelledSequences:
    """Read `<root>/<task>/<split>/<class>/*.txt` (one sequence per file), the `genomic-benchmarks` layout.

    Class ids are the sorted class folder names; files are read in natural (numeric) name order and their
    stems become `ids`. Any task name is accepted, so user-made datasets in the same layout work too.
    """
    split_dir = Path(root) / task / split
    if not split_dir.is_dir():
        raise InputError(f"{split_dir}: no such directory (expected <root>/<task>/<split>/<class>/*.txt)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    _need_two_classes(classes, str(split_dir))
    seqs, labels, ids = [], [], []
    for class_id, name in enumerate(classes):
        files = sorted((p for p in (split_dir / name).iterdir() if p.suffix == ".txt"), key=lambda p: _natural_key(p.name))
        if not files:
            raise InputError(f"{split_dir / name}: class folder holds no .txt sequence files")
        for f in files:
            text = "".join(line for _, line in read_lines(f))
            seqs.append(_checked_seq(text, f"{f}:1", unknown))
            labels.append(class_id)
            ids.append(f.stem)
    return LabelledSequences(seqs, np.array(labels), classes, f"{task} {split} from {split_dir}", ids)


# --------------------------------------------------------------------------------------------------
# Genomic Benchmarks: official coordinate files + a reference FASTA
# --------------------------------------------------------------------------------------------------


def read_gb_coordinates(coord_root: str | os.PathLike, task: str, split: str, fasta: str | os.PathLike,
                        unknown: str = "error", classes: Sequence[str] | None = None,
                        cache_dir: str | os.PathLike | None = None) -> LabelledSequences:
    """Rebuild a GB split from `<coord_root>/<task>/<split>/<class>.csv.gz` and a reference FASTA.

    Each CSV row `id,region,start,end,strand` gives `ref[region][start:end]` (0-based half-open); strand `-`
    takes the reverse complement, `+` or empty the forward strand — exactly the GB loader's rule. The
    reference must be the build named in the task's metadata.yaml (GRCh38 for human): a different build
    gives wrong sequences without any error, so check a few against known ones. `classes` restricts the
    read to those class files (ids still follow the sorted full class list). `cache_dir`: see `FastaFile`.
    """
    split_dir = Path(coord_root) / task / split
    if not split_dir.is_dir():
        raise InputError(f"{split_dir}: no such directory (expected <coord_root>/<task>/<split>/<class>.csv.gz)")
    files = {p.name[: -len(".csv.gz")]: p for p in split_dir.glob("*.csv.gz")}
    all_classes = sorted(files)
    _need_two_classes(all_classes, str(split_dir))
    wanted = all_classes if classes is None else list(classes)
    for c in wanted:
        if c not in files:
            raise InputError(f"class {c!r} has no file in {split_dir} (classes found: {', '.join(all_classes)})")
    ref = FastaFile(fasta, "reference FASTA", cache_dir)
    resolve = ContigResolver(ref.names)
    contig_len = ref.lengths
    seqs, labels, ids = [], [], []
    for name in wanted:
        path = files[name]
        table = Table(path, delimiter=",")
        need = {"id", "region", "start", "end", "strand"}
        if not need <= set(table.columns):
            raise InputError(f"{path}:1: header must hold id,region,start,end,strand; found {','.join(table.columns)}")
        if True:  # one row per interval
            for line_no, row in table.rows():
                where = f"{path}:{line_no}"
                region = row["region"]
                contig = resolve(region)
                if contig is None:
                    shown = ", ".join(sorted(contig_len)[:5]) + (", ..." if len(contig_len) > 5 else "")
                    raise InputError(f"{where}: contig {region!r} is not in {fasta} ({len(contig_len)} contigs: {shown}); "
                                     f"use the reference named in {task}/metadata.yaml")
                try:
                    start, end = int(row["start"]), int(row["end"])
                except ValueError:
                    raise InputError(f"{where}: start/end must be integers, got {row['start']!r}, {row['end']!r}") from None
                if not 0 <= start < end:
                    raise InputError(f"{where}: interval [{start}, {end}) is empty or negative")
                if end > contig_len[contig]:
                    raise InputError(f"{where}: interval {region}:[{start}, {end}) runs past the end of contig "
                                     f"{contig!r} ({contig_len[contig]} bp) in {fasta}; wrong reference build?")
                seq = ref.fetch(contig, start, end)
                strand = (row["strand"] or "").strip()
                if strand == "-":
                    seq = rc_string(seq)
                elif strand not in ("+", ""):
                    raise InputError(f"{where}: strand must be '+', '-' or empty, got {strand!r}")
                seqs.append(_checked_seq(seq, f"{where} ({region}:{start}-{end})", unknown))
                labels.append(all_classes.index(name))
                ids.append(row["id"])
    ref.close()
    return LabelledSequences(seqs, np.array(labels), all_classes,
                             f"{task} {split} from {split_dir} + {Path(fasta).name}", ids)


# --------------------------------------------------------------------------------------------------
# Plain tables and labelled FASTA
# --------------------------------------------------------------------------------------------------

SEQ_COLUMNS = ("seq", "sequence")
LABEL_COLUMNS = ("label", "target")
_INT_RE = re.compile(r"^[+-]?\d+$")


def _normalised_numbers(raw: list[str], where: str) -> list[str]:
    """Labels that are all numbers: integral values become the integer string ("1.0", "+1", "01" -> "1"), so one
    class is not split in two by how a spreadsheet wrote it; other numbers must be written one way per value
    (InputError naming `where` when two distinct strings are the same number, e.g. "0.5" and "0.50")."""
    values = {}
    for r in set(raw):
        try:
            v = float(r)
        except ValueError:
            return raw
        if not math.isfinite(v):
            return raw
        values[r] = v
    if all(v == int(v) for v in values.values()):
        to = {r: str(int(v)) for r, v in values.items()}
        return [to[r] for r in raw]
    seen: dict[float, str] = {}
    for r in sorted(values):
        if values[r] in seen:
            raise InputError(f"{where}: labels {seen[values[r]]!r} and {r!r} are the same number written two ways; "
                             f"write each class one way")
        seen[values[r]] = r
    return raw


def _labels_to_ids(raw: list[str], classes: Sequence[str] | None, where: str,
                   locate: Callable[[int], str]) -> tuple[np.ndarray, list[str]]:
    """Raw label strings -> (ids, class names). All-integer labels sort numerically."""
    raw = _normalised_numbers(raw, where)
    all_int = all(_INT_RE.match(r) for r in raw)
    if classes is not None:
        classes = [str(c) for c in classes]
        if all_int and not set(raw) <= set(classes):
            # integer labels index into the given names (e.g. 0 -> "negative")
            ids = np.array([int(r) for r in raw], dtype=np.int64)
            bad = np.flatnonzero((ids < 0) | (ids >= len(classes)))
            if bad.size:
                raise InputError(f"{locate(int(bad[0]))}: label {raw[bad[0]]} out of range for "
                                 f"{len(classes)} classes {classes}")
            return ids, classes
        lookup = {c: i for i, c in enumerate(classes)}
        for i, r in enumerate(raw):
            if r not in lookup:
                raise InputError(f"{locate(i)}: label {r!r} is not one of the classes {classes}")
        return np.array([lookup[r] for r in raw], dtype=np.int64), classes
    names = sorted(set(raw), key=int) if all_int else sorted(set(raw))
    _need_two_classes(names, where)
    lookup = {c: i for i, c in enumerate(names)}
    return np.array([lookup[r] for r in raw], dtype=np.int64), names


ID_COLUMNS = ("id", "name")


def read_table(path: str | os.PathLike, seq_column: str | None = None, label_column: str | None = None,
               classes: Sequence[str] | None = None, delimiter: str | None = None,
               unknown: str = "error", what: str = "") -> LabelledSequences:
    """CSV/TSV (optionally gzip) with a header holding a sequence column and a label column (`io.tables` rules).

    Columns are found case-insensitively as `seq`/`sequence` and `label`/`target` unless named; an `id` or `name`
    column, when present, gives the row ids. Labels may be integers or strings; `classes` fixes the class order
    (integer labels then index into it). Errors name `what` (the flag), the file and the line.
    """
    table = Table(path, what, delimiter)
    where0 = f"{what} {table.path}" if what else str(table.path)
    seq_col = table.find_column(seq_column, SEQ_COLUMNS, "sequence")
    label_col = table.find_column(label_column, LABEL_COLUMNS, "label")
    id_col = next((table.find_column(None, (c,), "id") for c in ID_COLUMNS if c in map(str.lower, table.columns)), None)
    seqs, raw, rows, ids = [], [], [], []
    for line_no, row in table.rows():
        where = f"{where0}:{line_no}"
        label = row[label_col].strip()
        if not label:
            raise InputError(f"{where}: empty label in column {label_col!r}")
        seqs.append(_checked_seq(row[seq_col], where, unknown))
        raw.append(label)
        rows.append(line_no)
        if id_col is not None:
            ids.append(row[id_col].strip())
    if not seqs:
        raise InputError(f"{where0}: header only, no rows")
    labels, names = _labels_to_ids(raw, classes, where0, lambda i: f"{where0}:{rows[i]}")
    return LabelledSequences(seqs, labels, names, str(table.path), ids if id_col is not None else None)


_LABEL_KV = re.compile(r"(?:^|\s)label=(\S+)", re.IGNORECASE)  # Label= too, as table columns are case-blind


def read_labelled_fasta(path: str | os.PathLike, classes: Sequence[str] | None = None,
                        unknown: str = "error", what: str = "") -> LabelledSequences:
    """FASTA (`io.fasta` rules) whose headers carry the label, in one of two accepted forms:

    * `>seq1 label=positive [anything else]` — a `label=` token (any case: `Label=`) anywhere in the header
      (checked first);
    * `>seq1|positive [anything else]` — the last `|`-separated field of the first word.

    The id is the first word (without the `|label` part). Labels follow `read_table`'s rules.
    """
    where0 = f"{what} {path}" if what else str(path)
    seqs, raw, ids, lines = [], [], [], []
    for rec in iter_fasta(path, what):
        kv = _LABEL_KV.search(rec.title)
        if kv:
            rid, label = rec.name, kv.group(1)
        elif "|" in rec.name:
            rid, label = rec.name.rsplit("|", 1)
        else:
            rid, label = rec.name, ""
        if not label:
            raise InputError(f"{where0}:{rec.line}: header '>{rec.title[:60]}' has no label "
                             f"(write '>id label=NAME' or '>id|NAME')")
        ids_ = encode_record(rec, path, unknown, what)  # names line and column of a bad character
        seqs.append(decode_dna(ids_) if unknown == "N" else rec.sequence.upper())
        raw.append(label)
        ids.append(rid)
        lines.append(rec.line)
    labels, names = _labels_to_ids(raw, classes, where0, lambda i: f"{where0}:{lines[i]}")
    return LabelledSequences(seqs, labels, names, str(path), ids)


FASTA_EXTENSIONS = (".fa", ".fasta", ".fna", ".fas")
TABLE_EXTENSIONS = (".csv", ".tsv", ".txt")


def read_labelled(path_or_task: str | os.PathLike, split: str = "train", fasta: str | os.PathLike | None = None,
                  data_dir: str | os.PathLike | None = None, classes: Sequence[str] | None = None,
                  unknown: str = "error", what: str = "") -> LabelledSequences:
    """Front door: pick the reader from what `path_or_task` is.

    * a file: `.fa/.fasta/.fna/.fas[.gz]` -> `read_labelled_fasta`; `.csv/.tsv/.txt[.gz]` -> `read_table`;
    * a GB task folder `<root>/<task>` holding `<split>/<class>/*.txt` -> `read_gb_directory`;
    * a GB task folder holding `<split>/<class>.csv.gz` -> `read_gb_coordinates` (needs `fasta`);
    * a GB task name that is not a path -> `load_local_gb(task, data_dir)` (the offline split).
    `what` (the flag, e.g. `--train`) prefixes every error; `unknown="N"` reads IUPAC codes as N.
    """
    path = Path(path_or_task)
    where = f"{what} {path}" if what else str(path)
    if path.is_file():
        ext = plain_suffix(path)
        if ext in FASTA_EXTENSIONS:
            return read_labelled_fasta(path, classes=classes, unknown=unknown, what=what)
        if ext in TABLE_EXTENSIONS:
            return read_table(path, classes=classes, unknown=unknown, what=what)
        raise InputError(f"{where}: unknown extension {ext!r}; expected one of "
                         f"{', '.join(FASTA_EXTENSIONS + TABLE_EXTENSIONS)} (optionally .gz)")
    if path.is_dir():
        split_dir = path / split
        if not split_dir.is_dir():
            raise InputError(f"{where}: no {split!r} split folder (expected a GB task folder with train/ and test/)")
        if any(p.is_dir() for p in split_dir.iterdir()):
            return read_gb_directory(path.parent, path.name, split, unknown=unknown)
        if any(split_dir.glob("*.csv.gz")):
            if fasta is None:
                raise InputError(f"{split_dir} holds GB coordinate files: pass the reference FASTA (fasta=...)")
            return read_gb_coordinates(path.parent, path.name, split, fasta, unknown=unknown, classes=classes)
        raise InputError(f"{split_dir}: neither <class>/*.txt folders nor <class>.csv.gz files")
    if str(path_or_task) in GB_TASKS:
        out = load_local_gb(str(path_or_task), data_dir)
        return out if classes is None else out.with_class_order(classes)
    if path.suffix or os.sep in str(path_or_task):
        raise InputError(f"{where}: no such file")
    raise InputError(f"{where}: not a file, folder or Genomic Benchmarks task "
                     f"(known tasks: {', '.join(sorted(GB_TASKS))})")


# --------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------


def collate_labelled(batch: Sequence[tuple], pad_id: int = PAD_ID, max_length: int | None = None,
                     truncate: bool = False, unknown: str = "error") -> dict:
    """Right-pad a list of `(sequence or ids, label)` to the batch max length.

    Returns `input_ids` (B, L) long, `attention_mask` (B, L) bool (True on real tokens), `labels` (B,) long
    and `n_truncated` (int). A sequence longer than `max_length` is an error unless `truncate=True`, which
    keeps its first `max_length` tokens and counts it in `n_truncated`.
    Use with `functools.partial(collate_labelled, max_length=...)` as a DataLoader `collate_fn`.
    """
    if not batch:
        raise InputError("collate_labelled: empty batch")
    ids = [encode_dna(x, unknown) if isinstance(x, (str, bytes)) else np.asarray(x, dtype=np.int64) for x, _ in batch]
    n_truncated = 0
    if max_length is not None:
        too_long = [i for i, a in enumerate(ids) if len(a) > max_length]
        if too_long and not truncate:
            raise InputError(f"{len(too_long)} sequence(s) in the batch exceed max_length={max_length} "
                             f"(longest {max(len(ids[i]) for i in too_long)}); raise max_length or pass truncate=True")
        n_truncated = len(too_long)
        ids = [a[:max_length] for a in ids]
    width = max(len(a) for a in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, a in enumerate(ids):
        input_ids[i, : len(a)] = torch.from_numpy(a)
        attention_mask[i, : len(a)] = True
    labels = torch.tensor([int(y) for _, y in batch], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "n_truncated": n_truncated}


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of indices of similar length, for variable-length labelled sets (a `batch_sampler`).

    `shuffle=True`: each epoch a seeded permutation is cut into pools of 50 batches, each pool sorted by
    length and cut into batches, and the batches are shuffled, so padding stays small without a fixed batch
    order. `shuffle=False`: one pass in length order (evaluation). Every index appears exactly once per epoch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed, self.epoch = int(batch_size), shuffle, seed, 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            yield from (order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size))
            return
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        perm = rng.permutation(len(self.lengths))
        pool = 50 * self.batch_size
        batches = []
        for s in range(0, len(perm), pool):
            chunk = perm[s : s + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        for j in rng.permutation(len(batches)):
            yield batches[j]


def micro_batches(attention_mask: torch.Tensor, max_tokens: int) -> list[tuple[slice, int]]:
    """Split a right-padded batch (attention_mask (B, L)) into row slices of at most `max_tokens` padded
    tokens each (at least one row), for gradient accumulation; each comes with its own width (its longest
    real sequence), so a slice is trimmed to `[:, :width]` and carries no padding beyond its own rows."""
    lengths = attention_mask.sum(1).tolist()
    out, start = [], 0
    while start < len(lengths):
        end, width = start + 1, int(lengths[start])
        while end < len(lengths) and max(width, int(lengths[end])) * (end + 1 - start) <= max_tokens:
            width = max(width, int(lengths[end]))
            end += 1
        out.append((slice(start, end), max(width, 1)))
        start = end
    return out


def length_sorted_batches(ids: Sequence[np.ndarray], batch_size: int, max_tokens: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """(indices, input_ids, attention_mask) over token-id arrays in length order, each batch at most `batch_size`
    sequences and `max_tokens` padded bases (evaluation and feature extraction: padding stays minimal)."""
    for idx in LengthBucketSampler([len(a) for a in ids], batch_size, shuffle=False):
        batch = collate_labelled([(ids[i], 0) for i in idx])
        rows = np.asarray(idx)
        for sl, width in micro_batches(batch["attention_mask"], max_tokens):
            yield rows[sl], batch["input_ids"][sl, :width], batch["attention_mask"][sl, :width]
