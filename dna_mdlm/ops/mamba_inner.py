"""One Mamba mixer layer, every strand and direction in one pass, on CPU: :func:`mamba_mixer_fn`.

The counterpart of mamba-ssm's ``mamba_inner_fn`` (mamba_ssm/ops/selective_scan_interface.py), which fuses
conv, x_proj, dt_proj, scan, gate and out_proj on GPU and recomputes the conv and delta in its backward.
Here, for the CPU kernels of :mod:`dna_mdlm.ops.selective_scan`:

* activations stay token-major (batch, L, channels) from in_proj to out_proj, so nothing is transposed;
* the K directions of a bidirectional layer (Caduceus's BiMamba: a forward and a reverse Mamba that share
  in_proj and out_proj when weight-tied) and the S strands of a Caduceus-PS layer (the reverse-complement
  strand runs through the same weights) go through one conv call and one scan call. A reverse direction is
  a scan that indexes time backwards; the RC strand, rc(M(rc(x))) with rc flipping length and channels, is
  M with in_proj's input channels and out_proj's output channels flipped and every direction reversed, so
  no activation is ever flipped or copied for it;
* with autograd, only the layer input and the scan's chunk checkpoints are kept; the backward recomputes
  in_proj, the conv, x_proj and dt_proj, so training memory per token is a few KiB per layer, whatever L.

Caduceus: Schiff et al. 2024, "Caduceus: Bi-Directional Equivariant Long-Range DNA Sequence Modeling"
(kuleshov-group/caduceus, modeling_caduceus.py: BiMambaWrapper, RCPSWrapper); Mamba: Gu & Dao 2023.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dna_mdlm.errors import InputError
from dna_mdlm.ops import selective_scan as ss

__all__ = ["mamba_mixer_fn", "mamba_mixer_ref"]


# Rows of work are grouped so that the largest intermediate of one group stays near this size: the
# intermediates then come from malloc's reused heap instead of fresh mmap'd pages (first-touch page faults
# cost about as much as the matmuls here), and the backward's transient memory is one group's, not the
# batch's. A single long sequence is one group.
_GROUP_BYTES = 8 << 20


def _flags(rc_strands, reverse_directions, rows: int, device) -> torch.Tensor:
    """(K, S*rows) bools, rows ordered (strand, batch): stream (k, s, b) reads right to left when direction k
    is reverse xor strand s is RC."""
    one = [[bool(rev) != bool(rc) for rc in rc_strands for _ in range(rows)] for rev in reverse_directions]
    return torch.tensor(one, dtype=torch.bool, device=device)


def _unstrand(grads, rc_strands, dim: int) -> torch.Tensor:
    """Gradient of a weight from the gradients of its per-strand copies (flipped along `dim` for RC)."""
    return sum(g.flip(dim) if rc else g for g, rc in zip(grads, rc_strands))


class _Spec:
    """Sizes and options of one call (plain attributes, kept on the autograd context)."""

    def __init__(self, hidden, in_w, x_proj_w, A_log, rc_strands, reverse_directions, isa, norm_eps):
        self.S, self.K = len(rc_strands), len(reverse_directions)
        self.batch, self.L, width = hidden.shape
        self.d = width // self.S
        self.E = in_w.shape[0] // 2
        self.N = A_log.shape[-1]
        self.R = x_proj_w.shape[1] - 2 * self.N
        self.rc = tuple(bool(r) for r in rc_strands)
        self.reverse = tuple(bool(r) for r in reverse_directions)
        self.norm_eps = norm_eps
        self.n_chunks = -(-self.L // ss.SCAN_CHUNK)
        self.isa = ss.ISAS[isa or ss.scan_isa()]
        self.ext = ss._cpp_ext_or_raise()
        per_token = max(self.K * self.S * self.E, 2 * self.S * self.E) * hidden.element_size()
        self.group = max(1, min(self.batch, _GROUP_BYTES // max(1, per_token * self.L)))

    def groups(self):
        for b0 in range(0, self.batch, self.group):
            yield b0, min(self.batch, b0 + self.group)


class _Group:
    """One group of batch rows [b0, b1): its S*g scan rows are ordered (strand, batch), so every per-strand
    operand is a plain (g*L, width) matrix and the projections are 2-D matmuls without copies."""

    def __init__(self, sp: _Spec, mask, b0, b1):
        self.b0, self.b1, self.g = b0, b1, b1 - b0
        self.rows = sp.S * self.g
        self.gL = self.g * sp.L
        self.mask = None if mask is None else mask[b0:b1].repeat(sp.S, 1).contiguous()
        self.flags = _flags(sp.rc, sp.reverse, self.g, mask.device if mask is not None else "cpu")

    def strand(self, t: torch.Tensor, sp: _Spec, s: int) -> torch.Tensor:
        """Columns of strand s of a (batch, L, S*width) tensor, for this group's rows: a (g*L, width) view."""
        width = t.shape[-1] // sp.S
        return t[self.b0 : self.b1].view(self.gL, sp.S * width)[:, s * width : (s + 1) * width]

    def inputs(self, sp: _Spec, hidden, normed: bool):
        """in_proj's input per strand, (g*L, d) each, and 1/rms (g*L, S, 1) when the RMSNorm is folded in.

        With the norm, the input is x/rms(x) per strand and the norm's weight sits in in_proj's weight
        (in_proj(x/rms * w) = (x/rms) @ (W * w)^T), so the normalised activations are one small temporary."""
        if not normed:
            return [self.strand(hidden, sp, s) for s in range(sp.S)], None, None
        x = hidden[self.b0 : self.b1].view(self.gL, sp.S, sp.d)
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + sp.norm_eps)
        xhat = x * rstd
        return [xhat[:, s] for s in range(sp.S)], xhat, rstd


