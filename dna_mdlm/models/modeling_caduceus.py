"""The Caduceus backbone and its heads, in one file (Hugging Face style).

Owns: the Mamba (v1) mixer, BiMamba, the RC-equivariant parameter-sharing wrappers (Caduceus-PS), the
plain bidirectional stack used with post-hoc conjoining (Caduceus-Ph), RMSNorm, the reference init, and
the three model classes `CaduceusModel`, `CaduceusForMaskedLM` and `CaduceusForSequenceClassification`.

Module and parameter names match kuleshov-group/caduceus so the published checkpoints load unchanged
(reference/caduceus.md §5.3). With `fused_add_norm=True` the per-layer half swap of the fused Triton
add-norm path is reproduced (§3.4), so released PS weights compute the same function here.

Padding: every forward takes an optional `attention_mask` (B, L). Masked positions are made inert inside
each Mamba (their conv input and their step size are zeroed, so the state passes through unchanged), which
makes a right-padded batch give exactly the outputs of the unpadded sequences at real positions, in both
scan directions. Without a mask nothing changes, which is how the research code runs.

Execution: on CPU (float32/float64, C++ kernels built) a whole BiMamba layer, both strands of a PS layer
included, runs as one `ops.mamba_mixer_fn` call on the token-major activations (one conv and one scan call
for all strands and directions; the reverse direction and the RC strand by indexing and weight flips, no
activation flips) and saves only its input for backward. Elsewhere (CUDA, other dtypes, or
DNA_MDLM_SCAN=ref|blocked) each Mamba runs the reference-shaped path below with `ops.selective_scan_fn`;
the tests hold the two to float64 round-off.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

from ..ops.mamba_inner import mamba_mixer_fn
from ..ops.selective_scan import scan_backend, selective_scan_fn, selective_state_update
from ..tokenizer import rc_ids
from .configuration_caduceus import CaduceusConfig


def rc_hidden(x: torch.Tensor) -> torch.Tensor:
    """Reverse complement of a hidden state (..., L, C): flip both length and channels."""
    return x.flip(-2, -1)


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return torch.cat([x[..., d:], x[..., :d]], dim=-1)


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm over the last axis of x viewed as (..., G, d) with weight (G, d); saves only x and 1/rms
    (autograd through the plain expression keeps three full-size tensors)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.float() if x.dtype != torch.float64 else x
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd * weight.to(xf.dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        xf = x.float() if x.dtype != torch.float64 else x
        xhat = xf * rstd
        dyf = dy.to(xf.dtype)
        dxhat = dyf * weight.to(xf.dtype)
        dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdim=True))
        dw = (dyf * xhat).reshape(-1, *weight.shape).sum(0) if ctx.needs_input_grad[1] else None
        return dx.to(x.dtype), None if dw is None else dw.to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last weight.shape[-1] channels, in fp32 (fp64 for fp64).

    weight (d,) normalises x (..., d); weight (G, d) normalises each of the G groups of x (..., G*d)."""
    groups = weight.shape[0] if weight.dim() == 2 else 1
    d = weight.shape[-1]
    xg = x.view(*x.shape[:-1], groups, d) if groups > 1 else x
    return _RMSNormFn.apply(xg, weight, eps).view(x.shape)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w, computed in fp32 like the Triton kernel (fp64 for fp64 inputs)."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


# ---------------------------------------------------------------------------------------------------
# Mamba v1 mixer
# ---------------------------------------------------------------------------------------------------


