"""The MDLM reverse chain: ancestral samplers over a window and semi-AR generation of any length.

(Sahoo et al., NeurIPS 2024, §3.3 and Appendix on semi-autoregressive sampling; kuleshov-group/mdlm
`diffusion.py: _ddpm_update, _ddpm_caching_update`.) What chooses a model, builds canvases from prefixes and
templates and writes FASTA is `dna_mdlm.generate`; AR decoding is `baselines.ar.AR.decode`.

- `ddpm`: ancestral sampling from the all-[MASK] prior over `steps` reverse steps on the grid
  t_k = linspace(1, 1e-5, steps + 1). At each step a masked position unmasks with probability
  (m_t - m_s) / m_t (m = 1 - alpha, the mask probability) to a base drawn from p_theta(x0 | z_t); an
  unmasked base never changes (carry-over). A final "noise removal" call fills any mask left with the
  argmax.
- `ddpm_cache`: the same chain, but p_theta(x0 | z_t) is reused while z_t has not changed (valid only
  for a network without time conditioning). The cache is kept per sequence: only rows that changed
  since their last evaluation are sent through the network. The random numbers are drawn identically
  whether or not the network runs, so both samplers give exactly the same samples for a seed (given
  that the network's output for a sequence does not depend on which other sequences share its batch,
  which holds for the CPU kernels the tests run on; GPU kernels may differ in the last bit).
- Categorical draws are exponential races (the Gumbel-max trick on unnormalised probabilities) in
  float64: float32 uniforms truncate the tail that lets rare bases win, which silently lowers the
  temperature (Zheng et al. 2024).
- Only A/C/G/T are generated (plus N when `allow_n`); temperature and nucleus (top-p) reshape
  p_theta over those bases before the posterior is formed.
- Constraints: a canvas of fixed bases and [MASK] holes (prefix, suffix, or a template with N at the
  positions to generate). Fixed bases are carried over, so they never change. Sequences longer than
  the model window (config `train_window`) are generated semi-autoregressively: windows of the training length slide left to
  right, each keeping at least `overlap` already-generated bases as context; the last window is
  aligned to the end so a right flank (suffix) is in view when the gap before it is closed.
- Orders (`--order`): which [MASK] positions a step fills is one separate strategy, an `Unmasker` chosen by
  name (`make_unmasker`); the denoiser call and the cache rule do not depend on it. `random` is the ancestral
  step above (every masked position independently, with the posterior's probability). The others draw a base
  for every masked position from p_theta and keep it at the positions they rank first: `dilated` (a fixed
  coarse-to-fine order, Luxembourg et al., arXiv 2506.19037), `confidence` / `margin` (MaskGIT, Chang et al.
  2022, arXiv 2202.04200), each filling as many positions as the schedule unmasks on average
  (masked x (m_t - m_s) / m_t), and `entropy-bound` (EB-sampler, Ben-Hamu et al., arXiv 2505.24857), which
  adds positions while their summed entropy stays under a bound. The ranking uses only the predicted
  distributions, never the drawn base, so an order changes which bases are drawn together, not the
  distribution each base is drawn from. The last step of every order ends at clean data (m_s = 0): no
  position is left masked and no extra network call is needed, so a window costs at most `steps` calls.
- Classifier-free guidance (class-conditional models, `GenerationSettings.class_id` / `guidance`): each call runs
  the conditional and the null-class pass and combines them in log-probability space,
  log p~ = g log p(x0 | z_t, c) + (1 - g) log p(x0 | z_t, null), renormalised over the allowed bases before
  temperature, top-p and the posterior (Schiff et al., "Simple guidance mechanisms for discrete diffusion",
  arXiv 2412.10193, §3; renormalising before the update as Rojas et al., arXiv 2507.08965, recommend). Both passes
  live in the one cached output, so `ddpm_cache` skips them together. g = 1 is the conditional model and g = 0 the
  unconditional one, each a single pass (exactly what a run without guidance computes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..tokenizer import BASE_IDS, MASK_ID, N_ID

SAMPLERS = ("ddpm", "ddpm_cache")
ORDERS = ("random", "dilated", "confidence", "margin", "entropy-bound")
SAMPLING_EPS = 1e-5  # last time of the reverse grid (the reference's sampling eps)
DEFAULT_STEPS = 128  # the reference config's sampling.steps
DEFAULT_ORDER = "random"
DEFAULT_GAMMA = 0.5  # entropy-bound: bits of summed entropy allowed beyond the most uncertain chosen base


@dataclass
class SamplingStats:
    """What a sampling run cost: forward passes, sequences pushed through them, windows, seconds."""

    network_calls: int = 0  # forward passes of the network (recurrent steps for AR models)
    row_evaluations: int = 0  # sequences (windows) summed over those passes: the compute actually spent
    windows: list = field(default_factory=list)  # (start, end) of each semi-AR window, per batch
    seconds: float = 0.0
    draw_dtype: str = "float64"


@dataclass
class GenerationSettings:
    """How to generate, for any language model's `infill` (each reads the fields it uses).

    steps / sampler / window / overlap: the MDLM reverse chain (steps per window, `ddpm` or `ddpm_cache`, window
    length and the context kept between semi-AR windows); order / gamma: which masked positions each step fills
    (`ORDERS`; gamma is the entropy-bound's bound in bits); temperature / top_p / allow_n: the distribution over
    bases every model draws from; seed: numpy-based samplers (the Markov LM) seed from it; class_id / guidance: a
    class-conditional MDLM's class and classifier-free guidance weight (None: the unconditional model)."""

    steps: int = DEFAULT_STEPS
    sampler: str = "ddpm_cache"
    order: str = DEFAULT_ORDER
    gamma: float = DEFAULT_GAMMA
    window: int | None = None
    overlap: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    allow_n: bool = False
    seed: int = 0
    class_id: int | None = None
    guidance: float = 1.0


# ---------------------------------------------------------------------------------------------------
# distributions
# ---------------------------------------------------------------------------------------------------


class RowGenerators(list):
    """One CPU `torch.Generator` per row of a batch: `uniform` draws row i's numbers from generator i, so a
    generated sequence depends on its own seed only, not on the batch size or its neighbours in the batch."""


def uniform(shape, generator: torch.Generator | RowGenerators | None = None) -> torch.Tensor:
    """float64 uniforms in [0, 1) of `shape` (B, ...) on the CPU: from `generator`, or row by row from a
    `RowGenerators` of B generators."""
    if isinstance(generator, RowGenerators):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} row generators for a batch of {shape[0]}")
        return torch.stack([torch.rand(tuple(shape[1:]), dtype=torch.float64, generator=g) for g in generator])
    return torch.rand(tuple(shape), dtype=torch.float64, generator=generator)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | RowGenerators | None = None) -> torch.Tensor:
    """Index drawn from unnormalised probabilities on the last axis, computed in float64.

    argmax(p / E) with E ~ Exp(1) picks index i with probability p_i / sum(p). The uniforms are drawn on
    the CPU generator (so a seed gives the same draw on any device) in float64; `RowGenerators`: one per row."""
    probs = probs.double()
    u = uniform(probs.shape, generator).to(probs.device)
    return (probs / -torch.log(u)).argmax(dim=-1)


