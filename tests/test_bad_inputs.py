"""Every verb against a catalogue of bad and odd inputs, the way users hit them.

Bad inputs: exit code 2, exactly one line on stderr naming the file / line / flag and what was expected, and no
output left behind. Odd but valid inputs (byte-order mark, CRLF, lower case, uneven line widths, gzip, BGZF, a
space after '>', blank lines): the same numbers as a clean copy of the input.
"""

from __future__ import annotations

import bz2
import gzip
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio import bgzf

from dna_mdlm.baselines.markov import MarkovLM
from dna_mdlm.cli import main
from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM, CaduceusForSequenceClassification

RNG = np.random.default_rng(7)


def dna(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


SEQS = {f"r{i}": dna(90 + 17 * i) for i in range(6)}


def fasta_text(records: dict[str, str], width: int = 60, newline: str = "\n", header=lambda n: f">{n}") -> str:
    out = []
    for name, seq in records.items():
        out.append(header(name))
        out.extend(seq[i:i + width] for i in range(0, len(seq), width))
    return newline.join(out) + newline


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("kit")
    torch.manual_seed(0)
    mdlm = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1, train_window=32))
    mdlm.save_pretrained(d / "mdlm")
    ar = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1, objective="ar", bidirectional=False, rcps=False,
                                            train_window=32))
    ar.save_pretrained(d / "ar")
    MarkovLM.fit([dna(5000)], k=3).save_pretrained(d / "markov")
    clf = CaduceusForSequenceClassification(CaduceusConfig(d_model=8, n_layer=1, num_labels=2,
                                                           id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}))
    clf.config.architectures = ["CaduceusForSequenceClassification"]
    clf.save_pretrained(d / "clf")
    with torch.no_grad():
        mdlm.caduceus.backbone.layers[0].mixer.submodule.mamba_fwd.D[3] = float("nan")
    mdlm.save_pretrained(d / "nan")
    (d / "good.fa").write_text(fasta_text(SEQS))
    (d / "ref.fa").write_text(fasta_text({"chrR": dna(30_000)}))
    rows = [f"{dna(60 + i)},{i % 2}" for i in range(20)]
    (d / "train.csv").write_text("seq,label\n" + "\n".join(rows) + "\n")
    return d


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def assert_rejected(argv, capsys, workdir: Path, *expected: str):
    before = sorted(p.name for p in workdir.iterdir())
    rc, err = run(argv, capsys)
    verb = argv[0]
    assert rc == 2, (argv, err)
    assert len(err) == 1, err
    assert err[0].startswith(f"dna-mdlm {verb}: error:"), err
    for word in expected:
        assert word in err[0], (word, err[0])
    assert sorted(p.name for p in workdir.iterdir()) == before, "a rejected input left output behind"


# --------------------------------------------------------------------------------------------------------------
# Bad FASTA files, in every verb that reads one
# --------------------------------------------------------------------------------------------------------------
BAD_FASTA = {
    "missing": (None, ["no such file"]),
    "empty": (b"", ["empty file"]),
    "text_before_header": (b"ACGTACGT\n>r\nACGT\n", [":1:", "before the first '>'"]),
    "duplicate_names_space_after_gt": (b"> seq 0\nACGTACGTAC\n> seq 1\nACGTACGTAC\n", ["lines 1 and 3", "'seq'"]),
    "nameless_header": (b">\nACGTACGTAC\n", [":1:", "no name"]),
    "empty_record": (b">a\nACGTACGTAC\n>b\n>c\nACGTACGTAC\n", [":3:", "'b' has no sequence"]),
    "truncated_gzip": ("truncated", ["truncated or corrupt gzip"]),
    # records longer than any test window, so the character check is what fails
    "invalid_character": (b">a\n" + b"ACGT" * 50 + b"\n>b\nACGTAC\nGTA*GT" + b"ACGT" * 50 + b"\n",
                          [":5:", "'*'", "column 4", "record 'b'"]),
    "iupac_without_unknown_n": (b">a\n" + b"ACGT" * 20 + b"R" + b"ACGT" * 30 + b"\n", [":2:", "'R'", "column 81",
                                                                                    "--unknown N"]),
    "bzip2": ("bzip2", ["bzip2-compressed", "not supported"]),
    "binary": (b">a\nAC\x00GT\n", ["binary data"]),
    "a_directory": ("dir", ["not a file"]),
}


