"""The selective scan (Mamba S6 recurrence) on every device this project runs on.

Owns the one function the models call, :func:`selective_scan_fn`, with the argument order and semantics
of mamba-ssm's ``selective_scan_fn``, and the paths behind it:

* ``cuda``: mamba-ssm's CUDA kernel, used only when CUDA tensors are given and it imports
  (:func:`mamba_cuda_available`); mamba_ssm is never imported at package import time.
* ``cpp``: C++ kernels (``csrc/``) with hand-written backward passes, compiled at first use through
  ``torch.utils.cpp_extension.load`` and cached per machine; the CPU default. They work on the model's
  token-major layout, K directions per call (:func:`selective_scan_tokens`, :func:`causal_conv1d_tokens`;
  the (batch, d_inner, L) API converts), keep one state per chunk of ``SCAN_CHUNK`` steps and recompute the
  rest in the backward, and are built for AVX-512, AVX2+FMA and portable C++, chosen at run time
  (:func:`scan_isa`, ``DNA_MDLM_SCAN_ISA``).
* ``blocked``: a differentiable pure-torch path stepping through blocks of steps; the fallback when no
  C++ compiler works, and the path for CUDA tensors without mamba-ssm.
* ``ref``: :func:`selective_scan_ref`, the plain sequential oracle the tests compare against.

``DNA_MDLM_SCAN=ref|blocked|cpp|cuda`` forces a path. :func:`selective_state_update` is the single-step
form used for recurrent decoding.

Semantics, per batch b, channel d, state n (state starts at 0)::

    delta = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
    h_t   = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t
    y_t   = sum_n h_t[n] * C_t[n] + D[d] * u_t ;   y *= silu(z) when z is given

Shapes: u/delta/z (batch, d_inner, L); A (d_inner, d_state); B/C (batch, d_state, L) or
(batch, groups, d_state, L) where channel d uses group d // (d_inner // groups).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from dna_mdlm.errors import InputError

__all__ = [
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_scan_blocked",
    "selective_scan_cpp",
    "selective_scan_tokens",
    "causal_conv1d_tokens",
    "selective_state_update",
    "mamba_cuda_available",
    "mamba_kernel_args",
    "scan_backend",
    "scan_isa",
    "available_isas",
    "load_cpp_extension",
]

SCAN_ENV_VAR = "DNA_MDLM_SCAN"
ISA_ENV_VAR = "DNA_MDLM_SCAN_ISA"
_BACKENDS = ("ref", "blocked", "cpp", "cuda")
# Steps between saved states in the C++ forward: the backward recomputes one chunk at a time, so this
# trades saved memory (1/SCAN_CHUNK of the full state history) against chunk-sized local buffers
# (the states and exp(dt*A) of one chunk of one 16-channel tile: 2 x 64 x 16 x 16 floats = 128 KiB, in L2).
SCAN_CHUNK = 64
# Steps per block in the pure-torch path: 16 measured best on 1 thread (L=1024 fwd+bwd 0.69 s vs 0.78 s at 8).
BLOCKED_BLOCK = 16


# --------------------------------------------------------------------------------------------------
# Input checking and normalisation
# --------------------------------------------------------------------------------------------------


def _check_inputs(u, delta, A, B, C, D, z, delta_bias):
    """Validate shapes; return (B, C) in the grouped (batch, groups, d_state, L) layout."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"selective_scan: argument {name} must be a torch.Tensor, got {type(t).__name__}")
    if u.dim() != 3:
        raise InputError(f"selective_scan: u must be (batch, d_inner, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if length == 0:
        raise InputError("selective_scan: u has length 0; expected at least one step")
    if delta.shape != u.shape:
        raise InputError(f"selective_scan: delta shape {tuple(delta.shape)} must equal u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise InputError(f"selective_scan: A must be (d_inner={dim}, d_state), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise InputError("selective_scan: complex A is not supported; expected a real tensor")
    n_state = A.shape[1]
    grouped = []
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            t = t.unsqueeze(1)
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != n_state or t.shape[3] != length:
            raise InputError(
                f"selective_scan: {name} must be (batch={batch}, d_state={n_state}, L={length}) or "
                f"(batch, groups, d_state, L), got shape {tuple(t.shape)}"
            )
        if dim % t.shape[1] != 0:
            raise InputError(f"selective_scan: {name} has {t.shape[1]} groups, which does not divide d_inner={dim}")
        grouped.append(t)
    if grouped[0].shape[1] != grouped[1].shape[1]:
        raise InputError(
            f"selective_scan: B has {grouped[0].shape[1]} groups but C has {grouped[1].shape[1]}; they must match"
        )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != (dim,)):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"selective_scan: {name} must be a tensor of shape (d_inner={dim},), got {shape}")
    if z is not None and (not isinstance(z, torch.Tensor) or z.shape != u.shape):
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise InputError(f"selective_scan: z must have the shape of u {tuple(u.shape)}, got {shape}")
    return grouped[0], grouped[1]


