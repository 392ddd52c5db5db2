"""Tests for dna_mdlm.ops.selective_scan: every path against the sequential reference, values and gradients.

The first run on a machine compiles the C++ kernel (about 30-60 s); later runs load it from the cache.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from dna_mdlm.errors import InputError
from dna_mdlm.ops import selective_scan as ss

INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch=2, dim=4, n_state=3, length=37, groups=None, dtype=torch.float64, seed=0,
                with_d=True, with_z=True, with_bias=True):
    """Random inputs in Mamba's ranges: A strictly negative, delta around softplus(-1)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    bc_shape = (batch, n_state, length) if groups is None else (batch, groups, n_state, length)
    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length) * 0.5 - 1.0,
        "A": -(torch.rand(dim, n_state, generator=gen, dtype=dtype) * 2 + 0.1),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim) if with_d else None,
        "z": randn(batch, dim, length) if with_z else None,
        "delta_bias": randn(dim) * 0.1 if with_bias else None,
    }


def _compiler_missing() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is None


@pytest.fixture(scope="module")
def cpp_ext():
    """The compiled kernel. Skips only when no C++ compiler exists; a broken kernel source fails."""
    if _compiler_missing():
        pytest.skip("no C++ compiler on PATH; the cpp scan path cannot be built here")
    ext = ss.load_cpp_extension()
    assert ext is not None, f"C++ selective scan failed to build: {ss._cpp_failed}"
    return ext


def _path(name):
    return {"cpp": ss.selective_scan_cpp, "blocked": ss.selective_scan_blocked}[name]


@pytest.fixture(params=["cpp", "blocked"])
def fast_scan(request):
    if request.param == "cpp":
        request.getfixturevalue("cpp_ext")
    return _path(request.param)


# ---------------------------------------------------------------------------------------------
# The oracle itself
# ---------------------------------------------------------------------------------------------


def test_reference_matches_hand_computed_two_steps():
    u = torch.tensor([[[0.5, -1.5]]], dtype=torch.float64)
    delta = torch.tensor([[[0.2, 0.7]]], dtype=torch.float64)
    A = torch.tensor([[-1.3]], dtype=torch.float64)
    B = torch.tensor([[[2.0, -0.5]]], dtype=torch.float64)
    C = torch.tensor([[[0.3, 1.1]]], dtype=torch.float64)
    D = torch.tensor([0.25], dtype=torch.float64)
    z = torch.tensor([[[0.4, -0.9]]], dtype=torch.float64)
    bias = torch.tensor([0.1], dtype=torch.float64)
    dt1, dt2 = math.log1p(math.exp(0.3)), math.log1p(math.exp(0.8))
    h1 = dt1 * 2.0 * 0.5
    h2 = math.exp(dt2 * -1.3) * h1 + dt2 * -0.5 * -1.5
    silu = lambda x: x / (1 + math.exp(-x))  # noqa: E731
    expected = [(0.3 * h1 + 0.25 * 0.5) * silu(0.4), (1.1 * h2 + 0.25 * -1.5) * silu(-0.9)]
    y, last = ss.selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y[0, 0], torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    assert last.shape == (1, 1, 1)
    assert last.item() == pytest.approx(h2, rel=1e-14)


# ---------------------------------------------------------------------------------------------
# Forward values, float64
# ---------------------------------------------------------------------------------------------

CONFIGS = [
    # (length, groups, D, z, bias, softplus)
    (37, None, True, True, True, True),
    (131, None, False, False, False, False),
    (131, 1, True, False, True, True),
    (37, 2, False, True, False, True),
    (131, 4, True, True, True, False),
    (1, None, True, True, True, True),
]


@pytest.mark.parametrize("n_state", [5, 16])
@pytest.mark.parametrize("length,groups,with_d,with_z,with_bias,softplus", CONFIGS)
def test_forward_matches_reference_float64(fast_scan, length, groups, with_d, with_z, with_bias, softplus, n_state):
    inputs = make_inputs(dim=8, n_state=n_state, length=length, groups=groups, with_d=with_d, with_z=with_z,
                         with_bias=with_bias)
    y_ref, last_ref = ss.selective_scan_ref(**inputs, delta_softplus=softplus, return_last_state=True)
    y, last = fast_scan(**inputs, delta_softplus=softplus, return_last_state=True)
    assert y.dtype == torch.float64 and y.shape == y_ref.shape
    assert last.shape == (2, 8, n_state)
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(last, last_ref, rtol=1e-11, atol=1e-11)
    assert not isinstance(fast_scan(**inputs, delta_softplus=softplus), tuple)