def _front(sp: _Spec, grp: _Group, xin, in_w_s, in_b, conv_w, conv_b, x_proj_w):
    """in_proj -> conv + SiLU -> x_proj for one group. Returns xz (S, g*L, 2E), xc (K, S*g, L, E) and x_dbl
    (K, S*g*L, R + 2N)."""
    xz = xin[0].new_empty(sp.S, grp.gL, 2 * sp.E)
    for s in range(sp.S):
        if in_b is None:
            torch.mm(xin[s], in_w_s[s].t(), out=xz[s])
        else:
            torch.addmm(in_b, xin[s], in_w_s[s].t(), out=xz[s])
    rows = xz.view(grp.rows, sp.L, 2 * sp.E)
    xc = sp.ext.conv_fwd(rows[..., : sp.E].unsqueeze(0), conv_w, conv_b, grp.mask, grp.flags, True, sp.isa, 0)
    x_dbl = torch.bmm(xc.view(sp.K, grp.rows * sp.L, sp.E), x_proj_w.transpose(1, 2))
    return xz, xc, x_dbl


def _scan_operands(sp: _Spec, grp: _Group, xz, x_dbl):
    parts = x_dbl.view(sp.K, grp.rows, sp.L, 1, sp.R + 2 * sp.N)
    low = parts[:, :, :, 0, : sp.R]  # dt_proj's input; dt_proj itself runs inside the scan kernel
    B = parts[..., sp.R : sp.R + sp.N]
    C = parts[..., sp.R + sp.N :]
    z = xz.view(grp.rows, sp.L, 2 * sp.E)[..., sp.E :].unsqueeze(0).expand(sp.K, grp.rows, sp.L, sp.E)
    return low, B, C, z


def _in_weights(sp: _Spec, in_w, norm_w):
    """in_proj's weight per strand, with the norm weight folded in and input channels flipped for RC strands."""
    w = in_w if norm_w is None else in_w * norm_w
    return [w.flip(1) if rc else w for rc in sp.rc]


def _forward(sp: _Spec, hidden, norm_w, in_w, in_b, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, out_w, out_b,
             mask, save: bool):
    in_w_s = _in_weights(sp, in_w, norm_w)
    out_w_s = [out_w.flip(0) if rc else out_w for rc in sp.rc]
    A = -torch.exp(A_log)
    out = hidden.new_empty(sp.batch, sp.L, sp.S * sp.d)
    ckpt = hidden.new_empty(sp.batch * sp.S, sp.K, sp.n_chunks, sp.N, sp.E) if save else None
    for b0, b1 in sp.groups():
        grp = _Group(sp, mask, b0, b1)
        xin, _, _ = grp.inputs(sp, hidden, norm_w is not None)
        xz, xc, x_dbl = _front(sp, grp, xin, in_w_s, in_b, conv_w, conv_b, x_proj_w)
        del xin
        low, B, C, z = _scan_operands(sp, grp, xz, x_dbl)
        y, _, _ = sp.ext.scan_fwd(xc, low, A, B, C, D, z, dt_b, grp.mask, grp.flags, True, True, ss.SCAN_CHUNK,
                                  save, False, dt_w, None if ckpt is None else ckpt[b0 * sp.S : b1 * sp.S], sp.isa, 0)
        del xz, xc, x_dbl, low, B, C, z
        y = y.view(sp.S, grp.gL, sp.E)
        for s in range(sp.S):
            grp.strand(out, sp, s).copy_(torch.mm(y[s], out_w_s[s].t()))
    if out_b is not None:  # every direction's out_proj adds the bias once
        out += sp.K * torch.cat([out_b.flip(0) if rc else out_b for rc in sp.rc])
    return out, ckpt