def shape_distribution(log_probs: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Normalised float64 probabilities from log-probs over the allowed bases, after temperature and top-p.

    temperature 0 is greedy (a one-hot on the argmax); top-p keeps the smallest set of most likely bases
    whose mass reaches p (always at least the top one) and renormalises."""
    logp = log_probs.double()
    if temperature == 0:
        return torch.nn.functional.one_hot(logp.argmax(-1), logp.shape[-1]).double()
    probs = torch.softmax(logp / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(-1) - sorted_p
        keep_sorted = mass_before < top_p
        keep_sorted[..., 0] = True
        keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def allowed_ids(allow_n: bool = False) -> torch.Tensor:
    return torch.tensor(list(BASE_IDS) + ([N_ID] if allow_n else []), dtype=torch.long)


# ---------------------------------------------------------------------------------------------------
# MDLM samplers over one window
# ---------------------------------------------------------------------------------------------------


class _Denoiser:
    """p_theta(x0 | z_t) restricted to the allowed bases and reshaped, with per-row caching and counting.

    class_id / guidance: a class-conditional model's class and classifier-free guidance weight (see the module
    doc); a guided call (guidance not 0 or 1) runs both passes as one doubled batch and counts two network calls."""

    def __init__(self, mdlm, allowed: torch.Tensor, temperature: float, top_p: float, stats: SamplingStats,
                 class_id: int | None = None, guidance: float = 1.0):
        self.mdlm, self.allowed, self.temperature, self.top_p, self.stats = mdlm, allowed, temperature, top_p, stats
        self.class_id, self.guidance = class_id, float(guidance)

    def _log_probs(self, z: torch.Tensor, t: float, labels: torch.Tensor | None) -> torch.Tensor:
        self.stats.network_calls += 1 if labels is None else int(labels.unique().numel())
        self.stats.row_evaluations += z.shape[0]
        tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.float32)
        logp = self.mdlm.denoise(z, tt, class_labels=labels)[..., self.allowed.to(z.device)]
        # SUBS puts no mass on [MASK]; removing specials/N/padding as well needs a renormalisation.
        return torch.log_softmax(logp.double(), dim=-1)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, t: float) -> torch.Tensor:
        if self.class_id is None:
            logp = self._log_probs(z, t, None)
        else:
            n, null = z.shape[0], self.mdlm.model.config.null_class
            if self.guidance in (0.0, 1.0):
                label = self.class_id if self.guidance == 1.0 else null
                logp = self._log_probs(z, t, torch.full((n,), label, dtype=torch.long, device=z.device))
            else:
                labels = torch.tensor([self.class_id] * n + [null] * n, dtype=torch.long, device=z.device)
                both = self._log_probs(torch.cat([z, z]), t, labels)
                logp = torch.log_softmax(self.guidance * both[:n] + (1.0 - self.guidance) * both[n:], dim=-1)
        return shape_distribution(logp, self.temperature, self.top_p)


def _refresh(denoiser, z, t, probs, stale, cache_ok):
    """The denoiser's output at z: recomputed for every row (plain sampler, or no cache yet), or only for the
    rows that changed since the cached call (the ddpm_cache rule, applied per row)."""
    if probs is None or not cache_ok:
        return denoiser(z, t)
    if stale.any():
        rows = stale.nonzero().squeeze(1)
        probs = probs.clone()
        probs[rows] = denoiser(z[rows], t)
    return probs


# ---------------------------------------------------------------------------------------------------
# orders: which masked positions one reverse step fills
# ---------------------------------------------------------------------------------------------------


class ReverseStep(NamedTuple):
    """Where one reverse step t -> s stands: mask probabilities m_t > m_s (m_s = 0 on the last step), m_1 at
    t = 1, and the number of masked positions each row of the window had before its first step (B,)."""

    t: float
    move_t: float
    move_s: float
    move_1: float
    start_masked: torch.Tensor


class Unmasker:
    """One reverse step's choice of which [MASK] positions to fill, and with which bases.

    `step(z, probs, where, allowed, generator)` gets the window z (B, W), the shaped denoiser output probs
    (B, W, V) over the allowed bases (V = allowed.numel()) and the `ReverseStep`, and returns the new z: fixed
    bases and earlier choices unchanged, some [MASK] positions replaced by allowed bases. Every random number
    comes from `generator` and is drawn whether or not the network ran, so `ddpm` and `ddpm_cache` give the same
    samples for a seed."""

    name = "base"

    def step(self, z, probs, where: ReverseStep, allowed, generator):
        raise NotImplementedError


class AncestralUnmasker(Unmasker):
    """`random`: the MDLM ancestral step. Each masked position independently draws from the posterior
    q(z_s | z_t, x0 = p_theta): a base with total probability (m_t - m_s) / m_t, else it stays masked.

    The draw is one exponential race over the unnormalised [p_theta (m_t - m_s), m_s] (the reference's
    `_ddpm_update` drops the 1/m_t normaliser the same way)."""

    name = "random"

    def step(self, z, probs, where, allowed, generator):
        # move_t / move_s are floats here, or (B, 1, 1) tensors when each row has its own time (distillation).
        q = torch.cat([probs * (where.move_t - where.move_s), torch.ones_like(probs[..., :1]) * where.move_s], dim=-1)
        choice = sample_categorical(q, generator)
        unmask = (z == MASK_ID) & (choice < allowed.numel())
        return torch.where(unmask, allowed[choice.clamp_max(allowed.numel() - 1)], z)


class RankedUnmasker(Unmasker):
    """Orders that fill the k masked positions they rank first with a base drawn from p_theta.

    k per row follows the schedule: after the step, floor(start_masked x m_s / m_1) positions stay masked (the
    expected count of the ancestral chain, made exact), so a window finishes in `steps` calls. A base is drawn
    at every masked position; the ranking (`priority`, higher first, ties broken by a uniform draw) reads only
    the distributions, never the drawn base, so no base is favoured by being chosen."""

    def priority(self, probs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def count(self, probs, masked, where: ReverseStep) -> torch.Tensor:
        """(B,) positions to fill this step: the schedule's count."""
        keep = torch.floor(where.start_masked.double() * (where.move_s / where.move_1)).long()
        return (masked.sum(1) - keep).clamp_min(0)

    def step(self, z, probs, where, allowed, generator):
        masked = z == MASK_ID
        tokens = allowed[sample_categorical(probs, generator)]
        tie = uniform(z.shape, generator).to(z.device)
        prio = self.priority(probs, masked).double()
        prio = torch.where(masked, prio, torch.full_like(prio, -torch.inf))
        # Rank by (priority, tie-break) descending: sort by the tie-break, then stably by the priority.
        by_tie = tie.argsort(dim=1, descending=True)
        order = by_tie.gather(1, prio.gather(1, by_tie).argsort(dim=1, descending=True, stable=True))
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(z.shape[1], device=z.device).expand_as(order))
        k = self.count(probs, masked, where)
        chosen = masked & (rank < k[:, None])
        return torch.where(chosen, tokens, z)