def _compute_dtype(*tensors) -> torch.dtype:
    """float64 when any input is float64 (exact testing), float32 otherwise (as mamba-ssm accumulates)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _effective_delta(delta, delta_bias, delta_softplus):
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    return F.softplus(delta) if delta_softplus else delta


# --------------------------------------------------------------------------------------------------
# ref: the sequential oracle
# --------------------------------------------------------------------------------------------------


def _skip_and_gate(y, u, D, z, work):
    """y + D * u, then y * silu(z): the part of the scan outside the recurrence (shared by the torch paths)."""
    if D is not None:
        y = y + D.to(work)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(work))
    return y


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Plain step-by-step scan; accumulates in float32 (float64 when any input is float64)."""
    B, C = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    out_dtype = u.dtype
    work = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    delta = _effective_delta(delta, None if delta_bias is None else delta_bias.to(work), delta_softplus)
    batch, dim, _ = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    per_group = dim // groups
    # Time-major contiguous copies so every step works on small contiguous slices, and channels viewed as
    # (groups, per_group) so each channel meets its group's B_t and C_t by broadcasting.
    u_steps = u.permute(2, 0, 1).contiguous().view(-1, batch, groups, per_group, 1)
    dt_steps = delta.permute(2, 0, 1).contiguous().view(-1, batch, groups, per_group, 1)
    B_steps = B.permute(3, 0, 1, 2).contiguous().unsqueeze(3)  # (L, batch, groups, 1, N)
    C_steps = C.permute(3, 0, 1, 2).contiguous().unsqueeze(3)
    A_g = A.view(groups, per_group, n_state)
    h = u.new_zeros(batch, groups, per_group, n_state)
    ys = []
    # unbind rather than indexing per step: indexing makes autograd allocate a full-size gradient per step.
    for dt, u_t, B_t, C_t in zip(dt_steps.unbind(0), u_steps.unbind(0), B_steps.unbind(0), C_steps.unbind(0)):
        h = torch.exp(dt * A_g) * h + dt * B_t * u_t
        ys.append((h * C_t).sum(-1).view(batch, dim))
    y = _skip_and_gate(torch.stack(ys, dim=-1), u, D, z, work).to(out_dtype)
    return (y, h.reshape(batch, dim, n_state)) if return_last_state else y


# --------------------------------------------------------------------------------------------------
# blocked: pure torch, differentiable through autograd
# --------------------------------------------------------------------------------------------------


def selective_scan_blocked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, block: int = BLOCKED_BLOCK):
    """Pure-torch scan stepping through blocks of ``block`` steps.

    Per block it builds exp(dt*A) and dt*B*u for that block only and contracts C straight after, so
    nothing of size (batch, d_inner, d_state, L) exists; under autograd it iterates with ``unbind``
    because indexing a big tensor step by step makes the backward allocate one full-size gradient per
    step. Works on any device.
    """
    B, C = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    out_dtype = u.dtype
    work = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    per_group = dim // groups
    u_w = u.to(work)
    dt = _effective_delta(delta.to(work), None if delta_bias is None else delta_bias.to(work), delta_softplus)
    # Channels split as (groups, per_group) so B/C broadcast over the channels of their group.
    u_g = u_w.view(batch, groups, per_group, length)
    dt_g = dt.view(batch, groups, per_group, length)
    A_g = A.to(work).view(groups, per_group, n_state)
    B_g = B.to(work)
    C_g = C.to(work)
    h = u_w.new_zeros(batch, groups, per_group, n_state)
    y_blocks = []
    for t0 in range(0, length, block):
        t1 = min(length, t0 + block)
        dt_blk = dt_g[..., t0:t1].unsqueeze(-1)  # (b, g, p, T, 1)
        decay = torch.exp(dt_blk * A_g[:, :, None, :])  # (b, g, p, T, N)
        B_blk = B_g[..., t0:t1].transpose(-1, -2).unsqueeze(2)  # (b, g, 1, T, N)
        inject = (dt_blk * u_g[..., t0:t1].unsqueeze(-1)) * B_blk
        states = []
        for a_t, x_t in zip(decay.unbind(3), inject.unbind(3)):
            h = a_t * h + x_t
            states.append(h)
        states = torch.stack(states, dim=3)  # (b, g, p, T, N)
        y_blocks.append(torch.einsum("bgptn,bgnt->bgpt", states, C_g[..., t0:t1]))
    y = _skip_and_gate(torch.cat(y_blocks, dim=-1).reshape(batch, dim, length), u_w, D, z, work).to(out_dtype)
    return (y, h.reshape(batch, dim, n_state)) if return_last_state else y


