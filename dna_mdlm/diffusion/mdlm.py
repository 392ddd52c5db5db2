"""The MDLM objective: forward masking, stratified times, SUBS, and the Rao-Blackwellised NELBO.

`MDLM` wraps a denoiser (`CaduceusForMaskedLM`) and a schedule (Sahoo et al., "Simple and Effective Masked
Diffusion Language Models", NeurIPS 2024, §3; kuleshov-group/mdlm `diffusion.py`). Its `loss` is the mean
continuous-time NELBO per scored base in nats, the one loss path pretraining uses: positions where the input
base is A/C/G/T (and the caller's `score_mask` allows) are scored; N, padding and special tokens never are.
`nats_per_window` gives the per-window sums that likelihood evaluation accumulates, with K Monte-Carlo time
samples per window. `MDLM` is one of the three language models behind `likelihood`, `evaluate-samples` and
`sample` (with `baselines.ar.AR` and `baselines.markov.MarkovLM`): they share `kind`, `upper_bound`, `window`
and `nats_per_window`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..tokenizer import A_ID, MASK_ID, T_ID
from .sampling import (
    DEFAULT_STEPS,
    GenerationSettings,
    SamplingStats,
    _Denoiser,
    allowed_ids,
    fill_canvas,
    make_unmasker,
    window_starts,
)
from .schedules import Schedule, get_schedule

NEG_INF = -1e6  # the reference's "-infinity" for SUBS; fine in fp32/bf16 (logits are cast to fp32)


def scorable(input_ids: torch.Tensor) -> torch.Tensor:
    """True where the clean token is a real base (A/C/G/T): the only positions that count."""
    return (input_ids >= A_ID) & (input_ids <= T_ID)


def stratified_times(n: int, eps: float = 1e-3, device=None, generator=None,
                     offset: int = 0, total: int | None = None) -> torch.Tensor:
    """One t per sequence, stratified over a (global) batch of `total` and sliced at `offset`.

    u_i = (U + i) / total for i in [offset, offset + n) with one shared U, so the global batch covers
    [0, 1) evenly (low-discrepancy sampling); then t = eps + (1 - eps) u lies in [eps, 1].
    Passing the global batch size and this rank's offset stratifies across DDP ranks (as DUO does).
    """
    total = total or n
    # Drawn where the generator lives (a CPU generator gives the same t on any device), like mask_tokens.
    u0 = torch.rand((), device=generator.device if generator is not None else device, generator=generator)
    i = torch.arange(offset, offset + n, device=device, dtype=torch.float32)
    u0 = u0.to(i.device)
    u = ((u0 + i) / total) % 1.0
    return eps + (1.0 - eps) * u


def mask_tokens(x: torch.Tensor, mask_prob: torch.Tensor, generator=None, draw: torch.Tensor | None = None) -> torch.Tensor:
    """Forward process q(z_t | x): replace each token by [MASK] independently with prob mask_prob (B,).

    `draw` (B, L) uniforms in [0, 1): use these instead of drawing from `generator` (per-window seeded draws)."""
    if draw is None:
        device = generator.device if generator is not None else x.device
        draw = torch.rand(x.shape, device=device, generator=generator)
    draw = draw.to(x.device)
    return torch.where(draw < mask_prob[:, None], torch.full_like(x, MASK_ID), x)


def subs_log_probs(logits: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """SUBS parameterisation: no mass on [MASK]; unmasked positions copy their token (log p = 0)."""
    logits = logits.float().clone()
    logits[..., MASK_ID] = NEG_INF
    logp = torch.log_softmax(logits, dim=-1)
    unmasked = z_t != MASK_ID
    carry = torch.full_like(logp, NEG_INF).scatter_(-1, z_t[..., None], 0.0)
    return torch.where(unmasked[..., None], carry, logp)


class MDLM(nn.Module):
    """Masked diffusion LM = denoiser + schedule; owns the loss and the likelihood bound.

    `schedule` defaults to the one the model was trained with (`config.schedule`, else log-linear)."""

    kind = "mdlm"
    upper_bound = True  # the NELBO bounds the negative log-likelihood from above

    def __init__(self, model: nn.Module, schedule: str | Schedule | None = None, sampling_eps: float = 1e-3):
        super().__init__()
        self.model = model
        if schedule is None:
            schedule = getattr(model.config, "schedule", None) or "loglinear"
        self.schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
        self.sampling_eps = sampling_eps

    @property
    def window(self) -> int:
        """The window the model works in (`CaduceusConfig.window`: its training length, else 1024)."""
        return self.model.config.window

    def describe(self) -> str:
        return f"MDLM Caduceus ({self.schedule.name} schedule), NELBO upper bound"

    @property
    def time_conditioning(self) -> bool:
        return bool(getattr(self.model.config, "time_conditioning", False))

    @property
    def conditional(self) -> bool:
        """True for a class-conditional denoiser (`config.num_classes`); its calls accept `class_labels`."""
        return bool(getattr(self.model.config, "num_classes", None))

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor | None = None, attention_mask=None,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p_theta(x0 | z_t[, c]) under SUBS, (B, L, V) float32. class_labels (B,): a conditional model's class
        ids (None or `config.null_class`: the unconditional distribution)."""
        timesteps = self.schedule.sigma(t) if (self.time_conditioning and t is not None) else None
        extra = {} if class_labels is None else {"class_labels": class_labels}
        logits = self.model(z_t, timesteps=timesteps, attention_mask=attention_mask, **extra).logits
        return subs_log_probs(logits, z_t)

    def token_nelbo(self, x: torch.Tensor, t: torch.Tensor, attention_mask=None, generator=None, class_labels=None,
                    draw: torch.Tensor | None = None):
        """Per-token weighted NELBO (B, L) at times t (B,), and the scored-position mask (B, L); class_labels (B,)
        for a conditional model (the NELBO of x given its class); `draw` (B, L): the masking uniforms, if given."""
        z_t = mask_tokens(x, self.schedule.mask_prob(t), generator, draw)
        logp = self.denoise(z_t, t, attention_mask, class_labels)
        nll = -logp.gather(-1, x[..., None]).squeeze(-1)
        score = scorable(x)
        if attention_mask is not None:
            score &= attention_mask.bool()
        # Carried-over positions have nll exactly 0; unscored positions are zeroed explicitly so an
        # N under a mask cannot leak its (huge) SUBS value.
        w = self.schedule.weight(t)[:, None]
        return torch.where(score, nll * w, torch.zeros_like(nll)), score

    def loss(self, x: torch.Tensor, score_mask=None, attention_mask=None, t: torch.Tensor | None = None,
             generator=None, offset: int = 0, total: int | None = None, class_labels=None):
        """(mean NELBO per scored base in nats, number of scored bases) for x (B, L).

        Scored: A/C/G/T positions inside `attention_mask` and `score_mask` (both (B, L) bool, optional). `t` (B,)
        defaults to stratified times over a global batch of `total` starting at `offset` (DDP ranks). class_labels
        (B,): a conditional model's classes (null class rows: the unconditional NELBO). A batch with nothing to score
        gives exactly 0 with a gradient path, never NaN."""
        if t is None:
            t = stratified_times(x.shape[0], self.sampling_eps, x.device, generator, offset, total)
        tok, score = self.token_nelbo(x, t, attention_mask, generator, class_labels)
        if score_mask is not None:
            score = score & score_mask.bool()
            tok = torch.where(score, tok, torch.zeros_like(tok))
        n = score.sum()
        return tok.sum() / n.clamp_min(1), n

    @torch.no_grad()
    def nats_per_window(self, x: torch.Tensor, score_mask=None, attention_mask=None, num_samples: int = 1,
                        generator=None, class_labels=None, seeds=None):
        """Monte-Carlo NELBO sums per window: (B, K) float64 nats, K time samples stratified over [eps, 1].

        The mean over K is an unbiased estimate of the window's NELBO (an upper bound on its NLL); the spread
        over K gives the Monte-Carlo standard error. class_labels (B,): condition a conditional model on them.

        `seeds` (B ints): each window draws its own times and masks from a CPU generator seeded with its seed
        (one U per window, t_k = eps + (1 - eps)(U + k)/K, then a (K, L) table of mask uniforms), so its estimate
        is a function of (seed, window) alone, whatever the batch size or the other windows in the batch. Without
        `seeds`, times are stratified across the batch from `generator` (batch-dependent, as in training)."""
        if seeds is not None:
            if len(seeds) != x.shape[0]:
                raise ValueError(f"nats_per_window: {len(seeds)} seeds for {x.shape[0]} windows")
            eps, K, L = self.sampling_eps, num_samples, x.shape[1]
            u0s, draws = [], []
            for seed in seeds:
                g = torch.Generator().manual_seed(int(seed))
                u0s.append(torch.rand((), generator=g))
                draws.append(torch.rand((K, L), generator=g))
            u = (torch.stack(u0s)[:, None] + torch.arange(K)[None, :]) / K  # (B, K), each row covers [0, 1)
            times = eps + (1 - eps) * u
            draw = torch.stack(draws, dim=1)  # (K, B, L)
        sums = []
        for k in range(num_samples):
            if seeds is not None:
                t, d = times[:, k].to(x.device), draw[k]
            else:
                u = stratified_times(x.shape[0], 0.0, None, generator)  # in [0, 1)
                u = (u + k) / num_samples  # the K draws of each window cover [0, 1) too
                t, d = (self.sampling_eps + (1 - self.sampling_eps) * u).to(x.device), None
            tok, score = self.token_nelbo(x, t, attention_mask, generator, class_labels, draw=d)
            if score_mask is not None:
                tok = torch.where(score_mask.bool(), tok, torch.zeros_like(tok))
            sums.append(tok.double().sum(1))
        return torch.stack(sums, dim=1)

    # --- generation -------------------------------------------------------------------------------
    infills = True  # generates any [MASK] pattern: prefixes, suffixes, templates

    @property
    def default_steps(self) -> int:
        """Reverse steps per window when none are asked for: a distilled student's own step count
        (`config.distillation["steps"]`, written by `training.distill`), else the reference default (128)."""
        distilled = getattr(self.model.config, "distillation", None) or {}
        return int(distilled.get("steps") or DEFAULT_STEPS)

    def progress_total(self, length: int, settings: GenerationSettings) -> int:
        return settings.steps * len(window_starts(length, settings.window, settings.overlap))

    @torch.no_grad()
    def infill(self, canvas: torch.Tensor, settings: GenerationSettings, generator: torch.Generator,
               stats: SamplingStats, progress=None) -> torch.Tensor:
        """Fill every [MASK] of canvas (B, L) with the reverse chain (`diffusion.sampling.fill_canvas`): windows of
        `settings.window` slide left to right keeping `settings.overlap` bases of context; fixed bases stay; each
        step fills positions in `settings.order` (`diffusion.sampling.ORDERS`); `settings.class_id` / `guidance`:
        a conditional model's class and classifier-free guidance weight."""
        denoiser = _Denoiser(self, allowed_ids(settings.allow_n), settings.temperature, settings.top_p, stats,
                             settings.class_id, settings.guidance)
        return fill_canvas(self, canvas, settings.steps, settings.sampler, settings.window, settings.overlap,
                           generator, denoiser, progress, make_unmasker(settings.order, settings.gamma))
