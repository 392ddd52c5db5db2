"""Tests for dna_mdlm.ops.mamba_inner: the one-call Mamba layer against its flip-and-oracle spelling,
values and every gradient, float64 and float32 (every instruction set), strands, directions, padding,
folded RMSNorm, row groups; the inference path; and what training keeps for backward."""

from __future__ import annotations

import shutil

import pytest
import torch

import dna_mdlm.ops.mamba_inner as mi
from dna_mdlm.errors import InputError
from dna_mdlm.ops import selective_scan as ss

D_MODEL, D_INNER, D_STATE, DT_RANK, D_CONV = 6, 12, 16, 2, 4


@pytest.fixture(scope="module", autouse=True)
def cpp_ext():
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on PATH; the one-call layer needs the C++ kernels")
    assert ss.load_cpp_extension() is not None, ss._cpp_failed


def weights(K, dtype=torch.float64, bias=False, norm=False, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.5):
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale

    E, d, N, R = D_INNER, D_MODEL, D_STATE, DT_RANK
    return dict(
        in_proj_weight=r(2 * E, d), in_proj_bias=r(2 * E) if bias else None, conv_weight=r(K, E, D_CONV),
        conv_bias=r(K, E), x_proj_weight=r(K, R + 2 * N, E), dt_proj_weight=r(K, E, R), dt_proj_bias=r(K, E) * 0.6 - 1,
        A_log=torch.log(torch.rand(K, E, N, generator=gen, dtype=dtype) * 3 + 0.5), D=r(K, E),
        out_proj_weight=r(d, E), out_proj_bias=r(d) if bias else None,
        norm_weight=(torch.rand(d, generator=gen, dtype=dtype) + 0.5) if norm else None,
    )


def padding(batch, length):
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, length - 9:] = False
    mask[-1, -1] = False
    return mask


def run(fn, hidden, w, **kw):
    """Output and the gradients of the input and of every weight for a fixed, asymmetric loss."""
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in w.items()}
    x = hidden.clone().requires_grad_()
    y = fn(x, **leaves, **kw)
    mask = kw.get("mask")
    keep = torch.ones_like(y) if mask is None else mask[..., None].to(y.dtype).expand_as(y)
    ((y * keep * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + (y * keep).pow(2).sum()).backward()
    grads = {"hidden": x.grad, **{k: v.grad for k, v in leaves.items() if v is not None}}
    return (y * keep).detach(), grads


CASES = [
    # (strands RC flags, directions, bias, masked, norm): PS layer, Ph/plain layer, causal (AR) layer
    ((False, True), (False, True), False, True, True),
    ((False, True), (False, True), True, False, False),
    ((False,), (False, True), True, True, True),
    ((False,), (False,), False, True, False),
    ((True,), (True,), False, False, True),
]


# 1: every batch row its own group; 2 rows' worth: groups of 2 rows and a last group of 1
@pytest.mark.parametrize("group_bytes", [mi._GROUP_BYTES, 1, 2 * 37 * 4 * D_INNER * 8])
@pytest.mark.parametrize("rc,directions,bias,masked,norm", CASES)
def test_float64_matches_flip_reference(rc, directions, bias, masked, norm, group_bytes, monkeypatch):
    monkeypatch.setattr(mi, "_GROUP_BYTES", group_bytes)
    w = weights(len(directions), bias=bias, norm=norm)
    hidden = torch.randn(3, 37, len(rc) * D_MODEL, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = dict(rc_strands=rc, reverse_directions=directions, mask=padding(3, 37) if masked else None)
    y_ref, g_ref = run(mi.mamba_mixer_ref, hidden, w, **kw)
    y, g = run(mi.mamba_mixer_fn, hidden, w, **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert set(g) == set(g_ref)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-10, atol=1e-11, msg=f"grad of {name}")


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_float32_every_isa_close_to_float64(isa, monkeypatch):
    if isa not in ss.available_isas():
        pytest.skip(f"this CPU cannot run {isa}")
    monkeypatch.setenv(ss.ISA_ENV_VAR, isa)
    rc, directions = (False, True), (False, True)
    w = weights(2, norm=True)
    hidden = torch.randn(2, 130, 2 * D_MODEL, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kw = dict(rc_strands=rc, reverse_directions=directions, mask=padding(2, 130))
    y64, g64 = run(mi.mamba_mixer_ref, hidden, w, **kw)
    y32, g32 = run(mi.mamba_mixer_fn, hidden.float(), {k: None if v is None else v.float() for k, v in w.items()},
                   **kw)
    assert y32.dtype == torch.float32
    for got, want, name in [(y32, y64, "y")] + [(g32[k], g64[k], k) for k in g64]:
        rel = (got.double() - want).abs().max().item() / want.abs().max().item()
        assert rel < 5e-5, (name, rel)


def test_no_grad_path_equals_autograd_path_and_saves_nothing():
    w = weights(2, norm=True)
    hidden = torch.randn(2, 50, 2 * D_MODEL, dtype=torch.float64)
    kw = dict(rc_strands=(False, True), reverse_directions=(False, True))
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in w.items()}
    y_grad = mi.mamba_mixer_fn(hidden.clone().requires_grad_(), **leaves, **kw)
    saved = []
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = mi.mamba_mixer_fn(hidden, **leaves, **kw)
    assert y.grad_fn is None and not saved
    assert torch.equal(y, y_grad.detach())


def test_training_keeps_only_the_input_and_chunk_states():
    """Saved for backward per token: the layer input (S*d) and one state per chunk of steps; no
    (L, d_inner)-sized activation, so memory per token does not depend on L."""
    w = weights(2, dtype=torch.float32, norm=True)
    batch, length = 2, 4 * ss.SCAN_CHUNK
    hidden = torch.randn(batch, length, 2 * D_MODEL, requires_grad=True)
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in w.items()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = mi.mamba_mixer_fn(hidden, **leaves, rc_strands=(False, True), reverse_directions=(False, True))
    weight_numel = sum(v.numel() for v in w.values() if v is not None)
    activations = sum(t.numel() for t in saved) - weight_numel
    per_token = activations / (batch * length)
    # input (2 strands x d) + checkpoints (2 strands x 2 directions x d_inner x d_state / chunk) + bools
    expected = 2 * D_MODEL + 4 * D_INNER * D_STATE / ss.SCAN_CHUNK
    assert per_token <= expected + 1, (per_token, expected)
    assert max(t.numel() for t in saved) <= hidden.numel()  # nothing larger than the input itself
    y.sum().backward()
    assert hidden.grad is not None and all(v.grad is not None for v in leaves.values() if v is not None)


def test_bad_shapes_raise_input_error():
    w = weights(2)
    with pytest.raises(InputError, match="strands"):
        mi.mamba_mixer_fn(torch.zeros(1, 5, 7, dtype=torch.float64), **w, rc_strands=(False, True),
                          reverse_directions=(False, True))
    with pytest.raises(InputError, match="mask must be"):
        mi.mamba_mixer_fn(torch.zeros(1, 5, D_MODEL, dtype=torch.float64), **w, reverse_directions=(False, True),
                          mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(InputError, match="float32/float64"):
        mi.mamba_mixer_fn(torch.zeros(1, 5, D_MODEL, dtype=torch.bfloat16), **w, reverse_directions=(False, True))
