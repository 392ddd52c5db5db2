"""Tests for dna_mdlm.data.labelled: every reader on real files, the coordinate rebuild, collate, errors."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GB_COORDINATES as COORDS
from conftest import GB_SEQUENCES as SEQS
from conftest import SHARED_DATA as SHARED

from dna_mdlm.data.labelled import (
    GB_TASKS,
    LabelledSequences,
    collate_labelled,
    load_local_gb,
    read_gb_coordinates,
    read_gb_directory,
    read_labelled,
    read_labelled_fasta,
    read_table,
)
from dna_mdlm.errors import InputError
from dna_mdlm.tokenizer import PAD_ID, encode_dna, rc_string

needs_shared = pytest.mark.skipif(not SEQS.is_dir() or not COORDS.is_dir(),
                                  reason=f"shared Genomic Benchmarks data not found at {SHARED} (set DNA_MDLM_SHARED_DATA)")


def _real_rows(task: str, split: str, cls: str, max_end: int) -> list[dict]:
    """Real official rows whose interval ends before max_end, so a small FASTA can hold them."""
    with gzip.open(COORDS / task / split / f"{cls}.csv.gz", "rt", newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["end"]) <= max_end]


def _write_coords(root: Path, task: str, split: str, rows_by_class: dict[str, list[dict]]) -> None:
    d = root / task / split
    d.mkdir(parents=True)
    for cls, rows in rows_by_class.items():
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["id", "region", "start", "end", "strand"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        with gzip.open(d / f"{cls}.csv.gz", "wt") as fh:
            fh.write(buf.getvalue())


def _write_fasta(path: Path, contigs: dict[str, str], width: int = 60) -> None:
    with open(path, "w") as fh:
        for name, seq in contigs.items():
            fh.write(f">{name} test contig\n")
            fh.writelines(seq[i : i + width] + "\n" for i in range(0, len(seq), width))


def _random_dna(rng, n: int) -> str:
    return "".join(rng.choice(list("ACGT"), size=n))


# ---------------------------------------------------------------------------------------------------
# Offline GB splits and the task table
# ---------------------------------------------------------------------------------------------------


def test_gb_tasks_table():
    assert len(GB_TASKS) == 8
    assert GB_TASKS["human_ensembl_regulatory"].n_classes == 3
    assert all(list(t.classes) == sorted(t.classes) for t in GB_TASKS.values())
    local = {n for n, t in GB_TASKS.items() if t.has_local_data}
    assert local == {"human_nontata_promoters", "human_enhancers_cohn", "human_ocr_ensembl", "human_ensembl_regulatory"}


@needs_shared
def test_load_local_nontata_counts_and_classes():
    data = load_local_gb("human_nontata_promoters", SHARED)
    assert len(data) == 9034
    assert data.class_counts() == {"negative": 4119, "positive": 4915}
    assert set(data.lengths.tolist()) == {251}
    assert sum("N" in s for s in data.seqs) == 1  # README: one sequence holds an N, kept as a base


@needs_shared
def test_load_local_regulatory_remaps_file_labels_to_sorted_classes():
    data = load_local_gb("human_ensembl_regulatory", SHARED)
    assert data.classes == ["enhancer", "ocr", "promoter"]
    # README: in the file, 0 = promoter (median ~599 bp), 1 = enhancer (~400), 2 = ocr (~308)
    medians = {c: np.median(data.lengths[data.labels == i]) for i, c in enumerate(data.classes)}
    assert medians["promoter"] > 550 and 350 < medians["enhancer"] < 450 and medians["ocr"] < 350
    raw = read_table(SEQS / "human_ensembl_regulatory" / "train_subsample1500.tsv")
    assert raw.seqs == data.seqs
    assert np.array_equal(np.array([2, 0, 1])[raw.labels], data.labels)


@needs_shared
def test_split_helpers_are_stratified_and_disjoint():
    data = load_local_gb("human_ocr_ensembl", SHARED)
    train, held = data.stratified_split(test_size=0.3, seed=3)
    assert len(train) == 700 and len(held) == 300
    assert held.class_counts() == {"negative": 150, "positive": 150}
    assert not set(train.seqs) & set(held.seqs)
    folds = list(data.stratified_folds(n_splits=5, seed=0))
    assert len(folds) == 5
    held_out = [s for _, h in folds for s in h.seqs]
    assert sorted(held_out) == sorted(data.seqs)
    assert all(h.class_counts() == {"negative": 100, "positive": 100} for _, h in folds)


def test_unknown_task_lists_known_ones():
    with pytest.raises(InputError, match="unknown Genomic Benchmarks task 'nope'.*human_nontata_promoters"):
        load_local_gb("nope")
    with pytest.raises(InputError, match="no offline sequences"):
        load_local_gb("demo_human_or_worm")


# ---------------------------------------------------------------------------------------------------
# Coordinates + reference FASTA
# ---------------------------------------------------------------------------------------------------


@needs_shared
def test_coordinates_forward_and_minus_strand_against_tmp_fasta(tmp_path):
    # Real rows of the official human_or_worm test lists near contig starts: human has a '-' row
    # (chr4:9988-10188), worm uses Ensembl-style roman contigs.
    human = _real_rows("demo_human_or_worm", "test", "human", 40_000)
    worm = _real_rows("demo_human_or_worm", "test", "worm", 40_000)
    assert any(r["strand"] == "-" for r in human) and any(r["strand"] == "+" for r in human + worm)
    coords = tmp_path / "coords"
    _write_coords(coords, "demo_human_or_worm", "test", {"human": human, "worm": worm})
    rng = np.random.default_rng(0)
    contigs = {name: _random_dna(rng, 40_100) for name in sorted({r["region"] for r in human + worm})}
    fasta = tmp_path / "ref.fa"
    _write_fasta(fasta, contigs)
    data = read_gb_coordinates(coords, "demo_human_or_worm", "test", fasta)
    assert data.classes == ["human", "worm"]
    rows = human + worm
    assert len(data) == len(rows) and data.ids == [r["id"] for r in rows]
    for (seq, label), r in zip(data, rows):
        fwd = contigs[r["region"]][int(r["start"]) : int(r["end"])]
        assert seq == (rc_string(fwd) if r["strand"] == "-" else fwd)
        assert len(seq) == 200
        assert label == (0 if r in human else 1)


@needs_shared
def test_coordinates_empty_strand_ensembl_names_and_versioned_transcripts(tmp_path):
    # human_ocr_ensembl positives have an empty strand field (forward); the FASTA uses Ensembl names
    # ("16" for "chr16"); coding_seqs regions are version-less ENST ids matched to "ENST....N" contigs.
    pos = _real_rows("human_ocr_ensembl", "test", "positive", 60_000)
    neg = _real_rows("human_ocr_ensembl", "test", "negative", 60_000)
    assert pos and all(r["strand"] == "" for r in pos)
    coords = tmp_path / "coords"
    _write_coords(coords, "human_ocr_ensembl", "test", {"positive": pos, "negative": neg})
    rng = np.random.default_rng(1)
    contigs = {name[3:]: _random_dna(rng, 60_000) for name in {r["region"] for r in pos + neg}}
    fasta = tmp_path / "ensembl.fa"
    _write_fasta(fasta, contigs)
    data = read_gb_coordinates(coords, "human_ocr_ensembl", "test", fasta)
    got = dict(zip(data.ids, data.seqs))
    for r in pos:
        assert got[r["id"]] == contigs[r["region"][3:]][int(r["start"]) : int(r["end"])]

    coding = _real_rows("demo_coding_vs_intergenomic_seqs", "test", "coding_seqs", 200)[:3]
    inter = _real_rows("demo_coding_vs_intergenomic_seqs", "test", "intergenomic_seqs", 20_000)[:3]
    _write_coords(coords, "demo_coding_vs_intergenomic_seqs", "test", {"coding_seqs": coding, "intergenomic_seqs": inter})
    contigs = {f"{r['region']}.3": _random_dna(rng, 300) for r in coding}
    contigs.update({r["region"]: _random_dna(rng, 20_000) for r in inter})
    fasta2 = tmp_path / "cdna_plus_genome.fa"
    _write_fasta(fasta2, contigs)
    data = read_gb_coordinates(coords, "demo_coding_vs_intergenomic_seqs", "test", fasta2)
    assert data.seqs[0] == contigs[coding[0]["region"] + ".3"][:200]
    assert data.class_counts() == {"coding_seqs": len(coding), "intergenomic_seqs": len(inter)} and len(inter) >= 2


@needs_shared
def test_coordinates_missing_contig_and_past_end_errors(tmp_path):
    rows = _real_rows("human_nontata_promoters", "test", "positive", 50_000)  # FP001987 chr2:46454-46705 '-'
    neg = _real_rows("human_nontata_promoters", "test", "negative", 170_000)  # chr16 rows
    coords = tmp_path / "coords"
    _write_coords(coords, "human_nontata_promoters", "test", {"positive": rows, "negative": neg})
    rng = np.random.default_rng(2)
    fasta = tmp_path / "only_chr2.fa"
    _write_fasta(fasta, {"chr2": _random_dna(rng, 50_000)})
    with pytest.raises(InputError, match=r"negative\.csv\.gz:2: contig 'chr16' is not in .*only_chr2\.fa"):
        read_gb_coordinates(coords, "human_nontata_promoters", "test", fasta)
    short = tmp_path / "short.fa"
    _write_fasta(short, {"chr2": _random_dna(rng, 46_500), "chr16": _random_dna(rng, 170_000)})
    with pytest.raises(InputError, match=r"positive\.csv\.gz:2: interval chr2:\[46454, 46705\) runs past the end"):
        read_gb_coordinates(coords, "human_nontata_promoters", "test", short)


# ---------------------------------------------------------------------------------------------------
# Downloaded GB layout, tables, labelled FASTA, front door
# ---------------------------------------------------------------------------------------------------


@needs_shared
def test_gb_directory_layout_natural_order(tmp_path):
    real = load_local_gb("human_nontata_promoters", SHARED)
    neg = [s for s, y in real if y == 0][:11]
    pos = [s for s, y in real if y == 1][:3]
    for cls, seqs in (("negative", neg), ("positive", pos)):
        d = tmp_path / "human_nontata_promoters" / "train" / cls
        d.mkdir(parents=True)
        for i, s in enumerate(seqs):
            (d / f"{i}.txt").write_text(s)  # GB files hold the bare sequence, no newline
    data = read_gb_directory(tmp_path, "human_nontata_promoters", "train")
    assert data.classes == ["negative", "positive"]
    assert data.seqs == neg + pos  # 10.txt after 9.txt, not after 1.txt
    assert data.ids[:3] == ["0", "1", "2"] and data.ids[10] == "10"
    assert read_labelled(tmp_path / "human_nontata_promoters", split="train").seqs == data.seqs


@needs_shared
def test_read_table_real_tsv_and_csv():
    tsv = read_table(SEQS / "human_ocr_ensembl" / "train_subsample1000.tsv")
    assert len(tsv) == 1000 and tsv.classes == ["0", "1"] and tsv.class_counts() == {"0": 500, "1": 500}
    assert tsv.lengths.min() == 109 and tsv.lengths.max() == 593
    csv_ = read_labelled(SEQS / "human_enhancers_cohn" / "test.csv")
    assert len(csv_) == 6948 and set(csv_.lengths.tolist()) == {500}


def test_read_table_string_labels_sniffed_delimiter_and_gzip(tmp_path):
    p = tmp_path / "data.txt"
    p.write_text("id;Sequence;target\na;ACGTACGT;enhancer\nb;acgtnn;promoter\nc;GGGG;enhancer\n")
    data = read_table(p)
    assert data.classes == ["enhancer", "promoter"] and data.labels.tolist() == [0, 1, 0]
    assert data.seqs[1] == "ACGTNN"  # soft-masked case folded
    gz = tmp_path / "data.tsv.gz"
    gz.write_bytes(gzip.compress(b"seq\tlabel\nACGT\t3\nTTTT\t10\nCCCC\t3\n"))
    data = read_labelled(gz)
    assert data.classes == ["3", "10"] and data.labels.tolist() == [0, 1, 0]  # numeric, not string, order


def test_read_table_errors(tmp_path):
    def write(name, text):
        p = tmp_path / name
        p.write_text(text)
        return p

    with pytest.raises(InputError, match=r"no label column .*columns found: seq, y"):
        read_table(write("a.csv", "seq,y\nACGT,1\n"))
    with pytest.raises(InputError, match=r"no sequence column .*columns found: dna, label"):
        read_table(write("b.csv", "dna,label\nACGT,1\n"))
    with pytest.raises(InputError, match=r"only one class"):
        read_table(write("c.csv", "seq,label\nACGT,1\nCCGT,1\n"))
    with pytest.raises(InputError, match=r"d\.csv:3: empty sequence"):
        read_table(write("d.csv", "seq,label\nACGT,1\n,0\n"))
    with pytest.raises(InputError, match=r"e\.csv:3: invalid character 'X' at position 2"):
        read_table(write("e.csv", "seq,label\nACGT,1\nACXT,0\n"))
    with pytest.raises(InputError, match=r"f\.csv: empty file"):
        read_table(write("f.csv", ""))
    with pytest.raises(InputError, match=r"g\.csv:3: label 5 out of range"):
        read_table(write("g.csv", "seq,label\nACGT,1\nACGT,5\n"), classes=["negative", "positive"])
    assert read_table(write("h.csv", "seq,label\nACRT,1\nACGT,0\n"), unknown="N").seqs[0] == "ACNT"


def test_read_labelled_fasta_both_header_forms(tmp_path):
    p = tmp_path / "lab.fa"
    p.write_text(">s1 label=positive some note\nACGT\nACGT\n>s2|negative\nTTTT\n>s3 x=1 label=negative\nGGCC\n")
    data = read_labelled_fasta(p)
    assert data.ids == ["s1", "s2", "s3"]
    assert data.seqs == ["ACGTACGT", "TTTT", "GGCC"]
    assert data.classes == ["negative", "positive"] and data.labels.tolist() == [1, 0, 0]
    assert read_labelled(p).seqs == data.seqs


def test_read_labelled_fasta_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.fa"
    p.write_text(">s1|a\nACGT\n>s2 nolabel\nACGT\n")
    with pytest.raises(InputError, match=r"bad\.fa:3: header '>s2 nolabel' has no label"):
        read_labelled_fasta(p)
    p.write_text(">s1|a\nACGT\n>s2|b\nAC\nG*T\n")
    with pytest.raises(InputError, match=r"bad\.fa:5: invalid character '\*' at column 2 \(base 4 of record 's2\|b'\)"):
        read_labelled_fasta(p)
    p.write_text(">s1|a\nACGT\n>s2|b\n")
    with pytest.raises(InputError, match=r"bad\.fa:3: record 's2\|b' has no sequence"):
        read_labelled_fasta(p)
    p.write_text("\n\n")
    with pytest.raises(InputError, match="no FASTA records"):
        read_labelled_fasta(p)
    p.write_text("")
    with pytest.raises(InputError, match="empty file"):
        read_labelled_fasta(p)


def test_read_labelled_rejects_unknown_inputs(tmp_path):
    (tmp_path / "x.bed").write_text("chr1\t0\t10\n")
    with pytest.raises(InputError, match="unknown extension '.bed'"):
        read_labelled(tmp_path / "x.bed")
    with pytest.raises(InputError, match="missing.csv: no such file"):
        read_labelled(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="not a file, folder or Genomic Benchmarks task"):
        read_labelled("human_nontata")


# ---------------------------------------------------------------------------------------------------
# Collate
# ---------------------------------------------------------------------------------------------------


def test_collate_right_pads_to_batch_max():
    batch = [("ACGTA", 1), ("CG", 0), (encode_dna("TTN"), 1)]
    out = collate_labelled(batch)
    assert out["input_ids"].shape == (3, 5) and out["input_ids"].dtype == torch.long
    assert out["attention_mask"].dtype == torch.bool
    assert out["attention_mask"].sum(1).tolist() == [5, 2, 3]
    assert out["input_ids"][1].tolist() == [*encode_dna("CG").tolist(), PAD_ID, PAD_ID, PAD_ID]
    assert out["labels"].tolist() == [1, 0, 1] and out["n_truncated"] == 0


def test_collate_never_truncates_silently():
    batch = [("ACGTACGT", 0), ("ACG", 1), ("ACGTAC", 0)]
    with pytest.raises(InputError, match=r"2 sequence\(s\) in the batch exceed max_length=4 \(longest 8\)"):
        collate_labelled(batch, max_length=4)
    out = collate_labelled(batch, max_length=4, truncate=True)
    assert out["n_truncated"] == 2 and out["input_ids"].shape == (3, 4)
    assert out["input_ids"][0].tolist() == encode_dna("ACGT").tolist()


def test_container_rejects_out_of_range_labels():
    with pytest.raises(ValueError):
        LabelledSequences(["ACGT"], np.array([2]), ["a", "b"], "t")


