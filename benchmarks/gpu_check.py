"""The prepared check of the GPU path (issue 16): one run of about 8 minutes on a lent H200, and its CPU dry run.

On the GPU machine, in one go, each stage writing what it measured into OUT/results.json as soon as it has it:

  0. install the carried wheels (pyfaidx, Biopython: the GPU image lacks them) into /tmp/site, and start building
     the C++ scan in the background (the CPU side of stage 2 uses it);
  1. `pytest -m gpu tests/test_gpu.py`: every scan path against the float64 reference on CUDA, Caduceus-PS and -Ph
     steps under bf16 autocast, RC equivariance, sampler and likelihood against the CPU, Lightning single-device DDP;
  2. training throughput of the gb-118 recipe (d_model 118, 4 layers, 1 kb, batch 128): tokens/s of the MDLM step
     on the GPU (bf16-mixed, the scan path `scan_backend('cuda')` picks) next to the same step on the machine's CPU
     (fp32, every core, batch 16), their ratio, and the peak GPU memory;
  3. wall time per 1,024-bp sequence at batch 1 and 64: MDLM (ddpm_cache, T = 32 and 128) against AR recurrent
     decoding of the same-width causal model (untrained weights: the cost does not depend on them);
  4. gb-118 MDLM pretraining on chr20 for what is left of the time budget (`--max-time`), with the split of the
     benchmark models (validation 20:41,000,001-41,500,000; test 20:40,000,001-41,000,000 and
     20:42,884,001-43,084,000), then the held-out bits/base on 20:40,000,001-41,000,000 of that model, of the
     k-mer Markov LM fitted on the same training split (on the CPU, while the GPU trains) and, when carried, of a
     CPU-trained model.

It writes six files under OUT (the device tool returns at most 8, at most 2 folders down): gpu_check.log,
pytest_gpu.log, pretrain.log, results.json, results.md (the RESULTS.md section, filled in) and model.tar.gz (the
model directory, summary, loss curve, metrics and held-out reports).

Here, without a GPU:

    python benchmarks/gpu_check.py --prepare [--cpu-model DIR]   # wheels into .whl/, chr20 into .gpu_data/
    python benchmarks/gpu_check.py --dry-run                      # check the plan; every stage tiny on the CPU
    python benchmarks/gpu_check.py --print-run                    # the device tool's run call

On the GPU machine (the device tool runs this in the repository root, with .whl and .gpu_data carried):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

# Every core for the CPU baseline; set before torch is imported (benchmarks/pretrain_throughput.py would set 1).
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
SHARED = Path(os.environ.get("DNA_MDLM_SHARED_DATA", ROOT.parent / "shared" / "data"))

# What the GPU image lacks (the device tool's KINDS.md: Python 3.12, torch 2.11, Lightning, transformers present).
DEVICE_PYTHON = "3.12"
WHEELS = {"pyfaidx": "0.9.2.2", "biopython": "1.88"}
IMPORT_NAMES = {"pyfaidx": "pyfaidx", "biopython": "Bio"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
WHEEL_DIR, DATA_DIR = ".whl", ".gpu_data"
CARRY = [WHEEL_DIR, DATA_DIR]
FASTA_FILES = ["human_GRCh37_chr20.fa.gz", "human_GRCh37_chr20.fa.gz.fai", "human_GRCh37_chr20.fa.gz.gzi"]
CPU_MODEL = "cpu_model"  # optional: a CPU-trained model directory, scored on the same held-out region
VAL_REGIONS = ["20:41000001-41500000"]
TEST_REGIONS = ["20:40000001-41000000", "20:42884001-43084000"]
HELDOUT = "20:40000001-41000000"

# The device tool's limits (its README): 64 MiB travel, 2,000-character command, 8 files back 2 folders deep.
TREE_LIMIT = 64 << 20
COMMAND_LIMIT = 2000
OUT_FILES, OUT_FILE_BYTES, OUT_TOTAL_BYTES, OUT_DEPTH = 8, 16 << 20, 64 << 20, 2
RUN_COMMAND = 'PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$OUT"'
BUDGET_S = 510  # the whole script; the call's timeout below leaves room for the machine's own overheads
RUN_TIMEOUT_S = 580

FULL = {
    "recipe": "gb-118", "gpu_batch": None, "cpu_batch": 16, "gpu_steps": 5, "cpu_steps": 2, "tests_timeout_s": 150,
    "sample_model": {"d_model": 118, "n_layer": 4}, "sample_length": 1024, "sample_steps": [32, 128],
    "sample_batches": [1, 64], "sampling_budget_s": 80, "eval_reserve_s": 55, "min_train_s": 60,
    "pretrain_set": ["data.max_val_windows=256", "trainer.log_every=10", "trainer.progress_bar=false"],
    "heldout": HELDOUT, "bed": None, "likelihood_batch": 64,
}
DRY = {
    "recipe": "tiny", "gpu_batch": 4, "cpu_batch": 4, "gpu_steps": 2, "cpu_steps": 2, "tests_timeout_s": 300,
    "sample_model": {"d_model": 16, "n_layer": 2}, "sample_length": 128, "sample_steps": [4, 8],
    "sample_batches": [1, 4], "sampling_budget_s": 120, "eval_reserve_s": 0, "min_train_s": 0,
    "pretrain_set": ["data.max_val_windows=8", "trainer.val_every=3", "trainer.log_every=1",
                     "trainer.progress_bar=false"],
    "heldout": "20:40000001-40010000", "likelihood_batch": 16,
    # Training and the Markov fit read a few hundred kb instead of the chromosome (0-based BED).
    "bed": ["20\t30000000\t30300000", "20\t40000000\t40010000", "20\t41000000\t41050000"],
}


# --------------------------------------------------------------------------------------------------
# logging and results
# --------------------------------------------------------------------------------------------------


class Run:
    """Where this run writes: OUT (what comes back), a scratch folder, the log, results.json (rewritten atomically
    after every stage, so a run stopped at its time limit still returns what it measured)."""

    def __init__(self, out: Path, mode: str, budget_s: float, carry_root: Path):
        self.out, self.mode, self.carry_root = out, mode, carry_root
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        out.mkdir(parents=True, exist_ok=True)
        self.work = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check-{os.getpid()}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "gpu_check.log"
        self.results: dict = {"mode": mode, "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "budget_s": budget_s}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, msg: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        with open(self.log_path, "a") as fh:
            fh.write(line + "\n")

    def save(self) -> None:
        tmp = self.out / ".results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        os.replace(tmp, self.out / "results.json")

    def stage(self, name: str, fn, *args):
        """Run one stage; an exception is recorded (and logged) and the next stage still runs."""
        self.log(f"== stage {name}")
        t0 = time.monotonic()
        try:
            result = fn(self, *args) or {}
            result.setdefault("status", "ok")
        except (Exception, SystemExit) as exc:  # a failed stage (a non-finite loss exits) must not cost the others
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            self.log(f"stage {name} failed: {result['error']}")
        result["seconds"] = round(time.monotonic() - t0, 1)
        self.results[name] = result
        self.save()
        self.log(f"== stage {name}: {result['status']} in {result['seconds']} s")
        return result


def sh(run: Run, cmd: list[str], log_file: Path, timeout: float, env=None) -> int:
    """A subprocess with stdout+stderr appended to log_file; returns its exit status (124 on timeout)."""
    run.log(f"$ {shlex.join(cmd)}  (log: {log_file.name}, timeout {timeout:.0f} s)")
    with open(log_file, "a") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        try:
            return subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                                  env=env or os.environ.copy()).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\n(timed out after {timeout:.0f} s)\n")
            return 124


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dna_mdlm.cli", *args]


# --------------------------------------------------------------------------------------------------
# plan checks (what --dry-run verifies before anything runs)
# --------------------------------------------------------------------------------------------------


def wheel_tags(name: str) -> tuple[str, str, str, str, str]:
    """(distribution, version, python tag, abi tag, platform tag) of a wheel file name (PEP 427)."""
    parts = name[:-4].split("-")
    return parts[0].lower().replace("_", "-"), parts[1], parts[-3], parts[-2], parts[-1]


def wheel_fits_device(name: str) -> bool:
    _, _, py, abi, plat = wheel_tags(name)
    cp = "cp" + DEVICE_PYTHON.replace(".", "")
    py_ok = any(t in (cp, "py3", f"py{DEVICE_PYTHON.replace('.', '')}") for t in py.split("."))
    abi_ok = any(t in (cp, "abi3", "none") for t in abi.split("."))
    plat_ok = any(t == "any" or (t.startswith("manylinux") and t.endswith("x86_64")) for t in plat.split("."))
    return py_ok and abi_ok and plat_ok


def check_wheels(whl: Path) -> tuple[bool, str]:
    if not whl.is_dir():
        return False, f"{whl} missing: run benchmarks/gpu_check.py --prepare"
    found = {}
    for w in sorted(whl.glob("*.whl")):
        dist, version, *_ = wheel_tags(w.name)
        found.setdefault(dist, []).append((version, w.name))
    problems = []
    for dist, version in WHEELS.items():
        have = found.pop(dist, [])
        if [v for v, _ in have] != [version]:
            problems.append(f"{dist}: want exactly {version}, have {[v for v, _ in have] or 'none'}")
        elif not wheel_fits_device(have[0][1]):
            problems.append(f"{have[0][1]} does not install on CPython {DEVICE_PYTHON} x86_64")
    if found:
        problems.append(f"unexpected wheels {sorted(found)} (one version of each listed package only)")
    return not problems, "; ".join(problems) or ", ".join(f"{d}=={v}" for d, v in WHEELS.items())


def travelling_bytes(carry_root: Path) -> tuple[int, str]:
    """Bytes the device call would send: tracked and untracked-not-ignored files, plus the carried folders."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        raise RuntimeError(f"git ls-files failed: {listed.stderr.strip()}")
    tree = sum((ROOT / f).stat().st_size for f in listed.stdout.split("\0") if f and (ROOT / f).is_file())
    carried = sum(p.stat().st_size for c in CARRY for p in (carry_root / c).rglob("*") if p.is_file())
    return tree + carried, f"tree {tree / 2**20:.1f} MiB + carried {carried / 2**20:.1f} MiB"


