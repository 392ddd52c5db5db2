"""Self-distillation through time (`dna-mdlm distill`, dna_mdlm/training/distill.py): the objective, one round end
to end on a tiny teacher, the student as an ordinary model directory, exact resume, bad settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dna_mdlm.cli import main
from dna_mdlm.errors import InputError
from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM
from dna_mdlm.tokenizer import encode_dna
from dna_mdlm.training.distill import DistillModule, distill, distill_settings

RNG = np.random.default_rng(3)
WINDOW = 64


def dna(n: int) -> str:
    # Some structure (a biased Markov chain) so the teacher's predictions depend on context.
    out, prev = [], 0
    for _ in range(n):
        p = np.roll([0.55, 0.15, 0.15, 0.15], prev)
        prev = int(RNG.choice(4, p=p))
        out.append("ACGT"[prev])
    return "".join(out)


GENOME = dna(24_000)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def peaked_teacher() -> CaduceusForMaskedLM:
    """An untrained d_model 8 MDLM whose outputs are made confident (final norm x15), so that one and two teacher
    steps really differ."""
    torch.manual_seed(0)
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1, train_window=WINDOW))
    with torch.no_grad():
        model.caduceus.backbone.norm_f.submodule.weight.mul_(15)
    return model


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    peaked_teacher().save_pretrained(d / "teacher")
    (d / "genome.fa").write_text(">chrT\n" + "\n".join(GENOME[i:i + 60] for i in range(0, len(GENOME), 60)) + "\n")
    (d / "small.fa").write_text(">a\n" + GENOME[:300] + "\n>b\n" + GENOME[5000:5200] + "\n")
    ar = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1, objective="ar", bidirectional=False, rcps=False))
    ar.save_pretrained(d / "ar")
    return d


def batch(n: int = 16):
    x = torch.as_tensor(encode_dna(GENOME[1000:1000 + n * WINDOW])).view(n, WINDOW)
    return x, torch.ones_like(x, dtype=torch.bool), torch.linspace(0.05, 0.95, n)


def test_student_starts_as_the_teacher_and_learns_the_two_step_target():
    module = DistillModule(peaked_teacher(), teacher_steps=8, steps_per_round=4)
    x, mask, t = batch()
    kl, base, n = module.sdtt_loss(x, mask, t, torch.Generator().manual_seed(5))
    assert n > 0 and float(base) > 1e-3  # two teacher steps differ from one
    assert abs(kl.detach().item() - base.item()) < 1e-6  # round 1 starts from the teacher itself
    opt = torch.optim.Adam(module.student.parameters(), lr=3e-4)
    for _ in range(25):
        kl, base, n = module.sdtt_loss(x, mask, t, torch.Generator().manual_seed(5))
        opt.zero_grad()
        kl.backward()
        opt.step()
    assert float(kl) < 0.9 * float(base)  # the student matches the two-step teacher better than one teacher step


def test_target_is_the_first_step_where_it_ends_at_clean_data():
    # teacher_steps 2 (dt = 1/2): for t <= 1/2 the first teacher step already ends at t = 0, so every masked
    # position unmasks in it and the target is the teacher's first prediction: zero KL to the teacher.
    module = DistillModule(peaked_teacher(), teacher_steps=2, steps_per_round=4)
    x, mask, _ = batch()
    _, base, _ = module.sdtt_loss(x, mask, torch.full((16,), 0.4), torch.Generator().manual_seed(1))
    assert float(base) == 0.0
    _, later, _ = module.sdtt_loss(x, mask, torch.full((16,), 0.9), torch.Generator().manual_seed(1))
    assert float(later) > 1e-3


def cli(kit, out, *extra):
    return main(["distill", "--teacher", str(kit / "teacher"), "--out", str(out), "--config", "tiny",
                 "--fasta", str(kit / "genome.fa"), "--val-region", "chrT:20001-24000", *extra])


def test_one_round_end_to_end_and_the_student_works_in_every_verb(kit, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(kit, out, "--rounds", "1") == 0
    err = capsys.readouterr().err
    assert "8 -> 4 steps per window" in err and "teacher in one step" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["student_steps"] == 4 and summary["steps"] == 4
    assert summary["per_round"][0]["val_kl"] >= 0 and summary["per_round"][0]["val_kl_teacher_one_step"] > 0
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["distillation"]["steps"] == 4 and cfg["distillation"]["rounds"] == 1
    assert cfg["distillation"]["teacher"] == str((kit / "teacher").resolve()) and cfg["objective"] == "mdlm"
    assert (out / "round-1" / "model.safetensors").is_file() and (out / "run_config.json").is_file()
    student = load_file(out / "model" / "model.safetensors")
    teacher = load_file(kit / "teacher" / "model.safetensors")
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)  # it trained
    # An ordinary model directory: likelihood, sample (its own step count by default), embed.
    assert main(["likelihood", "--model", str(out / "model"), "--fasta", str(kit / "small.fa"), "--out",
                 str(tmp_path / "l.json")]) == 0
    assert json.loads((tmp_path / "l.json").read_text())["bases_scored"] == 500
    assert main(["sample", "--model", str(out / "model"), "--num-samples", "3", "--length", "100", "--order",
                 "dilated", "--out", str(tmp_path / "s.fa")]) == 0
    side = json.loads((tmp_path / "s.fa.json").read_text())
    assert side["steps"] == 4 and side["distilled"]["steps"] == 4
    assert side["stats"]["network_calls"] <= 4 * len(side["stats"]["windows"])
    assert main(["embed", "--model", str(out / "model"), "--fasta", str(kit / "small.fa"), "--out",
                 str(tmp_path / "e.npz")]) == 0
    assert main(["evaluate-samples", "--samples", str(tmp_path / "s.fa"), "--reference", str(kit / "genome.fa"),
                 "--model", str(out / "model"), "--judge-samples", "1", "--out", str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["judge_bits_per_base"]["generated"] > 0


def test_resume_adds_a_round_exactly(kit, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli(kit, straight, "--rounds", "2") == 0
    # A zero --max-time stops after one step (the budget is checked at each step's end, per run segment): the
    # time-budget stop path, deterministic.
    assert cli(kit, resumed, "--rounds", "1", "--max-time", "00:00:00:00") == 0
    assert "stopped at step 1 (stopped: time budget); continue with" in capsys.readouterr().err
    assert json.loads((resumed / "summary.json").read_text())["status"] == "stopped: time budget"
    resume = ["distill", "--teacher", str(kit / "teacher"), "--out", str(resumed), "--resume"]
    assert main(resume) == 0  # the recorded budget again, per segment: one step more
    assert json.loads((resumed / "summary.json").read_text())["steps"] == 2
    resume += ["--set", "trainer.max_time=null"]  # no budget
    assert main(resume) == 0  # round 1 to its end
    assert json.loads((resumed / "summary.json").read_text())["steps"] == 4
    assert main([*resume, "--rounds", "2"]) == 0
    assert json.loads((resumed / "summary.json").read_text())["status"] == "finished"
    capsys.readouterr()
    rounds = json.loads((resumed / "summary.json").read_text())["per_round"]
    assert rounds == json.loads((straight / "summary.json").read_text())["per_round"]  # round 1's figures kept
    assert all("val_kl" in r and "val_kl_teacher_one_step" in r for r in rounds)
    a, b = load_file(straight / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "model" / "config.json").read_text())["distillation"]["steps"] == 2
    r1 = load_file(resumed / "round-1" / "model.safetensors")
    assert any(not torch.equal(a[k], r1[k]) for k in a)  # round 2 kept training after round 1


def test_the_student_of_a_student_halves_again(kit, tmp_path, capsys):
    first = tmp_path / "first"
    assert cli(kit, first, "--rounds", "1") == 0
    second = tmp_path / "second"
    assert main(["distill", "--teacher", str(first / "model"), "--out", str(second), "--config", "tiny",
                 "--set", "teacher_steps=null", "--fasta", str(kit / "genome.fa"), "--rounds", "1"]) == 0
    capsys.readouterr()
    assert json.loads((second / "model" / "config.json").read_text())["distillation"]["steps"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--rounds", "0"], "--rounds 0"),
    (["--rounds", "4"], "cannot be halved"),
    (["--teacher-steps", "1"], "--teacher-steps 1"),
    (["--set", "divergence=mse"], "divergence 'mse'"),
    (["--set", "optim.lr=-1"], "--set optim.lr=-1"),
    (["--set", "trainer.steps=3"], "unknown key(s) ['steps']"),
    (["--resume"], "no run to resume"),
])
def test_bad_settings_are_one_line_errors(kit, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert cli(kit, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dna-mdlm distill: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_bad_teachers_and_data(kit, tmp_path):
    with pytest.raises(InputError, match="needs an MDLM teacher"):
        distill(distill_settings("tiny", {"teacher": str(kit / "ar"), "fasta": [str(kit / "genome.fa")]}),
                tmp_path / "a")
    with pytest.raises(InputError, match="--fasta: needed"):
        distill(distill_settings("tiny", {"teacher": str(kit / "teacher")}), tmp_path / "b")
    with pytest.raises(InputError, match="no such directory"):
        distill(distill_settings("tiny", {"teacher": str(tmp_path / "none"), "fasta": [str(kit / "genome.fa")]}),
                tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_iupac_codes_fail_before_anything_is_written_and_unknown_n_follows_the_teacher_run(kit, tmp_path, capsys):
    iu = tmp_path / "iu.fa"
    iu.write_text(">chrT\n" + GENOME[:15_000] + "R" + GENOME[15_001:] + "\n")  # an R inside the training part
    out = tmp_path / "bad"
    assert main(["distill", "--teacher", str(kit / "teacher"), "--out", str(out), "--config", "tiny", "--fasta",
                 str(iu), "--val-region", "chrT:20001-24000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--unknown N" in err and "\n" not in err
    assert not out.exists()  # found before anything was written: a rerun is not "already holds a run"
    # A teacher trained with `pretrain --unknown N` on that FASTA: distill reads it the same way by default.
    teacher = tmp_path / "t" / "model"
    peaked_teacher().save_pretrained(teacher)
    (teacher.parent / "run_config.json").write_text(json.dumps({"fasta": [str(iu)], "data": {"unknown": "N"},
                                                                "val_regions": ["chrT:20001-24000"]}))
    good = tmp_path / "good"
    assert main(["distill", "--teacher", str(teacher), "--out", str(good), "--config", "tiny"]) == 0
    assert json.loads((good / "run_config.json").read_text())["data"]["unknown"] == "N"
    assert main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "strict"), "--config", "tiny",
                 "--unknown", "error"]) == 2
    assert not (tmp_path / "strict").exists()
    capsys.readouterr()


def test_an_existing_run_is_not_overwritten(kit, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(kit, out, "--rounds", "1") == 0
    before = (out / "model" / "model.safetensors").read_bytes()
    assert cli(kit, out, "--rounds", "1") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "model" / "model.safetensors").read_bytes() == before


def _epilog_commands(verb: str) -> list[list[str]]:
    import shlex

    from dna_mdlm.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb").choices[verb]
    lines = [ln.strip() for ln in sub.epilog.splitlines() if ln.strip().startswith("dna-mdlm ")]
    return [shlex.split(ln.split("#")[0])[1:] for ln in lines]


@pytest.mark.slow
def test_the_help_examples_run(kit, tmp_path, monkeypatch, capsys):
    # The epilogs of `distill` and the --order examples of `sample`, verbatim, on a tiny teacher placed where they
    # look for it (runs/demo/model, with its run's run_config.json naming the training FASTA beside it).
    monkeypatch.chdir(tmp_path)
    demo = tmp_path / "runs" / "demo"
    peaked_teacher().save_pretrained(demo / "model")
    (demo / "run_config.json").write_text(json.dumps({"fasta": [str(kit / "genome.fa")],
                                                      "val_regions": ["chrT:20001-24000"]}))
    for argv in [c for c in _epilog_commands("sample") if "--order" in c] + _epilog_commands("distill"):
        assert main(argv) == 0, argv
    capsys.readouterr()
    cfg = json.loads((tmp_path / "runs" / "sdtt" / "model" / "config.json").read_text())
    assert cfg["distillation"]["rounds"] == 4 and cfg["distillation"]["steps"] == 4
    assert json.loads((tmp_path / "student.fa.json").read_text())["steps"] == 4  # the student's own steps
