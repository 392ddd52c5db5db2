"""Class-conditional MDLM: the class embedding, `pretrain --labels`, classifier-free guidance in `sample --class
--guidance`, and `evaluate-samples --oracle`. Tiny real models (d_model 16) trained for seconds on two trivially
different classes (AT-rich vs GC-rich 64-bp sequences)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio import SeqIO

from dna_mdlm.cli import main
from dna_mdlm.diffusion.mdlm import MDLM
from dna_mdlm.diffusion.sampling import SamplingStats, _Denoiser, allowed_ids
from dna_mdlm.errors import InputError
from dna_mdlm.generate import generate
from dna_mdlm.models import CaduceusForMaskedLM
from dna_mdlm.models.configuration_caduceus import CaduceusConfig
from dna_mdlm.tokenizer import MASK_ID, rc_ids
from dna_mdlm.training.pretrain import PretrainModule

LENGTH = 64
TRAIN = ["--config", "tiny", "--window", str(LENGTH), "--max-steps", "60", "--set", "trainer.progress_bar=false"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: threads only contend
    yield
    torch.set_num_threads(before)


def gc(seqs) -> float:
    text = "".join(seqs)
    return (text.count("G") + text.count("C")) / len(text)


def composition_table(path: Path, n: int = 200, seed: int = 0) -> Path:
    """AT-rich (class `at`, 80% A/T) and GC-rich (class `gc`, 80% G/C) sequences, alternating."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p = [0.4, 0.1, 0.1, 0.4] if i % 2 == 0 else [0.1, 0.4, 0.4, 0.1]
        rows.append("".join(rng.choice(list("ACGT"), LENGTH, p=p)) + ("," + ("at" if i % 2 == 0 else "gc")))
    path.write_text("seq,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    return composition_table(tmp_path_factory.mktemp("labels") / "comp.csv")


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory, labels) -> Path:
    out = tmp_path_factory.mktemp("cond") / "run"
    assert main(["pretrain", "--labels", str(labels), "--out", str(out), *TRAIN]) == 0
    return out


@pytest.fixture(scope="module")
def uncond_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=2, rcps=True, train_window=LENGTH))
    path = tmp_path_factory.mktemp("uncond")
    model.save_pretrained(path)
    return path


def tiny_conditional(**kw) -> CaduceusForMaskedLM:
    torch.manual_seed(0)
    cfg = CaduceusConfig(d_model=16, n_layer=2, rcps=True, num_classes=3, class_names=["a", "b", "c"],
                         train_window=LENGTH, **kw)
    model = CaduceusForMaskedLM(cfg).double().eval()
    with torch.no_grad():  # distinct, non-trivial class vectors
        model.caduceus.backbone.class_embed.weight.normal_(0, 0.5)
    return model


# --- the model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True])
def test_rc_equivariance_holds_for_every_class(fused):
    model = tiny_conditional(fused_add_norm=fused)
    comp = model.config.complement_list()
    x = torch.randint(7, 11, (2, 31))
    x[:, ::4] = MASK_ID
    outs = []
    with torch.no_grad():
        for c in range(model.config.num_classes + 1):  # every class and the null class
            labels = torch.full((2,), c)
            a, b = model(x, class_labels=labels).logits, model(rc_ids(x), class_labels=labels).logits
            assert torch.allclose(b, a.flip(1)[..., comp], atol=1e-10), c
            outs.append(a)
    assert not torch.allclose(outs[0], outs[1])  # the class changes the prediction
    assert torch.equal(outs[-1], model(x).logits)  # no labels = the null class


def test_unconditional_models_keep_their_keys_and_reject_labels():
    plain = CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=2))
    cond = CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=2, num_classes=2))
    assert set(cond.state_dict()) - set(plain.state_dict()) == {"caduceus.backbone.class_embed.weight"}
    assert cond.caduceus.backbone.class_embed.weight.shape == (3, 16)  # two classes + the null class
    assert cond.config.class_names == ["0", "1"] and cond.config.null_class == 2
    with pytest.raises(ValueError, match="unconditional"):
        plain(torch.randint(7, 11, (1, 8)), class_labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="class_labels must lie"):
        cond(torch.randint(7, 11, (1, 8)), class_labels=torch.tensor([3]))
    for bad in ({"num_classes": 1}, {"num_classes": 2, "class_names": ["x"]}, {"num_classes": 2, "cond_dropout": 1.0}):
        with pytest.raises(ValueError):
            CaduceusConfig(**bad)


