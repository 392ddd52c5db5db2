"""The GPU path: CUDA tests (marked `gpu`, skipped with a reason without CUDA) and its dtype/device bugs on CPU.

`pytest -m gpu` runs the CUDA tests; benchmarks/gpu_check.py runs them on a lent GPU machine. They check every
selective-scan path against the float64 reference, a Caduceus-PS and -Ph training step under bf16 autocast (what
Lightning's `bf16-mixed` does), RC equivariance, the sampler and `likelihood` against the same call on the CPU,
and Lightning's single-device DDP start-up through `pretrain`.

The unmarked tests run everywhere: bf16 autocast exists on the CPU too (`torch.autocast("cpu", torch.bfloat16)`),
so the dtype paths a GPU run takes are checked here, with tiny models and short sequences.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA as SHARED  # the one definition (tests/conftest.py)

from dna_mdlm.diffusion.mdlm import MDLM
from dna_mdlm.generate import generate
from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM
from dna_mdlm.ops import selective_scan as ss
from dna_mdlm.tokenizer import MASK_ID, complement_map, rc_ids
from dna_mdlm.training.common import EMA
from dna_mdlm.training.pretrain import PretrainModule

ROOT = Path(__file__).resolve().parents[1]
DEMO_FASTA = ROOT / "dna_mdlm" / "resources" / "chr20_demo.fa.gz"  # in the repository: it travels to the GPU machine
DEMO_RECORD = "20:32000001-34500000"

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device: run `pytest -m gpu` on a GPU machine")
gpu = [pytest.mark.gpu, needs_cuda]
CPU_AND_CUDA = ["cpu", pytest.param("cuda", marks=gpu)]
# Every path selective_scan_fn can take for CUDA tensors (cpp is CPU-only).
CUDA_SCAN_PATHS = [p for p in ss._BACKENDS if p != "cpp"]
COMP = torch.tensor(complement_map())


@pytest.fixture(autouse=True)
def ieee_float32_on_cuda():
    """cuDNN may run float32 convolutions in TF32 (10-bit mantissa) by default; the CUDA-vs-CPU comparisons here
    are about float32 arithmetic, so TF32 is off while they run."""
    if not CUDA:
        yield
        return
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def scan_inputs(batch=2, dim=16, n_state=8, length=300, groups=None, seed=0, device="cpu", dtype=torch.float32):
    """Inputs in Mamba's init ranges (softplus(delta) in [1e-3, 0.1], A = -(1..N)); L=300 is not a multiple of any
    block or chunk size."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log(1e-3), math.log(0.1)
    dt = torch.exp(torch.rand(batch, dim, length, generator=gen) * (hi - lo) + lo)
    bc = (batch, n_state, length) if groups is None else (batch, groups, n_state, length)
    x = {
        "u": torch.randn(batch, dim, length, generator=gen),
        "delta": torch.log(torch.expm1(dt)),
        "A": -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(*bc, generator=gen),
        "C": torch.randn(*bc, generator=gen),
        "D": torch.randn(dim, generator=gen),
        "z": torch.randn(batch, dim, length, generator=gen),
        "delta_bias": torch.randn(dim, generator=gen) * 0.1,
    }
    # Activations in `dtype`, parameters (A, D, delta_bias) in float32, as Mamba.forward hands them over.
    return {k: v.to(device=device, dtype=dtype if k in ("u", "delta", "B", "C", "z") else torch.float32)
            for k, v in x.items()}


