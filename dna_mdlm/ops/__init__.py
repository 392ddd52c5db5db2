"""Numeric kernels under the models: the selective scan (sequential reference, fused C++ CPU kernel, pure-torch
blocked fallback, mamba-ssm CUDA dispatch) and its single-step form for recurrent decoding."""

from dna_mdlm.ops.selective_scan import (
    mamba_cuda_available,
    scan_backend,
    selective_scan_fn,
    selective_scan_ref,
    selective_state_update,
)

__all__ = [
    "mamba_cuda_available",
    "scan_backend",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_state_update",
]
