"""The selective scan (Mamba S6 recurrence) on every device this project runs on.

Owns the one function the models call, :func:`selective_scan_fn`, with the argument order and semantics
of mamba-ssm's ``selective_scan_fn``, and the paths behind it:

* ``cuda``: mamba-ssm's CUDA kernel, used only when CUDA tensors are given and it imports
  (:func:`mamba_cuda_available`); mamba_ssm is never imported at package import time.
* ``cpp``: a fused C++ kernel (``csrc/selective_scan.cpp``) with a hand-written backward, compiled at
  first use through ``torch.utils.cpp_extension.load`` and cached per machine; the CPU default.
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
    "selective_state_update",
    "mamba_cuda_available",
    "mamba_kernel_args",
    "scan_backend",
    "load_cpp_extension",
]

SCAN_ENV_VAR = "DNA_MDLM_SCAN"
_BACKENDS = ("ref", "blocked", "cpp", "cuda")
# Steps between saved states in the C++ forward: the backward recomputes one chunk at a time, so this
# trades saved memory (1/CHUNK of the full state history) against a chunk-sized local buffer.
CPP_CHUNK = 64
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
# cpp: fused C++ kernel
# --------------------------------------------------------------------------------------------------

_CSRC = Path(__file__).resolve().parent / "csrc" / "selective_scan.cpp"
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
    """Compile (first time, about a minute) or load the cached C++ kernel; None if no compiler works.

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
        name = build_dir.name
        try:
            from torch.utils import cpp_extension

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


def _backward_slices(batch: int, groups: int, per_group: int) -> int:
    """Channel slices per (batch, group) in the backward: enough work units to keep every thread busy."""
    units = batch * groups
    threads = max(1, torch.get_num_threads())
    return max(1, min(per_group, -(-2 * threads // units)))


class _CppSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, ext):
        work = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        in_dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias)]
        cast = [None if t is None else t.detach().to(work).contiguous() for t in (u, delta, A, D, z, delta_bias)]
        u_c, delta_c, A_c, D_c, z_c, bias_c = cast
        # (batch, groups, L, N): one step's states contiguous, so the kernel's loop over N vectorises.
        Bt = B.detach().to(work).transpose(-1, -2).contiguous()
        Ct = C.detach().to(work).transpose(-1, -2).contiguous()
        save = any(ctx.needs_input_grad[:8])
        out, last_state, ckpt = ext.fwd(u_c, delta_c, A_c, Bt, Ct, D_c, z_c, bias_c, bool(delta_softplus),
                                        CPP_CHUNK, save)
        if save:
            ctx.save_for_backward(u_c, delta_c, A_c, Bt, Ct, D_c, z_c, bias_c, ckpt)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.in_dtypes = in_dtypes
        ctx.ext = ext
        # Unused outputs then arrive as None in backward instead of zero tensors to multiply through.
        ctx.set_materialize_grads(False)
        return out.to(u.dtype), last_state

    @staticmethod
    def backward(ctx, dout, dlast):
        u_c, delta_c, A_c, Bt, Ct, D_c, z_c, bias_c, ckpt = ctx.saved_tensors
        batch, dim, _ = u_c.shape
        groups = Bt.shape[1]
        slices = _backward_slices(batch, groups, dim // groups)
        dout = torch.zeros_like(u_c) if dout is None else dout.to(u_c.dtype).contiguous()
        dlast = None if dlast is None else dlast.to(u_c.dtype).contiguous()
        du, ddelta, dA, dBt, dCt, dD, dz, dbias = ctx.ext.bwd(
            u_c, delta_c, A_c, Bt, Ct, D_c, z_c, bias_c, ctx.delta_softplus, ckpt, dout, dlast, CPP_CHUNK, slices
        )
        grads = [du, ddelta, dA, dBt.transpose(-1, -2), dCt.transpose(-1, -2), dD, dz, dbias]
        grads = [None if g is None or dt is None else g.to(dt) for g, dt in zip(grads, ctx.in_dtypes)]
        return (*grads, None, None)


def selective_scan_cpp(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The fused C++ kernel (CPU tensors). Raises RuntimeError if the extension cannot be built."""
    B4, C4 = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type != "cpu":
        raise InputError(f"selective_scan: the cpp path needs CPU tensors, got device {u.device}")
    ext = load_cpp_extension()
    if ext is None:
        raise RuntimeError(f"the C++ selective scan is unavailable: {_cpp_failed}")
    y, last_state = _CppSelectiveScan.apply(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, ext)
    return (y, last_state) if return_last_state else y


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