def dilated_rank(width: int) -> torch.Tensor:
    """(width,) rank of each position in the coarse-to-fine order: positions sorted by their bit-reversed index
    in the next power of two (0, W/2, W/4, 3W/4, W/8, ...), so every prefix of the order is spread evenly and
    each further group falls halfway between earlier ones (the stride halves)."""
    bits = max(1, (width - 1).bit_length())
    idx = torch.arange(width)
    rev = torch.zeros_like(idx)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    rank = torch.empty_like(idx)
    rank[rev.argsort()] = torch.arange(width)
    return rank


class DilatedUnmasker(RankedUnmasker):
    """`dilated`: a fixed coarse-to-fine order within the window (Luxembourg et al., "Plan for speed: dilated
    scheduling for masked diffusion language models", arXiv 2506.19037): positions far apart first, since
    adjacent bases are the most dependent. DUS fills groups of growing size, one per dilation level (log2 B calls
    for a block of B); here the same order is cut into the schedule's counts, so any T works. Even positions come
    before odd ones, so two neighbours share a step only where one step's share straddles that switch (never
    when the window and T are powers of two)."""

    name = "dilated"

    def priority(self, probs, masked):
        return -dilated_rank(masked.shape[1]).to(masked.device).expand(masked.shape).double()


class ConfidenceUnmasker(RankedUnmasker):
    """`confidence`: the positions whose most likely base is most likely (MaskGIT, arXiv 2202.04200; LLaDA's
    `low_confidence` remasking), k per step from the schedule."""

    name = "confidence"

    def priority(self, probs, masked):
        return probs.max(dim=-1).values