def _bad_fasta(tmp: Path, case: str) -> Path:
    content, _ = BAD_FASTA[case]
    path = tmp / "in.fa"
    if content is None:
        return tmp / "nope.fa"
    if content == "truncated":
        raw = gzip.compress(fasta_text({"a": dna(20_000)}).encode())
        path = tmp / "in.fa.gz"
        path.write_bytes(raw[: len(raw) // 2])
    elif content == "bzip2":
        path = tmp / "in.fa.bz2"
        path.write_bytes(bz2.compress(b">a\nACGT\n"))
    elif content == "dir":
        path = tmp / "in_dir.fa"
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


def _fasta_verbs(kit: Path, fa: Path, out: Path) -> dict[str, list[str]]:
    return {
        "likelihood": ["likelihood", "--model", str(kit / "markov"), "--fasta", str(fa), "--out", str(out / "l.json")],
        "embed": ["embed", "--model", str(kit / "mdlm"), "--fasta", str(fa), "--out", str(out / "e.npz")],
        "predict": ["predict", "--model", str(kit / "clf"), "--fasta", str(fa), "--out", str(out / "p.tsv")],
        "evaluate-samples": ["evaluate-samples", "--samples", str(fa), "--reference", str(kit / "ref.fa"),
                             "--out", str(out / "rep")],
        "pretrain": ["pretrain", "--fasta", str(fa), "--config", "tiny", "--out", str(out / "run"),
                     "--set", "trainer.progress_bar=false"],
    }


@pytest.mark.parametrize("verb", ["likelihood", "embed", "predict", "evaluate-samples", "pretrain"])
@pytest.mark.parametrize("case", list(BAD_FASTA))
def test_bad_fasta_in_every_verb(kit, tmp_path, capsys, verb, case):
    fa = _bad_fasta(tmp_path, case)
    flag = "--samples" if verb == "evaluate-samples" else "--fasta"
    expected = BAD_FASTA[case][1] + ([fa.name] if case != "a_directory" else [])
    if case not in ("missing", "a_directory", "empty"):
        expected = expected + [flag]
    assert_rejected(_fasta_verbs(kit, fa, tmp_path)[verb], capsys, tmp_path, *expected)


# --------------------------------------------------------------------------------------------------------------
# Regions, BED, tables, models, flags
# --------------------------------------------------------------------------------------------------------------
def _cases(kit: Path, t: Path) -> dict:
    good, ref = str(kit / "good.fa"), str(kit / "ref.fa")
    lik = ["likelihood", "--model", str(kit / "markov"), "--fasta", good, "--out", str(t / "l.json")]
    pre = ["pretrain", "--fasta", ref, "--config", "tiny", "--out", str(t / "run"), "--set", "trainer.progress_bar=false"]
    smp = ["sample", "--model", str(kit / "mdlm"), "--num-samples", "2", "--out", str(t / "s.fa")]
    ev = ["evaluate-samples", "--samples", good, "--reference", ref, "--out", str(t / "rep")]
    ft = ["finetune", "--model", str(kit / "mdlm"), "--out", str(t / "ft"), "--folds", "2", "--epochs", "1"]
    ftk = ft + ["--train", str(kit / "train.csv")]
    dst = ["distill", "--teacher", str(kit / "mdlm"), "--out", str(t / "sdtt"), "--fasta", ref, "--config", "tiny"]
    (t / "past_end.bed").write_text("r0\t0\t50\nr0\t10\t500\n")
    (t / "words.bed").write_text("r0\tone\tten\n")
    (t / "noseq.csv").write_text("sequence_x,label\nACGT,1\n")
    (t / "emptylabel.csv").write_text("seq,label\nACGTACGT,1\nACGTACGT,\n")
    (t / "extra.tsv").write_text("seq\tlabel\nACGTACGT\t1\nACGTACGT\t0\textra\n")
    (t / "oneclass.csv").write_text("seq,label\nACGTACGT,1\nACGTTGCA,1\n")
    (t / "badchar.csv").write_text("seq,label\nACGTACGT,1\nACGTXCGT,0\n")
    (t / "twoways.csv").write_text("seq,label\nACGTACGT,0.5\nACGTTGCA,0.50\nACGTAAAA,1.5\n")
    (t / "badjson").mkdir()
    (t / "badjson" / "config.json").write_text("{not json")
    (t / "noweights").mkdir()
    (t / "noweights" / "config.json").write_text((kit / "mdlm" / "config.json").read_text())
    (t / "wrongsize").mkdir()
    cfg = json.loads((kit / "mdlm" / "config.json").read_text())
    (t / "wrongsize" / "config.json").write_text(json.dumps({**cfg, "d_model": 16}))
    (t / "wrongsize" / "model.safetensors").write_bytes((kit / "mdlm" / "model.safetensors").read_bytes())
    (t / "short.fa").write_text(">s\n" + dna(40) + "\n")
    (t / "long.fa").write_text(">long\n" + dna(300) + "\n")
    return {
        "region_unknown_contig": (lik + ["--region", "chr1:1-10"], ["--region chr1:1-10", "unknown record 'chr1'"]),
        "region_reversed": (lik + ["--region", "r0:50-10"], ["--region r0:50-10", "never reversed"]),
        "region_past_end": (lik + ["--region", "r0:1-1000"], ["--region r0:1-1000", "past the end", "never clipped"]),
        "region_unparsable": (lik + ["--region", "r0:a-b"], ["--region r0:a-b", "chr:start-end"]),
        "val_region_past_end": (pre + ["--val-region", "chrR:29001-31000"], ["--val-region", "past the end"]),
        "evaluate_region_past_end": (ev + ["--region", "chrR:1-40000"], ["--region", "past the end"]),
        "bed_past_end": (lik + ["--bed", str(t / "past_end.bed")], ["past_end.bed:2", "past the end"]),
        "bed_not_integers": (lik + ["--bed", str(t / "words.bed")], ["words.bed:1", "integers"]),
        "table_no_sequence_column": (ft + ["--train", str(t / "noseq.csv")], ["--train", "noseq.csv:1", "no sequence column"]),
        "table_empty_label": (ft + ["--train", str(t / "emptylabel.csv")], ["emptylabel.csv:3", "empty label"]),
        "table_extra_field": (ft + ["--train", str(t / "extra.tsv")], ["extra.tsv:3", "3 fields"]),
        "table_one_class": (ft + ["--train", str(t / "oneclass.csv")], ["oneclass.csv", "only one class"]),
        "table_bad_character": (ft + ["--train", str(t / "badchar.csv")], ["badchar.csv:3", "'X'"]),
        "table_same_number_two_ways": (ft + ["--train", str(t / "twoways.csv")], ["twoways.csv", "'0.5' and '0.50'"]),
        "finetune_lr_nan": (ftk + ["--unfreeze", "--lr", "nan"], ["--lr nan", "finite"]),
        "finetune_lr_inf": (ftk + ["--unfreeze", "--lr", "inf"], ["--lr inf", "finite number > 0"]),
        "finetune_max_steps_negative": (ftk + ["--max-steps", "-1"], ["--max-steps -1", "positive integer"]),
        "finetune_max_steps_zero": (ftk + ["--max-steps", "0"], ["--max-steps 0", "positive integer"]),
        "finetune_max_train_zero": (ftk + ["--max-train", "0"], ["--max-train 0", "positive integer"]),
        "finetune_set_lr_text": (ftk + ["--set", "lr=abc"], ["--set lr=abc", "finite number"]),
        "finetune_ema_flag": (ftk + ["--config", "tiny", "--ema", "1.5"], ["--ema 1.5", "(0, 1)"]),
        "finetune_unfreeze_not_bool": (ftk + ["--set", "unfreeze=maybe"], ["--set unfreeze=maybe", "true or false"]),
        "finetune_folds_zero": (ftk + ["--folds", "0"], ["--folds", ">= 2"]),
        "finetune_negative_seed": (ftk + ["--max-train", "10", "--seed", "-1"], ["--seed -1", ">= 0"]),
        "finetune_negative_seeds": (["finetune", "--model", str(kit / "mdlm"), "--out", str(t / "ft"), "--train",
                                     str(kit / "train.csv"), "--test", str(kit / "train.csv"), "--seeds", "-1"],
                                    ["--seeds -1", ">= 0"]),
        "finetune_flag_and_set": (ftk + ["--lr", "0.1", "--set", "lr=0.2"], ["--lr 0.1", "--set lr=0.2", "give one"]),
        "finetune_task_without_data": (ft + ["--task", "human_nontata_promoters", "--data-dir", str(t / "nodata")],
                                       ["--data-dir"]),
        "embed_batch_size_zero": (["embed", "--model", str(kit / "mdlm"), "--fasta", good, "--out", str(t / "e.npz"),
                                   "--batch-size", "0"], ["--batch-size 0", "positive integer"]),
        "predict_batch_size_zero": (["predict", "--model", str(kit / "clf"), "--fasta", good, "--out", str(t / "p.tsv"),
                                     "--batch-size", "0"], ["--batch-size 0", "positive integer"]),
        "predict_max_length_zero": (["predict", "--model", str(kit / "clf"), "--fasta", good, "--out",
                                     str(t / "p.tsv"), "--max-length", "0"], ["--max-length 0", "positive integer"]),
        "likelihood_window_one": (lik + ["--window", "1"], ["--window 1", ">= 2"]),
        "sample_without_length": (smp, ["--length", "required"]),
        "model_config_mismatch": (["embed", "--model", str(t / "wrongsize"), "--fasta", good, "--out",
                                   str(t / "e.npz")], ["--model", "wrongsize", "config.json does not fit", "embedding"]),
        "pretrain_window_longer_than_records": (["pretrain", "--fasta", str(t / "short.fa"), "--config", "tiny", "--out",
                                                 str(t / "run")], ["--window 128", "--fasta", "short.fa", "40 bp"]),
        "evaluate_genome_reference_too_small": (["evaluate-samples", "--samples", str(t / "long.fa"), "--reference",
                                                 str(t / "short.fa"), "--reference-mode", "genome", "--no-motifs",
                                                 "--out", str(t / "rep")], ["--reference too small"]),
        "model_missing": (lik[:2] + [str(t / "nomodel")] + lik[3:], ["--model", "no such directory"]),
        "model_bad_json": (lik[:2] + [str(t / "badjson")] + lik[3:], ["--model", "not valid JSON"]),
        "model_no_weights": (lik[:2] + [str(t / "noweights")] + lik[3:], ["--model", "model.safetensors missing"]),
        "nan_model_likelihood": (lik[:2] + [str(kit / "nan")] + lik[3:], ["--model", "not finite"]),
        "nan_model_sample": (["sample", "--model", str(kit / "nan"), "--num-samples", "2", "--length", "20",
                              "--out", str(t / "s.fa")], ["not finite"]),
        "nan_model_embed": (["embed", "--model", str(kit / "nan"), "--fasta", good, "--out", str(t / "e.npz")],
                            ["not finite"]),
        "nan_model_judge": (ev + ["--model", str(kit / "nan")], ["not finite"]),
        "nan_model_finetune": (["finetune", "--model", str(kit / "nan"), "--train", str(kit / "train.csv"), "--out",
                                str(t / "ft"), "--folds", "2"], ["not finite"]),
        "classifier_to_likelihood": (lik[:2] + [str(kit / "clf")] + lik[3:], ["not a language model"]),
        "classifier_to_sample": (["sample", "--model", str(kit / "clf"), "--num-samples", "1", "--length", "10",
                                  "--out", str(t / "s.fa")], ["not a language model"]),
        "mdlm_to_predict": (["predict", "--model", str(kit / "mdlm"), "--fasta", good, "--out", str(t / "p.tsv")],
                            ["not a fine-tuned classifier"]),
        "predict_too_long": (["predict", "--model", str(kit / "clf"), "--fasta", str(t / "long.fa"), "--max-length",
                              "100", "--out", str(t / "p.tsv")], ["'long'", "--max-length 100", "--truncate"]),
        "sample_prefix_bad_char": (smp + ["--length", "20", "--prefix", "ACXT"], ["--prefix", "'X'"]),
        "sample_template_iupac": (smp + ["--template", "ACGTNNNNRNNACGT"], ["--template", "'R'", "--unknown N"]),
        "sample_steps_zero": (smp + ["--length", "20", "--steps", "0"], ["--steps"]),
        "sample_top_p_zero": (smp + ["--length", "20", "--top-p", "0"], ["--top-p"]),
        "sample_unknown_order": (smp + ["--length", "20", "--order", "zigzag"], ["--order", "'zigzag'"]),
        "sample_gamma_zero": (smp + ["--length", "20", "--order", "entropy-bound", "--gamma", "0"], ["--gamma 0"]),
        "sample_gamma_negative": (smp + ["--length", "20", "--order", "entropy-bound", "--gamma", "-1"], ["--gamma -1"]),
        "sample_gamma_without_entropy_bound": (smp + ["--length", "20", "--gamma", "1"], ["--gamma", "entropy-bound"]),
        "sample_order_with_ar": (["sample", "--model", str(kit / "ar"), "--num-samples", "1", "--length", "20",
                                  "--order", "dilated", "--out", str(t / "s.fa")], ["--order dilated", "MDLM"]),
        "sample_suffix_with_ar": (["sample", "--model", str(kit / "ar"), "--num-samples", "1", "--length", "20",
                                   "--suffix", "ACGT", "--out", str(t / "s.fa")], ["left to right"]),
        "sample_prefix_longer_than_length": (smp + ["--length", "3", "--prefix", "ACGTACGT"], ["--prefix", "--length 3"]),
        "distill_rounds_zero": (dst + ["--rounds", "0"], ["--rounds 0", "positive integer"]),
        "distill_ar_teacher": (["distill", "--teacher", str(kit / "ar")] + dst[3:], ["--teacher", "MDLM teacher"]),
        "distill_nan_teacher": (["distill", "--teacher", str(kit / "nan")] + dst[3:], ["--teacher", "not finite"]),
        "likelihood_max_windows_zero": (lik + ["--max-windows", "0"], ["--max-windows 0"]),
        "likelihood_mc_samples_zero": (lik + ["--mc-samples", "0"], ["--mc-samples 0"]),
        "likelihood_not_an_int": (lik + ["--window", "big"], ["--window", "invalid int value"]),
        "pretrain_precision": (pre + ["--precision", "fp8"], ["--precision fp8", "expected one of"]),
        "pretrain_lr_text": (pre + ["--set", "optim.lr=abc"], ["--set optim.lr=abc", "expected a finite number"]),
        "pretrain_d_model_text": (pre + ["--set", "model.d_model=abc"], ["--set model.d_model=abc", "positive integer"]),
        "pretrain_d_model_negative": (pre + ["--set", "model.d_model=-4"], ["--set model.d_model=-4", "positive integer"]),
        "pretrain_rcps_not_bool": (pre + ["--set", "model.rcps=maybe"], ["--set model.rcps=maybe", "true or false"]),
        "pretrain_n_layer_zero": (pre + ["--set", "model.n_layer=0"], ["--set model.n_layer=0", "positive integer"]),
        "pretrain_warmup_negative": (pre + ["--set", "optim.warmup_steps=-5"], ["optim.warmup_steps=-5", ">= 0"]),
        "pretrain_ema_out_of_range": (pre + ["--set", "optim.ema_decay=1.5"], ["optim.ema_decay=1.5", "[0, 1)"]),
        "pretrain_window_one": (pre + ["--set", "data.window=1"], ["--set data.window=1", ">= 2"]),
        "pretrain_window_flag_and_set": (pre + ["--window", "64", "--set", "data.window=1"],
                                         ["--window 64", "--set data.window=1", "give one"]),
        "pretrain_lr_nan": (pre + ["--lr", "nan"], ["--lr nan", "finite"]),
        "distill_window_one": (dst + ["--set", "data.window=1"], ["--set data.window=1", ">= 2"]),
        "pretrain_model_typo": (pre + ["--set", "model.d_modle=8"], ["d_modle", "'model'"]),
        "pretrain_resume_nothing": (pre + ["--resume"], ["--resume", "no run to resume"]),
        "pretrain_unknown_recipe": (pre[:3] + ["--config", "huge"] + pre[5:], ["--config huge", "recipes:"]),
        "evaluate_copy_fraction": (ev + ["--copy-fraction", "1.5"], ["--copy-fraction 1.5"]),
        "evaluate_reference_missing": (["evaluate-samples", "--samples", good, "--reference", str(t / "noref.fa"),
                                        "--out", str(t / "rep")], ["--reference", "no such file"]),
        "device_unknown": (lik + ["--device", "tpu"], ["--device", "tpu"]),
    }


CASE_NAMES = [
    "region_unknown_contig", "region_reversed", "region_past_end", "region_unparsable", "val_region_past_end",
    "evaluate_region_past_end", "bed_past_end", "bed_not_integers", "table_no_sequence_column", "table_empty_label",
    "table_extra_field", "table_one_class", "table_bad_character", "table_same_number_two_ways", "finetune_lr_nan",
    "finetune_lr_inf", "finetune_max_steps_negative", "finetune_max_steps_zero", "finetune_max_train_zero",
    "finetune_set_lr_text", "finetune_ema_flag", "finetune_unfreeze_not_bool", "finetune_flag_and_set",
    "finetune_folds_zero", "finetune_negative_seed", "finetune_negative_seeds", "finetune_task_without_data", "model_missing", "model_bad_json",
    "model_no_weights", "model_config_mismatch", "pretrain_window_longer_than_records",
    "evaluate_genome_reference_too_small", "embed_batch_size_zero", "predict_batch_size_zero", "predict_max_length_zero",
    "likelihood_window_one", "sample_without_length", "nan_model_likelihood", "nan_model_sample", "nan_model_embed", "nan_model_judge",
    "nan_model_finetune", "classifier_to_likelihood", "classifier_to_sample", "mdlm_to_predict", "predict_too_long",
    "sample_prefix_bad_char", "sample_template_iupac", "sample_steps_zero", "sample_top_p_zero",
    "sample_unknown_order", "sample_gamma_zero", "sample_gamma_negative", "sample_gamma_without_entropy_bound",
    "sample_order_with_ar", "distill_rounds_zero", "distill_ar_teacher", "distill_nan_teacher",
    "sample_suffix_with_ar", "sample_prefix_longer_than_length", "likelihood_max_windows_zero",
    "likelihood_mc_samples_zero", "likelihood_not_an_int", "pretrain_precision", "pretrain_lr_text",
    "pretrain_d_model_text", "pretrain_d_model_negative", "pretrain_rcps_not_bool", "pretrain_n_layer_zero",
    "pretrain_warmup_negative", "pretrain_ema_out_of_range", "pretrain_window_one", "pretrain_window_flag_and_set",
    "pretrain_lr_nan", "distill_window_one", "pretrain_model_typo", "pretrain_resume_nothing", "pretrain_unknown_recipe", "evaluate_copy_fraction",
    "evaluate_reference_missing", "device_unknown",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_arguments_regions_tables_and_models(kit, tmp_path, capsys, case):
    argv, expected = _cases(kit, tmp_path)[case]
    assert_rejected(argv, capsys, tmp_path, *expected)


def test_the_catalogue_is_large_enough_and_complete(kit, tmp_path):
    assert len(BAD_FASTA) * 5 + len(CASE_NAMES) >= 40
    assert sorted(CASE_NAMES) == sorted(_cases(kit, tmp_path))


# --------------------------------------------------------------------------------------------------------------
# Odd but valid inputs give the same numbers as a clean copy
# --------------------------------------------------------------------------------------------------------------
def _odd_copies(tmp: Path) -> dict[str, Path]:
    clean = fasta_text(SEQS)
    out = {}
    variants = {
        "bom": b"\xef\xbb\xbf" + clean.encode(),
        "crlf": fasta_text(SEQS, newline="\r\n").encode(),
        "lower_case": fasta_text({k: v.lower() for k, v in SEQS.items()}).encode(),
        "uneven_lines": "".join(f">{k}\n{v[:7]}\n{v[7:50]}\n{v[50:]}\n" for k, v in SEQS.items()).encode(),
        "space_after_gt_and_descriptions": fasta_text(SEQS, header=lambda n: f"> {n} some description").encode(),
        "blank_lines": clean.replace(">", "\n\n>").encode(),
        "gzip": gzip.compress(clean.encode()),
    }
    for name, data in variants.items():
        path = tmp / f"{name}.fa" if name != "gzip" else tmp / "plain.fa.gz"
        path.write_bytes(data)
        out[name] = path
    with bgzf.BgzfWriter(str(tmp / "bgzf.fa.gz"), "wb") as fh:
        fh.write(clean.encode())
    out["bgzf"] = tmp / "bgzf.fa.gz"
    (tmp / "clean.fa").write_text(clean)
    return out


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd")
    return d, _odd_copies(d)


@pytest.mark.parametrize("variant", ["bom", "crlf", "lower_case", "uneven_lines", "space_after_gt_and_descriptions",
                                     "blank_lines", "gzip", "bgzf"])
def test_odd_but_valid_fasta_gives_the_clean_numbers(kit, odd, tmp_path, capsys, variant):
    d, files = odd
    outs = {}
    for name, fa in (("clean", d / "clean.fa"), ("odd", files[variant])):
        o = tmp_path / name
        o.mkdir()
        assert main(["likelihood", "--model", str(kit / "mdlm"), "--fasta", str(fa), "--out", str(o / "l.json"),
                     "--per-record", str(o / "r.tsv"), "--device", "cpu"]) == 0
        assert main(["embed", "--model", str(kit / "mdlm"), "--fasta", str(fa), "--out", str(o / "e.npz"),
                     "--device", "cpu"]) == 0
        assert main(["predict", "--model", str(kit / "clf"), "--fasta", str(fa), "--out", str(o / "p.tsv"),
                     "--device", "cpu"]) == 0
        rep = json.loads((o / "l.json").read_text())
        emb = np.load(o / "e.npz")
        outs[name] = (rep, (o / "r.tsv").read_text(), emb["ids"].tolist(), emb["embeddings"], (o / "p.tsv").read_text())
    capsys.readouterr()
    (a, ra, ia, ea, pa), (b, rb, ib, eb, pb) = outs["clean"], outs["odd"]
    for key in ("bits_per_base", "bases_scored", "windows", "stderr_bits_per_base"):
        assert a[key] == b[key], key
    assert list(a["per_record"]) == list(b["per_record"]) == list(SEQS)  # every record, in FASTA order
    assert ra == rb and ia == ib == list(SEQS) and pa == pb
    np.testing.assert_array_equal(ea, eb)


def test_bom_and_crlf_tables_read_like_clean_ones(kit, tmp_path):
    from dna_mdlm.data.labelled import read_labelled

    clean = (kit / "train.csv").read_text()
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + clean.replace("\n", "\r\n").encode())
    (tmp_path / "x.tsv").write_text(clean.replace(",", "\t"))
    (tmp_path / "x.tsv.gz").write_bytes(gzip.compress(clean.replace(",", "\t").encode()))
    ref = read_labelled(kit / "train.csv")
    for path in ("bom.csv", "x.tsv", "x.tsv.gz"):
        got = read_labelled(tmp_path / path)
        assert got.seqs == ref.seqs and got.labels.tolist() == ref.labels.tolist() and got.classes == ref.classes


def test_a_diverged_fine_tuning_run_is_one_line_exit_1_and_writes_nothing(kit, tmp_path, capsys):
    # lr 1e6 is a valid setting that no run survives: README promises one line, exit code 1, no model
    rc, err = run(["finetune", "--model", str(kit / "mdlm"), "--train", str(kit / "train.csv"), "--unfreeze",
                   "--lr", "1e6", "--folds", "2", "--epochs", "2", "--baselines", "none", "--device", "cpu",
                   "--out", str(tmp_path / "ft")], capsys)
    errors = [line for line in err if "error" in line]  # progress lines ([finetune] ...) come before it
    assert rc == 1 and errors == [err[-1]] and err[-1].startswith("dna-mdlm finetune: error: training diverged"), err
    assert "--lr" in err[-1]
    assert not (tmp_path / "ft").exists()


def test_numeric_labels_written_two_ways_are_one_class(tmp_path):
    from dna_mdlm.data.labelled import read_labelled

    (tmp_path / "mixed.csv").write_text("seq,label\nACGTACGT,1\nACGTTGCA,1.0\nACGTAAAA,0\nACGTCCCC,0.0\n")
    got = read_labelled(tmp_path / "mixed.csv")
    assert got.classes == ["0", "1"] and got.labels.tolist() == [1, 1, 0, 0]
    (tmp_path / "mixed.fa").write_text(">a Label=1.0\nACGTACGT\n>b label=1\nACGTTGCA\n>c LABEL=0\nACGTAAAA\n")
    got = read_labelled(tmp_path / "mixed.fa")  # header keys are case-blind, as table column names are
    assert got.classes == ["0", "1"] and got.labels.tolist() == [1, 1, 0]
    test = read_labelled(tmp_path / "mixed.csv", classes=["0", "1"])  # a test set written "1.0" matches train's "1"
    assert test.labels.tolist() == [1, 1, 0, 0]


def test_iupac_codes_are_read_as_n_with_unknown_n_in_every_reader(kit, tmp_path, capsys):
    fa = tmp_path / "iupac.fa"
    fa.write_text(">a\n" + "ACGTRYSWACGT" * 10 + "\n")
    assert main(["likelihood", "--model", str(kit / "markov"), "--fasta", str(fa), "--unknown", "N",
                 "--out", str(tmp_path / "l.json")]) == 0
    assert json.loads((tmp_path / "l.json").read_text())["bases_scored"] == 80  # the 40 codes are N: never scored
    assert main(["embed", "--model", str(kit / "mdlm"), "--fasta", str(fa), "--unknown", "N",
                 "--out", str(tmp_path / "e.npz")]) == 0
    assert main(["sample", "--model", str(kit / "mdlm"), "--num-samples", "1", "--template", "ACGTRRRRACGT",
                 "--unknown", "N", "--out", str(tmp_path / "s.fa"), "--steps", "4"]) == 0
    seq = (tmp_path / "s.fa").read_text().splitlines()[1]
    assert seq[:4] == "ACGT" and seq[-4:] == "ACGT" and set(seq) <= set("ACGT")


# --------------------------------------------------------------------------------------------------------------
# Outputs that would destroy data: a file over a directory, a directory over someone else's, an output over an input
# --------------------------------------------------------------------------------------------------------------
VCF = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\nchrR\t100\t.\tA\tC\t.\t.\t.\n"


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else p.is_symlink())
            for p in sorted(root.rglob("*"))}