def test_guided_distribution_is_the_renormalised_log_space_mix():
    model = tiny_conditional().float()
    mdlm = MDLM(model)
    z = torch.randint(7, 11, (3, 20))
    z[:, 5:15] = MASK_ID
    allowed = allowed_ids()

    def probs(guidance, class_id=1):
        return _Denoiser(mdlm, allowed, 1.0, 1.0, SamplingStats(), class_id, guidance)(z, 0.5)

    with torch.no_grad():
        tt = torch.full((3,), 0.5)
        lc = torch.log_softmax(mdlm.denoise(z, tt, class_labels=torch.full((3,), 1))[..., allowed].double(), -1)
        ln = torch.log_softmax(mdlm.denoise(z, tt, class_labels=torch.full((3,), 3))[..., allowed].double(), -1)
    assert torch.allclose(probs(1.0), lc.exp(), atol=1e-12)  # guidance 1 = the conditional model
    assert torch.allclose(probs(0.0), ln.exp(), atol=1e-12)  # guidance 0 = the unconditional one
    mix = torch.softmax(2.5 * lc + (1 - 2.5) * ln, -1)
    assert torch.allclose(probs(2.5), mix, atol=1e-9)
    assert torch.allclose(probs(2.5).sum(-1), torch.ones(3, 20, dtype=torch.float64))
    assert not torch.allclose(probs(2.5), probs(1.0))
    # No class at all: the model called without labels, i.e. the null class.
    assert torch.allclose(_Denoiser(mdlm, allowed, 1.0, 1.0, SamplingStats())(z, 0.5), ln.exp(), atol=1e-12)


# --- sampling -------------------------------------------------------------------------------------


def test_guidance_0_is_the_unconditional_sample_and_1_the_conditional(cond_run):
    model = str(cond_run / "model")
    common = dict(steps=8, seed=3)
    uncond = generate(model, 6, LENGTH, **common).sequences
    assert generate(model, 6, LENGTH, class_name="gc", guidance=0, **common).sequences == uncond
    cond = generate(model, 6, LENGTH, class_name="gc", guidance=1, **common)
    assert cond.sequences == generate(model, 6, LENGTH, class_name="gc", **common).sequences
    assert cond.sequences != uncond
    assert cond.settings["class"] == "gc" and cond.settings["guidance"] == 1.0


def test_conditional_model_generates_each_class_composition(cond_run):
    model = str(cond_run / "model")
    at = generate(model, 32, LENGTH, class_name="at", steps=16, seed=0).sequences
    gc_ = generate(model, 32, LENGTH, class_name="gc", steps=16, seed=0).sequences
    assert gc(at) < 0.45 < 0.55 < gc(gc_), (gc(at), gc(gc_))
    strong = generate(model, 32, LENGTH, class_name="gc", guidance=3, steps=16, seed=0).sequences
    assert gc(strong) > gc(gc_)  # guidance > 1 sharpens the class signal


def test_both_guided_passes_are_cached(cond_run):
    model = str(cond_run / "model")
    kw = dict(class_name="at", guidance=2.0, steps=64, seed=1)
    plain = generate(model, 4, 24, sampler="ddpm", **kw)
    cached = generate(model, 4, 24, sampler="ddpm_cache", **kw)
    assert plain.sequences == cached.sequences
    assert cached.stats.network_calls < plain.stats.network_calls
    # A guided step is two passes (conditional and null) over the 4 rows: 2 calls and 8 row evaluations.
    assert plain.stats.network_calls % 2 == 0 and plain.stats.row_evaluations == 4 * plain.stats.network_calls


@pytest.mark.parametrize("order", ["confidence", "dilated"])
def test_guidance_composes_with_infilling_and_orders(cond_run, order):
    model = str(cond_run / "model")
    res = generate(model, 4, LENGTH, class_name="gc", guidance=2, steps=8, order=order, prefix="AAAATTTT",
                   suffix="TTTTAAAA", seed=0)
    for s in res.sequences:
        assert s.startswith("AAAATTTT") and s.endswith("TTTTAAAA") and len(s) == LENGTH
    template = "ATAT" + "N" * 20 + "TATA"
    res = generate(model, 3, None, class_name="at", guidance=2, steps=8, order=order, template=template, seed=0)
    assert all(s[:4] == "ATAT" and s[-4:] == "TATA" and len(s) == len(template) for s in res.sequences)
    assert res.settings["order"] == order and res.settings["class"] == "at"


def test_cli_writes_the_class_in_headers_and_sidecar(cond_run, tmp_path):
    out = tmp_path / "gc.fa"
    assert main(["sample", "--model", str(cond_run / "model"), "--class", "gc", "--guidance", "2", "--num-samples",
                 "3", "--length", "32", "--steps", "4", "--out", str(out)]) == 0
    records = list(SeqIO.parse(out, "fasta"))
    assert len(records) == 3 and all("class=gc guidance=2.0" in r.description for r in records)
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["class"] == "gc" and sidecar["guidance"] == 2.0


