"""Pretraining and likelihood end to end on real chr20 sequence: model directory, resume (also after SIGKILL),
divergence, DDP, bad inputs."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SLICE

from dna_mdlm.cli import main
from dna_mdlm.errors import InputError
from dna_mdlm.training.common import EMA, optimizer_groups
from dna_mdlm.training.pretrain import pretrain

REC = "20:40000001-41000000"
pytestmark = pytest.mark.skipif(not SLICE.is_file(), reason=f"shared genome data not found at {SLICE}")


def cfg(**over):
    base = {
        "fasta": [str(SLICE)], "val_regions": [f"{REC}:900001-1000000"], "seed": 0,
        "model": {"d_model": 8, "n_layer": 1, "rcps": True},
        "data": {"window": 64, "batch_size": 4, "max_val_windows": 8, "train_samples_per_epoch": 1000},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9},
        "trainer": {"max_steps": 6, "val_every": 3, "log_every": 1, "progress_bar": False},
    }
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) else v
    return base


def train_losses(run: Path) -> dict[int, float]:
    """Training loss per step over every log segment of a run (a later segment's row wins)."""
    out = {}
    for f in sorted((run / "logs").glob("segment-*/metrics.csv"), key=lambda f: int(f.parent.name.split("-")[1])):
        with open(f) as fh:
            out.update({int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")})
    return out


def strict_json(path: Path):
    """json.loads that rejects the bare NaN / Infinity tokens strict parsers refuse."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_pretrain_writes_a_model_that_loads_and_scores(tmp_path):
    from dna_mdlm.loading import load_model

    summary = pretrain(cfg(), tmp_path / "run")
    assert summary["steps"] == 6 and math.isfinite(summary["val_bpd"])
    model, kind = load_model(tmp_path / "run" / "model")
    assert kind == "mdlm" and model.config.train_window == 64
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    state = json.loads((tmp_path / "run" / "model" / "training_state.json").read_text())
    assert state["ema"] is True
    # The likelihood verb scores a held-out piece and reports an upper bound with a standard error.
    out = tmp_path / "lik.json"
    rc = main(["likelihood", "--model", str(tmp_path / "run" / "model"), "--fasta", str(SLICE),
               "--region", f"{REC}:900001-902000", "--out", str(out), "--per-window", str(tmp_path / "w.tsv")])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["bases_scored"] == 2000 and rep["upper_bound"] is True
    assert 1.0 < rep["bits_per_base"] < 4.0 and rep["stderr_bits_per_base"] > 0
    assert rep["perplexity"] == pytest.approx(2 ** rep["bits_per_base"], rel=1e-9)
    assert len((tmp_path / "w.tsv").read_text().splitlines()) == 1 + rep["windows"]


@pytest.mark.slow
def test_resume_continues_with_the_same_losses(tmp_path):
    # A constant schedule, because the interrupted run is stopped by a smaller max_steps, and a cosine
    # schedule depends on max_steps.
    const = {"lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9, "lr_schedule": "constant"}
    full = tmp_path / "full"
    pretrain(cfg(optim=const), full)
    part = tmp_path / "part"
    pretrain(cfg(optim=const, trainer={"max_steps": 3}), part)  # checkpoint at step 3 (val_every)
    pretrain({"trainer": {"max_steps": 6}}, part, resume=True)  # only the budget changes
    a, b = train_losses(full), train_losses(part)
    assert set(range(3, 6)) <= set(b)
    for step in range(3, 6):  # the steps after the resume point
        assert b[step] == pytest.approx(a[step], rel=1e-6), step
    assert len(list((part / "logs").glob("segment-*/metrics.csv"))) == 2  # both segments kept
    with pytest.raises(InputError, match=r"--resume: data.window = 32 contradicts the saved run \(64"):
        pretrain({"data": {"window": 32}}, part, resume=True)


def _state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_a_time_budget_stop_resumes_exactly_with_a_fresh_budget_per_segment(tmp_path, capsys):
    # A zero --max-time stops deterministically after one step (the budget is checked at each step's end): the
    # same stop path as a real budget, mid-epoch and between validations, without asserting wall-clock.
    full, part = tmp_path / "full", tmp_path / "part"
    pretrain(cfg(), full)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(cfg()))  # JSON is YAML
    rc = main(["pretrain", "--config", str(recipe), "--max-time", "00:00:00:00", "--out", str(part)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "stopped by its --max-time budget at step 1 of 6" in err and f"--out {part} --resume" in err, err
    assert strict_json(part / "summary.json")["status"] == "stopped: time budget"
    assert pretrain({}, part, resume=True)["steps"] == 2  # the recorded budget again, per segment: one more step
    done = pretrain({"trainer": {"max_time": None}}, part, resume=True)  # no budget: on to max_steps
    assert done["status"] == "finished" and done["steps"] == 6
    a, b = _state(full), _state(part)
    assert a["global_step"] == b["global_step"] == 6
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]) for k in a["ema"]["shadow"])
    la, lb = train_losses(full), train_losses(part)
    assert all(la[step] == lb[step] for step in range(6))
    # Every segment validated at its last step: model/ and the held-out figure are those of the uninterrupted run.
    for run in (full, part):
        assert json.loads((run / "model" / "training_state.json").read_text())["step"] == 6
    assert strict_json(full / "summary.json")["heldout"] == strict_json(part / "summary.json")["heldout"]


CLI_RUN = ["--fasta", str(SLICE), "--val-region", f"{REC}:900001-1000000", "--seed", "3",
           "--set", "model.d_model=8", "--set", "model.n_layer=1", "--set", "data.window=64", "--set", "data.batch_size=4",
           "--set", "data.max_val_windows=8", "--set", "trainer.max_steps=40", "--set", "trainer.val_every=4",
           "--set", "trainer.log_every=1", "--set", "trainer.progress_bar=false", "--set", "optim.warmup_steps=2"]


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dna_mdlm.cli", "pretrain", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_sigkill_then_the_readme_resume_command_matches_an_uninterrupted_run(tmp_path):
    full = _cli(*CLI_RUN, "--out", str(tmp_path / "full"))
    killed = _cli(*CLI_RUN, "--out", str(tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.is_file() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)  # a real kill: no Python cleanup runs
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert full.wait(timeout=600) == 0, full.stderr.read()[-2000:]
    resumed = _cli("--out", str(tmp_path / "run"), "--resume")  # the README's form: nothing but --out
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "run")
    assert max(b) == max(a) == 39
    for step in range(30, 40):  # well after the resume point: the same data, masks and optimiser state
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    assert (tmp_path / "run" / "logs" / "segment-1" / "metrics.csv").is_file()  # the killed segment's log stays
    assert strict_json(tmp_path / "run" / "summary.json")["steps"] == 40
    # a flag that contradicts the saved run is a one-line error, and nothing is deleted
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    bad = _cli("--out", str(tmp_path / "run"), "--resume", "--lr", "0.5")
    _, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and err.strip().count("\n") == 0 and "contradicts the saved run" in err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == files


@pytest.mark.slow
def test_divergence_stops_with_one_line_keeps_finite_files_and_exports_no_nan_model(tmp_path, capsys):
    # an Adam step moves every weight by about lr: at 1e30 the next forward overflows to inf/NaN on any kernel
    # (a merely large lr such as 1 stopped diverging once the scan kernels changed, so it is not a reliable trigger)
    run = tmp_path / "nan"
    rc = main(["pretrain", "--config", "tiny", "--max-steps", "50", "--lr", "1e30", "--out", str(run),
               "--set", "trainer.progress_bar=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "diverged" in err[0], err
    summary = strict_json(run / "summary.json")
    assert summary["status"] == "diverged" and "not finite" in summary["error"]
    from dna_mdlm.loading import load_model

    for directory in (run / "model", run / "final_model"):
        if directory.exists():
            load_model(directory)  # refuses non-finite weights
    ckpt = run / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.slow
def test_ar_and_markov_objectives_train_and_score_exactly(tmp_path):
    pretrain(cfg(objective="ar", model={"d_model": 8, "n_layer": 1, "rcps": False}), tmp_path / "ar")
    pretrain({"objective": "markov", "fasta": [str(SLICE)], "val_regions": [f"{REC}:900001-1000000"]}, tmp_path / "mk")
    for name in ("ar", "mk"):
        out = tmp_path / f"{name}.json"
        assert main(["likelihood", "--model", str(tmp_path / name / "model"), "--fasta", str(SLICE),
                     "--region", f"{REC}:900001-901000", "--out", str(out)]) == 0
        rep = json.loads(out.read_text())
        assert rep["upper_bound"] is False and rep["bases_scored"] == 1000
    assert json.loads((tmp_path / "mk.json").read_text())["bits_per_base"] < 1.99  # real DNA beats uniform


@pytest.mark.slow
def test_two_process_cpu_ddp(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dna_mdlm.cli", "pretrain", "--fasta", str(SLICE), "--val-region", f"{REC}:900001-1000000",
           "--out", str(tmp_path / "ddp"), "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
           "--set", "model.d_model=8", "--set", "model.n_layer=1", "--set", "data.window=64", "--set", "data.batch_size=4",
           "--set", "data.max_val_windows=8", "--set", "trainer.max_steps=4", "--set", "trainer.val_every=2",
           "--set", "trainer.progress_bar=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["world_size"] == 2
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()


def test_optimizer_groups_and_ema():
    from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM

    model = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1))
    decay, no_decay = optimizer_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    assert any(n.endswith("A_log") for n in no) and any(n.endswith(".D") for n in no)
    assert any("norm" in n for n in no) and any("embedding" in n for n in no)
    assert all("in_proj" in names[id(p)] or "out_proj" in names[id(p)] or "x_proj" in names[id(p)]
               or "dt_proj.weight" in names[id(p)] or "conv1d.weight" in names[id(p)] for p in decay["params"])
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in model.named_parameters()}
    ema.update(model)
    ema.swap(model)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed  # the EMA weights differ from the live ones
    ema.swap(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def _fails(args, tmp_path, match):
    out = tmp_path / "out"
    rc = main(["pretrain", *args, "--out", str(out), "--config", "tiny", "--set", "trainer.progress_bar=false"])
    assert rc == 2
    assert not out.exists(), "a rejected input must leave no output behind"
    return rc


@pytest.mark.parametrize("case", ["missing", "empty", "no_header", "invalid", "too_long", "bad_region", "bed_outside"])
def test_bad_inputs_give_one_line_errors_and_no_output(tmp_path, capsys, case):
    fa = tmp_path / "g.fa"
    args = ["--fasta", str(fa)]
    if case == "missing":
        args = ["--fasta", str(tmp_path / "nope.fa")]
    elif case == "empty":
        fa.write_text("")
    elif case == "no_header":
        fa.write_text("ACGTACGT\n" * 20)
    elif case == "invalid":
        fa.write_text(">r\n" + "ACGT" * 100 + "\n" + "ACGTXCGT" * 20 + "\n")
    elif case == "too_long":
        fa.write_text(">r\n" + "ACGT" * 10 + "\n")
    elif case == "bad_region":
        fa.write_text(">r\n" + "ACGT" * 200 + "\n")
        args += ["--val-region", "r:500-100"]
    elif case == "bed_outside":
        fa.write_text(">r\n" + "ACGT" * 200 + "\n")
        bed = tmp_path / "x.bed"
        bed.write_text("r\t0\t500\nr\t700\t900\n")
        args += ["--bed", str(bed)]
    _fails(args, tmp_path, case)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dna-mdlm pretrain: error:"), err
    if case == "invalid":
        assert "g.fa:3:" in err[0] and "'X'" in err[0]
    if case == "bed_outside":
        assert "x.bed:2:" in err[0]


@pytest.mark.parametrize("spelling,expected", [("fp16", "16-mixed"), ("16", "16-mixed"), ("bf16", "bf16-mixed"),
                                                ("32", "32-true"), ("BF16-mixed", "bf16-mixed"), ("64", "64-true")])
def test_precision_spellings(spelling, expected):
    from dna_mdlm.training.recipes import normalize_precision

    assert normalize_precision(spelling) == expected


def test_bad_precision_and_unusable_hardware_are_one_line_errors(tmp_path, capsys):
    for args, word in ((["--precision", "fp8"], "expected one of 32, 16, bf16"),
                       (["--precision", "fp16", "--accelerator", "cpu"], "fp16 needs a GPU"),
                       (["--accelerator", "tpu"], "--accelerator tpu"),
                       (["--max-time", "3h"], "--max-time 3h: expected a wall-clock budget DD:HH:MM:SS")):
        rc = main(["pretrain", "--fasta", str(SLICE), "--config", "tiny", "--out", str(tmp_path / "o"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and word in err[0], (args, err)
        assert not (tmp_path / "o").exists()


def test_cli_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("pretrain", "likelihood", "sample", "finetune", "predict", "embed", "evaluate-samples"):
        assert verb in out


def _periodic_genome(path: Path, n: int = 60_000, seed: int = 0) -> Path:
    """A learnable genome: a repeated 10-mer with 3% substitutions (a tiny model learns it in a hundred steps)."""
    rng = np.random.default_rng(seed)
    seq = np.array(list("ACGTTGCAAC" * (n // 10)))
    flip = rng.random(seq.size) < 0.03
    seq[flip] = rng.choice(list("ACGT"), int(flip.sum()))
    path.write_text(">p\n" + "\n".join("".join(seq[i:i + 60]) for i in range(0, seq.size, 60)) + "\n")
    return path


@pytest.mark.slow
def test_init_starts_from_the_init_models_own_bound_and_writes_a_model_card(tmp_path):
    from dna_mdlm.training.pretrain import heldout_bound

    genome = _periodic_genome(tmp_path / "p.fa")
    base = {"fasta": [str(genome)], "val_regions": ["p:50001-60000"], "seed": 0,
            "model": {"d_model": 8, "n_layer": 1, "rcps": True},
            "data": {"window": 64, "batch_size": 8, "max_val_windows": 16, "train_samples_per_epoch": 1000},
            "optim": {"lr": 1e-2, "warmup_steps": 5, "ema_decay": 0.9},
            "trainer": {"max_steps": 100, "val_every": 50, "log_every": 10, "progress_bar": False}}
    first = pretrain(base, tmp_path / "first")
    assert first["heldout"]["bits_per_base"] < 1.6  # learnt: uniform is 2 bits
    cont = {k: v for k, v in base.items() if k != "model"}
    cont["trainer"] = {**base["trainer"], "max_steps": 5}
    cont["init"] = str(tmp_path / "first" / "model")
    second = pretrain(cont, tmp_path / "second")
    # step 0 of the continued run is the init model itself (one time sample per window: Monte-Carlo noise only)
    from dna_mdlm.data.genome import GenomeWindows

    val = GenomeWindows(genome, window=64, val_regions=["p:50001-60000"]).eval_dataset("val", 16)
    ref = heldout_bound(tmp_path / "first" / "model", val, num_samples=16)
    assert second["init_val_bpd"] == pytest.approx(ref["bits_per_base"], abs=max(0.05, 6 * ref["stderr_bits_per_base"]))
    assert second["init"] == str(tmp_path / "first" / "model")
    card = (tmp_path / "second" / "model" / "README.md").read_text()
    for words in ("initialised from", str(tmp_path / "first" / "model"), "held-out bits/base", "k-mer Markov LM",
                  "How to load", "Data licence"):
        assert words in card, words
    # a recipe that would change the architecture is refused; so is an objective that does not fit
    with pytest.raises(InputError, match=r"model.d_model = 16 would change the init model's architecture"):
        pretrain({**cont, "model": {"d_model": 16}}, tmp_path / "third")
    with pytest.raises(InputError, match=r"--objective ar does not fit a mdlm model"):
        pretrain({**cont, "objective": "ar"}, tmp_path / "fourth")
    assert not (tmp_path / "third").exists() and not (tmp_path / "fourth").exists()