def _output_cases(kit: Path, t: Path) -> dict:
    good, ref, victim = str(kit / "good.fa"), str(kit / "ref.fa"), t / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("my notes\n")
    v = str(victim)
    lik = ["likelihood", "--model", str(kit / "markov"), "--fasta", good]
    (t / "v.vcf").write_text(VCF)
    sv = ["score-variants", "--model", str(kit / "markov"), "--fasta", ref, "--vcf", str(t / "v.vcf")]
    # a pretraining run (finetune --model runs/x/model --out runs/x wiped one), a project folder, a previous report
    run = t / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(kit / "mdlm", run / "model")
    (run / "run_config.json").write_text("{}\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    proj = t / "myproj"
    proj.mkdir()
    (proj / "notes.md").write_text("notes\n")
    (proj / "s1.fa").write_text(fasta_text({"s1": dna(200)}))
    rep = t / "rep"
    rep.mkdir()
    for name in ("report.html", "metrics.json", "kmer_scatter.png", "notes.txt"):
        (rep / name).write_text("x\n")
    prev_ft = t / "ft"
    shutil.copytree(kit / "clf", prev_ft / "model")
    (prev_ft / "metrics.md").write_text("x\n")
    (t / "lab.csv").write_text((kit / "train.csv").read_text())
    (t / "cc.fa").write_text((kit / "ref.fa").read_text())
    (t / "in.fa").write_text((kit / "good.fa").read_text())
    (t / "link.npz").symlink_to(t / "in.fa")
    ft = ["finetune", "--train", str(kit / "train.csv"), "--folds", "2", "--epochs", "1"]
    is_dir = "is a directory (expected a file name)"
    is_file = "is a file (expected a directory name)"
    return {
        # 1. a file written where a directory is
        "likelihood_out_dir": (lik + ["--out", v], ["--out", v, is_dir]),
        "likelihood_per_record_dir": (lik + ["--per-record", v], ["--per-record", is_dir]),
        "likelihood_per_window_dir": (lik + ["--per-window", v], ["--per-window", is_dir]),
        "sample_out_dir": (["sample", "--model", str(kit / "mdlm"), "--num-samples", "1", "--length", "20", "--out", v],
                           ["--out", is_dir]),
        "predict_out_dir": (["predict", "--model", str(kit / "clf"), "--fasta", good, "--out", v], ["--out", is_dir]),
        "embed_out_dir": (["embed", "--model", str(kit / "mdlm"), "--fasta", good, "--out", v], ["--out", is_dir]),
        "score_variants_out_dir": (sv + ["--out", v], ["--out", is_dir]),
        "output_below_a_file": (lik + ["--out", str(t / "cc.fa" / "l.json")], ["--out", "is a file, not a directory"]),
        # 2. a directory written where a file, or someone else's directory, is
        "finetune_over_pretrain_run": (["finetune", "--model", str(run / "model"), "--train", str(kit / "train.csv"),
                                        "--out", str(run)], ["--out", "not a previous finetune output", "metrics.md"]),
        "evaluate_over_project": (["evaluate-samples", "--samples", str(proj / "s1.fa"), "--reference", ref,
                                   "--out", str(proj)], ["--out", "not a previous evaluate-samples output"]),
        "evaluate_over_report_and_notes": (["evaluate-samples", "--samples", good, "--reference", ref, "--out", str(rep)],
                                           ["--out", "notes.txt", "would delete"]),
        "pretrain_over_foreign_directory": (["pretrain", "--fasta", ref, "--config", "tiny", "--out", v],
                                            ["--out", "not a previous pretrain output"]),
        "finetune_over_file": (ft + ["--model", str(kit / "mdlm"), "--out", str(t / "lab.csv")], ["--out", is_file]),
        "pretrain_over_file": (["pretrain", "--fasta", ref, "--config", "tiny", "--out", str(t / "cc.fa")],
                               ["--out", is_file]),
        "distill_over_file": (["distill", "--teacher", str(kit / "mdlm"), "--fasta", ref, "--config", "tiny",
                               "--out", str(t / "cc.fa")], ["--out", is_file]),
        # 3. an output that is, holds or lies in an input
        "likelihood_per_record_is_the_fasta": (["likelihood", "--model", str(kit / "markov"), "--fasta", str(t / "in.fa"),
                                                "--per-record", str(t / "in.fa")], ["--per-record", "the --fasta input"]),
        "predict_out_is_the_fasta": (["predict", "--model", str(kit / "clf"), "--fasta", str(t / "in.fa"),
                                      "--out", str(t / "in.fa")], ["--out", "the --fasta input"]),
        "embed_out_links_to_the_fasta": (["embed", "--model", str(kit / "mdlm"), "--fasta", str(t / "in.fa"),
                                          "--out", str(t / "link.npz")], ["--out", "the --fasta input"]),
        "score_variants_out_is_the_vcf": (sv + ["--out", str(t / "v.vcf")], ["--out", "the --vcf input"]),
        "sample_out_inside_the_model": (["sample", "--model", str(run / "model"), "--num-samples", "1", "--length", "20",
                                         "--out", str(run / "model" / "s.fa")], ["--out", "inside the --model input"]),
        "finetune_out_holds_its_model": (ft + ["--model", str(prev_ft / "model"), "--out", str(prev_ft)],
                                         ["--out", "contains the --model input"]),
        "two_outputs_one_file": (lik + ["--out", str(t / "x.tsv"), "--per-record", str(t / "x.tsv")],
                                 ["--per-record", "is also --out"]),
    }


OUTPUT_CASES = [
    "likelihood_out_dir", "likelihood_per_record_dir", "likelihood_per_window_dir", "sample_out_dir", "predict_out_dir",
    "embed_out_dir", "score_variants_out_dir", "output_below_a_file", "finetune_over_pretrain_run",
    "evaluate_over_project", "evaluate_over_report_and_notes", "pretrain_over_foreign_directory", "finetune_over_file",
    "pretrain_over_file", "distill_over_file", "likelihood_per_record_is_the_fasta", "predict_out_is_the_fasta",
    "embed_out_links_to_the_fasta", "score_variants_out_is_the_vcf", "sample_out_inside_the_model",
    "finetune_out_holds_its_model", "two_outputs_one_file",
]


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_outputs_never_destroy_data(kit, tmp_path, capsys, case):
    cases = _output_cases(kit, tmp_path)
    assert sorted(cases) == sorted(OUTPUT_CASES)
    argv, expected = cases[case]
    before = _snapshot(tmp_path)
    assert_rejected(argv, capsys, tmp_path, *expected)
    assert _snapshot(tmp_path) == before, "a refused output touched something"


def test_rerunning_a_verb_into_its_own_previous_output_is_allowed(kit, tmp_path, capsys):
    rep = tmp_path / "rep"
    ev = ["evaluate-samples", "--samples", str(kit / "good.fa"), "--reference", str(kit / "ref.fa"), "--no-motifs",
          "--out", str(rep)]
    assert main(ev) == 0
    assert main(ev + ["--seed", "1"]) == 0  # replaced: every name in it is one evaluate-samples writes
    assert json.loads((rep / "metrics.json").read_text())["n_samples"] == len(SEQS)
    (tmp_path / "train.csv").write_text("seq,label\n" + "".join(f"{dna(60)},{i % 2}\n" for i in range(60)))
    ft = ["finetune", "--model", str(kit / "mdlm"), "--train", str(tmp_path / "train.csv"), "--folds", "2",
          "--baselines", "none", "--device", "cpu", "--out", str(tmp_path / "ft")]
    assert main(ft) == 0
    assert main(ft) == 0
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", str(tmp_path / "ft" / "model"), "--fasta", str(kit / "good.fa"),
                 "--out", str(tmp_path / "empty" / "p.tsv")]) == 0
    capsys.readouterr()