class _MambaMixerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, norm_w, in_w, in_b, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, out_w, out_b, mask,
                sp):
        out, ckpt = _forward(sp, hidden, norm_w, in_w, in_b, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, out_w,
                             out_b, mask, save=True)
        ctx.save_for_backward(hidden, norm_w, in_w, in_b, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, out_w, out_b,
                              mask, ckpt)
        ctx.sp = sp
        return out

    @staticmethod
    def backward(ctx, dout):
        (hidden, norm_w, in_w, in_b, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, out_w, out_b, mask,
         ckpt) = ctx.saved_tensors
        sp = ctx.sp
        S, K, E, L = sp.S, sp.K, sp.E, sp.L
        dout = dout.contiguous()
        in_w_s = _in_weights(sp, in_w, norm_w)
        out_w_s = [out_w.flip(0) if rc else out_w for rc in sp.rc]
        A = -torch.exp(A_log)
        dhidden = torch.empty_like(hidden)
        g_in = [torch.zeros_like(in_w) for _ in range(S)]
        g_out = [torch.zeros_like(out_w) for _ in range(S)]
        g_xproj = torch.zeros_like(x_proj_w)
        g_dt = torch.zeros_like(dt_w)
        g_conv = torch.zeros_like(conv_w)
        g_conv_b = None if conv_b is None else torch.zeros_like(conv_b)
        g_A = torch.zeros_like(A)
        g_D = torch.zeros_like(D)
        g_dt_b = torch.zeros_like(dt_b)
        g_in_b = None if in_b is None else torch.zeros_like(in_b)
        for b0, b1 in sp.groups():
            grp = _Group(sp, mask, b0, b1)
            xin, xhat, rstd = grp.inputs(sp, hidden, norm_w is not None)
            xz, xc, x_dbl = _front(sp, grp, xin, in_w_s, in_b, conv_w, conv_b, x_proj_w)
            low, B, C, z = _scan_operands(sp, grp, xz, x_dbl)
            dy = hidden.new_empty(S, grp.gL, E)
            for s in range(S):
                torch.mm(grp.strand(dout, sp, s), out_w_s[s], out=dy[s])
            dy = dy.view(grp.rows, L, E)
            du, _, dA, dX, dD, _, ddt_b, y, ddt_w = sp.ext.scan_bwd(
                xc, low, A, B, C, D, z, dt_b, grp.mask, grp.flags, True, True, ss.SCAN_CHUNK,
                ckpt[b0 * S : b1 * S], dy, None, False, True, dt_w, None, sp.isa, 0)
            # The gate once for the summed output: y becomes the gated output, xz's z half its gradient.
            rows = xz.view(grp.rows, L, 2 * E)
            sp.ext.gate_bwd(y, rows[..., E:], dy, rows[..., E:], sp.isa)
            del dy, low, B, C, z
            y = y.view(S, grp.gL, E)
            for s in range(S):
                g_out[s].addmm_(grp.strand(dout, sp, s).t(), y[s])
            del y
            g_A += dA
            g_D += dD
            g_dt_b += ddt_b
            g_dt += ddt_w
            dX = dX.view(K, grp.rows * L, sp.R + 2 * sp.N)
            g_xproj.baddbmm_(dX.transpose(1, 2), xc.view(K, grp.rows * L, E))
            del xc
            dxc = du.view(K, grp.rows * L, E).baddbmm_(dX, x_proj_w).view(K, grp.rows, L, E)
            del du, dX, x_dbl
            dx, dcw, dcb = sp.ext.conv_bwd(rows[..., :E].unsqueeze(0), conv_w, conv_b, grp.mask, grp.flags, True, dxc,
                                           sp.isa, 0)
            del dxc
            g_conv += dcw
            if g_conv_b is not None:
                g_conv_b += dcb
            # d xz = [dx | dz] in xz's memory (dz is already in the z half).
            dxz = rows
            dxz[..., :E] = dx.view(grp.rows, L, E)
            del dx
            dxz = dxz.view(S, grp.gL, 2 * E)
            for s in range(S):
                g_in[s].addmm_(dxz[s].t(), xin[s])
            if g_in_b is not None:  # in_proj's bias sits on its output channels, which no strand flips
                g_in_b += dxz.sum((0, 1))
            dxin = torch.stack([torch.mm(dxz[s], in_w_s[s]) for s in range(S)], dim=1)  # (gL, S, d)
            del dxz, xz, rows, xin
            if norm_w is not None:  # through x/rms(x): rstd * (g - xhat * mean(g * xhat))
                dxin = rstd * (dxin - xhat * (dxin * xhat).mean(-1, keepdim=True))
                del xhat, rstd
            dhidden[b0:b1].view(grp.gL, S, sp.d).copy_(dxin)
            del dxin
        d_out_b = None
        if out_b is not None:
            d_out_b = sp.K * _unstrand(dout.view(-1, S, sp.d).sum(0).unbind(0), sp.rc, 0)
        g_w_eff = _unstrand(g_in, sp.rc, 1)  # gradient of in_proj's (norm-folded) weight
        g_norm = None
        if norm_w is not None:
            g_norm = (g_w_eff * in_w).sum(0)
            g_w_eff = g_w_eff * norm_w
        return (dhidden, g_norm, g_w_eff, g_in_b, g_conv, g_conv_b, g_xproj, g_dt, g_dt_b, g_A * A, g_D,
                _unstrand(g_out, sp.rc, 0), d_out_b, None, None)