class Mamba(nn.Module):
    """Selective SSM mixer: in_proj -> causal depthwise conv + SiLU -> x_proj [dt|B|C] -> scan -> gate -> out_proj."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank="auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self._ssm_init = dict(dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale, dt_init_floor=dt_init_floor)
        self.reset_ssm_parameters()
        # Read by the optimizer-group builder and by the model-level init.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.dt_proj.bias._no_reinit = True

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """The Mamba init of dt_proj, A_log (S4D-real) and D."""
        cfg = self._ssm_init
        std = self.dt_rank**-0.5 * cfg["dt_scale"]
        if cfg["dt_init"] == "constant":
            init.constant_(self.dt_proj.weight, std)
        elif cfg["dt_init"] == "random":
            init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {cfg['dt_init']!r}")
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(cfg["dt_max"]) - math.log(cfg["dt_min"])) + math.log(cfg["dt_min"])
        ).clamp(min=cfg["dt_init_floor"])
        init.copy_(self.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        init.copy_(self.A_log, torch.log(A))
        init.ones_(self.D)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (B, L, D) -> (B, L, D); mask (B, L) bool, False = padding."""
        if fused_path_ok(hidden_states):
            return run_mixers([self], hidden_states, (False,), (False,), mask)
        return self.forward_unfused(hidden_states, mask)

    def forward_unfused(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The reference-shaped path: (B, D, L) activations through `ops.selective_scan_fn` (mamba-ssm on CUDA)."""
        L = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (B, 2E, L)
        x, z = xz.chunk(2, dim=1)
        if mask is not None:
            x = x * mask[:, None, :].to(x.dtype)
        x = F.silu(self.conv1d(x)[..., :L])
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # bias is added inside the scan
        # SSM parameters in fp32 as mamba-ssm's kernels take them (fp64 for a float64 model).
        acc = torch.promote_types(hidden_states.dtype, torch.float32)
        A = -torch.exp(self.A_log.to(acc))
        B = B.transpose(1, 2).contiguous()
        C = C.transpose(1, 2).contiguous()
        if mask is None:
            y = selective_scan_fn(
                x.contiguous(), dt.contiguous(), A, B, C, self.D.to(acc), z=z.contiguous(),
                delta_bias=self.dt_proj.bias.to(acc), delta_softplus=True,
            )
        else:
            # A zero step at padding keeps the state unchanged: exp(0 * A) = 1 and 0 * B * u = 0.
            delta = F.softplus(dt + self.dt_proj.bias[None, :, None]) * mask[:, None, :].to(dt.dtype)
            y = selective_scan_fn(x.contiguous(), delta.contiguous(), A, B, C, self.D.to(acc), z=z.contiguous())
        return self.out_proj(y.transpose(1, 2))

    # --- recurrent decoding (causal models only): O(1) work per new base --------------------------
    def allocate_inference_cache(self, batch_size: int, device=None, dtype=None):
        device = device or self.A_log.device
        dtype = dtype or self.in_proj.weight.dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                                dtype=torch.promote_types(dtype, torch.float32))
        return conv_state, ssm_state

    def step(self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One position: hidden_states (B, D) -> (B, D); updates conv_state and ssm_state in place."""
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, E) each
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = (conv_state * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # One selective-scan step, the same home as the scan (mamba-ssm's Mamba.step calls its step kernel).
        y = selective_state_update(ssm_state, x, F.linear(dt, self.dt_proj.weight), -torch.exp(self.A_log.to(ssm_state.dtype)), B,
                                   C, D=self.D, z=z, dt_bias=self.dt_proj.bias, dt_softplus=True)
        return self.out_proj(y)


class BiMambaWrapper(nn.Module):
    """Forward Mamba plus a Mamba on the flipped sequence; in_proj/out_proj shared when weight-tied."""

    def __init__(self, d_model: int, bidirectional: bool = True, bidirectional_strategy: str = "add",
                 bidirectional_weight_tie: bool = True, **mamba_kwargs):
        super().__init__()
        if bidirectional_strategy not in ("add", "ew_multiply"):
            raise ValueError(f"bidirectional_strategy must be 'add' or 'ew_multiply', got {bidirectional_strategy!r}")
        self.bidirectional = bidirectional
        self.bidirectional_strategy = bidirectional_strategy
        self.mamba_fwd = Mamba(d_model, **mamba_kwargs)
        self.mamba_rev = Mamba(d_model, **mamba_kwargs) if bidirectional else None
        if bidirectional and bidirectional_weight_tie:
            # The same Parameter objects, as upstream: in/out projections carry most of the weights.
            self.mamba_rev.in_proj.weight = self.mamba_fwd.in_proj.weight
            self.mamba_rev.in_proj.bias = self.mamba_fwd.in_proj.bias
            self.mamba_rev.out_proj.weight = self.mamba_fwd.out_proj.weight
            self.mamba_rev.out_proj.bias = self.mamba_fwd.out_proj.bias

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if fused_path_ok(hidden_states):
            return self.forward_strands(hidden_states, (False,), mask)
        out = self.mamba_fwd.forward_unfused(hidden_states, mask)
        if self.mamba_rev is not None:
            rev_mask = None if mask is None else mask.flip(1)
            out_rev = self.mamba_rev.forward_unfused(hidden_states.flip(1), rev_mask).flip(1)
            out = out + out_rev if self.bidirectional_strategy == "add" else out * out_rev
        return out

    def forward_strands(self, x: torch.Tensor, rc_strands: tuple[bool, ...], mask: torch.Tensor | None,
                        norm: RMSNorm | None = None) -> torch.Tensor:
        """This BiMamba on S strands at once, x (B, L, S*d); an RC strand is given rc(BiMamba(rc(x_s))).
        With `norm`, on norm(x) per strand (the RC strand in RC space), the norm folded into the kernel call.

        Both directions share one kernel call when they share in_proj/out_proj and their outputs are added
        (Caduceus's default); otherwise each direction gets its own call and the outputs are combined."""
        if self.mamba_rev is None:
            return run_mixers([self.mamba_fwd], x, rc_strands, (False,), mask, norm)
        pair = [self.mamba_fwd, self.mamba_rev]
        tied = self.mamba_rev.in_proj.weight is self.mamba_fwd.in_proj.weight and (
            self.mamba_rev.out_proj.weight is self.mamba_fwd.out_proj.weight)
        if tied and self.bidirectional_strategy == "add" and _same_bias(pair):
            return run_mixers(pair, x, rc_strands, (False, True), mask, norm)
        out = run_mixers([self.mamba_fwd], x, rc_strands, (False,), mask, norm)
        out_rev = run_mixers([self.mamba_rev], x, rc_strands, (True,), mask, norm)
        return out + out_rev if self.bidirectional_strategy == "add" else out * out_rev


def _same_bias(mambas) -> bool:
    first = mambas[0]
    return all(m.in_proj.bias is first.in_proj.bias and m.out_proj.bias is first.out_proj.bias for m in mambas)


def fused_path_ok(x: torch.Tensor) -> bool:
    """Whether the one-call CPU layer (`ops.mamba_mixer_fn`) runs for activations x: CPU, float32/float64,
    no CPU autocast (bf16-mixed training keeps the reference-shaped path, whose matmuls autocast), and the
    scan dispatcher on its C++ path (DNA_MDLM_SCAN=ref|blocked forces the reference-shaped path)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and scan_backend("cpu") == "cpp")


def run_mixers(mambas: list, x: torch.Tensor, rc_strands: tuple[bool, ...], reverse: tuple[bool, ...],
               mask: torch.Tensor | None, norm: RMSNorm | None = None) -> torch.Tensor:
    """Sum over `mambas` (sharing in_proj/out_proj) run in directions `reverse` on the strands of x (first
    RMS-normalised by `norm` if given), in one `ops.mamba_mixer_fn` call. Per-direction weights are stacked
    along a new first axis."""
    first = mambas[0]
    conv_b = None if first.conv1d.bias is None else torch.stack([m.conv1d.bias for m in mambas])
    return mamba_mixer_fn(
        x, first.in_proj.weight, first.in_proj.bias,
        torch.stack([m.conv1d.weight[:, 0, :] for m in mambas]), conv_b,
        torch.stack([m.x_proj.weight for m in mambas]), torch.stack([m.dt_proj.weight for m in mambas]),
        torch.stack([m.dt_proj.bias for m in mambas]), torch.stack([m.A_log for m in mambas]),
        torch.stack([m.D for m in mambas]), first.out_proj.weight, first.out_proj.bias,
        rc_strands=rc_strands, reverse_directions=reverse, mask=mask,
        norm_weight=None if norm is None else norm.weight, norm_eps=1e-5 if norm is None else norm.eps,
    )


# ---------------------------------------------------------------------------------------------------
# Reverse-complement parameter sharing (Caduceus-PS)
# ---------------------------------------------------------------------------------------------------


class RCPSEmbedding(nn.Module):
    """concat[E(ids), RC(E(rc(ids)))] -> (B, L, 2*d_model)."""

    def __init__(self, vocab_size: int, d_model: int, complement_map: list[int]):
        super().__init__()
        self.register_buffer("complement_map", torch.tensor(complement_map, dtype=torch.long))
        self.embedding = nn.Embedding(vocab_size, d_model)

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        fwd = self.embedding(input_ids)
        # RC(E(rc(ids)))[l] is E(comp(ids[l])) with its channels reversed: no length flip needed.
        rc = self.embedding(self.complement_map[input_ids]).flip(-1)
        return torch.cat([fwd, rc], dim=-1)


class RCPSWrapper(nn.Module):
    """Runs one module on both strands: first half directly, second half RC-conjugated (same weights)."""

    def __init__(self, submodule: nn.Module):
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.submodule, BiMambaWrapper) and fused_path_ok(x):
            # Both strands in one kernel call, the RC strand by weight flips and reversed scans (no copies).
            return self.submodule.forward_strands(x, (False, True), mask)
        d = x.shape[-1] // 2
        both = torch.cat([x[..., :d], rc_hidden(x[..., d:])], dim=0)  # one call on a doubled batch
        both_mask = None if mask is None else torch.cat([mask, mask.flip(1)], dim=0)
        fwd, rc = self.submodule(both, both_mask).chunk(2, dim=0)
        return torch.cat([fwd, rc_hidden(rc)], dim=-1)


def rcps_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-strand norm: half 1 directly, half 2 in RC space. The norm acts per position, so RC space only
    reverses the channels: half 2 is normalised with the channel-reversed weight, in one call, no flips."""
    d = x.shape[-1] // 2
    if isinstance(norm, RMSNorm):
        return rms_norm(x, torch.stack([norm.weight, norm.weight.flip(0)]), norm.eps)
    return torch.cat([norm(x[..., :d]), rc_hidden(norm(rc_hidden(x[..., d:])))], dim=-1)


class RCPSAddNormWrapper(nn.Module):
    """Unfused PS add-norm (parameter key `...norm.submodule.weight`)."""

    def __init__(self, submodule: RMSNorm):
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rcps_norm(self.submodule, x)


class RCPSLMHead(nn.Module):
    """logits[l, v] = <h1[l], W[v]> + <flip_c(h2)[l], W[comp(v)]>; W tied to the embedding."""

    def __init__(self, complement_map: list[int], true_dim: int, vocab_size: int):
        super().__init__()
        self.register_buffer("complement_map", torch.tensor(complement_map, dtype=torch.long))
        self.lm_head = nn.Linear(true_dim, vocab_size, bias=False)

    @property
    def weight(self) -> nn.Parameter:
        return self.lm_head.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        W = self.lm_head.weight
        return F.linear(x[..., :d], W) + F.linear(x[..., d:].flip(-1), W[self.complement_map])


# ---------------------------------------------------------------------------------------------------
# Blocks and backbone
# ---------------------------------------------------------------------------------------------------


def _mixer_kwargs(config: CaduceusConfig) -> dict:
    ssm = {k: v for k, v in config.ssm_cfg.items() if k != "layer_idx"}
    return dict(
        bidirectional=config.bidirectional,
        bidirectional_strategy=config.bidirectional_strategy,
        bidirectional_weight_tie=config.bidirectional_weight_tie,
        **ssm,
    )


def _make_norm(config: CaduceusConfig) -> nn.Module:
    if not config.rms_norm:
        return nn.LayerNorm(config.d_model, eps=config.norm_epsilon)
    return RMSNorm(config.d_model, eps=config.norm_epsilon)


class CaduceusBlock(nn.Module):
    """Add -> Norm -> BiMamba (no MLP, no dropout). Returns (hidden, residual)."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.mixer = BiMambaWrapper(config.d_model, **_mixer_kwargs(config))
        self.norm = _make_norm(config)

    def forward(self, hidden_states, residual=None, mask=None):
        residual = hidden_states if residual is None else residual + hidden_states
        if self.residual_in_fp32:
            residual = residual.float()
        x = residual.to(self.norm.weight.dtype)
        if isinstance(self.norm, RMSNorm) and fused_path_ok(x):
            # The norm runs inside the one-call layer, which then keeps only its un-normalised input.
            return self.mixer.forward_strands(x, (False,), mask, norm=self.norm), residual
        hidden_states = self.mixer(self.norm(x), mask)
        return hidden_states, residual


class RCPSMambaBlock(nn.Module):
    """PS block: per-strand add-norm, then the RC-shared BiMamba.

    With `fused_add_norm`, upstream's fused kernel is fed the second half as the forward stream, so the
    residual leaves each layer with its halves exchanged (no flip). That is reproduced here, because it
    changes the function the published weights compute (reference/caduceus.md §3.4).
    """

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.fused_add_norm = config.fused_add_norm
        self.residual_in_fp32 = config.residual_in_fp32
        self.mixer = RCPSWrapper(BiMambaWrapper(config.d_model, **_mixer_kwargs(config)))
        norm = _make_norm(config)
        self.norm = norm if config.fused_add_norm else RCPSAddNormWrapper(norm)

    def forward(self, hidden_states, residual=None, mask=None):
        residual = hidden_states if residual is None else residual + hidden_states
        if self.residual_in_fp32:
            residual = residual.float()
        if self.fused_add_norm:
            residual = swap_halves(residual)
        norm = self.norm if self.fused_add_norm else self.norm.submodule
        x = residual.to(self.norm_dtype)
        if isinstance(norm, RMSNorm) and isinstance(self.mixer.submodule, BiMambaWrapper) and fused_path_ok(x):
            # Per-strand norm (the RC half in RC space), both strands and directions in one call.
            return self.mixer.submodule.forward_strands(x, (False, True), mask, norm=norm), residual
        normed = rcps_norm(self.norm, residual) if self.fused_add_norm else self.norm(residual)
        return self.mixer(normed.to(self.norm_dtype), mask), residual

    @property
    def norm_dtype(self):
        return self.mixer.submodule.mamba_fwd.in_proj.weight.dtype


class TimestepEmbedding(nn.Module):
    """Optional time conditioning: sinusoidal features of sigma(t) -> MLP -> a per-sequence vector."""

    def __init__(self, d_model: int, n_freq: int = 64):
        super().__init__()
        self.n_freq = n_freq
        self.mlp = nn.Sequential(nn.Linear(2 * n_freq, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(self.n_freq, device=sigma.device) / self.n_freq)
        args = sigma.to(self.mlp[0].weight.dtype)[:, None] * freqs[None] * 100.0
        return self.mlp(torch.cat([args.sin(), args.cos()], dim=-1))


class CaduceusEmbeddings(nn.Module):
    def __init__(self, config: CaduceusConfig):
        super().__init__()
        if config.rcps:
            self.word_embeddings = RCPSEmbedding(config.vocab_size, config.d_model, config.complement_list())
        else:
            self.word_embeddings = nn.Embedding(config.vocab_size, config.d_model)

    def forward(self, input_ids):
        return self.word_embeddings(input_ids)


class CaduceusMixerModel(nn.Module):
    """embeddings -> n_layer blocks -> final norm on hidden + residual."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.config = config
        self.rcps = config.rcps
        self.fused_add_norm = config.fused_add_norm
        self.embeddings = CaduceusEmbeddings(config)
        block = RCPSMambaBlock if config.rcps else CaduceusBlock
        self.layers = nn.ModuleList([block(config) for _ in range(config.n_layer)])
        norm_f = _make_norm(config)
        self.norm_f = RCPSAddNormWrapper(norm_f) if (config.rcps and not config.fused_add_norm) else norm_f
        self.time_embed = TimestepEmbedding(config.d_model) if config.time_conditioning else None
        # Class-conditional models only (an unconditional model has no such parameter, so its state-dict keys are
        # those of the released checkpoints): num_classes + 1 rows, the last one the null class.
        self.class_embed = nn.Embedding(config.num_classes + 1, config.d_model) if config.conditional else None
        self.gradient_checkpointing = False

    def class_vector(self, class_labels: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """(B, 1, hidden) class vector added at every position, or None for an unconditional model.

        class_labels: (B,) class ids in [0, num_classes], num_classes being the null class; None = the null class
        for every row. For Caduceus-PS the second strand gets the channel-reversed copy, so the added vector v
        satisfies flip_C(v) = v: it commutes with the reverse complement and RC equivariance holds for every
        class (the same construction as the time embedding)."""
        if self.class_embed is None:
            if class_labels is not None:
                raise ValueError("class_labels given to an unconditional model (config.num_classes is 0)")
            return None
        if class_labels is None:
            class_labels = torch.full((batch,), self.config.null_class, dtype=torch.long, device=device)
        class_labels = class_labels.reshape(-1).to(device=device, dtype=torch.long).expand(batch)
        if bool(((class_labels < 0) | (class_labels > self.config.null_class)).any()):
            raise ValueError(f"class_labels must lie in [0, {self.config.null_class}] (the last is the null class)")
        c = self.class_embed(class_labels)[:, None, :]
        return torch.cat([c, c.flip(-1)], dim=-1) if self.rcps else c

    def forward(self, input_ids, timesteps=None, attention_mask=None, output_hidden_states=False, class_labels=None):
        hidden = self.embeddings(input_ids)
        c = self.class_vector(class_labels, hidden.shape[0], hidden.device)
        if c is not None:
            hidden = hidden + c.to(hidden.dtype)
        if self.time_embed is not None:
            if timesteps is None:
                raise ValueError("this model was built with time_conditioning=True: pass timesteps (sigma) per sequence")
            t = self.time_embed(timesteps.reshape(-1).expand(hidden.shape[0]))[:, None, :].to(hidden.dtype)
            # The second strand lives in channel-reversed RC space, so its copy of the vector is reversed
            # too; that keeps PS equivariance exact.
            hidden = hidden + (torch.cat([t, t.flip(-1)], dim=-1) if self.rcps else t)
        mask = None if attention_mask is None else attention_mask.bool()
        residual, all_hidden = None, []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            if self.gradient_checkpointing and self.training:
                hidden, residual = checkpoint(layer, hidden, residual, mask, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual, mask)
        residual = hidden if residual is None else residual + hidden
        if self.rcps:
            # The fused final norm does not swap halves.
            norm = self.norm_f.submodule if isinstance(self.norm_f, RCPSAddNormWrapper) else self.norm_f
            out = rcps_norm(norm, residual)
        else:
            out = self.norm_f(residual.to(self.norm_f.weight.dtype))
        if output_hidden_states:
            all_hidden.append(out)
        return out, all_hidden

    def step(self, input_ids: torch.Tensor, cache: list) -> torch.Tensor:
        """One position of a causal (unidirectional, non-PS) stack: (B,) ids -> (B, D) final hidden."""
        hidden = self.embeddings(input_ids)
        residual = None
        for layer, (conv_state, ssm_state) in zip(self.layers, cache):
            residual = hidden if residual is None else residual + hidden
            hidden = layer.mixer.mamba_fwd.step(layer.norm(residual), conv_state, ssm_state)
        return self.norm_f(residual + hidden)


# ---------------------------------------------------------------------------------------------------
# Hugging Face model classes
# ---------------------------------------------------------------------------------------------------


def _bimamba_tied_keys(config: CaduceusConfig, prefix: str) -> dict[str, str]:
    if not (config.bidirectional and config.bidirectional_weight_tie):
        return {}
    mid = "mixer.submodule." if config.rcps else "mixer."
    names = ["in_proj.weight", "out_proj.weight"]
    if config.ssm_cfg.get("bias"):
        names += ["in_proj.bias", "out_proj.bias"]
    return {
        f"{prefix}layers.{i}.{mid}mamba_rev.{n}": f"{prefix}layers.{i}.{mid}mamba_fwd.{n}"
        for i in range(config.n_layer)
        for n in names
    }


class CaduceusPreTrainedModel(PreTrainedModel):
    config_class = CaduceusConfig
    base_model_prefix = "caduceus"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BiMambaWrapper"]

    def _init_weights(self, module):
        """Reference init (caduceus.md §1.6). Uses transformers.initialization so loaded weights are skipped."""
        cfg = self.config.initializer_cfg
        if isinstance(module, nn.Linear):
            if getattr(module, "_is_classifier_head", False):
                # the upstream fix for an uninitialised `score` (caduceus issue #37)
                init.normal_(module.weight, std=cfg["initializer_range"])
            if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=cfg["initializer_range"])
        elif isinstance(module, (RMSNorm, nn.LayerNorm)):
            init.ones_(module.weight)
        elif isinstance(module, Mamba) and cfg["rescale_prenorm_residual"]:
            # kaiming_uniform(a=sqrt 5) has bound 1/sqrt(fan_in); then scaled by 1/sqrt(n_residuals * n_layer).
            fan_in = module.out_proj.weight.shape[1]
            bound = 1.0 / math.sqrt(fan_in) / math.sqrt(cfg["n_residuals_per_layer"] * self.config.n_layer)
            init.uniform_(module.out_proj.weight, -bound, bound)


class CaduceusModel(CaduceusPreTrainedModel):
    """The backbone: last_hidden_state is (B, L, d_model), or (B, L, 2*d_model) for Caduceus-PS."""

    def __init__(self, config: CaduceusConfig):
        super().__init__(config)
        self.backbone = CaduceusMixerModel(config)
        self._tied_weights_keys = _bimamba_tied_keys(config, "backbone.")
        self.post_init()

    def forward(self, input_ids, timesteps=None, attention_mask=None, output_hidden_states=False,
                return_dict=True, class_labels=None, **kwargs):
        hidden, all_hidden = self.backbone(input_ids, timesteps, attention_mask, output_hidden_states, class_labels)
        if not return_dict:
            return (hidden, all_hidden) if output_hidden_states else (hidden,)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=tuple(all_hidden) if output_hidden_states else None)