class MarginUnmasker(RankedUnmasker):
    """`margin`: the positions with the largest gap between their two most likely bases (top-1 minus top-2
    probability), k per step from the schedule."""

    name = "margin"

    def priority(self, probs, masked):
        top = probs.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]


def entropy_bits(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits over the last axis (0 log 0 = 0)."""
    p = probs.double()
    return -(torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))).sum(-1)


class EntropyBoundUnmasker(RankedUnmasker):
    """`entropy-bound`: lowest-entropy positions first, as many as keep sum(H) - max(H) <= gamma over the chosen
    set (bits; the EB-sampler of Ben-Hamu et al., arXiv 2505.24857, where the left side bounds the mutual
    information the factorised draw ignores), and never fewer than the schedule's count, so easy regions go
    faster than the schedule and a window still finishes in `steps` calls."""

    name = "entropy-bound"

    def __init__(self, gamma: float = DEFAULT_GAMMA):
        self.gamma = gamma

    def priority(self, probs, masked):
        return -entropy_bits(probs)

    def count(self, probs, masked, where):
        h = torch.where(masked, entropy_bits(probs), torch.full(masked.shape, torch.inf, dtype=torch.float64,
                                                                device=masked.device))
        h = h.sort(dim=1).values
        before = torch.cumsum(torch.nan_to_num(h, posinf=0.0), dim=1) - torch.nan_to_num(h, posinf=0.0)
        # sum(H) - max(H) of the first j sorted positions is the sum of the j - 1 before the last one.
        bound = ((before <= self.gamma) & torch.isfinite(h)).sum(1)
        return torch.maximum(bound, super().count(probs, masked, where))


UNMASKERS = {"random": AncestralUnmasker, "dilated": DilatedUnmasker, "confidence": ConfidenceUnmasker,
             "margin": MarginUnmasker, "entropy-bound": EntropyBoundUnmasker}
assert tuple(UNMASKERS) == ORDERS


def make_unmasker(order: str = DEFAULT_ORDER, gamma: float = DEFAULT_GAMMA) -> Unmasker:
    """The `Unmasker` named `order` (one of `ORDERS`; gamma in bits for `entropy-bound`); ValueError otherwise."""
    if order not in UNMASKERS:
        raise ValueError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0 bits, got {gamma}")
    return EntropyBoundUnmasker(gamma) if order == "entropy-bound" else UNMASKERS[order]()


# ---------------------------------------------------------------------------------------------------
# the reverse chain over one window
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def denoise_window(denoiser: _Denoiser, z: torch.Tensor, steps: int, sampler: str, generator: torch.Generator,
                   progress=None, unmasker: Unmasker | None = None) -> torch.Tensor:
    """Run the reverse chain on z (B, W): [MASK] positions are generated, all others are kept as they are.

    steps: reverse steps on t_k = linspace(1, 1e-5, steps + 1), the last one ending at clean data (m_s = 0);
    at most `steps` network calls. unmasker: the order (default `random`, the ancestral sampler)."""
    schedule = denoiser.mdlm.schedule
    unmasker = unmasker or AncestralUnmasker()
    cache_ok = sampler == "ddpm_cache" and not denoiser.mdlm.time_conditioning
    allowed = denoiser.allowed.to(z.device)
    times = torch.linspace(1.0, SAMPLING_EPS, steps + 1, dtype=torch.float64)
    start_masked = (z == MASK_ID).sum(1)
    move_1 = float(1 - schedule.alpha(times[0]))
    probs = None
    stale = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)  # rows whose cached output is out of date
    for k in range(steps):
        t = float(times[k])
        if not (z == MASK_ID).any():
            # Nothing left to generate (both samplers stop calling the network here alike).
            if progress is not None:
                progress.update(1)
            continue
        probs = _refresh(denoiser, z, t, probs, stale, cache_ok)
        move_t = float(1 - schedule.alpha(torch.tensor(t, dtype=torch.float64)))
        move_s = 0.0 if k == steps - 1 else float(1 - schedule.alpha(times[k + 1]))
        new_z = unmasker.step(z, probs, ReverseStep(t, move_t, move_s, move_1, start_masked), allowed, generator)
        stale = (new_z != z).any(dim=1)
        z = new_z
        if progress is not None:
            progress.update(1)
    return z


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Left ends of the semi-AR windows: stride window - overlap, the last one aligned to the end."""
    if length <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


@torch.no_grad()
def fill_canvas(mdlm, canvas: torch.Tensor, steps: int, sampler: str, window: int, overlap: int,
                generator: torch.Generator, denoiser: _Denoiser, progress=None,
                unmasker: Unmasker | None = None) -> torch.Tensor:
    """Generate every [MASK] of canvas (B, L), window by window, in the order of `unmasker` (default random);
    already fixed bases are context."""
    canvas = canvas.clone()
    for start in window_starts(canvas.shape[1], window, overlap):
        end = min(start + window, canvas.shape[1])
        denoiser.stats.windows.append((start, end))
        if not (canvas[:, start:end] == MASK_ID).any():
            if progress is not None:
                progress.update(steps)
            continue
        canvas[:, start:end] = denoise_window(denoiser, canvas[:, start:end], steps, sampler, generator, progress,
                                              unmasker)
    return canvas