def _check(hidden, in_w, conv_w, x_proj_w, dt_w, dt_b, A_log, D, out_w, rc_strands, reverse_directions):
    if hidden.dim() != 3:
        raise InputError(f"mamba_mixer_fn: hidden must be (batch, L, strands*d_model), got {tuple(hidden.shape)}")
    S, K = len(rc_strands), len(reverse_directions)
    if S < 1 or K < 1 or hidden.shape[2] % S:
        raise InputError(f"mamba_mixer_fn: {hidden.shape[2]} channels do not split into {S} strands")
    d = hidden.shape[2] // S
    E2 = in_w.shape[0]
    if in_w.shape != (E2, d) or E2 % 2 or out_w.shape != (d, E2 // 2):
        raise InputError(f"mamba_mixer_fn: in_proj {tuple(in_w.shape)} / out_proj {tuple(out_w.shape)} do not fit d={d}")
    E = E2 // 2
    if conv_w.dim() != 3 or conv_w.shape[:2] != (K, E) or A_log.dim() != 3 or A_log.shape[:2] != (K, E):
        raise InputError(f"mamba_mixer_fn: conv weight must be (K={K}, E={E}, width) and A_log (K, E, d_state)")
    N = A_log.shape[2]
    if x_proj_w.dim() != 3 or x_proj_w.shape[0] != K or x_proj_w.shape[2] != E or x_proj_w.shape[1] <= 2 * N:
        raise InputError(f"mamba_mixer_fn: x_proj weight must be (K, dt_rank + 2*d_state, E), got {tuple(x_proj_w.shape)}")
    R = x_proj_w.shape[1] - 2 * N
    if dt_w.shape != (K, E, R) or dt_b.shape != (K, E) or D.shape != (K, E):
        raise InputError("mamba_mixer_fn: dt_proj weight (K, E, dt_rank), dt_proj bias (K, E) and D (K, E) expected")


def mamba_mixer_fn(hidden, in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                   dt_proj_bias, A_log, D, out_proj_weight, out_proj_bias, *, rc_strands=(False,),
                   reverse_directions=(False,), mask=None, norm_weight=None, norm_eps: float = 1e-5,
                   isa: str | None = None):
    """Sum over K Mambas, for each of S strands, of one layer's Mamba mixers; CPU, float32 or float64.

    hidden (batch, L, S*d): S strands side by side on the channel axis. Mamba k (weights indexed k below)
    reads its strand right to left when ``reverse_directions[k]``; strand s with ``rc_strands[s]`` is a
    reverse-complement view, given the output rc(M(rc(x_s))) where rc flips length and channels (the
    Caduceus-PS second half). The K Mambas share in_proj and out_proj (a weight-tied BiMamba, Caduceus's
    default); their outputs are added ("add" strategy). Weights, for E = d_inner, N = d_state,
    R = dt_rank: in_proj_weight (2E, d), in_proj_bias (2E) or None, conv_weight (K, E, d_conv), conv_bias
    (K, E) or None, x_proj_weight (K, R + 2N, E), dt_proj_weight (K, E, R), dt_proj_bias (K, E), A_log
    (K, E, N), D (K, E), out_proj_weight (d, E), out_proj_bias (d) or None. ``mask`` (batch, L) bool,
    False = padding: padded positions are inert in every direction (see selective_scan_tokens). With
    ``norm_weight`` (d,), each strand is first RMS-normalised, x / sqrt(mean(x^2) + norm_eps) * w (w
    channel-reversed for an RC strand, as Caduceus-PS normalises its second half in RC space), and only the
    un-normalised input is kept for backward. Returns (batch, L, S*d). Differentiable in hidden and every
    weight; raises InputError on bad shapes and RuntimeError when the C++ kernels cannot be built.
    """
    _check(hidden, in_proj_weight, conv_weight, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
           out_proj_weight, rc_strands, reverse_directions)
    if hidden.device.type != "cpu" or hidden.dtype not in (torch.float32, torch.float64):
        raise InputError(f"mamba_mixer_fn: needs float32/float64 CPU tensors, got {hidden.dtype} on {hidden.device}")
    dtype = hidden.dtype
    if norm_weight is not None and norm_weight.shape != (hidden.shape[2] // len(rc_strands),):
        raise InputError(f"mamba_mixer_fn: norm_weight must be (d_model,), got {tuple(norm_weight.shape)}")
    weights = [None if w is None else w.to(dtype) for w in (
        norm_weight, in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
        A_log, D, out_proj_weight, out_proj_bias)]
    sp = _Spec(hidden, weights[1], weights[5], weights[8], rc_strands, reverse_directions, isa, norm_eps)
    if mask is not None:
        if mask.shape != (sp.batch, sp.L):
            raise InputError(f"mamba_mixer_fn: mask must be (batch={sp.batch}, L={sp.L}), got {tuple(mask.shape)}")
        mask = mask.to(torch.bool).contiguous()
    hidden = hidden.contiguous()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, *weights))
    if not needs_grad:  # inference: no autograd bookkeeping, nothing saved
        return _forward(sp, hidden, *weights, mask, save=False)[0]
    return _MambaMixerFn.apply(hidden, *weights, mask, sp)