# --------------------------------------------------------------------------------------------------
# cpp: the C++ kernels (token-major scan and conv)
# --------------------------------------------------------------------------------------------------

_CSRC_DIR = Path(__file__).resolve().parent / "csrc"
_CSRC = _CSRC_DIR / "selective_scan.cpp"
_CPP_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
_cpp_lock = threading.Lock()
_cpp_module = None
_cpp_failed: str | None = None


def _cpu_tag() -> str:
    """Short digest of the CPU's feature set: -march=native binaries must not be reused on another CPU."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
    except OSError:
        pass
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


def _sources_tag() -> str:
    """Digest of every file in csrc/: cpp_extension hashes only the listed .cpp, not what it includes."""
    digest = hashlib.sha1()
    for path in sorted(_CSRC_DIR.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:8]


def cpp_build_dir() -> Path:
    """Where the C++ kernel is built and cached: one build per CPU and per source location, so two
    checkouts on one machine do not rebuild each other's copy."""
    where = hashlib.sha1(str(_CSRC.resolve()).encode()).hexdigest()[:8]
    cache_root = Path(os.environ.get("DNA_MDLM_CACHE", Path.home() / ".cache" / "dna_mdlm"))
    return cache_root / "torch_extensions" / f"dna_mdlm_selective_scan_{_cpu_tag()}_{where}"


