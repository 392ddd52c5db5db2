"""The AR baseline: the Caduceus backbone made causal (unidirectional, not RC-PS), trained on next-base
cross-entropy, scored exactly, and decoded by recurrent state stepping.

A window is fed as [BOS] + x[:-1], so position l predicts base l from bases < l and every base of the window is
scored (exactly, unlike the MDLM bound). `AR` is one of the three language models behind `likelihood`,
`evaluate-samples` and `sample` (with `diffusion.mdlm.MDLM` and `baselines.markov.MarkovLM`): it shares their
`kind`, `upper_bound`, `window`, `loss` and `nats_per_window`, and generates left to right with `decode`
(O(1) work per base through `CaduceusForMaskedLM.step`, the Mamba recurrence of Gu & Dao, arXiv:2312.00752 §3.4).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..diffusion.sampling import GenerationSettings, SamplingStats, allowed_ids, sample_categorical, shape_distribution
from ..tokenizer import A_ID, BOS_ID, MASK_ID, T_ID


def ar_inputs(x: torch.Tensor) -> torch.Tensor:
    """[BOS] + x[:-1]: position l predicts base l from bases < l, so every base of a window is scored."""
    return torch.cat([torch.full_like(x[:, :1], BOS_ID), x[:, :-1]], dim=1)


def ar_token_nll(model, x: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """(B, L) next-base negative log-likelihood in nats of every position of x (B, L)."""
    logits = model(ar_inputs(x), attention_mask=attention_mask).logits
    return F.cross_entropy(logits.transpose(1, 2), x, reduction="none")


class AR(nn.Module):
    """A causal `CaduceusForMaskedLM` (config.objective == "ar") as a language model."""

    kind = "ar"
    upper_bound = False  # exact likelihood
    decoding = "recurrent state stepping"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def window(self) -> int:
        """The window the model works in (`CaduceusConfig.window`: its training length, else 1024)."""
        return self.model.config.window

    def describe(self) -> str:
        return "AR Caduceus (causal), exact"

    def loss(self, x: torch.Tensor, score_mask=None, attention_mask=None, t=None, generator=None, **_):
        """(mean next-base NLL per scored base in nats, number of scored bases); A/C/G/T positions only."""
        tok = ar_token_nll(self.model, x, attention_mask)
        score = (x >= A_ID) & (x <= T_ID)
        if score_mask is not None:
            score = score & score_mask.bool()
        if attention_mask is not None:
            score = score & attention_mask.bool()
        n = score.sum()
        return torch.where(score, tok, torch.zeros_like(tok)).sum() / n.clamp_min(1), n

    @torch.no_grad()
    def nats_per_window(self, x: torch.Tensor, score_mask=None, attention_mask=None, num_samples: int = 1,
                        generator=None, seeds=None) -> torch.Tensor:
        """(B, 1) float64 exact NLL sums per window (each window scored from its own first base)."""
        tok = ar_token_nll(self.model, x, attention_mask)
        score = (x >= A_ID) & (x <= T_ID)
        if score_mask is not None:
            score = score & score_mask.bool()
        return torch.where(score, tok, torch.zeros_like(tok)).double().sum(1, keepdim=True)

    @torch.no_grad()
    def decode(self, num: int, length: int, prefix_ids: np.ndarray, allowed: torch.Tensor, temperature: float,
               top_p: float, generator: torch.Generator, device, stats, progress=None) -> torch.Tensor:
        """(num, length) ids: [BOS] then the prefix are fed through the recurrence, then one base per step."""
        model = self.model
        cache = model.allocate_inference_cache(num, device=device)
        out = torch.empty(num, length, dtype=torch.long, device=device)
        out[:, : len(prefix_ids)] = torch.as_tensor(prefix_ids, device=device)
        allowed = allowed.to(device)
        token = torch.full((num,), BOS_ID, dtype=torch.long, device=device)
        for pos in range(length):
            logits = model.step(token, cache)
            stats.network_calls += 1
            stats.row_evaluations += num
            if pos < len(prefix_ids):
                token = out[:, pos]  # teacher-force the prefix through the recurrence
            else:
                probs = shape_distribution(torch.log_softmax(logits[:, allowed].double(), -1), temperature, top_p)
                token = allowed[sample_categorical(probs, generator)]
                out[:, pos] = token
            if progress is not None:
                progress.update(1)
        return out

    infills = False  # left to right: a prefix only

    def progress_total(self, length: int, settings: GenerationSettings) -> int:
        return length

    def infill(self, canvas: torch.Tensor, settings: GenerationSettings, generator: torch.Generator,
               stats: SamplingStats, progress=None) -> torch.Tensor:
        """Complete canvas (B, L), whose fixed bases form a prefix, by recurrent decoding (`decode`)."""
        prefix = canvas[0][canvas[0] != MASK_ID].cpu().numpy()
        return self.decode(canvas.shape[0], canvas.shape[1], prefix, allowed_ids(settings.allow_n),
                           settings.temperature, settings.top_p, generator, canvas.device, stats, progress)