def mamba_mixer_ref(hidden, in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                    dt_proj_bias, A_log, D, out_proj_weight, out_proj_bias, *, rc_strands=(False,),
                    reverse_directions=(False,), mask=None, norm_weight=None, norm_eps: float = 1e-5):
    """:func:`mamba_mixer_fn` spelled out with flips and the per-stream torch oracles (tests)."""
    S = len(rc_strands)
    d = hidden.shape[2] // S
    E = in_proj_weight.shape[0] // 2
    N = A_log.shape[-1]
    R = x_proj_weight.shape[1] - 2 * N
    outs = []
    for s, rc in enumerate(rc_strands):
        x = hidden[..., s * d:(s + 1) * d]
        m = mask
        if rc:
            x = x.flip(1, 2)
            m = None if mask is None else mask.flip(1)
        if norm_weight is not None:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm_eps) * norm_weight
        total = 0
        for k, rev in enumerate(reverse_directions):
            xs, ms = (x.flip(1), None if m is None else m.flip(1)) if rev else (x, m)
            xz = F.linear(xs, in_proj_weight, in_proj_bias)
            xi, z = xz[..., :E], xz[..., E:]
            xc = ss.causal_conv1d_tokens(xi, conv_weight[k:k + 1], None if conv_bias is None else conv_bias[k:k + 1],
                                         mask=ms, backend="ref")[0]
            x_dbl = F.linear(xc, x_proj_weight[k])
            dt = F.linear(x_dbl[..., :R], dt_proj_weight[k])
            y = ss.selective_scan_tokens(
                xc[None], dt[None], -torch.exp(A_log[k:k + 1]), x_dbl[None, ..., R:R + N], x_dbl[None, ..., R + N:],
                D[k:k + 1], z, dt_proj_bias[k:k + 1], True, mask=ms, sum_directions=True, backend="ref")
            o = F.linear(y, out_proj_weight, out_proj_bias)
            total = total + (o.flip(1) if rev else o)
        outs.append(total.flip(1, 2) if rc else total)
    return torch.cat(outs, dim=-1)