def test_group_layout_three_dim_equals_one_group(fast_scan):
    inputs = make_inputs(length=37)
    grouped = dict(inputs, B=inputs["B"].unsqueeze(1), C=inputs["C"].unsqueeze(1))
    torch.testing.assert_close(fast_scan(**inputs, delta_softplus=True), fast_scan(**grouped, delta_softplus=True),
                               rtol=0, atol=0)


def test_groups_select_channel_blocks():
    """Channel d uses group d // (d_inner / groups): scanning each block of channels with its group's B/C alone
    must reproduce the grouped scan."""
    inputs = make_inputs(dim=6, length=20, groups=3)
    y = ss.selective_scan_ref(**inputs, delta_softplus=True)
    for g in range(3):
        sl = slice(2 * g, 2 * g + 2)
        part = ss.selective_scan_ref(
            inputs["u"][:, sl], inputs["delta"][:, sl], inputs["A"][sl], inputs["B"][:, g], inputs["C"][:, g],
            inputs["D"][sl], inputs["z"][:, sl], inputs["delta_bias"][sl], delta_softplus=True,
        )
        torch.testing.assert_close(y[:, sl], part, rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Gradients, float64
# ---------------------------------------------------------------------------------------------


def _grads(scan, inputs, softplus, loss_on):
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    y, last = scan(**leaves, delta_softplus=softplus, return_last_state=True)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    loss = torch.zeros((), dtype=y.dtype)
    if "y" in loss_on:
        loss = loss + (y * weights).sum() + (y**2).sum() * 0.1
    if "last" in loss_on:
        loss = loss + (last * last.flip(-1)).sum()
    loss.backward()
    return {k: v.grad for k, v in leaves.items() if v is not None}


_FP32_CASE: dict = {}


def _fp32_case():
    """Inputs in Mamba's init ranges plus float64 reference outputs and gradients, computed once per module."""
    if not _FP32_CASE:
        gen = torch.Generator().manual_seed(1)
        batch, dim, n_state, length = 2, 16, 16, 400
        lo, hi = math.log(1e-3), math.log(0.1)
        dt = torch.exp(torch.rand(batch, dim, length, generator=gen) * (hi - lo) + lo)
        inputs = {
            "u": torch.randn(batch, dim, length, generator=gen),
            "delta": torch.log(torch.expm1(dt)),  # softplus inverse: softplus(delta) = dt
            "A": -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1),
            "B": torch.randn(batch, n_state, length, generator=gen),
            "C": torch.randn(batch, n_state, length, generator=gen),
            "D": torch.ones(dim),
            "z": torch.randn(batch, dim, length, generator=gen),
            "delta_bias": torch.zeros(dim),
        }
        leaves = {k: v.double().requires_grad_() for k, v in inputs.items()}
        y64 = ss.selective_scan_ref(**leaves, delta_softplus=True)
        y64.square().sum().backward()
        _FP32_CASE.update(inputs=inputs, y64=y64.detach(), grads64={k: v.grad for k, v in leaves.items()},
                          y32_ref=ss.selective_scan_ref(**inputs, delta_softplus=True))
    return _FP32_CASE


@pytest.mark.parametrize(
    "length,groups,softplus,loss_on,n_state",
    [
        (37, None, True, ("y", "last"), 4),
        (131, 2, False, ("y",), 4),
        (131, None, True, ("last",), 4),
        (5, 4, True, ("y",), 4),
        (131, 2, True, ("y", "last"), 16),  # d_state 16 takes the kernel's fixed-size specialisation
    ],
)
def test_gradients_match_reference(fast_scan, length, groups, softplus, loss_on, n_state):
    inputs = make_inputs(dim=8, n_state=n_state, length=length, groups=groups, seed=3)
    expected = _grads(ss.selective_scan_ref, inputs, softplus, loss_on)
    got = _grads(fast_scan, inputs, softplus, loss_on)
    for name in INPUT_NAMES:
        if expected[name] is None:  # an input the loss does not depend on (D or z when only last_state is used)
            assert got[name] is None or not got[name].any(), name
            continue
        assert got[name].shape == inputs[name].shape, name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-10, msg=f"grad of {name}")


