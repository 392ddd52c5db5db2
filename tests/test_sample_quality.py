"""Tests for the sample-quality metrics: known answers on hand-made and real (chr20 slice) sequence,
memorisation detection, dinucleotide shuffle, motif scanning, reference drawing and input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CTCF_JASPAR

from dna_mdlm.cli import main
from dna_mdlm.errors import InputError
from dna_mdlm.evaluation.memorisation import memorisation
from dna_mdlm.evaluation.motifs import count_occurrences, load_motifs, motif_name
from dna_mdlm.evaluation.sample_quality import (
    TrainIndex,
    cpg_observed_expected,
    dinucleotide_shuffle,
    draw_reference_sets,
    dust_scores,
    evaluate_samples,
    gc_fraction,
    homopolymer_runs,
    js_distance,
    kmer_counts,
    low_complexity_fraction,
    mean_pairwise_identity,
    validate_sequences,
)
from dna_mdlm.io.fasta import read_sequences
from dna_mdlm.io.regions import parse_region
from dna_mdlm.tokenizer import rc_string


@pytest.fixture(scope="module")
def real_sets(chr20):
    """Held-out half of the slice -> reference sets A and B (60 x 300 bp); samples are drawn by tests."""
    a, b = draw_reference_sets([chr20[500_000:]], [300] * 60, seed=1)
    return a, b


def test_kmer_counts_and_js_distance_known_answers():
    counts = kmer_counts(["ACGTN", "AC"], 2)
    assert counts[0 * 4 + 1] == 2 and counts[1 * 4 + 2] == 1 and counts[2 * 4 + 3] == 1 and counts.sum() == 4
    p = kmer_counts(["ACGTACGGTT"], 3)
    assert js_distance(p, p) == 0.0
    assert js_distance(kmer_counts(["AAAA"], 1), kmer_counts(["CCCC"], 1)) == pytest.approx(1.0)


def test_identical_sets_give_zero_js_and_shuffled_copy_keeps_1mers(real_sets):
    a, b = real_sets
    rng = np.random.default_rng(0)
    shuffled = ["".join(rng.permutation(list(s))) for s in a]
    np.testing.assert_array_equal(kmer_counts(shuffled, 1), kmer_counts(a, 1))
    result = evaluate_samples(a, a, b)
    for k in range(1, 7):
        assert result["kmer_spectrum"][str(k)]["js_distance"]["generated"] == 0.0
        assert result["kmer_spectrum"][str(k)]["pearson_r"]["generated"] == pytest.approx(1.0)
    assert result["gc_content"]["ks_statistic"]["generated"] == 0.0
    # a mononucleotide shuffle keeps 1-mers exactly but is visibly off at k=6
    shuffled_result = evaluate_samples(shuffled, a, b)
    assert shuffled_result["kmer_spectrum"]["1"]["js_distance"]["generated"] == 0.0
    assert shuffled_result["kmer_spectrum"]["6"]["js_distance"]["generated"] > 0


def test_dinucleotide_shuffle_keeps_2mer_counts_exactly(chr20):
    rng = np.random.default_rng(42)
    for seq in (chr20[:2000], "ACGTNNACGTTTGCA" * 20, "AAAAACCCC"):
        shuffled = dinucleotide_shuffle(seq, rng)
        assert len(shuffled) == len(seq) and shuffled[0] == seq[0] and shuffled[-1] == seq[-1]
        pairs = lambda s: sorted(s[i: i + 2] for i in range(len(s) - 1))  # noqa: E731
        assert pairs(shuffled) == pairs(seq)
    long = chr20[:2000]
    assert dinucleotide_shuffle(long, np.random.default_rng(1)) != long
    assert dinucleotide_shuffle(long, np.random.default_rng(1)) == dinucleotide_shuffle(long, np.random.default_rng(1))


def test_composition_known_answers():
    assert gc_fraction("GGCCAATT") == 0.5
    assert gc_fraction("GCGNNN") == 1.0
    # CG count 2, C 2, G 2, N 8 bases -> 2 * 8 / (2 * 2) = 4
    assert cpg_observed_expected(["CGCGATAT"]) == pytest.approx(4.0)
    assert sorted(homopolymer_runs(["AAACGGNNT"]).tolist()) == [1, 1, 2, 3]
    assert dust_scores("A" * 64)[0] == pytest.approx(31.0)
    assert low_complexity_fraction(["A" * 640]) == 1.0
    assert low_complexity_fraction(["ACGTTGCAAGTCCATGGTACAGTC" * 2 + "ACGATCGTAGCTAGCTAGG"]) < 1.0


def test_diversity_identity():
    rng = np.random.default_rng(0)
    assert mean_pairwise_identity(["ACGT" * 10] * 5, rng) == 1.0
    random_seqs = ["".join(rng.choice(list("ACGT"), 400)) for _ in range(20)]
    assert 0.2 < mean_pairwise_identity(random_seqs, rng) < 0.3


def test_planted_training_window_is_detected_as_memorised_with_full_length(chr20):
    train = chr20[:300_000]
    index = TrainIndex([train], k=24)
    rng = np.random.default_rng(3)
    planted = train[123_456: 123_456 + 400]
    planted_rc = rc_string(train[200_000: 200_250])
    novel = chr20[700_000: 700_400]  # held-out real DNA: chance matches only
    chimera = train[10_000:10_150] + "".join(rng.choice(list("ACGT"), 50)) + train[50_000:50_060]
    mem = memorisation([planted, planted_rc, novel, chimera], index, copy_min_bp=100, copy_fraction=0.5)
    longest = mem["longest_match_bp"]
    assert longest[0] == 400 and longest[1] == 250
    assert longest[2] < 100
    assert 150 <= longest[3] < 160  # the 150 bp piece (+ a few chance bases), not 150 + 60
    assert mem["n_copied"] == 3 and mem["max_match_bp"] == 400


def test_draw_reference_sets_is_disjoint_deterministic_and_n_free(chr20):
    ref = [chr20[:50_000] + "N" * 5000 + chr20[50_000:100_000]]
    a, b = draw_reference_sets(ref, [500, 300] * 20, seed=7)
    a2, _ = draw_reference_sets(ref, [500, 300] * 20, seed=7)
    assert a == a2 and [len(s) for s in a] == [len(s) for s in b] == [500, 300] * 20
    assert all("N" not in s for s in a + b)
    assert not set(a) & set(b)
    starts = sorted((ref[0].index(s), len(s)) for s in a + b)
    assert all(s1 + l1 <= s2 for (s1, l1), (s2, _) in zip(starts, starts[1:]))
    with pytest.raises(InputError, match="too small"):
        draw_reference_sets([chr20[:5_000]], [1_000] * 5, seed=0)


def test_motifs_parse_jaspar_and_meme_and_count_both_strands(tmp_path):
    jaspar = tmp_path / "ctcf.jaspar"
    jaspar.write_text(CTCF_JASPAR)
    (ctcf,) = load_motifs(jaspar)
    assert motif_name(ctcf) == "MA0139.1 CTCF" and ctcf.length == 19
    consensus = str(ctcf.consensus)
    assert consensus == "TGGCCACCAGGGGGCGCTA"
    # the same matrix as MEME minimal format (frequencies)
    counts = np.array([[float(x) for x in line.split("[")[1].split("]")[0].split()] for line in CTCF_JASPAR.splitlines()[1:]])
    freqs = counts / counts.sum(axis=0)
    meme = tmp_path / "ctcf.meme"
    rows = "\n".join(" ".join(f"{f:.6f}" for f in col) for col in freqs.T)
    meme.write_text("MEME version 4\n\nALPHABET= ACGT\n\nstrands: + -\n\nBackground letter frequencies\n"
                    "A 0.25 C 0.25 G 0.25 T 0.25\n\nMOTIF MA0139.1 CTCF\n"
                    f"letter-probability matrix: alength= 4 w= 19 nsites= 913 E= 0\n{rows}\n")
    (ctcf_meme,) = load_motifs(meme)
    assert str(ctcf_meme.consensus) == consensus
    seqs = ["ACGT" * 10 + consensus + "ACGT" * 5, "A" * 60, "GG" + rc_string(consensus) + "TTT"]
    hits = count_occurrences(seqs, [ctcf, ctcf_meme])
    assert hits[:, 0].tolist() == [1, 0, 1] and hits[:, 1].tolist() == [1, 0, 1]


def test_motif_correlation_on_real_sets(tmp_path, real_sets):
    jaspar = tmp_path / "ctcf.jaspar"
    jaspar.write_text(CTCF_JASPAR)
    a, b = real_sets
    result = evaluate_samples(a, a, b, motifs=load_motifs(jaspar))
    per_kb = result["motifs"]["occurrences_per_kb"]
    assert per_kb["generated"] == per_kb["reference"]
    assert result["motifs"]["correlation_with_reference"]["generated"] is None  # one motif: undefined


def test_bad_inputs_give_one_line_input_errors(tmp_path):
    with pytest.raises(InputError, match="invalid character 'X'"):
        validate_sequences(["ACGT", "ACXGT"], "samples")
    with pytest.raises(InputError, match="shorter than the minimum 6"):
        validate_sequences(["ACG"], "samples", min_length=6)
    with pytest.raises(InputError, match="no sequences"):
        validate_sequences([], "samples")
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    with pytest.raises(InputError, match="empty file"):
        read_sequences(empty)
    bad_motif = tmp_path / "m.txt"
    bad_motif.write_text("this is not\na motif file\n")
    with pytest.raises(InputError, match="not a parseable") as err:
        load_motifs(bad_motif)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="cannot read"):
        load_motifs(tmp_path / "missing.jaspar")
    with pytest.raises(InputError, match="--region"):
        parse_region("chr1:20-10")
    with pytest.raises(InputError, match="--region"):
        parse_region("chr 1")
    assert parse_region("20:40000001-41000000:1,001-2000") == ("20:40000001-41000000", 1000, 2000)


def test_region_read_uses_a_temporary_index_for_read_only_files(tmp_path, chr20):
    fasta = tmp_path / "ro" / "slice.fa"
    fasta.parent.mkdir()
    fasta.write_text(">s\n" + "\n".join(chr20[i: i + 60] for i in range(0, 3000, 60)) + "\n")
    fasta.parent.chmod(0o555)
    try:
        (seq,) = read_sequences(fasta, region="s:101-160")
        assert seq == chr20[100:160]
        assert not (fasta.parent / "slice.fa.fai").exists()
    finally:
        fasta.parent.chmod(0o755)


def _random_seqs(rng, n, length=200):
    return ["".join(rng.choice(list("ACGT"), length)) for _ in range(n)]


def test_all_n_samples_are_left_out_visibly_and_small_reference_sets_are_refused_or_flagged(tmp_path, capsys):
    """An all-N sample has no k-mers: it is left out of every metric with a note (metrics.json, report, stderr),
    the other samples' metrics are those of the clean set; a --reference2 of one sequence is refused in one line;
    a smaller --reference2 that limits the comparison is a warning on stderr and in the report."""
    rng = np.random.default_rng(0)
    samples, ref, ref2 = _random_seqs(rng, 4), _random_seqs(rng, 8), _random_seqs(rng, 6)

    def fa(name, seqs):
        path = tmp_path / name
        path.write_text("".join(f">r{i}\n{s}\n" for i, s in enumerate(seqs)))
        return str(path)

    def run(samples_fa, ref2_fa, out):
        return main(["evaluate-samples", "--samples", samples_fa, "--reference", fa("ref.fa", ref), "--reference2",
                     ref2_fa, "--reference-mode", "set", "--no-motifs", "--out", str(tmp_path / out)])

    assert run(fa("clean.fa", samples), fa("ref2.fa", ref2), "clean") == 0
    capsys.readouterr()
    assert run(fa("withn.fa", samples[:2] + ["N" * 200] + samples[2:]), fa("ref2.fa", ref2), "withn") == 0
    err = capsys.readouterr().err
    assert "warning: --samples: 1 of 5 sequence(s) entirely N" in err
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    withn = json.loads((tmp_path / "withn" / "metrics.json").read_text())
    assert withn["excluded_sequences"]["samples"]["sequences"] == [3]
    assert withn["n_samples"] == clean["n_samples"] == 4
    assert withn["kmer_spectrum"] == clean["kmer_spectrum"] and withn["gc_content"] == clean["gc_content"]
    assert "entirely N" in (tmp_path / "withn" / "report.html").read_text()

    assert run(fa("clean.fa", samples), fa("one.fa", ref2[:1]), "one") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "set B (--reference2): 1 sequence" in err, err
    assert not (tmp_path / "one").exists()

    assert run(fa("clean.fa", samples), fa("three.fa", ref2[:3]), "three") == 0
    err = capsys.readouterr().err
    assert "warning: only 3 of 4 samples compared" in err
    three = json.loads((tmp_path / "three" / "metrics.json").read_text())
    assert three["n_samples"] == 3 and "only 3 of 4" in three["reference"]["warning"]
    assert "only 3 of 4 samples compared" in (tmp_path / "three" / "report.html").read_text()
