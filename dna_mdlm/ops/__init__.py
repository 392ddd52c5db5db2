"""Numeric kernels under the models: the selective scan (sequential reference, C++ CPU kernels on the
token-major layout, pure-torch blocked fallback, mamba-ssm CUDA dispatch), its single-step form for
recurrent decoding, the depthwise causal conv, and the one-call Mamba layer built on them."""

from dna_mdlm.ops.mamba_inner import mamba_mixer_fn, mamba_mixer_ref
from dna_mdlm.ops.selective_scan import (
    available_isas,
    causal_conv1d_tokens,
    mamba_cuda_available,
    scan_backend,
    scan_isa,
    selective_scan_fn,
    selective_scan_ref,
    selective_scan_tokens,
    selective_state_update,
)

__all__ = [
    "available_isas",
    "causal_conv1d_tokens",
    "mamba_cuda_available",
    "mamba_mixer_fn",
    "mamba_mixer_ref",
    "scan_backend",
    "scan_isa",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_scan_tokens",
    "selective_state_update",
]
