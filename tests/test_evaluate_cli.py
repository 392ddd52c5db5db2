"""Tests for `dna-mdlm evaluate-samples` and the judge it builds from --model (dna_mdlm.evaluation.judge):
the verb end to end in-process on real chr20 sequence with an MDLM and a Markov judge, the judge's
numbers against the models' own scorers, and bad inputs (one line on stderr, exit 2, no report)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import CTCF_JASPAR, SLICE, write_fasta

from dna_mdlm.baselines.markov import MarkovLM
from dna_mdlm.cli import main
from dna_mdlm.errors import InputError
from dna_mdlm.evaluation.judge import load_judge
from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM
from dna_mdlm.seeding import derived_seed
from dna_mdlm.tokenizer import encode_dna


@pytest.fixture(scope="module")
def files(chr20, tmp_path_factory):
    """Samples (real windows from the training half, one of them planted verbatim), a held-out
    reference, the training half, and two judge models: a tiny MDLM and a Markov LM fitted on it."""
    d = tmp_path_factory.mktemp("evaluate")
    train = chr20[:300_000]
    samples = [train[20_000 + i * 2000: 20_000 + i * 2000 + 200] for i in range(12)]
    samples = [s.replace("N", "A") for s in samples]
    mdlm_dir = d / "mdlm"
    torch.manual_seed(0)
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1))
    model.config.train_window = 64
    model.save_pretrained(mdlm_dir)
    markov_dir = d / "markov"
    MarkovLM.fit([train[:100_000]], k=3).save_pretrained(markov_dir)
    return {
        "samples": write_fasta(d / "samples.fa", samples),
        "reference": write_fasta(d / "heldout.fa", [chr20[600_000:900_000]]),
        "train": write_fasta(d / "train.fa", [train]),
        "motifs": d / "ctcf.jaspar",
        "mdlm": mdlm_dir,
        "markov": markov_dir,
        "sample_seqs": samples,
        "dir": d,
    }


def test_evaluate_samples_verb_end_to_end_with_markov_judge(files, tmp_path, capsys):
    files["motifs"].write_text(CTCF_JASPAR)
    out = tmp_path / "report"
    rc = main(["evaluate-samples", "--samples", str(files["samples"]), "--reference", str(files["reference"]),
               "--train", str(files["train"]), "--model", str(files["markov"]), "--motifs", str(files["motifs"]),
               "--out", str(out), "--seed", "1"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "gc_histogram.png", "kmer_scatter.png", "match_lengths.png", "metrics.json", "motif_scatter.png", "report.html"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 12
    # every sample is a verbatim 200 bp training window: all memorised, the held-out baseline not
    assert metrics["memorisation"]["n_copied"] == {"generated": 12, "real_vs_real": 0}
    assert metrics["memorisation"]["longest_match_bp_per_sample"] == [200] * 12
    judge = metrics["judge_bits_per_base"]
    expected = MarkovLM.from_pretrained(files["markov"]).bits_per_base(files["sample_seqs"])
    assert judge["generated"] == pytest.approx(expected, rel=1e-9)
    assert 1.5 < judge["reference"] < 2.1
    assert "memorised samples (fraction)" in err and "judge (Markov LM (order 3, interpolated Witten-Bell), exact)" in err
    assert "report.html" in err


def test_evaluate_samples_verb_with_mdlm_judge_and_region(files, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["evaluate-samples", "--samples", str(files["samples"]), "--reference", str(SLICE),
               "--region", "20:40000001-41000000:600001-1000000", "--model", str(files["mdlm"]),
               "--judge-samples", "2", "--no-motifs", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    j = metrics["judge_bits_per_base"]
    # an untrained network spreads its prediction over the 15 non-mask tokens: the NELBO bound of any
    # DNA sits near log2(15) = 3.91 bits/base, the same for samples and real sequence
    for key in ("generated", "reference", "real_vs_real"):
        assert 3.5 < j[key] < 4.3
    assert j["ratio"] == pytest.approx(1.0, abs=0.05)
    assert metrics["inputs"]["region"] == "20:40000001-41000000:600001-1000000"
    assert "NELBO upper bound" in err and "<= " in err
    assert {p.name for p in out.iterdir()} == {"gc_histogram.png", "kmer_scatter.png", "metrics.json", "report.html"}


def test_mdlm_judge_matches_the_nelbo_of_its_windows(files):
    """The judge cuts 200 bp into 64+64+64+8 windows and pools nats over scored bases; redo it by hand."""
    from dna_mdlm.diffusion.mdlm import MDLM

    judge = load_judge(files["mdlm"], num_samples=3, seed=5)
    seqs = files["sample_seqs"][:3]
    got = judge(seqs)
    again = judge(seqs)
    assert got["bits_per_base"] == again["bits_per_base"]  # re-seeded per call: same noise
    assert got["upper_bound"] is True and got["bases_scored"] == 600 and got["stderr_bits_per_base"] > 0
    mdlm = MDLM(judge.model, "loglinear")
    total = 0.0
    for n, s in enumerate(seqs):  # each window alone, with its own seed (sequence index, start): as in a batch
        for start in range(0, 200, 64):
            x = torch.from_numpy(encode_dna(s)[start: start + 64])[None]
            total += float(mdlm.nats_per_window(x, score_mask=torch.ones_like(x, dtype=torch.bool), num_samples=3,
                                                 seeds=[derived_seed(5, n, start)]).mean(1).sum())
    assert got["bits_per_base"] == pytest.approx(total / 600 / math.log(2), rel=1e-9)


@pytest.mark.parametrize("case", ["empty_samples", "missing_model", "unreadable_motifs", "classifier_model",
                                  "out_is_file", "bad_copy_fraction"])
def test_bad_inputs_exit_2_with_one_line_and_no_report(files, tmp_path, capsys, case):
    args = {"--samples": str(files["samples"]), "--reference": str(files["reference"]), "--out": str(tmp_path / "report")}
    expect = None
    if case == "empty_samples":
        empty = tmp_path / "empty.fa"
        empty.write_text("")
        args["--samples"], expect = str(empty), "empty file"
    elif case == "missing_model":
        args["--model"], expect = str(tmp_path / "nope"), "no such directory"
    elif case == "unreadable_motifs":
        bad = tmp_path / "motifs.bin"
        bad.write_bytes(b"\xff\xfe\x00garbage")
        args["--motifs"], expect = str(bad), "motif file"
    elif case == "classifier_model":
        from dna_mdlm.models import CaduceusForSequenceClassification

        clf = tmp_path / "clf"
        CaduceusForSequenceClassification(CaduceusConfig(d_model=8, n_layer=1, num_labels=2)).save_pretrained(clf)
        args["--model"], expect = str(clf), "not a language model"
    elif case == "out_is_file":
        args["--out"] = str(tmp_path / "taken")
        Path(args["--out"]).write_text("x")
        expect = "is a file (expected a directory name)"  # the shared output rule
    elif case == "bad_copy_fraction":
        args["--copy-fraction"], expect = "1.5", "--copy-fraction"
    argv = ["evaluate-samples"] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dna-mdlm evaluate-samples: error:") and expect in err, err
    if case != "out_is_file":
        assert not (tmp_path / "report").exists()
    assert not any(p.name.startswith(".report") for p in tmp_path.iterdir())


def test_judge_rejects_a_window_that_is_not_positive(files):
    with pytest.raises(InputError, match="window"):
        load_judge(files["mdlm"], window=0)


def test_ar_judge_is_the_exact_nll_of_each_window_from_its_own_first_base(files, tmp_path):
    """AR: window 64 over 100 bp = 64 + 36; the judge equals the per-window log-softmax sum."""
    ar_dir = tmp_path / "ar"
    torch.manual_seed(1)
    ar = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1, objective="ar", bidirectional=False, rcps=False))
    ar.config.train_window = 64
    ar.save_pretrained(ar_dir)
    judge = load_judge(ar_dir)
    seq = files["sample_seqs"][0][:100]
    got = judge([seq])
    assert got["upper_bound"] is False and got["bases_scored"] == 100 and "stderr_bits_per_base" not in got
    total = 0.0
    with torch.no_grad():
        for piece in (seq[:64], seq[64:]):
            ids = torch.from_numpy(encode_dna(piece))[None]
            inputs = torch.cat([torch.full_like(ids[:, :1], 2), ids[:, :-1]], dim=1)  # [BOS]=2, then shifted bases
            logp = torch.log_softmax(judge.model(inputs).logits.double(), -1)
            total -= float(logp[0, torch.arange(ids.shape[1]), ids[0]].sum())
    assert got["bits_per_base"] == pytest.approx(total / 100 / math.log(2), rel=1e-6)
    # windows are scored independently: the 100 bp total is the sum of its two windows scored alone
    parts = judge([seq[:64]])["bits_per_base"] * 64 + judge([seq[64:]])["bits_per_base"] * 36
    assert got["bits_per_base"] * 100 == pytest.approx(parts, rel=1e-9)