def test_embed_per_base_keys_never_hold_record_names(kit, tmp_path, capsys):
    from dna_mdlm.embedding import embed, embed_fasta

    names = ["../../x", "a/b", "/abs", "ok"]
    seqs = [dna(40 + 5 * i) for i in range(len(names))]
    fa = tmp_path / "odd_names.fa"
    fa.write_text(fasta_text(dict(zip(names, seqs))))
    out = tmp_path / "sub" / "bases.npz"
    assert main(["embed", "--model", str(kit / "mdlm"), "--fasta", str(fa), "--pool", "none", "--out", str(out),
                 "--device", "cpu"]) == 0
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(["ids.npy"] + [f"bases_{i}.npy" for i in range(len(names))])
    expected = embed(str(kit / "mdlm"), seqs, pool="none")
    embed_fasta(str(kit / "mdlm"), fa, tmp_path / "chunked.npz", pool="none", chunk_records=1, batch_size=1)
    for path in (out, tmp_path / "chunked.npz"):
        with np.load(path) as z:
            assert z["ids"].tolist() == names
            for i in range(len(names)):
                np.testing.assert_allclose(z[f"bases_{i}"], expected[i], atol=1e-5)
    capsys.readouterr()


def test_caps_are_marked_in_the_output_files(kit, tmp_path, capsys):
    rec = tmp_path / "r.tsv"
    assert main(["likelihood", "--model", str(kit / "markov"), "--fasta", str(kit / "good.fa"), "--max-windows", "2",
                 "--per-record", str(rec), "--out", str(tmp_path / "l.json")]) == 0
    lines = [line.split("\t") for line in rec.read_text().splitlines()]
    head, rows = lines[0], lines[1:]
    col = {name: i for i, name in enumerate(head)}
    assert [r[0] for r in rows] == list(SEQS)  # every record has a row, the ones left out too
    scored = [int(r[col["windows_scored"]]) for r in rows]
    assert sum(scored) == 2 and all(int(r[col["windows_available"]]) >= 1 for r in rows)
    assert all(r[col["bits_per_base"]] == "NA" for r, s in zip(rows, scored) if s == 0)
    assert json.loads((tmp_path / "l.json").read_text())["windows_available"] == len(SEQS)
    p = tmp_path / "p.tsv"
    assert main(["predict", "--model", str(kit / "clf"), "--fasta", str(kit / "good.fa"), "--max-length", "100",
                 "--truncate", "--out", str(p)]) == 0
    lines = [line.split("\t") for line in p.read_text().splitlines()]
    assert lines[0] == ["record", "neg", "pos", "n_fraction", "truncated_to"]
    assert [r[-1] for r in lines[1:]] == ["NA" if len(s) <= 100 else "100" for s in SEQS.values()]
    capsys.readouterr()


def test_the_atomic_writers_never_swap_a_file_for_a_directory(tmp_path):
    """Library callers that skip `check_outputs` still cannot lose a directory to a file, or a file to a directory."""
    from dna_mdlm.errors import InputError
    from dna_mdlm.io.writers import atomic_path, atomic_write_text

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine\n")
    (tmp_path / "file.txt").write_text("mine\n")
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match="is a directory"):
        atomic_write_text(victim, "x")
    with pytest.raises(InputError, match="is a file"), atomic_path(tmp_path / "file.txt") as tmp:
        tmp.mkdir()
    assert _snapshot(tmp_path) == before