@pytest.mark.parametrize("extra,message", [
    (["--class", "cg"], r"--class cg: not a class of .* \(known: at, gc\)"),
    (["--guidance", "2"], "--guidance needs --class"),
    (["--class", "gc", "--guidance", "-1"], "--guidance -1.0: expected a finite weight >= 0"),
    (["--class", "gc", "--guidance", "nan"], "--guidance nan"),
    (["--class", "gc", "--guidance", "inf"], "--guidance inf"),
])
def test_cli_bad_class_or_guidance_exits_2_with_no_output(cond_run, tmp_path, capsys, extra, message):
    out = tmp_path / "x.fa"
    rc = main(["sample", "--model", str(cond_run / "model"), "--num-samples", "2", "--length", "16", "--out",
               str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not out.exists() and not Path(str(out) + ".json").exists()


def test_class_on_an_unconditional_model_is_an_input_error(uncond_dir, tmp_path, capsys):
    out = tmp_path / "x.fa"
    assert main(["sample", "--model", str(uncond_dir), "--class", "gc", "--num-samples", "2", "--length", "16",
                 "--out", str(out)]) == 2
    assert "is an unconditional mdlm model" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(InputError, match="--class"):
        generate(str(uncond_dir), 1, 8, class_name="x")


# --- training -------------------------------------------------------------------------------------


def test_pretrain_labels_records_classes_and_conditional_heldout(cond_run):
    config = json.loads((cond_run / "model" / "config.json").read_text())
    assert config["num_classes"] == 2 and config["class_names"] == ["at", "gc"] and config["cond_dropout"] == 0.1
    summary = json.loads((cond_run / "summary.json").read_text())
    held = summary["heldout"]
    # 10% of 200 held out (stratified), 16 of them kept: the tiny recipe's max_val_windows.
    assert held["conditional"] and held["windows"] == 16
    # The class tells AT-rich from GC-rich: the conditional bound is below the unconditional (null-class) one.
    assert held["bits_per_base"] < held["null_bits_per_base"]
    assert math.isfinite(summary["markov_yardstick"]["bits_per_base"])
    assert set(summary["markov_yardstick"]["orders"]) == {"at", "gc"}


def test_continuing_an_unconditional_model_starts_at_it_for_every_class(uncond_dir):
    init = CaduceusForMaskedLM.from_pretrained(str(uncond_dir)).eval()
    module = PretrainModule({"d_model": 16, "n_layer": 2, "rcps": True}, classes=["at", "gc"], window=LENGTH)
    module.load_weights(init)
    model = module.model.eval()
    assert torch.equal(model.caduceus.backbone.class_embed.weight, torch.zeros(3, 16))
    x = torch.randint(7, 11, (2, 20))
    with torch.no_grad():
        ref = init(x).logits
        for c in range(3):
            assert torch.allclose(model(x, class_labels=torch.full((2,), c)).logits, ref, atol=1e-6)


def test_pretrain_labels_init_continues_an_unconditional_model(uncond_dir, labels, tmp_path):
    out = tmp_path / "cont"
    assert main(["pretrain", "--init", str(uncond_dir), "--labels", str(labels), "--window", str(LENGTH),
                 "--max-steps", "6", "--batch-size", "8", "--set", "trainer.val_every=3",
                 "--set", "trainer.progress_bar=false", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["init"] == str(uncond_dir.resolve()) and "init_val_bpd" in summary and summary["steps"] == 6
    model = CaduceusForMaskedLM.from_pretrained(str(out / "model"))
    init = CaduceusForMaskedLM.from_pretrained(str(uncond_dir))
    assert model.config.class_names == ["at", "gc"] and model.config.d_model == init.config.d_model
    # It trained on from the init weights: close to them, not equal, and the class table moved off zero.
    w, w0 = model.lm_head.lm_head.weight, init.lm_head.lm_head.weight
    assert 0 < float((w - w0).detach().abs().max()) < 0.1
    assert float(model.caduceus.backbone.class_embed.weight.detach().abs().max()) > 0


def test_pretrain_label_dropout_replaces_labels_by_the_null_class():
    module = PretrainModule({"d_model": 16, "n_layer": 1, "rcps": True, "cond_dropout": 0.5}, classes=["a", "b"])
    labels = torch.zeros(4000, dtype=torch.long)
    dropped = module._class_labels({"class_labels": labels}, "train")
    assert set(dropped.unique().tolist()) == {0, 2}
    assert 0.45 < float((dropped == 2).double().mean()) < 0.55
    assert torch.equal(module._class_labels({"class_labels": labels}, "val"), labels)  # validation: true labels


@pytest.mark.parametrize("extra,message", [
    (["--objective", "ar"], "--labels: class-conditional training is implemented for the MDLM objective, not ar"),
    (["--objective", "markov"], "not markov"),
    (["--fasta", "x.fa"], "leave --fasta out"),
])
def test_pretrain_labels_bad_combinations(labels, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["pretrain", "--labels", str(labels), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_pretrain_labels_with_one_class_is_an_error(tmp_path, capsys):
    table = tmp_path / "one.csv"
    table.write_text("seq,label\n" + "".join(f"{'ACGT' * 8},promoter\n" for _ in range(10)))
    out = tmp_path / "run"
    assert main(["pretrain", "--labels", str(table), "--out", str(out), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "--labels" in err and "only one class (promoter)" in err
    assert not out.exists()


def test_pretrain_labels_longer_than_the_window_is_an_error(labels, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--labels", str(labels), "--window", "32", "--out", str(out)]) == 2
    assert "longer than --window 32" in capsys.readouterr().err
    assert not out.exists()


def test_conditional_init_needs_matching_labels(cond_run, tmp_path, capsys):
    other = composition_table(tmp_path / "other.csv")
    other.write_text(other.read_text().replace(",at", ",low").replace(",gc", ",high"))
    out = tmp_path / "run"
    assert main(["pretrain", "--init", str(cond_run / "model"), "--labels", str(other), "--out", str(out)]) == 2
    assert "differ from those of the --init model" in capsys.readouterr().err
    assert main(["pretrain", "--init", str(cond_run / "model"), "--out", str(out)]) == 2
    assert "continue it with --labels" in capsys.readouterr().err
    assert not out.exists()


# --- the oracle -----------------------------------------------------------------------------------


def test_evaluate_samples_oracle_reports_target_rate(cond_run, labels, tmp_path, capsys):
    ft = tmp_path / "ft"
    assert main(["finetune", "--model", str(cond_run / "model"), "--train", str(labels), "--test", str(labels),
                 "--seeds", "1", "--out", str(ft)]) == 0
    samples = tmp_path / "gc.fa"
    assert main(["sample", "--model", str(cond_run / "model"), "--class", "gc", "--guidance", "3", "--num-samples",
                 "16", "--length", str(LENGTH), "--steps", "16", "--out", str(samples)]) == 0
    real = tmp_path / "real_gc.fa"
    rows = [line.split(",") for line in labels.read_text().splitlines()[1:]]
    real.write_text("".join(f">r{i}\n{s}\n" for i, (s, y) in enumerate(rows) if y == "gc"))
    capsys.readouterr()
    rep = tmp_path / "rep"
    assert main(["evaluate-samples", "--samples", str(samples), "--reference", str(real), "--oracle",
                 str(ft / "model"), "--target-class", "gc", "--no-motifs", "--out", str(rep)]) == 0
    assert "oracle calls" in capsys.readouterr().err
    oracle = json.loads((rep / "metrics.json").read_text())["oracle"]
    assert oracle["classes"] == ["at", "gc"] and oracle["target_class"] == "gc"
    assert oracle["reference"]["target_rate"] >= 0.9  # the oracle itself tells the real GC-rich set apart
    assert oracle["generated"]["target_rate"] >= 0.8
    assert abs(sum(oracle["generated"]["mean_probability"].values()) - 1) < 1e-6
    for extra, message in ((["--oracle", str(ft / "model"), "--target-class", "promoter"], "known: at, gc"),
                           (["--target-class", "gc"], "--target-class needs --oracle"),
                           (["--oracle", str(cond_run / "model")], "not a fine-tuned classifier")):
        bad = tmp_path / "bad"
        assert main(["evaluate-samples", "--samples", str(samples), "--reference", str(real), "--no-motifs",
                     "--out", str(bad), *extra]) == 2
        assert message in capsys.readouterr().err
        assert not bad.exists()


# --- the benchmark's smoke mode ---------------------------------------------------------------------


@pytest.mark.slow
def test_conditional_generation_benchmark_smoke(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "conditional_generation.py"
    spec = importlib.util.spec_from_file_location("conditional_generation", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    md = tmp_path / "table.md"
    assert bench.main(["--smoke", "--out", str(tmp_path / "run"), "--md", str(md), "--png", str(tmp_path / "p.png")]) == 0
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    methods = {r["method"] for r in report["rows"]}
    assert methods == {"MDLM guidance 0 (unconditional)", "MDLM guidance 1", "MDLM guidance 2", "MDLM guidance 4",
                       "per-class Markov LM", "real held-out"}
    assert len(report["rows"]) == 12 and md.read_text().count("\n") == 14 and (tmp_path / "p.png").stat().st_size
    rate = {(r["method"], r["class"]): r["oracle_target_rate"] for r in report["rows"]}
    # Guidance moves samples towards the asked-for class (averaged over the two classes).
    assert sum(rate[("MDLM guidance 4", c)] for c in report["classes"]) > \
        sum(rate[("MDLM guidance 0 (unconditional)", c)] for c in report["classes"])
    assert set(report["verdicts"]) == {"MDLM guidance 1", "MDLM guidance 2", "MDLM guidance 4"}