def scan_with_grads(scan, inputs):
    """y and the gradients of sum(y * w) for fixed w, with every input a leaf."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    y = scan(**leaves, delta_softplus=True)
    w = torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)
    (y.float() * w).sum().backward()
    return y.detach(), {k: v.grad for k, v in leaves.items()}


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|: one number per tensor, comparable across paths and dtypes."""
    ref = ref.double().cpu()
    return float((got.double().cpu() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def dna_batch(batch=4, length=128, seed=0, device="cpu"):
    ids = torch.randint(7, 11, (batch, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids.to(device), "loss_mask": torch.ones_like(ids, dtype=torch.bool).to(device)}


def tiny_module(rcps: bool, objective="mdlm", seed=0) -> PretrainModule:
    torch.manual_seed(seed)
    return PretrainModule({"d_model": 16, "n_layer": 2, "rcps": rcps}, objective, window=128, warmup_steps=1,
                          max_steps=10, ema_decay=0.9)


# --------------------------------------------------------------------------------------------------
# selective scan
# --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("path", CUDA_SCAN_PATHS)
def test_every_cuda_scan_path_matches_the_float64_reference(monkeypatch, path, groups, dtype):
    if path == "cuda" and not ss.mamba_cuda_available():
        pytest.skip("mamba-ssm's CUDA selective scan is not installed here")
    monkeypatch.setenv(ss.SCAN_ENV_VAR, path)
    inputs = scan_inputs(groups=groups, device="cuda", dtype=dtype)
    # The reference sees exactly the (rounded) values the CUDA path sees, in float64 on the CPU.
    ref_y, ref_grads = scan_with_grads(ss.selective_scan_ref, {k: v.double().cpu() for k, v in inputs.items()})
    y, grads = scan_with_grads(ss.selective_scan_fn, inputs)
    assert y.device.type == "cuda" and y.dtype == dtype
    # float32 accumulation: ~1e-6 relative; bf16 output and bf16 gradients: one bf16 rounding (2^-8).
    tol = 2e-5 if dtype == torch.float32 else 1.6e-2
    assert rel_err(y, ref_y) < tol, path
    for name, g in grads.items():
        assert g is not None and g.dtype == inputs[name].dtype and torch.isfinite(g).all(), name
        assert rel_err(g, ref_grads[name]) < (2e-4 if dtype == torch.float32 else 3e-2), (path, name)


def _scan_paths(device: str) -> list[str]:
    if device == "cpu":
        return ["ref", "blocked"] + (["cpp"] if ss.load_cpp_extension() is not None else [])
    return CUDA_SCAN_PATHS


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_scan_stays_float32_under_bf16_autocast(monkeypatch, device):
    """Regression: under bf16 autocast the blocked path's einsum ran in bf16 (2e-2 off instead of 1e-6).
    selective_scan_fn now turns autocast off, so every path gives its float32 result inside autocast too."""
    inputs = scan_inputs(length=100, device=device)
    ref = ss.selective_scan_ref(**{k: v.double().cpu() for k, v in inputs.items()}, delta_softplus=True)
    for path in _scan_paths(device):
        if path == "cuda" and not ss.mamba_cuda_available():
            continue
        monkeypatch.setenv(ss.SCAN_ENV_VAR, path)
        with torch.autocast(device, dtype=torch.bfloat16):
            y = ss.selective_scan_fn(**inputs, delta_softplus=True)
        assert y.dtype == torch.float32
        assert rel_err(y, ref) < 2e-5, path


def test_mamba_kernel_args_match_the_kernel_dtype_contract():
    """mamba-ssm's kernel checks delta, z and time-varying B/C have u's dtype and A, D, delta_bias are float32.
    Under bf16 autocast a padded batch hands over a float32 delta (softplus * mask) with a bf16 u."""
    x = scan_inputs(length=8, dtype=torch.bfloat16)
    x["delta"] = x["delta"].float()
    x["D"], x["delta_bias"] = x["D"].double(), x["delta_bias"].bfloat16()
    u, delta, A, B, C, D, z, bias = ss.mamba_kernel_args(**x)
    assert u is x["u"] and u.dtype == torch.bfloat16
    assert [t.dtype for t in (delta, B, C, z)] == [torch.bfloat16] * 4
    assert [t.dtype for t in (A, D, bias)] == [torch.float32] * 3
    assert ss.mamba_kernel_args(x["u"], x["delta"], x["A"], x["B"], x["C"])[5:] == (None, None, None)


# --------------------------------------------------------------------------------------------------
# training step under bf16 autocast
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", CPU_AND_CUDA)
@pytest.mark.parametrize("rcps", [True, False], ids=["PS", "Ph"])
def test_training_step_under_bf16_autocast_is_finite_and_close_to_fp32(device, rcps):
    """One MDLM step as Lightning's bf16-mixed runs it: forward and loss under bf16 autocast, backward outside."""
    module = tiny_module(rcps).to(device).train()
    batch = dna_batch(device=device)
    loss32 = module.training_step(batch, 0)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss16 = module.training_step(batch, 0)  # same step number: the same times and masks
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    assert abs(float(loss16) - float(loss32)) < 0.03 * float(loss32)
    loss16.backward()
    grads = {n: p.grad for n, p in module.model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items()
                                                                                    if g is None]
    assert float(torch.stack([g.norm() for g in grads.values()]).norm()) > 0


def test_ema_follows_the_model_to_its_device():
    """Regression: the EMA is made while the model is on the CPU; Lightning then moves the model (not the EMA's
    dict) to the GPU, and the first update mixed a CPU shadow with CUDA parameters. Checked here with the meta
    device standing in for the GPU."""
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1))
    ema = EMA(model, decay=0.5)
    model.to("meta")
    ema.update(model)
    assert {t.device.type for t in ema.shadow.values()} == {"meta"}


@pytest.mark.gpu
@needs_cuda
def test_ema_update_and_swap_on_cuda():
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1))
    ema = EMA(model, decay=0.5)
    cpu_shadow = {n: t.clone() for n, t in ema.shadow.items()}
    model.cuda()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # decay min(0.5, 2/11): shadow = 2/11 old + 9/11 new
    for n, p in model.named_parameters():
        expected = cpu_shadow[n] * (2 / 11) + p.detach().cpu().float() * (9 / 11)
        torch.testing.assert_close(ema.shadow[n].cpu(), expected)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ema.swap(model)
    ema.swap(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# --------------------------------------------------------------------------------------------------
# models and objective on CUDA
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_ps_rc_equivariance_in_fp32_and_under_bf16_autocast(device):
    torch.manual_seed(0)
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=3, rcps=True)).to(device).eval()
    x = dna_batch(2, 97, device=device)["input_ids"]
    x[:, ::5] = MASK_ID  # the diffusion setting: [MASK] is its own complement
    comp = COMP.to(device)
    with torch.no_grad():
        a, b = model(x).logits, model(rc_ids(x)).logits
        assert rel_err(b, a.flip(1)[..., comp]) < 1e-4
        with torch.autocast(device, dtype=torch.bfloat16):
            a16, b16 = model(x).logits, model(rc_ids(x)).logits
    # Exact in exact arithmetic; each strand's own bf16 roundings make the two sides differ by a few 2^-8.
    assert rel_err(b16, a16.flip(1)[..., comp]) < 5e-2
    assert rel_err(a16, a) < 5e-2