def test_gradients_without_optional_inputs(fast_scan):
    inputs = make_inputs(length=37, with_d=False, with_z=False, with_bias=False, seed=5)
    expected = _grads(ss.selective_scan_ref, inputs, False, ("y",))
    got = _grads(fast_scan, inputs, False, ("y",))
    assert set(got) == {"u", "delta", "A", "B", "C"}
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-10, msg=f"grad of {name}")


@pytest.mark.parametrize("groups", [None, 2])
def test_gradcheck_tiny(fast_scan, groups):
    inputs = make_inputs(batch=1, dim=2, n_state=2, length=7, groups=groups, seed=11)
    names = list(INPUT_NAMES)
    leaves = [inputs[k].clone().requires_grad_() for k in names]

    def fn(*args):
        y, last = fast_scan(*args, delta_softplus=True, return_last_state=True)
        return y, last

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_cpp_long_sequence_crosses_many_chunks(cpp_ext):
    """Lengths spanning several checkpoint chunks, with a ragged last chunk."""
    length = 3 * ss.SCAN_CHUNK + 17
    inputs = make_inputs(batch=1, dim=3, n_state=4, length=length, seed=7)
    expected = _grads(ss.selective_scan_ref, inputs, True, ("y", "last"))
    got = _grads(ss.selective_scan_cpp, inputs, True, ("y", "last"))
    for name in INPUT_NAMES:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-10, msg=f"grad of {name}")


def test_cpp_saves_no_full_state_history(cpp_ext):
    """Memory stays bounded: nothing saved for backward is as large as (batch, d_inner, d_state, L)."""
    inputs = make_inputs(batch=2, dim=8, n_state=16, length=512, dtype=torch.float32)
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = ss.selective_scan_cpp(**leaves, delta_softplus=True)
    full = 2 * 8 * 16 * 512
    assert saved and max(saved) <= full // 8
    y.sum().backward()
    assert all(v.grad is not None for v in leaves.values())


# ---------------------------------------------------------------------------------------------
# float32 at a moderate size, Mamba-like ranges
# ---------------------------------------------------------------------------------------------


def test_float32_agrees_with_reference(fast_scan):
    case = _fp32_case()
    inputs, y64, y32_ref = case["inputs"], case["y64"], case["y32_ref"]
    y32 = fast_scan(**inputs, delta_softplus=True)
    assert y32.dtype == torch.float32
    scale = y64.abs().max().item()
    ref_err = (y32_ref.double() - y64).abs().max().item() / scale
    err = (y32.double() - y64).abs().max().item() / scale
    assert err <= max(1e-5, 4 * ref_err), (err, ref_err)

    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    fast_scan(**leaves, delta_softplus=True).square().sum().backward()
    for name in INPUT_NAMES:
        g, g_ref = leaves[name].grad, case["grads64"][name]
        assert g.dtype == torch.float32
        rel = (g.double() - g_ref).abs().max().item() / g_ref.abs().max().item()
        assert rel < 1e-4, (name, rel)


def test_half_precision_inputs_return_input_dtype(fast_scan):
    inputs = make_inputs(dim=4, length=16, dtype=torch.float32)
    inputs["u"] = inputs["u"].to(torch.bfloat16)
    y = fast_scan(**inputs, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ss.selective_scan_ref(**inputs, delta_softplus=True).float(),
                               rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# Single-step decoding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [None, 2])
def test_state_update_stepped_equals_scan(groups):
    inputs = make_inputs(dim=4, n_state=3, length=23, groups=groups, seed=9)
    y_scan, last = ss.selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    state = torch.zeros(2, 4, 3, dtype=torch.float64)
    steps = []
    for t in range(23):
        steps.append(ss.selective_state_update(
            state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], inputs["B"][..., t],
            inputs["C"][..., t], D=inputs["D"], z=inputs["z"][..., t], dt_bias=inputs["delta_bias"],
            dt_softplus=True,
        ))
    torch.testing.assert_close(torch.stack(steps, -1), y_scan, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, last, rtol=1e-12, atol=1e-12)