def pretrain_argv(run: Run, plan: dict, fasta: Path, out: Path, max_time_s: float | None, steps: int | None,
                  warmup: int | None, val_every: int | None, bed: Path | None, objective: str = "mdlm",
                  batch: int | None = None) -> list[str]:
    args = ["pretrain", "--fasta", str(fasta), "--out", str(out), "--seed", "0", "--objective", objective]
    for r in VAL_REGIONS:
        args += ["--val-region", r]
    for r in TEST_REGIONS:
        args += ["--test-region", r]
    if bed is not None:
        args += ["--bed", str(bed)]
    if objective == "markov":
        return args
    args += ["--config", plan["recipe"]]
    if batch is not None:
        args += ["--batch-size", str(batch)]
    if max_time_s is not None:
        s = int(max_time_s)
        args += ["--max-time", f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"]
    sets = list(plan["pretrain_set"])
    if steps is not None:
        sets += [f"trainer.max_steps={steps}", f"optim.warmup_steps={warmup}"]
    if val_every is not None:
        sets.append(f"trainer.val_every={val_every}")
    for s in sets:
        args += ["--set", s]
    return args


def check_pretrain_command(argv: list[str]) -> None:
    """Parse a pretrain command line and build its config exactly as the CLI would, without running it."""
    from dna_mdlm.cli import build_parser, pretrain_flags
    from dna_mdlm.training.recipes import pretrain_settings, resolve_pretrain

    args = build_parser().parse_args(argv)
    resolve_pretrain(pretrain_settings(args.config, pretrain_flags(args), args.set))


def plan_checks(run: Run, plan: dict, full_checks: bool) -> list[dict]:
    checks = []

    def check(name, fn):
        try:
            ok, detail = fn()
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks.append({"check": name, "ok": bool(ok), "detail": detail})
        run.log(f"plan: {'ok ' if ok else 'FAIL'} {name}: {detail}")

    root = run.carry_root
    check("carried folders exist", lambda: (all((root / c).is_dir() for c in CARRY),
                                            ", ".join(f"{c}: {'present' if (root / c).is_dir() else 'MISSING'}" for c in CARRY)))
    check("wheels for the device's Python", lambda: check_wheels(root / WHEEL_DIR))
    check("chr20 FASTA and its indexes carried", lambda: (all((root / DATA_DIR / f).is_file() for f in FASTA_FILES),
                                                          ", ".join(FASTA_FILES)))
    if full_checks:  # where the run is planned (git, the CLI parser, pyfaidx all here), not on the device
        def size():
            total, detail = travelling_bytes(root)
            return total <= TREE_LIMIT, f"{total / 2**20:.1f} MiB of {TREE_LIMIT >> 20} MiB ({detail})"

        def command():
            parsed = subprocess.run(["bash", "-n", "-c", RUN_COMMAND], capture_output=True, text=True)
            ok = len(RUN_COMMAND) <= COMMAND_LIMIT and parsed.returncode == 0
            return ok, f"{len(RUN_COMMAND)} characters, bash -n {'ok' if parsed.returncode == 0 else parsed.stderr.strip()}"

        def full_pretrain():
            fasta = root / DATA_DIR / FASTA_FILES[0]
            check_pretrain_command(pretrain_argv(run, FULL, fasta, run.work / "x", 240, 400, 20, 100, None, batch=64))
            check_pretrain_command(pretrain_argv(run, FULL, fasta, run.work / "y", None, None, None, None, None, "markov"))
            return True, "the full-size pretrain and Markov command lines parse and their configs check"

        check("what travels fits", size)
        check("device command", command)
        check("full-size commands", full_pretrain)
    return checks


def out_layout(out: Path) -> dict:
    """The device tool's return rules for OUT: at most 8 files, 16 MiB each, 64 MiB together, 2 folders deep,
    names of letters, digits, '.', '_' and '-'."""
    files = [p for p in out.rglob("*") if p.is_file()]
    bad_names = [str(p.relative_to(out)) for p in out.rglob("*") if not re.fullmatch(r"[A-Za-z0-9._-]+", p.name)]
    too_deep = [str(p.relative_to(out)) for p in files if len(p.relative_to(out).parts) - 1 > OUT_DEPTH]
    too_big = [str(p.relative_to(out)) for p in files if p.stat().st_size > OUT_FILE_BYTES]
    total = sum(p.stat().st_size for p in files)
    ok = len(files) <= OUT_FILES and not bad_names and not too_deep and not too_big and total <= OUT_TOTAL_BYTES
    return {"ok": ok, "files": sorted(str(p.relative_to(out)) for p in files), "bytes": total, "bad_names": bad_names,
            "too_deep": too_deep, "too_big": too_big}


# --------------------------------------------------------------------------------------------------
# stage 0: environment
# --------------------------------------------------------------------------------------------------


def stage_environment(run: Run, plan: dict, device: str) -> dict:
    site = Path(os.environ.get("TMPDIR", "/tmp")) / "site"
    missing = [d for d, m in IMPORT_NAMES.items() if importlib.util.find_spec(m) is None]
    if missing:
        wheels = sorted(str(p) for p in (run.carry_root / WHEEL_DIR).glob("*.whl"))
        rc = sh(run, [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                      "--no-cache-dir", "--upgrade", "--target", str(site), *wheels], run.log_path, 120)
        if rc != 0:
            raise RuntimeError(f"pip install of the carried wheels failed (exit {rc})")
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
    path = [str(site)] if missing else []
    os.environ["PYTHONPATH"] = os.pathsep.join(path + [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    import lightning
    import transformers

    info = {"installed_from_wheels": missing, "python": sys.version.split()[0], "torch": torch.__version__,
            "lightning": lightning.__version__, "transformers": transformers.__version__, "device": device,
            "cpu_threads": torch.get_num_threads()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    bf16_supported=torch.cuda.is_bf16_supported())
    from dna_mdlm.ops.selective_scan import mamba_cuda_available, scan_backend

    info["scan_path_cuda"] = scan_backend("cuda") if device == "cuda" else None
    info["mamba_ssm"] = mamba_cuda_available()
    # The C++ scan compiles at first use (about a minute); build it while the tests run, for stage 2's CPU side.
    run.cpp_build = subprocess.Popen(
        [sys.executable, "-c", "from dna_mdlm.ops.selective_scan import load_cpp_extension as f; f()"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(run.work / "cpp_build.log", "w"))
    return info


# --------------------------------------------------------------------------------------------------
# stage 1: pytest -m gpu
# --------------------------------------------------------------------------------------------------


def stage_tests(run: Run, plan: dict) -> dict:
    junit = run.work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append("--timeout=120")  # one hung test (a stuck process group) must not eat the stage
    rc = sh(run, cmd, run.out / "pytest_gpu.log", plan["tests_timeout_s"])
    counts = {"exit_code": rc}
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        counts["collected"] = counts.pop("tests")
        counts["failed"] = counts.pop("failures") + counts.pop("errors")
        counts["passed"] = counts["collected"] - counts["failed"] - counts["skipped"]
    counts["status"] = "ok" if rc == 0 and counts.get("failed", 1) == 0 else "failed"
    return counts


# --------------------------------------------------------------------------------------------------
# stage 2: training throughput
# --------------------------------------------------------------------------------------------------


def stage_throughput(run: Run, plan: dict, device: str) -> dict:
    from pretrain_throughput import datamodule, recipe, step_seconds

    from dna_mdlm.ops.selective_scan import load_cpp_extension, scan_backend

    cfg = recipe(plan["recipe"])
    fasta = run.carry_root / DATA_DIR / FASTA_FILES[0]
    window = cfg["data"]["window"]
    gpu_batch = plan["gpu_batch"] or cfg["data"]["batch_size"]
    dm = datamodule(fasta, window, max(gpu_batch, plan["cpu_batch"]), rc_aug=False)
    it = iter(dm.train_dataloader())
    big = [next(it) for _ in range(plan["gpu_steps"] + 1)]
    result = {"recipe": plan["recipe"], "window": window, "d_model": cfg["model"]["d_model"],
              "n_layer": cfg["model"]["n_layer"], "recipe_batch": cfg["data"]["batch_size"]}

    def cut(batches, n):
        return [{k: v[:n] for k, v in b.items()} for b in batches]  # tensors and lists alike

    while True:
        if device == "cuda":
            gc.collect()  # what the failed attempt held, before the allocator lets it go
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            gpu_times, params = step_seconds(cfg, "mdlm", cut(big, gpu_batch), device=device, precision="bf16-mixed")
            break
        except torch.cuda.OutOfMemoryError:
            # The pure-torch scan keeps every block's states for the backward (~0.85 GiB per 1-kb sequence at
            # d_model 118): halve the batch until a step fits, and train at that batch too.
            if gpu_batch <= 8:
                raise
            result.setdefault("out_of_memory_at_batch", []).append(gpu_batch)
            run.log(f"accelerator: out of memory at batch {gpu_batch}; trying {gpu_batch // 2}")
            gpu_batch //= 2
    gpu_s = sorted(gpu_times)[len(gpu_times) // 2]
    result.update(parameters=params, accel_device=device, accel_precision="bf16-mixed", accel_batch=gpu_batch,
                  accel_scan_path=scan_backend(device), accel_step_s=round(gpu_s, 4),
                  accel_tokens_per_s=round(gpu_batch * window / gpu_s, 1), accel_step_times=[round(t, 4) for t in gpu_times])
    if device == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    run.results["throughput"] = dict(result, status="partial")
    run.save()
    run.log(f"accelerator: {gpu_s:.3f} s/step at batch {gpu_batch} ({result['accel_tokens_per_s']:,.0f} tokens/s)")
    # The CPU side: the same step in fp32 (what `precision auto` picks there) with the C++ scan, every core.
    build = getattr(run, "cpp_build", None)
    if build is not None:
        try:
            build.wait(timeout=max(5.0, min(150.0, run.left() - 60)))
        except subprocess.TimeoutExpired:
            run.log("the C++ scan build is still running: the CPU side uses whatever path is ready")
    load_cpp_extension()
    # Without a C++ compiler the CPU runs the pure-torch scan, several times slower: a smaller batch keeps the
    # stage short (tokens/s hardly depends on batch on a CPU).
    cpu_batch = plan["cpu_batch"] if scan_backend("cpu") == "cpp" else max(1, plan["cpu_batch"] // 4)
    cpu_times, _ = step_seconds(cfg, "mdlm", cut(big[: plan["cpu_steps"] + 1], cpu_batch), device="cpu")
    cpu_s = sorted(cpu_times)[len(cpu_times) // 2]
    result.update(cpu_precision="32-true", cpu_batch=cpu_batch, cpu_threads=torch.get_num_threads(),
                  cpu_scan_path=scan_backend("cpu"), cpu_step_s=round(cpu_s, 4),
                  cpu_tokens_per_s=round(cpu_batch * window / cpu_s, 1),
                  cpu_step_times=[round(t, 4) for t in cpu_times])
    result["tokens_per_s_ratio"] = round(result["accel_tokens_per_s"] / result["cpu_tokens_per_s"], 2)
    run.log(f"cpu: {cpu_s:.3f} s/step at batch {cpu_batch} ({result['cpu_tokens_per_s']:,.0f} tokens/s); "
            f"ratio {result['tokens_per_s_ratio']}x")
    return result


# --------------------------------------------------------------------------------------------------
# stage 3: sampling wall time, MDLM vs AR
# --------------------------------------------------------------------------------------------------


def stage_sampling(run: Run, plan: dict, device: str) -> dict:
    from dna_mdlm.generate import generate
    from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM

    width = plan["sample_model"]
    length = plan["sample_length"]
    torch.manual_seed(0)
    mdlm = CaduceusForMaskedLM(CaduceusConfig(**width, rcps=True))
    ar = CaduceusForMaskedLM(CaduceusConfig(**width, bidirectional=False, rcps=False, objective="ar"))
    mdlm.config.train_window = length
    end = time.monotonic() + min(plan["sampling_budget_s"], max(0.0, run.left() - plan["eval_reserve_s"]
                                                                 - plan["min_train_s"]))
    for model in (mdlm, ar):  # first calls initialise kernels and libraries: not part of the figure
        generate(model, 1, 64, steps=2, device=device, seed=0)
    jobs = [("ar", None, b) for b in plan["sample_batches"]]
    jobs += [("mdlm", t, b) for t in plan["sample_steps"] for b in plan["sample_batches"]]
    rows, measured = [], {}
    for kind, steps, batch in jobs:
        # Predicted from what ran: T scales the MDLM cost linearly, batch hardly changes it on a GPU.
        same_batch = [s * (steps or 1) / (t or 1) for (k, t, b), s in measured.items() if k == kind and b == batch]
        predicted = max(same_batch) if same_batch else max(measured.values(), default=0.0)
        if time.monotonic() + predicted > end:
            rows.append({"kind": kind, "steps": steps, "batch": batch, "skipped": f"predicted {predicted:.0f} s "
                         "does not fit the stage budget"})
            run.log(f"sampling {kind} T={steps} batch {batch}: skipped (predicted {predicted:.0f} s)")
            continue
        res = generate(mdlm if kind == "mdlm" else ar, batch, length, steps=steps, sampler="ddpm_cache",
                       batch_size=batch, device=device, seed=0)
        measured[(kind, steps, batch)] = res.stats.seconds
        row = {"kind": kind, "steps": steps, "batch": batch, "seconds": round(res.stats.seconds, 3),
               "seconds_per_sequence": round(res.stats.seconds / batch, 4), "network_calls": res.stats.network_calls}
        rows.append(row)
        run.log(f"sampling {kind} T={steps} batch {batch}: {row['seconds_per_sequence']} s per {length}-bp sequence "
                f"({row['network_calls']} network calls)")
    ar_per_seq = {r["batch"]: r["seconds_per_sequence"] for r in rows if r["kind"] == "ar" and "seconds" in r}
    for r in rows:
        if r["kind"] == "mdlm" and "seconds" in r and r["batch"] in ar_per_seq:
            r["vs_ar"] = round(r["seconds_per_sequence"] / ar_per_seq[r["batch"]], 2)
    return {"length": length, "model": width, "sampler": "ddpm_cache", "device": device, "rows": rows,
            "status": "ok" if all("seconds" in r for r in rows) else "partial"}


# --------------------------------------------------------------------------------------------------
# stage 4: time-boxed gb-118 pretraining and held-out bits/base
# --------------------------------------------------------------------------------------------------


def stage_pretraining(run: Run, plan: dict, device: str) -> dict:
    fasta = run.carry_root / DATA_DIR / FASTA_FILES[0]
    bed = None
    if plan["bed"]:
        bed = run.work / "train.bed"
        bed.write_text("\n".join(plan["bed"]) + "\n")
    log = run.out / "pretrain.log"
    env = os.environ.copy()
    # The Markov yardstick is CPU work: fit it (and score it) while the GPU trains.
    markov_dir = run.work / "markov"
    markov_report = run.work / "heldout_markov.json"
    markov_cmds = [cli(*pretrain_argv(run, plan, fasta, markov_dir, None, None, None, None, bed, "markov")),
                   cli("likelihood", "--model", str(markov_dir / "model"), "--fasta", str(fasta), "--region",
                       plan["heldout"], "--out", str(markov_report))]
    markov_log = run.work / "markov.log"
    markov = subprocess.Popen(["bash", "-c", " && ".join(shlex.join(c) for c in markov_cmds)], cwd=ROOT, env=env,
                              stdout=open(markov_log, "w"), stderr=subprocess.STDOUT)
    run.log(f"Markov LM fitting in the background: {' && '.join(shlex.join(c) for c in markov_cmds)}")

    result: dict = {"recipe": plan["recipe"], "val_regions": VAL_REGIONS, "test_regions": TEST_REGIONS,
                    "heldout_region": plan["heldout"]}
    run_dir = run.work / "pretrain"
    cpu_model = run.carry_root / DATA_DIR / CPU_MODEL
    thr = run.results.get("throughput", {})
    batch = thr.get("accel_batch")  # what fit in stage 2
    peak, total = thr.get("peak_gpu_memory_gib"), run.results.get("environment", {}).get("gpu_memory_gib")
    if batch and peak and total and peak > 0.85 * total:
        batch //= 2  # a step that only just fitted alone may not fit beside the loader, validation and EMA
        result["batch_halved"] = f"stage 2 peaked at {peak} of {total} GiB"
    batch = None if batch == thr.get("recipe_batch") else batch
    result["batch"] = batch or thr.get("recipe_batch")
    if run.mode == "dry-run":
        steps, warmup, val_every, max_time = 6, 2, None, None
    else:
        # Scoring a second (carried) model costs one more process start and pass over the region.
        reserve = plan["eval_reserve_s"] + (25 if cpu_model.is_dir() else 0)
        train_s = max(plan["min_train_s"], run.left() - reserve)
        max_time = train_s - 25  # process start, FASTA check and Lightning set-up come out of the same budget
        step_s = thr.get("accel_step_s")
        if step_s:
            # Size the cosine schedule to the steps that fit (Lightning, loading and validation: ~25% on top).
            steps = max(50, min(10_000, int(max_time * 0.75 / step_s)))
            warmup, val_every = max(10, steps // 20), max(25, steps // 4)
        else:
            steps, warmup, val_every = None, None, 250  # the recipe's schedule; --max-time stops it
        result.update(planned_steps=steps, warmup_steps=warmup, val_every=val_every, max_time_s=int(max_time))
    argv = pretrain_argv(run, plan, fasta, run_dir, max_time, steps, warmup, val_every, bed, batch=batch)
    result["command"] = "dna-mdlm " + shlex.join(argv)
    run.results["pretraining"] = dict(result, status="running")
    run.save()
    rc = sh(run, cli(*argv), log, (max_time or 600) + 240, env)
    if rc != 0:
        raise RuntimeError(f"pretraining exited {rc} (see pretrain.log)")
    summary = json.loads((run_dir / "summary.json").read_text())
    result.update({k: summary[k] for k in ("steps", "seconds", "parameters", "train_bases") if k in summary})
    result.update({k: summary[k] for k in ("val_bpd",) if k in summary})
    run.results["pretraining"] = dict(result, status="scoring")
    run.save()

    heldout = {}
    lik_dev = "cuda" if device == "cuda" else "cpu"
    reports = {"mdlm": (run_dir / "model", run.work / "heldout_mdlm.json")}
    if cpu_model.is_dir():
        reports["cpu_trained_mdlm"] = (cpu_model, run.work / "heldout_cpu_model.json")
    for name, (model_dir, report) in reports.items():
        rc = sh(run, cli("likelihood", "--model", str(model_dir), "--fasta", str(fasta), "--region", plan["heldout"],
                         "--mc-samples", "2", "--batch-size", str(plan["likelihood_batch"]), "--device", lik_dev,
                         "--out", str(report)), log, max(60.0, run.left()), env)
        if rc == 0:
            heldout[name] = _report_figures(report)
    try:
        markov.wait(timeout=max(30.0, run.left()))
    except subprocess.TimeoutExpired:
        markov.kill()
    with open(markov_log) as fh, open(run.log_path, "a") as out_log:
        out_log.write("---- Markov LM (background) ----\n" + fh.read()[-4000:])
    if markov.returncode == 0 and markov_report.is_file():
        heldout["markov"] = _report_figures(markov_report)
        heldout["markov"]["order"] = json.loads((markov_dir / "summary.json").read_text()).get("order")
    result["heldout"] = heldout
    if "mdlm" in heldout and "markov" in heldout:
        result["mdlm_beats_markov"] = heldout["mdlm"]["bits_per_base"] < heldout["markov"]["bits_per_base"]
    # One archive: the model directory and what it was judged by (the tool returns files, 2 folders deep).
    with tarfile.open(run.out / "model.tar.gz", "w:gz") as tar:
        for rel in ("model", "summary.json", "loss_curve.png", "logs/version_0/metrics.csv"):
            if (run_dir / rel).exists():
                tar.add(run_dir / rel, arcname=f"gpu_gb118_mdlm/{rel}")
        for report in [r for _, r in reports.values()] + [markov_report]:
            if report.is_file():
                tar.add(report, arcname=f"gpu_gb118_mdlm/{report.name}")
    result["archive_bytes"] = (run.out / "model.tar.gz").stat().st_size
    missing = [k for k in ("mdlm", "markov") if k not in heldout]
    result["status"] = "ok" if not missing else f"partial (no held-out figure for {', '.join(missing)})"
    return result


def _report_figures(path: Path) -> dict:
    rep = json.loads(path.read_text())
    keys = ("bits_per_base", "stderr_bits_per_base", "bases_scored", "windows", "upper_bound", "kind")
    return {k: rep[k] for k in keys if k in rep}


# --------------------------------------------------------------------------------------------------
# the RESULTS.md section, filled in
# --------------------------------------------------------------------------------------------------


def results_markdown(res: dict) -> str:
    env, tests, thr = res.get("environment", {}), res.get("tests", {}), res.get("throughput", {})
    smp, pre = res.get("sampling", {}), res.get("pretraining", {})
    dry = res.get("mode") == "dry-run"
    where = env.get("gpu") or "CPU (dry run)"
    lines = ["## GPU check: DRY RUN on the CPU, tiny sizes (no GPU figure)" if dry else f"## GPU ({where})", "",
             f"`{RUN_COMMAND}` (device tool, carry {CARRY}, timeout {RUN_TIMEOUT_S} s); started "
             f"{res.get('started_utc')}; torch {env.get('torch')}, CUDA {env.get('cuda')}, Lightning {env.get('lightning')}, "
             f"transformers {env.get('transformers')}; scan path on the GPU: `{env.get('scan_path_cuda')}` "
             f"(mamba-ssm {'present' if env.get('mamba_ssm') else 'absent'}).", "",
             f"Tests: `pytest -m gpu tests/test_gpu.py`: {tests.get('passed')} passed, {tests.get('failed')} failed, "
             f"{tests.get('skipped')} skipped of {tests.get('collected')} (exit {tests.get('exit_code')}).", ""]
    if thr.get("status") == "ok":
        lines += ["| step | device | precision | batch x window | scan path | s/step | tokens/s |", "|---|---|---|---|---|---|---|",
                  f"| MDLM {thr['recipe']} ({thr['parameters']:,} params) | {where} | {thr['accel_precision']} | "
                  f"{thr['accel_batch']} x {thr['window']} | {thr['accel_scan_path']} | {thr['accel_step_s']} | "
                  f"{thr['accel_tokens_per_s']:,.0f} |",
                  f"| same step | CPU, {thr['cpu_threads']} threads | {thr['cpu_precision']} | {thr['cpu_batch']} x "
                  f"{thr['window']} | {thr['cpu_scan_path']} | {thr['cpu_step_s']} | {thr['cpu_tokens_per_s']:,.0f} |", "",
                  f"GPU/CPU tokens/s: **{thr['tokens_per_s_ratio']}x**; peak GPU memory {thr.get('peak_gpu_memory_gib')} GiB.", ""]
    if smp.get("rows"):
        lines += [f"Sampling, {smp['length']}-bp sequences, untrained d_model {smp['model']['d_model']} x "
                  f"{smp['model']['n_layer']} models, {smp['sampler']}:", "",
                  "| model | T | batch | s per sequence | network calls | vs AR at that batch |", "|---|---|---|---|---|---|"]
        for r in smp["rows"]:
            if "seconds" in r:
                lines.append(f"| {r['kind']} | {r['steps'] or '-'} | {r['batch']} | {r['seconds_per_sequence']} | "
                             f"{r['network_calls']} | {r.get('vs_ar', '-')} |")
            else:
                lines.append(f"| {r['kind']} | {r['steps'] or '-'} | {r['batch']} | not measured: {r['skipped']} | | |")
        lines.append("")
    if pre.get("heldout"):
        lines += [f"Pretraining: `{pre.get('command')}`: {pre.get('steps')} steps of batch {pre.get('batch')} in {pre.get('seconds')} s "
                  f"({pre.get('train_bases', 0):,} training bases), validation {pre.get('val_bpd')} bits/base.", "",
                  f"| model | held-out bits/base on {pre['heldout_region']} | bases |", "|---|---|---|"]
        for name, h in pre["heldout"].items():
            bound = "<= " if h.get("upper_bound") else ""
            se = f" ± {h['stderr_bits_per_base']:.4f}" if "stderr_bits_per_base" in h else ""
            lines.append(f"| {name} | {bound}{h['bits_per_base']:.4f}{se} | {h['bases_scored']:,} |")
        lines.append("")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# --prepare and --print-run
# --------------------------------------------------------------------------------------------------


def prepare(carry_root: Path, cpu_model: Path | None) -> int:
    whl = carry_root / WHEEL_DIR
    whl.mkdir(parents=True, exist_ok=True)
    wanted = {f"{d}=={v}" for d, v in WHEELS.items()}
    for w in whl.glob("*.whl"):  # one version of each, nothing else: two versions stop the whole install there
        dist, version, *_ = wheel_tags(w.name)
        if f"{dist}=={version}" not in wanted:
            w.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           DEVICE_PYTHON, "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(whl),
           *sorted(wanted)]
    print("$ " + shlex.join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        print("gpu_check --prepare: pip download failed (PyPI not reachable?)")
        return 1
    data = carry_root / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    for name in FASTA_FILES:
        src = SHARED / "genomes" / name
        if not src.is_file():
            print(f"gpu_check --prepare: {src} not found (set DNA_MDLM_SHARED_DATA)")
            return 1
        dst = data / name
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            shutil.copyfile(src, dst)
    if cpu_model is not None:
        if not (cpu_model / "config.json").is_file():
            print(f"gpu_check --prepare: --cpu-model {cpu_model}: no config.json (expected a model directory)")
            return 1
        shutil.rmtree(data / CPU_MODEL, ignore_errors=True)
        shutil.copytree(cpu_model, data / CPU_MODEL)
    total = sum(p.stat().st_size for c in CARRY for p in (carry_root / c).rglob("*") if p.is_file())
    print(f"prepared {', '.join(CARRY)} under {carry_root}: {total / 2**20:.1f} MiB")
    print(json.dumps(run_call(), indent=1))
    return 0


def run_call() -> dict:
    return {"command": RUN_COMMAND, "carry": CARRY, "timeout_s": RUN_TIMEOUT_S}


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--prepare", action="store_true", help="download the wheels and copy chr20 into the carry folders")
    mode.add_argument("--dry-run", action="store_true", help="check the plan and run every stage tiny on the CPU")
    mode.add_argument("--print-run", action="store_true", help="print the device tool's run call as JSON")
    p.add_argument("--out", type=Path, help="where results go (on the device: $OUT; dry run default: a temp folder)")
    p.add_argument("--carry-root", type=Path, default=ROOT, help="folder holding .whl/ and .gpu_data/ (default: repo)")
    p.add_argument("--cpu-model", type=Path, help="--prepare: also carry this CPU-trained model to score beside")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole run (stages share it)")
    args = p.parse_args(argv)
    if args.print_run:
        print(json.dumps(run_call(), indent=1))
        return 0
    if args.prepare:
        return prepare(args.carry_root, args.cpu_model)
    dry = args.dry_run
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not dry and device != "cuda":
        print("gpu_check: no CUDA device here; use --dry-run to check the plan on the CPU", file=sys.stderr)
        return 2
    out = args.out or Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check_dry_{os.getpid()}"
    run = Run(out, "dry-run" if dry else "device", args.budget, args.carry_root)
    plan = DRY if dry else FULL
    run.log(f"gpu_check {run.mode}: out {out}, budget {args.budget:.0f} s, device {device}")
    run.results["plan_checks"] = plan_checks(run, plan, full_checks=dry)
    run.save()
    if not all(c["ok"] for c in run.results["plan_checks"][:3]):
        run.log("the carried inputs are not in place: nothing run")
        return 1
    env = run.stage("environment", stage_environment, plan, device)
    if env["status"] != "ok":
        return 1
    run.stage("tests", stage_tests, plan)
    run.stage("throughput", stage_throughput, plan, device)
    run.stage("sampling", stage_sampling, plan, device)
    run.stage("pretraining", stage_pretraining, plan, device)
    (out / "results.md").write_text(results_markdown(run.results))
    run.results["out_layout"] = out_layout(out)
    run.results["finished_s"] = round(run.elapsed(), 1)
    run.save()
    run.log(f"done in {run.elapsed():.0f} s; OUT: {run.results['out_layout']['files']}")
    shutil.rmtree(run.work, ignore_errors=True)
    failed = [k for k in ("tests", "throughput", "sampling", "pretraining") if run.results[k]["status"] != "ok"]
    plan_ok = all(c["ok"] for c in run.results["plan_checks"])
    if failed or not plan_ok or not run.results["out_layout"]["ok"]:
        run.log(f"not clean: stages {failed or 'ok'}, plan {'ok' if plan_ok else 'FAILED'}, "
                f"OUT layout {'ok' if run.results['out_layout']['ok'] else 'FAILED'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