class _exclusive:
    """An exclusive flock on `path` (released by the OS if the process dies); a no-op where fcntl is missing."""

    def __init__(self, path: Path):
        self.path, self.fh = path, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # Windows: fall back to cpp_extension's own lock alone
            return self
        self.fh = open(self.path, "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            self.fh.close()  # closing releases the flock
        return False


def load_cpp_extension(verbose: bool = False):
    """Compile (first time, about a minute) or load the cached C++ kernels; None if no compiler works.

    The build goes to ``$DNA_MDLM_CACHE`` or ``~/.cache/dna_mdlm/torch_extensions/<name>``; the name
    carries a CPU digest, and cpp_extension hashes sources and flags and takes a file lock, so
    concurrent first builds from several processes are safe. A failure is reported once as a warning
    and the blocked torch path is used instead.
    """
    global _cpp_module, _cpp_failed
    if _cpp_module is not None or _cpp_failed is not None:
        return _cpp_module
    with _cpp_lock:
        if _cpp_module is not None or _cpp_failed is not None:
            return _cpp_module
        build_dir = cpp_build_dir()
        name = f"{build_dir.name}_{_sources_tag()}"
        try:
            from torch.utils import cpp_extension  # heavy, and only needed on first use

            build_dir.mkdir(parents=True, exist_ok=True)
            guard = _exclusive(build_dir / ".dna_mdlm.lock")
            # -ffast-math goes to compilation only: on the link line gcc 12 would add crtfastmath.o,
            # which flips the whole process to flush-denormals-to-zero.
            with guard:
                # cpp_extension's own lock is a plain file that a build killed half-way (Ctrl-C during the
                # first compile) leaves behind, after which every later process waits on it forever. While
                # we hold an OS lock, which dies with its holder, no one else is building: clear it.
                (build_dir / "lock").unlink(missing_ok=True)
                _cpp_module = cpp_extension.load(
                    name=name,
                    sources=[str(_CSRC)],
                    extra_cflags=_CPP_FLAGS,
                    extra_ldflags=["-fopenmp"],
                    build_directory=str(build_dir),
                    verbose=verbose,
                )
        except Exception as exc:  # compiler missing, headers missing, ninja missing, ...
            _cpp_failed = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            warnings.warn(
                f"dna_mdlm: could not build the C++ selective scan ({_cpp_failed}); "
                "using the slower pure-torch blocked scan instead",
                RuntimeWarning,
                stacklevel=3,
            )
        return _cpp_module


# Instruction sets of the C++ kernels, by the code the extension uses for them.
ISAS = {"scalar": 0, "avx2": 1, "avx512": 2}


def available_isas() -> list[str]:
    """Instruction sets the C++ kernels can use on this CPU (best last); [] without the extension."""
    ext = load_cpp_extension()
    if ext is None:
        return []
    codes = set(ext.supported_isas())
    return [name for name, code in ISAS.items() if code in codes]


def scan_isa() -> str:
    """The instruction set the C++ kernels run with: ``$DNA_MDLM_SCAN_ISA`` if set, else the best available.

    ``scalar`` is portable C++ (what the compiler makes of it), ``avx2`` and ``avx512`` are hand-vectorised
    over channels with a polynomial exp. float64 always runs the scalar code. Raises InputError for an
    unknown name or one this CPU cannot run.
    """
    forced = os.environ.get(ISA_ENV_VAR, "").strip().lower()
    avail = available_isas()
    if forced:
        if forced not in ISAS:
            raise InputError(f"{ISA_ENV_VAR}={forced!r} is not one of {'|'.join(ISAS)}")
        if forced not in avail:
            raise InputError(f"{ISA_ENV_VAR}={forced} cannot run on this CPU (available: {', '.join(avail) or 'none'})")
        return forced
    return avail[-1] if avail else "scalar"


def _cpp_ext_or_raise():
    ext = load_cpp_extension()
    if ext is None:
        raise RuntimeError(f"the C++ selective scan is unavailable: {_cpp_failed}")
    return ext


def _isa_code(isa: str | None) -> int:
    return ISAS[isa or scan_isa()]


def _inner_contiguous(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """`t` in `dtype` with a contiguous last dimension, copying only when needed."""
    if t is None:
        return None
    t = t.detach().to(dtype)
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _reverse_flags(reverse, K: int, batch: int, device) -> torch.Tensor:
    if reverse is None:
        return torch.zeros(K, batch, dtype=torch.bool, device=device)
    flags = torch.as_tensor(reverse, dtype=torch.bool, device=device)
    if flags.dim() == 1 and flags.shape[0] == K:  # one flag per direction, same for every row
        flags = flags[:, None].expand(K, batch)
    if flags.shape != (K, batch):
        raise InputError(f"selective_scan: reverse must be (K={K},) or (K, batch={batch}) bools, got {tuple(flags.shape)}")
    return flags.contiguous()


def _mask_rows(mask, batch: int, length: int, device) -> torch.Tensor | None:
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=device)
    if mask.dim() != 2 or mask.shape[1] != length or batch % mask.shape[0] != 0:
        raise InputError(
            f"selective_scan: mask must be (rows, L={length}) with rows dividing batch={batch}, got {tuple(mask.shape)}"
        )
    return mask.to(torch.bool).contiguous()


class _TokenScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, mask, reverse, softplus, sum_k, want_last, isa, ext):
        work = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        ctx.in_dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.z_shape = None if z is None else z.shape
        K = u.shape[0]
        u_c, d_c, B_c, C_c = (_inner_contiguous(t, work) for t in (u, delta, B, C))
        A_c, D_c, bias_c = (None if t is None else t.detach().to(work).contiguous() for t in (A, D, delta_bias))
        z_c = _inner_contiguous(z, work)
        if z_c is not None and z_c.dim() == 3:  # one gate for every direction: a stride-0 view, no copy
            z_c = z_c.unsqueeze(0).expand(K, *z_c.shape)
        save = any(ctx.needs_input_grad[:8])
        out, last, ckpt = ext.scan_fwd(u_c, d_c, A_c, B_c, C_c, D_c, z_c, bias_c, mask, reverse, softplus, sum_k,
                                       SCAN_CHUNK, save, want_last, None, None, isa, 0)
        if save:
            ctx.save_for_backward(u_c, d_c, A_c, B_c, C_c, D_c, z_c, bias_c, mask, reverse, ckpt)
        ctx.flags = (softplus, sum_k, isa, ext)
        ctx.set_materialize_grads(False)
        if not want_last:
            last = out.new_zeros(0)
            ctx.mark_non_differentiable(last)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, dout, dlast):
        u_c, d_c, A_c, B_c, C_c, D_c, z_c, bias_c, mask, reverse, ckpt = ctx.saved_tensors
        softplus, sum_k, isa, ext = ctx.flags
        if dout is None:
            shape = u_c.shape[1:] if sum_k else u_c.shape
            dout = u_c.new_zeros(shape)
        else:
            dout = _inner_contiguous(dout, u_c.dtype)
        dlast = None if dlast is None or dlast.numel() == 0 else dlast.to(u_c.dtype).contiguous()
        du, ddelta, dA, dX, dD, dz, dbias, _, _ = ext.scan_bwd(
            u_c, d_c, A_c, B_c, C_c, D_c, z_c, bias_c, mask, reverse, softplus, sum_k, SCAN_CHUNK, ckpt, dout, dlast,
            True, False, None, None, isa, 0,
        )
        GN = B_c.shape[3] * B_c.shape[4]
        dB, dC = dX[..., :GN].reshape(B_c.shape), dX[..., GN:].reshape(C_c.shape)
        if dz is not None and ctx.z_shape is not None:
            dz = dz.reshape(ctx.z_shape)
        grads = [du, ddelta, dA, dB, dC, dD, dz, dbias]
        grads = [None if g is None or dt is None else g.to(dt) for g, dt in zip(grads, ctx.in_dtypes)]
        return (*grads, None, None, None, None, None, None, None)


