"""Tests for dna_mdlm/data/genome.py on real sequence from ../shared/data (skipped with a reason if absent)."""

from __future__ import annotations

import gzip
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHR20, DEMO, ECOLI, GENOMES, SLICE, SLICE_NAME
from torch.utils.data import DataLoader

from dna_mdlm.data.genome import (
    GenomeWindows,
    Interval,
    intersect_intervals,
    parse_region,
    subtract_intervals,
)
from dna_mdlm.errors import InputError
from dna_mdlm.io.fasta import FastaFile
from dna_mdlm.tokenizer import N_ID, decode_dna, encode_dna, rc_ids

pytestmark = pytest.mark.skipif(not SLICE.is_file(), reason=f"shared genome data not found at {GENOMES}")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("DNA_MDLM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def slice_text() -> str:
    lines = SLICE.read_text().splitlines()
    return "".join(lines[1:])


def write_fasta(path: Path, records: dict[str, str], width: int = 60) -> Path:
    with open(path, "w") as handle:
        for name, seq in records.items():
            handle.write(f">{name} real excerpt\n")
            for i in range(0, len(seq), width):
                handle.write(seq[i:i + width] + "\n")
    return path


# --- regions and interval arithmetic -----------------------------------------------------------------------
def test_parse_region_samtools_form_with_commas_and_colon_in_name():
    assert parse_region("chr1:1,001-2,000") == Interval("chr1", 1000, 2000)
    assert parse_region("20:40000001-41000000:101-200") == Interval("20:40000001-41000000", 100, 200)
    assert parse_region("chrX:5-5") == Interval("chrX", 4, 5)


@pytest.mark.parametrize("bad", ["chr1", "chr1:100", "chr1:0-10", "chr1:20-10", ":1-10", "chr1:a-b", "chr1:1-2-3"])
def test_bad_region_string_names_argument_and_form(bad):
    with pytest.raises(InputError, match=r"--val-region.*chr:start-end|--val-region.*1 <= start <= end"):
        parse_region(bad, "--val-region")


def test_subtract_and_intersect_partition_every_base():
    source = [Interval("a", 0, 100), Interval("a", 150, 300), Interval("b", 0, 50)]
    holes = [Interval("a", 90, 160), Interval("a", 200, 210), Interval("b", 0, 50), Interval("c", 0, 5)]
    left = subtract_intervals(source, holes)
    inside = intersect_intervals(source, holes)
    assert left == [Interval("a", 0, 90), Interval("a", 160, 200), Interval("a", 210, 300)]
    assert inside == [Interval("a", 90, 100), Interval("a", 150, 160), Interval("a", 200, 210), Interval("b", 0, 50)]


# --- reading real files ------------------------------------------------------------------------------------
def test_plain_fasta_windows_match_file_text_and_nothing_written_beside_it(slice_text):
    before = sorted(os.listdir(GENOMES))
    genome = GenomeWindows(SLICE, window=1000)
    assert genome.lengths == {SLICE_NAME: 1_000_000}
    for start in (0, 59, 123_456, 999_000):
        ids = genome.read(SLICE_NAME, start, start + 1000)
        assert ids.dtype == np.int64 and decode_dna(ids) == slice_text[start:start + 1000]
    assert sorted(os.listdir(GENOMES)) == before


def test_plain_fasta_without_index_gets_one_in_the_cache(tmp_path, slice_text):
    fasta = write_fasta(tmp_path / "no_index.fa", {"s": slice_text[:5000]})
    genome = GenomeWindows(fasta, window=100)
    assert not (tmp_path / "no_index.fa.fai").exists()
    assert genome.files[0].fai.parent == tmp_path / "cache" / "fasta"
    assert decode_dna(genome.read("s", 4900, 5000)) == slice_text[4900:5000]


def test_plain_gzip_is_decompressed_once_into_the_cache(tmp_path, capsys):
    if not ECOLI.is_file():
        pytest.skip(f"{ECOLI} not found")
    genome = GenomeWindows(ECOLI, window=1024)
    indexed = genome.files[0]
    assert indexed.normalised and indexed.path.parent == tmp_path / "cache" / "fasta" and indexed.fai.is_file()
    made = indexed.path.stat().st_mtime_ns
    with gzip.open(ECOLI, "rt") as handle:
        text = "".join(line.strip() for line in handle if not line.startswith(">"))
    assert genome.lengths == {"K-12-MG1655": len(text)} == {"K-12-MG1655": 4_639_675}
    assert decode_dna(genome.read("K-12-MG1655", 4_638_000, 4_639_675)) == text[4_638_000:]
    again = GenomeWindows(ECOLI, window=1024).files[0]
    assert again.path == indexed.path and again.path.stat().st_mtime_ns == made  # cache reused, no second copy


def test_bgzf_agrees_with_the_plain_slice(tmp_path, slice_text):
    if not CHR20.is_file():
        pytest.skip(f"{CHR20} not found")
    genome = GenomeWindows(CHR20, window=1024)
    assert genome.files[0].normalised and genome.lengths == {"20": 63_025_520}
    for offset in (0, 500_001, 998_976):
        ids = genome.read("20", 40_000_000 + offset, 40_000_000 + offset + 1024)
        assert decode_dna(ids) == slice_text[offset:offset + 1024]
    item = genome.train_dataset(num_samples=4, seed=0, rc_aug=False)[3]
    assert item["input_ids"].shape == (1024,)


def test_bundled_demo_excerpt_is_the_stated_chr20_slice():
    if not CHR20.is_file():
        pytest.skip(f"{CHR20} not found")
    demo = GenomeWindows(DEMO, window=1024)
    chr20 = GenomeWindows(CHR20, window=1024)
    (name, length), = demo.lengths.items()
    assert (name, length) == ("20:32000001-34500000", 2_500_000)
    for offset in (0, 1_234_567, 2_500_000 - 1024):
        assert np.array_equal(demo.read(name, offset, offset + 1024),
                              chr20.read("20", 32_000_000 + offset, 32_000_000 + offset + 1024))
    held_out = GenomeWindows(DEMO, window=1024, val_regions=["20:32000001-34500000:2250001-2500000"])
    assert held_out.val_intervals == [Interval(name, 2_250_000, 2_500_000)]


def test_multi_record_fasta_with_bed_draws_only_inside_bed(tmp_path, slice_text):
    fasta = write_fasta(tmp_path / "multi.fa", {"r1": slice_text[:30_000], "r2": slice_text[500_000:520_000],
                                                "r3": slice_text[900_000:900_500]}, width=70)
    bed = tmp_path / "regions.bed"
    bed.write_text("# comment\ntrack name=x\nr1\t1000\t3000\tpeak\nr1\t2500\t4000\nr2\t100\t400\nr3\t0\t100\n")
    genome = GenomeWindows(fasta, bed=bed, window=256)
    assert genome.train_intervals == [Interval("r1", 1000, 4000), Interval("r2", 100, 400), Interval("r3", 0, 100)]
    data = genome.train_dataset(num_samples=300, seed=5, rc_aug=False)
    texts = {"r1": slice_text[:30_000], "r2": slice_text[500_000:520_000]}
    for g in range(300):
        item = data[g]
        inside = [iv for iv in genome.train_intervals if iv.record == item["record"]
                  and iv.start <= item["start"] and item["end"] <= iv.end]
        assert inside, item
        assert decode_dna(item["input_ids"]) == texts[item["record"]][item["start"]:item["end"]]
    assert {data[g]["record"] for g in range(300)} == {"r1", "r2"}  # r3's interval is shorter than L


# --- splits -------------------------------------------------------------------------------------------------
def test_split_is_an_exhaustive_partition_and_training_windows_never_touch_held_out_bases(tmp_path, slice_text):
    lengths = {"a": 3000, "b": 2500, "c": 1200}
    fasta = write_fasta(tmp_path / "split.fa", {"a": slice_text[:3000], "b": slice_text[10_000:12_500],
                                                "c": slice_text[20_000:21_200]})
    genome = GenomeWindows(fasta, window=100, val_records=["c"], val_regions=["a:1,001-1,500", "b:2401-2500"],
                           test_regions=["a:2001-2050", "b:1-150"])
    label = {name: np.zeros(n, dtype=np.int64) for name, n in lengths.items()}
    for split_id, split in enumerate(("train", "val", "test"), start=1):
        for iv in genome.intervals(split):
            assert np.all(label[iv.record][iv.start:iv.end] == 0), "a base is in two splits"
            label[iv.record][iv.start:iv.end] = split_id
    assert all(np.all(lab > 0) for lab in label.values()), "a base is in no split"
    # Every possible training window start (the sampler's support) lies on training bases only.
    data = genome.train_dataset(num_samples=1, seed=0)
    for iv in data.intervals:
        for start in range(iv.start, iv.end - 100 + 1):
            assert np.all(label[iv.record][start:start + 100] == 1)
    for g in range(2000):
        item = data[g]
        assert np.all(label[item["record"]][item["start"]:item["end"]] == 1)
    val_tiles = genome.eval_dataset("val")
    scored = Counter()
    for i in range(len(val_tiles)):
        item = val_tiles[i]
        for pos in np.nonzero(item["loss_mask"].numpy())[0]:
            scored[(item["record"], item["start"] + int(pos))] += 1
    assert set(scored.values()) == {1}  # right-aligned last tiles never score a base twice
    expected = {(iv.record, p) for iv in genome.val_intervals if len(iv) >= 100 for p in range(iv.start, iv.end)}
    assert set(scored) == expected
    assert val_tiles.dropped_intervals == 0 and len(genome.eval_dataset("test").tiles) == 2  # a:2001-2050 < L


def test_tiling_right_aligns_the_last_partial_tile_and_caps_evenly(slice_text):
    genome = GenomeWindows(SLICE, window=1000, val_regions=[f"{SLICE_NAME}:1-10500"])
    tiles = genome.eval_dataset("val")
    assert [(s, f) for _, s, f in tiles.tiles] == [(i * 1000, 0) for i in range(10)] + [(9500, 500)]
    last = tiles[10]
    assert last["start"] == 9500 and last["loss_mask"].sum() == 500 and not last["loss_mask"][:500].any()
    capped = genome.eval_dataset("val", max_windows=3)
    assert [s for _, s, _ in capped.tiles] == [0, 5000, 9500] and capped.total_tiles == 11


# --- determinism and workers ------------------------------------------------------------------------------
def _items(loader):
    return [(r, int(s), st) for batch in loader for r, s, st in zip(batch["record"], batch["start"], batch["strand"])]


def test_eval_tiling_same_items_with_two_workers_as_with_none():
    genome = GenomeWindows(SLICE, window=512, val_regions=[f"{SLICE_NAME}:900,001-950,000"])
    tiles = genome.eval_dataset("val")
    serial = _items(DataLoader(tiles, batch_size=8, num_workers=0))
    parallel = _items(DataLoader(tiles, batch_size=8, num_workers=2))
    assert len(serial) == len(tiles) == 98 and Counter(serial) == Counter(parallel)
    assert len(set(serial)) == len(serial)  # no duplicated window across workers


def test_random_stream_reproducible_under_seed_and_independent_of_workers():
    genome = GenomeWindows(SLICE, window=512)
    stream = genome.train_dataset(num_samples=64, seed=11)
    first = _items(DataLoader(stream, batch_size=8, num_workers=0))
    again = _items(DataLoader(genome.train_dataset(num_samples=64, seed=11), batch_size=8, num_workers=2))
    other = _items(DataLoader(genome.train_dataset(num_samples=64, seed=12), batch_size=8, num_workers=0))
    assert first == again and first != other
    item = stream[5]
    assert torch.equal(item["input_ids"], stream[5]["input_ids"])  # pure function of (seed, index)


# --- N policy and RC augmentation -------------------------------------------------------------------------
def test_n_bases_kept_as_input_never_scored_and_n_heavy_windows_skipped(tmp_path, slice_text):
    seq = slice_text[:4000] + "N" * 3000 + slice_text[4000:8000]
    genome = GenomeWindows(write_fasta(tmp_path / "n.fa", {"withN": seq}), window=1000, max_n_frac=0.5)
    tiles = genome.eval_dataset("train")
    # tiles start 0..10000 step 1000: tiles 4, 5, 6 are all N, tiles 3 and 7 are N-free; nothing partial.
    assert tiles.skipped_n_windows == 3 and [s for _, s, _ in tiles.tiles] == [0, 1000, 2000, 3000, 7000, 8000, 9000, 10000]
    mixed = GenomeWindows(write_fasta(tmp_path / "mixed.fa", {"m": slice_text[:700] + "N" * 300 + slice_text[700:3000]}),
                          window=1000, max_n_frac=0.5)
    item = mixed.read("m", 0, 1000)
    assert np.count_nonzero(item == N_ID) == 300
    data = mixed.train_dataset(num_samples=1, seed=0, rc_aug=False)
    for g in range(300):
        it = data[g]
        is_n = it["input_ids"] == N_ID
        assert is_n.sum() <= 500 and not it["loss_mask"][is_n].any() and it["loss_mask"][~is_n].all()
    strict = GenomeWindows(mixed.files[0].source, window=1000, max_n_frac=0.0).train_dataset(1, seed=0)
    assert all((strict[g]["input_ids"] != N_ID).all() for g in range(100))


def test_rc_augmentation_is_the_reverse_complement_of_the_forward_window(tmp_path, slice_text):
    seq = slice_text[:1500] + "NNNNN" + slice_text[1500:3000]
    genome = GenomeWindows(write_fasta(tmp_path / "rc.fa", {"r": seq}), window=200)
    data = genome.train_dataset(num_samples=1, seed=3, rc_aug=True)
    strands = Counter()
    for g in range(400):
        item = data[g]
        strands[item["strand"]] += 1
        forward = torch.from_numpy(encode_dna(seq[item["start"]:item["end"]]))
        if item["strand"] == "-":
            assert torch.equal(item["input_ids"], rc_ids(forward))
            assert torch.equal(item["loss_mask"], (forward != N_ID).flip(0))
        else:
            assert torch.equal(item["input_ids"], forward)
    assert 150 < strands["-"] < 250


# --- bad input --------------------------------------------------------------------------------------------
def test_missing_empty_and_headerless_files(tmp_path):
    with pytest.raises(InputError, match="nope.fa: no such file"):
        GenomeWindows(tmp_path / "nope.fa")
    (tmp_path / "empty.fa").write_text("")
    with pytest.raises(InputError, match="empty"):
        GenomeWindows(tmp_path / "empty.fa")
    (tmp_path / "noheader.fa").write_text("\n\nACGTACGT\n")
    with pytest.raises(InputError, match=r"noheader.fa:3: not FASTA.*'>'.*'ACGTACGT'"):
        GenomeWindows(tmp_path / "noheader.fa")
    with gzip.open(tmp_path / "noheader.fa.gz", "wt") as handle:
        handle.write("ACGT\n")
    with pytest.raises(InputError, match="not FASTA"):
        FastaFile(tmp_path / "noheader.fa.gz")


def test_invalid_character_names_file_record_and_line(tmp_path, slice_text):
    body = list(slice_text[:6000])
    body[4321] = "X"  # record 2, base 4322 -> line 4 + 4321 // 60 = 76 (record 2 header is line 3)
    path = write_fasta(tmp_path / "bad.fa", {"first": slice_text[:60], "second": "".join(body)})
    genome = GenomeWindows(path, window=100)
    with pytest.raises(InputError, match=r"bad.fa:76: invalid character 'X' at column 2 \(base 4322 of record 'second'\)"):
        genome.read("second", 4300, 4400)
    assert len(genome.read("second", 0, 100)) == 100  # lazily: other windows still read
    with pytest.raises(InputError, match=r"bad.fa:76"):
        genome.eval_dataset("train")


def test_window_longer_than_every_record(tmp_path, slice_text):
    path = write_fasta(tmp_path / "short.fa", {"a": slice_text[:500], "b": slice_text[500:800]})
    with pytest.raises(InputError, match="longer than every record.*500"):
        GenomeWindows(path, window=501)


def test_region_errors_unknown_record_and_past_the_end():
    with pytest.raises(InputError, match=r"--val-region chrZ:1-10: unknown record 'chrZ'"):
        GenomeWindows(SLICE, window=100, val_regions=["chrZ:1-10"])
    with pytest.raises(InputError, match="--test-region.*past the end.*never clipped"):
        GenomeWindows(SLICE, window=100, test_regions=[f"{SLICE_NAME}:1-1000001"])
    with pytest.raises(InputError, match="--val-records chrX: unknown record 'chrX'"):
        GenomeWindows(SLICE, window=100, val_records=["chrX"])
    with pytest.raises(InputError, match="--val-region 20-40000001: neither a record of the FASTA .* nor a region"):
        GenomeWindows(SLICE, window=100, val_regions=["20-40000001"])


def test_bed_errors_name_the_line(tmp_path):
    bed = tmp_path / "bad.bed"
    bed.write_text(f"{SLICE_NAME}\t0\t100\n{SLICE_NAME}\t999900\t1000100\n")
    with pytest.raises(InputError, match=r"bad.bed:2: .*past the end of record"):
        GenomeWindows(SLICE, bed=bed, window=100)
    bed.write_text("chr1\t0\t100\n")
    with pytest.raises(InputError, match=r"bad.bed:1: unknown record 'chr1'"):
        GenomeWindows(SLICE, bed=bed, window=100)
    bed.write_text(f"{SLICE_NAME}\t100\t50\n")
    with pytest.raises(InputError, match=r"bad.bed:1: expected 0 <= start < end"):
        GenomeWindows(SLICE, bed=bed, window=100)


def test_split_leaving_no_training_window_and_overlapping_holdouts():
    with pytest.raises(InputError, match="leaves no training window"):
        GenomeWindows(SLICE, window=1000, val_records=[SLICE_NAME]).require_training_window()
    with pytest.raises(InputError, match="leaves no training window"):
        GenomeWindows(SLICE, window=600_000, val_regions=[f"{SLICE_NAME}:400,001-500,000"]).require_training_window()
    with pytest.raises(InputError, match="val and test hold-outs overlap"):
        GenomeWindows(SLICE, window=100, val_regions=[f"{SLICE_NAME}:1-200"], test_regions=[f"{SLICE_NAME}:150-300"])


def test_duplicate_record_names_across_files(tmp_path, slice_text):
    a = write_fasta(tmp_path / "a.fa", {"same": slice_text[:500]})
    b = write_fasta(tmp_path / "b.fa", {"same": slice_text[500:1000]})
    with pytest.raises(InputError, match=r"record 'same' is in both .*a.fa:1 and .*b.fa:1"):
        GenomeWindows([a, b], window=100)