def test_state_update_rejects_bad_shapes():
    with pytest.raises(InputError, match="selective_state_update"):
        ss.selective_state_update(torch.zeros(2, 4, 3), torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(4, 3),
                                  torch.zeros(2, 3), torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------
# Dispatcher and inputs
# ---------------------------------------------------------------------------------------------


def test_dispatcher_picks_cpp_on_cpu(cpp_ext, monkeypatch):
    monkeypatch.delenv(ss.SCAN_ENV_VAR, raising=False)
    assert ss.scan_backend("cpu") == "cpp"
    inputs = make_inputs(length=37)
    torch.testing.assert_close(ss.selective_scan_fn(**inputs, delta_softplus=True),
                               ss.selective_scan_cpp(**inputs, delta_softplus=True), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["ref", "blocked"])
def test_env_var_forces_path(monkeypatch, backend):
    monkeypatch.setenv(ss.SCAN_ENV_VAR, backend)
    assert ss.scan_backend("cpu") == backend
    inputs = make_inputs(length=37)
    y, last = ss.selective_scan_fn(**inputs, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = ss.selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(last, last_ref, rtol=1e-11, atol=1e-11)


def test_env_var_rejects_unknown_path(monkeypatch):
    monkeypatch.setenv(ss.SCAN_ENV_VAR, "fast")
    with pytest.raises(InputError, match="DNA_MDLM_SCAN"):
        ss.scan_backend("cpu")


def test_forcing_cuda_without_mamba_is_an_input_error(monkeypatch):
    if ss.mamba_cuda_available():
        pytest.skip("mamba-ssm's CUDA kernel is available here")
    monkeypatch.setenv(ss.SCAN_ENV_VAR, "cuda")
    with pytest.raises(InputError, match="mamba-ssm"):
        ss.selective_scan_fn(**make_inputs(length=4))


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(delta=torch.zeros(2, 4, 36)), "delta shape"),
        (dict(A=torch.zeros(5, 3)), "A must be"),
        (dict(B=torch.zeros(2, 4, 37)), "B must be"),
        (dict(C=torch.zeros(2, 3, 3, 37), B=torch.zeros(2, 3, 3, 37)), "does not divide"),
        (dict(D=torch.zeros(5)), "D must be"),
        (dict(z=torch.zeros(2, 4)), "z must have"),
        (dict(u=torch.zeros(4, 37)), "u must be"),
    ],
)
def test_bad_shapes_raise_one_line_input_error(change, match):
    inputs = dict(make_inputs(length=37), **change)
    with pytest.raises(InputError, match=match) as info:
        ss.selective_scan_fn(**inputs)
    assert "\n" not in str(info.value)