def _check_token_inputs(u, delta, A, B, C, D, z, delta_bias):
    """Validate token-major shapes; return (B, C) as (K, batch, L, groups, d_state)."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"selective_scan_tokens: argument {name} must be a torch.Tensor, got {type(t).__name__}")
    if u.dim() != 4:
        raise InputError(f"selective_scan_tokens: u must be (K, batch, L, d_inner), got shape {tuple(u.shape)}")
    K, batch, length, dim = u.shape
    if length == 0:
        raise InputError("selective_scan_tokens: u has length 0; expected at least one step")
    if delta.shape != u.shape:
        raise InputError(f"selective_scan_tokens: delta shape {tuple(delta.shape)} must equal u shape {tuple(u.shape)}")
    if A.dim() != 3 or A.shape[:2] != (K, dim):
        raise InputError(f"selective_scan_tokens: A must be (K={K}, d_inner={dim}, d_state), got {tuple(A.shape)}")
    n_state = A.shape[2]
    grouped = []
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 4:
            t = t.unsqueeze(3)
        if t.dim() != 5 or t.shape[:3] != (K, batch, length) or t.shape[4] != n_state or dim % t.shape[3]:
            raise InputError(
                f"selective_scan_tokens: {name} must be (K={K}, batch={batch}, L={length}, d_state={n_state}) or "
                f"(K, batch, L, groups, d_state) with groups dividing {dim}, got {tuple(t.shape)}"
            )
        grouped.append(t)
    if grouped[0].shape[3] != grouped[1].shape[3]:
        raise InputError("selective_scan_tokens: B and C must have the same number of groups")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != (K, dim)):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"selective_scan_tokens: {name} must be (K={K}, d_inner={dim}), got {shape}")
    if z is not None and (not isinstance(z, torch.Tensor) or z.shape not in (u.shape, u.shape[1:])):
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise InputError(f"selective_scan_tokens: z must be (batch, L, d_inner) or (K, batch, L, d_inner), got {shape}")
    return grouped


def selective_scan_tokens(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *, mask=None,
                          reverse=None, sum_directions=False, return_last_state=False, backend: str | None = None,
                          isa: str | None = None):
    """The selective scan on the model's token-major layout, K directions in one call.

    Shapes: u, delta (K, batch, L, d_inner); A (K, d_inner, d_state); B, C (K, batch, L, d_state) or
    (K, batch, L, groups, d_state); D, delta_bias (K, d_inner); z (batch, L, d_inner), one gate shared by
    every direction, or (K, batch, L, d_inner). Direction k of row b runs from position L-1 down to 0 when
    ``reverse[k, b]`` (or ``reverse[k]``) is true, by indexing: nothing is flipped. ``mask`` (rows, L), row
    ``b % rows`` for batch row b, marks padding False: there delta is 0, so the state passes through
    unchanged and a right-padded row scans exactly like the unpadded sequence in both directions.

    Returns y (batch, L, d_inner), the sum over directions, when ``sum_directions``, else (K, batch, L,
    d_inner); with ``return_last_state`` also the final states (K, batch, d_inner, d_state). Same recurrence
    as :func:`selective_scan_fn` per direction. ``backend`` is ``cpp`` (CPU default) or ``ref`` (per-stream
    :func:`selective_scan_ref`, the oracle); ``isa`` overrides :func:`scan_isa` for the cpp kernels.
    Raises InputError on bad shapes.
    """
    B5, C5 = _check_token_inputs(u, delta, A, B, C, D, z, delta_bias)
    K, batch, length, _ = u.shape
    mask_b = _mask_rows(mask, batch, length, u.device)
    flags = _reverse_flags(reverse, K, batch, u.device)
    backend = backend or ("cpp" if u.device.type == "cpu" and load_cpp_extension() is not None else "ref")
    if backend == "ref":
        return _selective_scan_tokens_ref(u, delta, A, B5, C5, D, z, delta_bias, delta_softplus, mask_b, flags,
                                          sum_directions, return_last_state)
    if backend != "cpp":
        raise InputError(f"selective_scan_tokens: backend must be 'cpp' or 'ref', got {backend!r}")
    if u.device.type != "cpu":
        raise InputError(f"selective_scan_tokens: the cpp path needs CPU tensors, got device {u.device}")
    ext = _cpp_ext_or_raise()
    y, last = _TokenScanFn.apply(u, delta, A, B5, C5, D, z, delta_bias, mask_b, flags, bool(delta_softplus),
                                 bool(sum_directions), bool(return_last_state), _isa_code(isa), ext)
    return (y, last.transpose(-1, -2)) if return_last_state else y


def _selective_scan_tokens_ref(u, delta, A, B5, C5, D, z, delta_bias, softplus, mask, flags, sum_k, want_last):
    """Each stream through :func:`selective_scan_ref` in its own direction (flipped copies): the oracle."""
    K, batch, length, _ = u.shape
    work = _compute_dtype(u, delta, A, B5, C5, D, z, delta_bias)
    ys, lasts = [], []
    for k in range(K):
        y_k, last_k = [], []
        for b in range(batch):
            rev = bool(flags[k, b])

            def stream(t, rev=rev):  # (L, ...) -> (1, ..., L) in this stream's processing order
                t = t.flip(0) if rev else t
                return t.movedim(0, -1).unsqueeze(0)

            dt = delta[k, b].to(work)
            if delta_bias is not None:
                dt = dt + delta_bias[k].to(work)
            if softplus:
                dt = F.softplus(dt)
            if mask is not None:
                dt = dt * mask[b % mask.shape[0]].to(work)[:, None]
            z_kb = None if z is None else (z[b] if z.dim() == 3 else z[k, b])
            y, last = selective_scan_ref(
                stream(u[k, b]), stream(dt), A[k], stream(B5[k, b]), stream(C5[k, b]),
                None if D is None else D[k], None if z_kb is None else stream(z_kb), return_last_state=True,
            )
            y = y[0].movedim(-1, 0)
            y_k.append(y.flip(0) if rev else y)
            last_k.append(last[0])
        ys.append(torch.stack(y_k))
        lasts.append(torch.stack(last_k))
    y = torch.stack(ys)
    if sum_k:
        y = y.sum(0)
    return (y, torch.stack(lasts)) if want_last else y


def selective_scan_cpp(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The C++ kernel behind the (batch, d_inner, L) API: converts to token-major (copies) and back.

    Raises RuntimeError if the extension cannot be built. The model calls the token-major form
    (:func:`selective_scan_tokens`) directly, without these copies.
    """
    B4, C4 = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type != "cpu":
        raise InputError(f"selective_scan: the cpp path needs CPU tensors, got device {u.device}")
    ext = _cpp_ext_or_raise()

    def one(t):  # a K = 1 direction axis
        return None if t is None else t.unsqueeze(0)

    def tok(t):  # (batch, d, L) -> (1, batch, L, d)
        return None if t is None else t.transpose(1, 2).unsqueeze(0)

    def grp(t):  # (batch, G, N, L) -> (1, batch, L, G, N)
        return t.permute(0, 3, 1, 2).unsqueeze(0)

    flags = torch.zeros(1, u.shape[0], dtype=torch.bool)
    y, last = _TokenScanFn.apply(tok(u), tok(delta), one(A), grp(B4), grp(C4), one(D), tok(z), one(delta_bias), None,
                                 flags, bool(delta_softplus), False, bool(return_last_state), _isa_code(None), ext)
    y = y[0].transpose(1, 2)
    return (y, last[0].transpose(-1, -2)) if return_last_state else y