@pytest.mark.gpu
@needs_cuda
def test_recurrent_decoding_step_matches_the_full_forward_on_cuda():
    torch.manual_seed(0)
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=3, bidirectional=False, rcps=False,
                                               objective="ar")).cuda().eval()
    x = dna_batch(2, 41, device="cuda")["input_ids"]
    with torch.no_grad():
        full = model(x).logits
        cache = model.allocate_inference_cache(2, device="cuda")
        steps = torch.stack([model.step(x[:, t], cache) for t in range(x.shape[1])], 1)
    assert rel_err(steps, full) < 1e-4


@pytest.mark.gpu
@needs_cuda
def test_mdlm_loss_with_a_cpu_generator_on_cuda_equals_the_cpu_loss():
    """Regression: stratified_times drew on the data's device with the caller's CPU generator (a RuntimeError)."""
    torch.manual_seed(0)
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=2)).eval()
    x = dna_batch(4, 64)["input_ids"]
    with torch.no_grad():
        cpu, n_cpu = MDLM(model).loss(x, generator=torch.Generator().manual_seed(3))
        gpu_loss, n_gpu = MDLM(model.cuda()).loss(x.cuda(), generator=torch.Generator().manual_seed(3))
    assert int(n_cpu) == int(n_gpu)
    assert abs(float(gpu_loss) - float(cpu)) < 1e-4 * float(cpu)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["mdlm", "ar"])
def test_sampler_on_cuda_draws_what_the_cpu_draws(kind):
    """Draws come from the CPU generator in float64 on either device, so only float32 differences in the network
    separate the two runs: a base may flip only where two bases nearly tie in a race."""
    torch.manual_seed(0)
    cfg = (CaduceusConfig(d_model=16, n_layer=2, rcps=True) if kind == "mdlm" else
           CaduceusConfig(d_model=16, n_layer=2, bidirectional=False, rcps=False, objective="ar"))
    model = CaduceusForMaskedLM(cfg).eval()
    model.config.train_window = 128
    cpu = generate(model, 8, 128, steps=32, device="cpu", seed=5)
    cuda = generate(model, 8, 128, steps=32, device="cuda", seed=5)
    assert cpu.stats.network_calls == cuda.stats.network_calls
    same = sum(a == b for s, t in zip(cpu.sequences, cuda.sequences) for a, b in zip(s, t))
    assert same >= 0.99 * 8 * 128, same
    if kind == "mdlm":  # the denoiser itself agrees to float32 precision
        z = dna_batch(2, 128)["input_ids"]
        z[:, ::2] = MASK_ID
        t = torch.full((2,), 0.5)
        mdlm = MDLM(model.cpu())
        with torch.no_grad():
            p_cpu = mdlm.denoise(z, t).exp()
            p_cuda = MDLM(model.cuda()).denoise(z.cuda(), t.cuda()).exp()
        assert float((p_cuda.cpu() - p_cpu).abs().max()) < 1e-4


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("objective", ["mdlm", "ar"])
def test_likelihood_on_cuda_equals_the_cpu_figure(tmp_path, objective):
    from dna_mdlm.evaluation.likelihood import likelihood

    torch.manual_seed(0)
    cfg = (CaduceusConfig(d_model=16, n_layer=2, rcps=True) if objective == "mdlm" else
           CaduceusConfig(d_model=16, n_layer=2, bidirectional=False, rcps=False, objective="ar"))
    model = CaduceusForMaskedLM(cfg)
    model.config.train_window = 256
    model.save_pretrained(tmp_path / "m")
    kw = dict(regions=[f"{DEMO_RECORD}:100001-108192"], num_samples=2, batch_size=8, seed=0)
    cpu = likelihood(tmp_path / "m", str(DEMO_FASTA), device="cpu", **kw)
    cuda = likelihood(tmp_path / "m", str(DEMO_FASTA), device="cuda", **kw)
    assert cpu["bases_scored"] == cuda["bases_scored"] == 8192
    assert abs(cuda["bits_per_base"] - cpu["bits_per_base"]) < 1e-4 * cpu["bits_per_base"]