def _run_python(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_scan_never_imports_mamba_ssm():
    result = _run_python(
        """
        import sys, torch
        import dna_mdlm, dna_mdlm.ops.selective_scan as ss
        u = torch.randn(1, 2, 5); A = -torch.ones(2, 3); B = torch.randn(1, 3, 5)
        ss.selective_scan_fn(u, u.abs(), A, B, B)
        ss.mamba_cuda_available()
        print(sorted(m for m in sys.modules if m.startswith(("mamba_ssm", "selective_scan_cuda"))))
        """,
        {ss.SCAN_ENV_VAR: "blocked"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_broken_compiler_warns_once_and_falls_back_to_blocked(tmp_path):
    result = _run_python(
        """
        import warnings, torch
        import dna_mdlm.ops.selective_scan as ss
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            backends = [ss.scan_backend("cpu") for _ in range(3)]
            u = torch.randn(1, 2, 9, dtype=torch.float64); B = torch.randn(1, 3, 9, dtype=torch.float64)
            A = -torch.ones(2, 3, dtype=torch.float64)
            y = ss.selective_scan_fn(u, u.abs(), A, B, B)
        err = (y - ss.selective_scan_ref(u, u.abs(), A, B, B)).abs().max().item()
        print(backends, sum("C++ selective scan" in str(w.message) for w in caught), err < 1e-12)
        """,
        {"CXX": str(tmp_path / "no-such-compiler"), "DNA_MDLM_CACHE": str(tmp_path / "cache"),
         ss.SCAN_ENV_VAR: ""},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "['blocked', 'blocked', 'blocked'] 1 True"


def test_softplus_threshold_matches_torch(fast_scan):
    """Large pre-activations take softplus's linear branch (threshold 20) exactly as torch does."""
    inputs = make_inputs(length=9, dim=2, n_state=2)
    inputs["delta"] = torch.linspace(-30, 30, 2 * 2 * 9, dtype=torch.float64).view(2, 2, 9)
    inputs["A"] = inputs["A"] * 1e-3  # keep exp(dt*A) away from 0 so the state carries information
    torch.testing.assert_close(fast_scan(**inputs, delta_softplus=True),
                               ss.selective_scan_ref(**inputs, delta_softplus=True), rtol=1e-11, atol=1e-11)


@pytest.mark.slow
def test_a_killed_build_leaves_no_lock_that_hangs_later_processes():
    """cpp_extension's lock file, left behind when a first build is interrupted, must not block the next
    process forever (it did: every later run slept on it)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on PATH")
    build_dir = ss.cpp_build_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "lock").touch()
    code = "from dna_mdlm.ops.selective_scan import load_cpp_extension; assert load_cpp_extension() is not None"
    subprocess.run([sys.executable, "-c", code], timeout=600, check=True)
    assert not (build_dir / "lock").exists()


# ---------------------------------------------------------------------------------------------
# Token-major kernels (the layout the model uses): every instruction set against the oracle
# ---------------------------------------------------------------------------------------------


def _isas():
    """Every instruction set the C++ kernels can run here (skips without a compiler)."""
    if _compiler_missing():
        return []
    return ss.available_isas()


@pytest.fixture(params=["scalar", "avx2", "avx512"])
def isa(request, cpp_ext):
    if request.param not in ss.available_isas():
        pytest.skip(f"this CPU cannot run {request.param}")
    return request.param


def make_token_inputs(K=2, batch=3, length=37, dim=20, n_state=16, groups=None, dtype=torch.float64, seed=0,
                      z="shared", with_d=True, with_bias=True, mamba_ranges=False):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    bc = (K, batch, length, n_state) if groups is None else (K, batch, length, groups, n_state)
    if mamba_ranges:  # Mamba's init: dt log-uniform in [1e-3, 0.1], A = -[1..N]
        lo, hi = math.log(1e-3), math.log(0.1)
        dt = torch.exp(torch.rand(K, batch, length, dim, generator=gen, dtype=dtype) * (hi - lo) + lo)
        delta = torch.log(torch.expm1(dt))
        A = -torch.arange(1, n_state + 1, dtype=dtype).repeat(K, dim, 1)
    else:
        delta = randn(K, batch, length, dim) * 0.5 - 1.0
        A = -(torch.rand(K, dim, n_state, generator=gen, dtype=dtype) * 2 + 0.1)
    return {
        "u": randn(K, batch, length, dim), "delta": delta, "A": A, "B": randn(*bc), "C": randn(*bc),
        "D": randn(K, dim) if with_d else None,
        "z": {"shared": randn(batch, length, dim), "per_direction": randn(K, batch, length, dim), None: None}[z],
        "delta_bias": randn(K, dim) * 0.1 if with_bias else None,
    }


def _token_grads(inputs, **kw):
    """Outputs and the gradient of every input for a loss that touches y and the final states."""
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    y, last = ss.selective_scan_tokens(**leaves, return_last_state=True, **kw)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    ((y * weights).sum() + (y**2).sum() * 0.1 + (last * last.flip(-1)).sum()).backward()
    return y.detach(), last.detach(), {k: v.grad for k, v in leaves.items() if v is not None}


def _padding_mask(batch, length):
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1 % batch, length - max(1, length // 5):] = False
    mask[-1, -1:] = False
    return mask


TOKEN_CONFIGS = [
    # (length, dim, groups, z, sum_directions, masked, reverse)
    (37, 20, None, "shared", True, True, [[False, True, False], [True, False, True]]),
    (3 * ss.SCAN_CHUNK + 17, 36, 2, "per_direction", False, False, [True, False]),  # ragged last chunk
    (200, 33, None, None, True, True, None),  # channels not a multiple of any vector width
    (1, 16, None, "shared", False, True, [[True, True, False], [False, False, True]]),
]


@pytest.mark.parametrize("length,dim,groups,z,sum_k,masked,reverse", TOKEN_CONFIGS)
def test_token_scan_float64_values_and_gradients_match_reference(cpp_ext, length, dim, groups, z, sum_k, masked,
                                                                  reverse):
    """float64 runs the portable code whatever the instruction set (exact testing)."""
    inputs = make_token_inputs(length=length, dim=dim, groups=groups, z=z)
    kw = dict(delta_softplus=True, mask=_padding_mask(3, length) if masked else None, reverse=reverse,
              sum_directions=sum_k)
    y_ref, last_ref, g_ref = _token_grads(inputs, backend="ref", **kw)
    y, last, g = _token_grads(inputs, backend="cpp", **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(last, last_ref, rtol=1e-11, atol=1e-11)
    assert set(g) == set(g_ref)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-10, msg=f"grad of {name}")


@pytest.mark.parametrize("length,dim,groups,z,sum_k,masked,reverse", TOKEN_CONFIGS)
def test_token_scan_float32_every_isa_agrees_with_float64_reference(isa, length, dim, groups, z, sum_k, masked,
                                                                     reverse):
    """The vector paths (polynomial exp, softplus, sigmoid) in float32, values and all gradients, at Mamba's
    init ranges, relative to the float64 oracle."""
    inputs = make_token_inputs(length=length, dim=dim, groups=groups, z=z, dtype=torch.float32, seed=2,
                               mamba_ranges=True)
    kw = dict(delta_softplus=True, mask=_padding_mask(3, length) if masked else None, reverse=reverse,
              sum_directions=sum_k)
    y64, last64, g64 = _token_grads({k: None if v is None else v.double() for k, v in inputs.items()},
                                    backend="ref", **kw)
    y, last, g = _token_grads(inputs, backend="cpp", isa=isa, **kw)
    assert y.dtype == torch.float32
    for got, want, name in [(y, y64, "y"), (last, last64, "last")] + [(g[k], g64[k], k) for k in g64]:
        rel = (got.double() - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
        assert rel < 2e-5, (name, rel)


def test_token_scan_masked_rows_equal_unpadded_rows(cpp_ext):
    """A right-padded row scans exactly like the unpadded sequence, in both directions."""
    inputs = make_token_inputs(K=2, batch=1, length=40)
    short = {k: (v[:, :, :29] if k in ("u", "delta", "B", "C") else v[:, :29] if k == "z" else v)
             for k, v in inputs.items()}
    mask = torch.arange(40)[None] < 29
    y = ss.selective_scan_tokens(**inputs, delta_softplus=True, mask=mask, reverse=[False, True])
    y_short = ss.selective_scan_tokens(**short, delta_softplus=True, reverse=[False, True])
    torch.testing.assert_close(y[:, :, :29], y_short, rtol=1e-12, atol=1e-12)


def test_token_scan_gradcheck_tiny(cpp_ext):
    inputs = make_token_inputs(K=2, batch=2, length=6, dim=3, n_state=2, seed=4)
    names = list(INPUT_NAMES)
    leaves = [inputs[k].clone().requires_grad_() for k in names]

    def fn(*args):
        return ss.selective_scan_tokens(*args, delta_softplus=True, reverse=[[False, True], [True, False]],
                                        mask=torch.tensor([[True] * 5 + [False], [True] * 6]), sum_directions=True,
                                        return_last_state=True, backend="cpp")

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_token_scan_rejects_bad_shapes():
    inputs = make_token_inputs(length=5)
    with pytest.raises(InputError, match="delta shape"):
        ss.selective_scan_tokens(**dict(inputs, delta=inputs["delta"][:, :, :4]))
    with pytest.raises(InputError, match="mask must be"):
        ss.selective_scan_tokens(**inputs, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(InputError, match="reverse must be"):
        ss.selective_scan_tokens(**inputs, reverse=[True, False, True])


@pytest.mark.parametrize("shared,width,masked", [(True, 4, True), (False, 4, False), (True, 3, False), (False, 2, True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_token_conv_matches_torch_conv1d(isa, shared, width, masked, dtype):
    """The depthwise causal conv (+ SiLU) on token-major input, both directions, against torch's conv1d on
    flipped copies: values and the gradients of input, weight and bias."""
    gen = torch.Generator().manual_seed(7)
    K, batch, length, dim = 2, 3, 29, 37
    x = torch.randn(*((batch,) if shared else (K, batch)), length, dim, generator=gen, dtype=dtype)
    w = torch.randn(K, dim, width, generator=gen, dtype=dtype)
    b = torch.randn(K, dim, generator=gen, dtype=dtype)
    reverse = [[False, True, True], [True, False, False]]
    mask = _padding_mask(batch, length) if masked else None
    res = {}
    for backend in ("ref", "cpp"):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        y = ss.causal_conv1d_tokens(*leaves, mask=mask, reverse=reverse, backend=backend, isa=isa)
        (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y) + y**2).sum().backward()
        res[backend] = [y.detach()] + [t.grad for t in leaves]
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for got, want in zip(res["cpp"], res["ref"]):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.parametrize("op", ["exp2", "softplus", "sigmoid", "softplus_grad"])
def test_vector_math_matches_torch(isa, op):
    """The polynomial exp2 and the softplus / sigmoid built on it, per instruction set, in float32."""
    x = torch.cat([torch.linspace(-40, 40, 4001), torch.tensor([0.0, -1e-8, 1e-8, -126.5, 20.5, -20.5])])
    if op == "exp2":
        x = x.clamp(-120, 120)
    code = {"exp2": 0, "softplus": 1, "sigmoid": 2, "softplus_grad": 3}[op]
    got = ss._cpp_ext_or_raise().elementwise(x.contiguous(), code, ss.ISAS[isa]).double()
    xd = x.double()
    want = {"exp2": torch.exp2(xd), "softplus": torch.nn.functional.softplus(xd), "sigmoid": torch.sigmoid(xd),
            "softplus_grad": torch.sigmoid(xd)}[op]
    assert torch.isfinite(got).all()
    tiny = want < 1e-37  # below float32's normal range: 0 or a denormal is right
    assert (got[tiny] < 2e-37).all()
    got, want, xd = got[~tiny], want[~tiny], xd[~tiny]
    # exp(x) = exp2(x * log2 e) with the product rounded in float32: relative error ~6e-8 * |x| * log2 e
    # (torch's float32 exp of a rounded float32 argument has the same order), plus the polynomial's.
    allowed = want.abs() * (1e-6 + 1.2e-7 * xd.abs() * (1.0 if op == "exp2" else math.log2(math.e)))
    assert ((got - want).abs() <= allowed).all(), ((got - want).abs() / want.abs()).max().item()


def test_isa_env_var(monkeypatch, cpp_ext):
    monkeypatch.setenv(ss.ISA_ENV_VAR, "sse9")
    with pytest.raises(InputError, match=ss.ISA_ENV_VAR):
        ss.scan_isa()
    monkeypatch.setenv(ss.ISA_ENV_VAR, "scalar")
    assert ss.scan_isa() == "scalar"
    monkeypatch.delenv(ss.ISA_ENV_VAR)
    assert ss.scan_isa() == ss.available_isas()[-1]


def test_cpp_bdl_api_runs_each_isa(isa, monkeypatch):
    """The mamba-ssm-shaped (batch, d_inner, L) entry point goes through the same kernels."""
    monkeypatch.setenv(ss.ISA_ENV_VAR, isa)
    case = _fp32_case()
    y32 = ss.selective_scan_cpp(**case["inputs"], delta_softplus=True)
    rel = (y32.double() - case["y64"]).abs().max().item() / case["y64"].abs().max().item()
    assert rel < 1e-5, rel