# --------------------------------------------------------------------------------------------------
# depthwise causal conv on the token-major layout (the conv in front of Mamba's scan)
# --------------------------------------------------------------------------------------------------


class _TokenConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mask, reverse, silu, isa, ext):
        work = _compute_dtype(x, weight, bias)
        ctx.in_dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        x_c = _inner_contiguous(x, work)
        w_c = weight.detach().to(work).contiguous()
        b_c = None if bias is None else bias.detach().to(work).contiguous()
        out = ext.conv_fwd(x_c, w_c, b_c, mask, reverse, silu, isa, 0)
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(x_c, w_c, b_c, mask, reverse)
        ctx.flags = (silu, isa, ext, x.shape)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, dout):
        x_c, w_c, b_c, mask, reverse = ctx.saved_tensors
        silu, isa, ext, x_shape = ctx.flags
        dx, dw, db = ext.conv_bwd(x_c, w_c, b_c, mask, reverse, silu, dout.to(x_c.dtype).contiguous(), isa, 0)
        dx = dx.reshape(x_shape).to(ctx.in_dtypes[0])
        return dx, dw.to(ctx.in_dtypes[1]), None if db is None else db.to(ctx.in_dtypes[2]), None, None, None, None, None


def causal_conv1d_tokens(x, weight, bias=None, *, mask=None, reverse=None, activation: str | None = "silu",
                         backend: str | None = None, isa: str | None = None):
    """Depthwise causal conv (Mamba's ``conv1d``, groups = channels) on token-major activations, K at once.

    x (batch, L, E), read by all K kernels, or (K, batch, L, E); weight (K, E, width) (an ``nn.Conv1d``
    weight with the middle axis squeezed); bias (K, E) or None. Stream (k, b) is causal in its own
    direction: forward, out[t] = bias + sum_j w[j] * x[t - width + 1 + j]; reverse (``reverse[k, b]``),
    the same with time running from L-1 to 0. Inputs at ``mask`` == False positions count as 0 (as
    multiplying x by the mask first). ``activation``: "silu" or None. Returns (K, batch, L, E).
    ``backend``: ``cpp`` (CPU default) or ``ref`` (torch conv1d on flipped copies). Raises InputError on bad
    shapes.
    """
    if x.dim() not in (3, 4) or weight.dim() != 3 or x.shape[-1] != weight.shape[1]:
        raise InputError(
            f"causal_conv1d_tokens: x must be (batch, L, E) or (K, batch, L, E) and weight (K, E, width), got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if activation not in ("silu", None):
        raise InputError(f"causal_conv1d_tokens: activation must be 'silu' or None, got {activation!r}")
    K = weight.shape[0]
    x4 = x.unsqueeze(0) if x.dim() == 3 else x
    if x4.shape[0] not in (1, K) or (bias is not None and bias.shape != weight.shape[:2]):
        raise InputError("causal_conv1d_tokens: x's leading K, weight and bias must agree")
    batch, length = x4.shape[1], x4.shape[2]
    if length == 0:
        raise InputError("causal_conv1d_tokens: x has length 0")
    mask_b = _mask_rows(mask, batch, length, x.device)
    flags = _reverse_flags(reverse, K, batch, x.device)
    backend = backend or ("cpp" if x.device.type == "cpu" and load_cpp_extension() is not None else "ref")
    if backend == "ref":
        return _causal_conv1d_tokens_ref(x4, weight, bias, mask_b, flags, activation == "silu")
    ext = _cpp_ext_or_raise()
    return _TokenConvFn.apply(x4, weight, bias, mask_b, flags, activation == "silu", _isa_code(isa), ext)


def _causal_conv1d_tokens_ref(x4, weight, bias, mask, flags, silu):
    K, width = weight.shape[0], weight.shape[2]
    batch, length = x4.shape[1], x4.shape[2]
    outs = []
    for k in range(K):
        rows = []
        for b in range(batch):
            xb = x4[0 if x4.shape[0] == 1 else k, b]
            if mask is not None:
                xb = xb * mask[b % mask.shape[0]].to(xb.dtype)[:, None]
            rev = bool(flags[k, b])
            xb = (xb.flip(0) if rev else xb).t().unsqueeze(0)  # (1, E, L) in processing order
            y = F.conv1d(xb, weight[k].unsqueeze(1), None if bias is None else bias[k], padding=width - 1,
                         groups=weight.shape[1])[..., :length]
            y = F.silu(y) if silu else y
            y = y[0].t()
            rows.append(y.flip(0) if rev else y)
        outs.append(torch.stack(rows))
    return torch.stack(outs)


# --------------------------------------------------------------------------------------------------
# cuda: mamba-ssm
# --------------------------------------------------------------------------------------------------


def mamba_cuda_available() -> bool:
    """True when CUDA is present and mamba-ssm's compiled scan imports (never imported otherwise)."""
    if not torch.cuda.is_available() or importlib.util.find_spec("selective_scan_cuda") is None:
        return False
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401

        return True
    except Exception:  # ImportError, triton driver RuntimeError, ...
        return False


# --------------------------------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------------------------------


def scan_backend(device: torch.device | str = "cpu") -> str:
    """Which path :func:`selective_scan_fn` takes for tensors on ``device`` (honours DNA_MDLM_SCAN)."""
    forced = os.environ.get(SCAN_ENV_VAR, "").strip().lower()
    if forced:
        if forced not in _BACKENDS:
            raise InputError(f"{SCAN_ENV_VAR}={forced!r} is not one of {'|'.join(_BACKENDS)}")
        return forced
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda" if mamba_cuda_available() else "blocked"
    if device.type == "cpu" and load_cpp_extension() is not None:
        return "cpp"
    return "blocked"


def mamba_kernel_args(u, delta, A, B, C, D=None, z=None, delta_bias=None):
    """The dtypes mamba-ssm's CUDA kernel accepts: delta, z and (time-varying) B/C in u's dtype; A, D and
    delta_bias in float32 (the kernel's TORCH_CHECKs in state-spaces/mamba csrc/selective_scan).

    Under bf16 autocast a model hands over a mix (a masked delta comes out of softplus in float32 while u
    is bfloat16), which the kernel would reject.
    """
    like_u = [None if t is None else t.to(u.dtype) for t in (delta, B, C, z)]
    fp32 = [None if t is None else t.float() for t in (A, D, delta_bias)]
    delta, B, C, z = like_u
    A, D, delta_bias = fp32
    return u, delta, A, B, C, D, z, delta_bias


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """mamba-ssm compatible selective scan; returns y (dtype of u) or (y, last_state (batch, d_inner, d_state))."""
    backend = scan_backend(u.device) if isinstance(u, torch.Tensor) else "ref"
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    device_type = u.device.type if isinstance(u, torch.Tensor) else "cpu"
    # Autocast off: the torch paths' contractions (einsum) would otherwise run in bf16 under bf16-mixed
    # training, while every path promises float32 accumulation as mamba-ssm does. (Only cpu and cuda
    # autocast exist on every torch this supports; other devices have none to turn off.)
    no_autocast = torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else contextlib.nullcontext()
    with no_autocast:
        if backend == "cuda":
            if not mamba_cuda_available():
                raise InputError(f"{SCAN_ENV_VAR}=cuda but mamba-ssm's CUDA selective scan is not importable")
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_scan

            return mamba_scan(*mamba_kernel_args(*args[:8]), delta_softplus, return_last_state)
        if backend == "cpp":
            return selective_scan_cpp(*args)
        if backend == "blocked":
            return selective_scan_blocked(*args)
        return selective_scan_ref(*args)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One recurrent step: updates ``state`` (batch, d_inner, d_state) in place and returns y (batch, d_inner).

    x/dt/z are (batch, d_inner); B/C are (batch, d_state) or (batch, groups, d_state). Same equations as
    one step of :func:`selective_scan_fn`, so stepping over L reproduces the scan.
    """
    if state.dim() != 3 or x.dim() != 2 or state.shape[:2] != x.shape or dt.shape != x.shape:
        raise InputError(
            "selective_state_update: expected state (batch, d_inner, d_state) and x/dt (batch, d_inner), got "
            f"state {tuple(state.shape)}, x {tuple(x.shape)}, dt {tuple(dt.shape)}"
        )
    batch, dim, n_state = state.shape
    if A.shape != (dim, n_state):
        raise InputError(f"selective_state_update: A must be ({dim}, {n_state}), got {tuple(A.shape)}")
    per_channel = []
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            t = t.unsqueeze(1)
        if t.dim() != 3 or t.shape[0] != batch or t.shape[2] != n_state or dim % t.shape[1] != 0:
            raise InputError(
                f"selective_state_update: {name} must be (batch={batch}, d_state={n_state}) or "
                f"(batch, groups, d_state) with groups dividing {dim}, got {tuple(t.shape)}"
            )
        per_channel.append(t.repeat_interleave(dim // t.shape[1], dim=1))
    B_d, C_d = per_channel
    work = state.dtype
    dt = dt.to(work)
    if dt_bias is not None:
        dt = dt + dt_bias.to(work)
    if dt_softplus:
        dt = F.softplus(dt)
    x_w = x.to(work)
    decay = torch.exp(dt[..., None] * A.to(work))
    new_state = decay * state + (dt * x_w)[..., None] * B_d.to(work)
    state.copy_(new_state)
    y = (new_state * C_d.to(work)).sum(-1)
    if D is not None:
        y = y + D.to(work) * x_w
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(x.dtype)
