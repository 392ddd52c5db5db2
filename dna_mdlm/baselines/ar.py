"""The AR baseline's objective: the Caduceus backbone made causal, scored on next-base cross-entropy.

A window is fed as [BOS] + x[:-1], so position l predicts base l from bases < l and every base of the
window is scored (exactly, unlike the MDLM bound). Training, likelihood and judging all use these two
functions; recurrent decoding lives with the samplers (`dna_mdlm.diffusion.sampling`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..tokenizer import BOS_ID


def ar_inputs(x: torch.Tensor) -> torch.Tensor:
    """[BOS] + x[:-1]: position l predicts base l from bases < l, so every base of a window is scored."""
    return torch.cat([torch.full_like(x[:, :1], BOS_ID), x[:, :-1]], dim=1)


def ar_token_nll(model, x: torch.Tensor, attention_mask=None) -> torch.Tensor:
    logits = model(ar_inputs(x), attention_mask=attention_mask).logits
    return F.cross_entropy(logits.transpose(1, 2), x, reduction="none")