# --------------------------------------------------------------------------------------------------
# Lightning on the GPU
# --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_lightning_single_device_ddp_bf16_pretraining_starts_and_exports(tmp_path):
    """`pretrain` with accelerator gpu, 1 device, strategy ddp and precision auto (= bf16-mixed on a GPU): the
    process group starts, steps run with the EMA on the GPU, validation runs, and the model directory loads."""
    from dna_mdlm.loading import load_model
    from dna_mdlm.training.pretrain import _precision, pretrain

    assert _precision("auto", "gpu") == "bf16-mixed"
    cfg = {"fasta": [str(DEMO_FASTA)], "val_regions": [f"{DEMO_RECORD}:2250001-2500000"], "seed": 0,
           "model": {"d_model": 16, "n_layer": 2, "rcps": True},
           "data": {"window": 128, "batch_size": 8, "max_val_windows": 16, "train_samples_per_epoch": 1000},
           "optim": {"lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9},
           "trainer": {"max_steps": 4, "val_every": 2, "log_every": 1, "progress_bar": False, "accelerator": "gpu",
                       "devices": 1, "strategy": "ddp", "precision": "auto"}}
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["steps"] == 4 and math.isfinite(summary["val_bpd"]) and summary["val_bpd"] < 4
    model, kind = load_model(tmp_path / "run" / "model", device="cuda")
    assert kind == "mdlm" and next(model.parameters()).is_cuda
    state = json.loads((tmp_path / "run" / "model" / "training_state.json").read_text())
    assert state["ema"] is True


# --------------------------------------------------------------------------------------------------
# the prepared device run, checked on the CPU
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_check_dry_run_checks_the_plan_and_runs_every_stage_tiny(tmp_path):
    if not (SHARED / "genomes" / "human_GRCh37_chr20.fa.gz").is_file():
        pytest.skip(f"shared data not found at {SHARED} (set DNA_MDLM_SHARED_DATA)")
    carry_root = ROOT
    if not ((ROOT / ".whl").is_dir() and (ROOT / ".gpu_data").is_dir()):
        # Not prepared in this checkout: prepare a copy beside the test (the wheels come from PyPI).
        carry_root = tmp_path / "carry"
        prep = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--prepare", "--carry-root", str(carry_root)],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        if prep.returncode != 0 and "pip download failed" in prep.stdout + prep.stderr:
            pytest.skip("could not download the wheels to carry (no access to PyPI)")
        assert prep.returncode == 0, prep.stdout[-2000:] + prep.stderr[-2000:]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--carry-root", str(carry_root),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "dry-run"
    assert all(c["ok"] for c in results["plan_checks"]), [c for c in results["plan_checks"] if not c["ok"]]
    for stage in ("tests", "throughput", "sampling", "pretraining"):
        assert results[stage]["status"] == "ok", (stage, results[stage])
    assert results["tests"]["collected"] >= 10 and results["tests"]["failed"] == 0
    assert results["pretraining"]["heldout"]["mdlm"]["bits_per_base"] > 0
    assert results["pretraining"]["heldout"]["markov"]["bits_per_base"] > 0
    assert results["out_layout"]["ok"], results["out_layout"]


def test_gpu_check_print_run_is_the_call_results_md_quotes(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--print-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    call = json.loads(proc.stdout)
    assert set(call) == {"command", "carry", "timeout_s"} and call["carry"] == [".whl", ".gpu_data"]
    assert len(call["command"]) <= 2000 and call["timeout_s"] <= 600  # the device tool's limits
    results_md = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert call["command"] in results_md and f"timeout_s={call['timeout_s']}" in results_md
    if not CUDA:  # the device run itself refuses to start without a GPU, and writes nothing
        out = tmp_path / "out"
        proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "no CUDA device" in proc.stderr and not out.exists()