class CaduceusForMaskedLM(CaduceusPreTrainedModel):
    """Backbone + LM head tied to the embedding (the RC-PS head for PS). Logits are float32.

    The same class serves the MDLM denoiser (bidirectional) and the AR baseline (unidirectional,
    `config.objective == "ar"`: logits at position t predict base t+1).
    """

    def __init__(self, config: CaduceusConfig):
        super().__init__(config)
        self.caduceus = CaduceusModel(config)
        emb = self.caduceus.backbone.embeddings.word_embeddings
        if config.rcps:
            self.lm_head = RCPSLMHead(config.complement_list(), config.d_model, config.vocab_size)
            self.lm_head.lm_head.weight = emb.embedding.weight
            self._tied_weights_keys = {"lm_head.lm_head.weight": "caduceus.backbone.embeddings.word_embeddings.embedding.weight"}
        else:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
            self.lm_head.weight = emb.weight
            self._tied_weights_keys = {"lm_head.weight": "caduceus.backbone.embeddings.word_embeddings.weight"}
        self.post_init()

    def get_input_embeddings(self):
        return self.caduceus.backbone.embeddings.word_embeddings

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, timesteps=None, attention_mask=None, labels=None, loss_weights=None,
                output_hidden_states=False, return_dict=True, class_labels=None, **kwargs):
        """class_labels: (B,) class ids of a class-conditional model (`config.num_classes`; the id num_classes or
        None is the null class, i.e. the unconditional model); must be None for an unconditional model."""
        out = self.caduceus(input_ids, timesteps=timesteps, attention_mask=attention_mask,
                            output_hidden_states=output_hidden_states, class_labels=class_labels)
        logits = self.lm_head(out.last_hidden_state).float()
        loss = None
        if labels is not None:
            ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                 ignore_index=self.config.pad_token_id, reduction="none")
            if loss_weights is not None:
                w = loss_weights.view(-1).float()
                loss = (ce * w).sum() / w.sum().clamp_min(1e-12)
            else:
                keep = labels.view(-1) != self.config.pad_token_id
                loss = ce[keep].mean() if keep.any() else ce.sum() * 0.0
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)

    # --- recurrent decoding for the causal (AR) model ---------------------------------------------
    def allocate_inference_cache(self, batch_size: int, device=None):
        if self.config.bidirectional or self.config.rcps:
            raise ValueError("recurrent decoding needs a unidirectional, non-PS model (objective='ar')")
        return [layer.mixer.mamba_fwd.allocate_inference_cache(batch_size, device) for layer in self.caduceus.backbone.layers]

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, cache: list) -> torch.Tensor:
        """Feed one base per sequence ((B,) ids); returns next-base logits (B, V) in float32."""
        return self.lm_head(self.caduceus.backbone.step(input_ids, cache)).float()


def masked_pool(hidden: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """Pool (B, L, C) over L counting only mask==True positions: mean | max | first | last."""
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    mask = mask.bool()
    if how == "mean":
        m = mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1)
    if how == "max":
        return hidden.masked_fill(~mask[..., None], float("-inf")).amax(1)
    idx = torch.arange(hidden.shape[1], device=hidden.device).expand_as(mask)
    if how == "first":
        pos = torch.where(mask, idx, hidden.shape[1]).amin(1)
    elif how == "last":
        pos = torch.where(mask, idx, -1).amax(1)
    else:
        raise ValueError(f"pooling must be mean, max, first or last, got {how!r}")
    pos = pos.clamp(0, hidden.shape[1] - 1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]


def rc_padded(input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Reverse complement each row's real (mask==True, left-aligned) part, keeping right padding."""
    if mask is None:
        return rc_ids(input_ids)
    lengths = mask.long().sum(1, keepdim=True)
    idx = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    src = (lengths - 1 - idx).clamp(min=0)
    rc = rc_ids(input_ids.gather(1, src).flip(1))  # rc_ids reverses back, so this only complements the gather
    return torch.where(idx < lengths, rc, input_ids)


FEATURE_POOLS = ("mean", "max", "mean+max")
FEATURE_LAYERS = ("last", "all")


def feature_pools(pooling: str) -> tuple[str, ...]:
    """"mean" | "max" | "mean+max" -> the pools concatenated in that order."""
    if pooling not in FEATURE_POOLS:
        raise ValueError(f"feature pooling must be one of {', '.join(FEATURE_POOLS)}, got {pooling!r}")
    return tuple(pooling.split("+"))


def feature_width(config: CaduceusConfig, layers: str = "last", pooling: str = "mean") -> int:
    """Width of `rc_invariant_features`: d_model per (state, pool); states = n_layer + 1 for "all", else 1."""
    if layers not in FEATURE_LAYERS:
        raise ValueError(f"layers must be one of {', '.join(FEATURE_LAYERS)}, got {layers!r}")
    states = config.n_layer + 1 if layers == "all" else 1
    return states * len(feature_pools(pooling)) * config.d_model


def _pooled_states(encoder: CaduceusModel, input_ids, attention_mask, timesteps, layers: str,
                   pools: tuple[str, ...]) -> list[torch.Tensor]:
    """Masked pools (B, hidden_size) of each captured state, in order: embeddings, the residual stream after
    blocks 1..n_layer-1, the final normed output (layers="all"); only the final output for "last"."""
    out: list[torch.Tensor] = []

    def pool(h: torch.Tensor) -> None:
        out.extend(masked_pool(h.float(), attention_mask, p) for p in pools)

    hooks = []
    if layers == "all":
        backbone = encoder.backbone
        # Forward hooks read each block's (hidden, residual) output, so this needs no copy of the backbone's
        # forward. A block's output state is the residual stream residual + hidden (what the next block
        # normalises); the last block's is replaced by the final normed output, the usual "last layer".
        hooks.append(backbone.embeddings.register_forward_hook(lambda m, i, o: pool(o)))
        for layer in backbone.layers[:-1]:
            hooks.append(layer.register_forward_hook(lambda m, i, o: pool(o[0] + o[1])))
    try:
        h = encoder(input_ids, timesteps=timesteps, attention_mask=attention_mask).last_hidden_state
    finally:
        for hook in hooks:
            hook.remove()
    pool(h)
    return out


def rc_invariant_features(encoder: CaduceusModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          timesteps: torch.Tensor | None = None, layers: str = "all", pooling: str = "mean") -> torch.Tensor:
    """Pooled, reverse-complement-invariant sequence features of a Caduceus encoder: (B, feature_width) float32.

    input_ids (B, L) right-padded, attention_mask (B, L) True on real bases (None: all real). Every state
    (`layers="all"`: the embeddings, each block's output and the final normed output, n_layer + 1 states;
    `"last"`: the final output) is pooled over real bases only (`pooling` "mean", "max" or "mean+max",
    concatenated in that order) and made RC-invariant:

    - Caduceus-PS: a state H (L, 2d) of rc(x) is flip_{L,C} H(x), so for a pool p = pool_L H the two strand
      halves combine as (p[:d] + flip_C p[d:]) / 2, which rc swaps into itself: one encoder pass.
    - plain / Ph: the encoder runs on x and on its reverse complement and the pooled states are averaged
      (post-hoc conjoining, Schiff et al. 2024, Caduceus §4.2).

    Layer-wise pooled features for a frozen probe follow the linear-probing practice of, e.g., the
    Nucleotide Transformer (Dalla-Torre et al. 2023) and Caduceus VEP (Schiff et al. 2024, App. D.3).
    Order: state-major, then pool, then channel.
    """
    pools = feature_pools(pooling)
    if layers not in FEATURE_LAYERS:
        raise ValueError(f"layers must be one of {', '.join(FEATURE_LAYERS)}, got {layers!r}")
    states = _pooled_states(encoder, input_ids, attention_mask, timesteps, layers, pools)
    if encoder.config.rcps:
        d = encoder.config.d_model
        states = [(p[..., :d] + p[..., d:].flip(-1)) / 2 for p in states]
    else:
        rc_states = _pooled_states(encoder, rc_padded(input_ids, attention_mask), attention_mask, timesteps, layers, pools)
        states = [(a + b) / 2 for a, b in zip(states, rc_states)]
    return torch.cat(states, dim=-1)


class CaduceusForSequenceClassification(CaduceusPreTrainedModel):
    """Backbone + pooling + head. Two feature modes (`config.feature_layers`):

    - None (default, the upstream head): the final hidden state is pooled per strand view and the head's
      logits are averaged over the views. PS: the two strand streams are pooled separately (the RC stream
      read in its own direction), which is exactly RC-invariant ("conjoin_train" upstream, always on here).
      Ph / plain: with `conjoin_eval` (or `conjoin_train`) the backbone also runs on the reverse complement
      and the logits are averaged (post-hoc conjoining). `head` is "linear" (upstream's bias-free `score`)
      or "mlp"; pooling mean | max | first | last.
    - "all" or "last" (the frozen probe): `rc_invariant_features` of every layer or of the last one (pooling
      mean | max | mean+max), standardised with the stored `feature_mean` / `feature_scale` buffers (a fitted
      StandardScaler), then `score`: "linear" (with bias, so a fitted logistic regression is stored exactly) or
      "mlp".
    Pooling always respects `attention_mask`: padding never reaches a pool.
    """

    def __init__(self, config: CaduceusConfig, pooling_strategy: str | None = None, conjoin_train: bool | None = None,
                 conjoin_eval: bool | None = None, head: str | None = None, feature_layers: str | None = None):
        for key, val, default in (("pooling_strategy", pooling_strategy, "mean"), ("conjoin_train", conjoin_train, False),
                                  ("conjoin_eval", conjoin_eval, False), ("head", head, "linear"),
                                  ("feature_layers", feature_layers, None)):
            setattr(config, key, val if val is not None else getattr(config, key, default))
        if config.feature_layers not in (None,) + FEATURE_LAYERS:
            raise ValueError(f"feature_layers must be None or one of {', '.join(FEATURE_LAYERS)}, got {config.feature_layers!r}")
        probe = config.feature_layers is not None
        allowed = FEATURE_POOLS if probe else ("mean", "max", "first", "last")
        if config.pooling_strategy not in allowed:
            raise ValueError(f"pooling_strategy must be one of {', '.join(allowed)} with feature_layers="
                             f"{config.feature_layers!r}, got {config.pooling_strategy!r}")
        super().__init__(config)
        self.num_labels = config.num_labels
        self.caduceus = CaduceusModel(config)
        d = feature_width(config, config.feature_layers, config.pooling_strategy) if probe else config.d_model
        if probe:
            self.register_buffer("feature_mean", torch.zeros(d))
            self.register_buffer("feature_scale", torch.ones(d))
        if config.head == "linear":
            self.score = nn.Linear(d, config.num_labels, bias=probe)
        elif config.head == "mlp":
            hidden = config.head_hidden or 2 * config.d_model
            self.score = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(config.head_dropout),
                                       nn.Linear(hidden, config.num_labels))
        else:
            raise ValueError(f"head must be 'linear' or 'mlp', got {config.head!r}")
        for m in self.score.modules():
            if isinstance(m, nn.Linear):
                m._is_classifier_head = True
        self.post_init()

    @torch.no_grad()
    def reset_head(self, std: float | None = None) -> None:
        """A fresh head: N(0, std) weights (default initializer_range), zero biases, identity standardisation.

        Needed after `from_pretrained` of an encoder-only checkpoint: transformers leaves the missing head
        weights and buffers as torch.empty (NaN or 1e37 seen; cf. caduceus issue #37).
        """
        std = self.config.initializer_cfg.get("initializer_range", 0.02) if std is None else std
        for p in self.score.parameters():
            p.normal_(0.0, std) if p.dim() > 1 else p.zero_()
        if self.config.feature_layers is not None:
            self.feature_mean.zero_()
            self.feature_scale.fill_(1.0)

    def pooled_features(self, input_ids, attention_mask=None, timesteps=None):
        """feature_layers None: (B, n_views, d), one pooled vector per strand view (1 plain, 2 PS or conjoined).
        "all" / "last": (B, 1, F), the standardised RC-invariant features of those layers."""
        cfg = self.config
        if cfg.feature_layers is not None:
            feats = rc_invariant_features(self.caduceus, input_ids, attention_mask, timesteps, cfg.feature_layers,
                                          cfg.pooling_strategy)
            return self.standardise(feats)[:, None]
        h = self.caduceus(input_ids, timesteps=timesteps, attention_mask=attention_mask).last_hidden_state
        if cfg.rcps:
            d = cfg.d_model
            fwd = masked_pool(h[..., :d], attention_mask, cfg.pooling_strategy)
            # flip_{L,C} of the second half is the RC strand's own stream; its real tokens sit where the
            # flipped mask is True.
            rc_mask = None if attention_mask is None else attention_mask.flip(1)
            rc = masked_pool(rc_hidden(h[..., d:]), rc_mask, cfg.pooling_strategy)
            return torch.stack([fwd, rc], dim=1)
        views = [masked_pool(h, attention_mask, cfg.pooling_strategy)]
        if cfg.conjoin_train or (cfg.conjoin_eval and not self.training):
            rc_in = rc_padded(input_ids, attention_mask)
            h_rc = self.caduceus(rc_in, timesteps=timesteps, attention_mask=attention_mask).last_hidden_state
            views.append(masked_pool(h_rc, attention_mask, cfg.pooling_strategy))
        return torch.stack(views, dim=1)

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        """(features - feature_mean) / feature_scale: the stored StandardScaler of the probe's features."""
        return (features - self.feature_mean) / self.feature_scale

    def forward(self, input_ids, attention_mask=None, labels=None, timesteps=None, return_dict=True, **kwargs):
        feats = self.pooled_features(input_ids, attention_mask, timesteps)
        logits = self.score(feats).mean(dim=1).float()
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.float())
            else:
                loss = F.cross_entropy(logits, labels.long())
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return SequenceClassifierOutput(loss=loss, logits=logits)
