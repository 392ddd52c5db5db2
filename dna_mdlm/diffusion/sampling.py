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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..tokenizer import BASE_IDS, MASK_ID, N_ID

SAMPLERS = ("ddpm", "ddpm_cache")
SAMPLING_EPS = 1e-5  # last time of the reverse grid (the reference's sampling eps)
DEFAULT_STEPS = 128  # the reference config's sampling.steps


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
    length and the context kept between semi-AR windows); temperature / top_p / allow_n: the distribution over
    bases every model draws from; seed: numpy-based samplers (the Markov LM) seed from it."""

    steps: int = DEFAULT_STEPS
    sampler: str = "ddpm_cache"
    window: int | None = None
    overlap: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    allow_n: bool = False
    seed: int = 0


# ---------------------------------------------------------------------------------------------------
# distributions
# ---------------------------------------------------------------------------------------------------


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Index drawn from unnormalised probabilities on the last axis, computed in float64.

    argmax(p / E) with E ~ Exp(1) picks index i with probability p_i / sum(p). The uniforms are drawn on
    the CPU generator (so a seed gives the same draw on any device) in float64."""
    probs = probs.double()
    u = torch.rand(probs.shape, dtype=torch.float64, generator=generator).to(probs.device)
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
    """p_theta(x0 | z_t) restricted to the allowed bases and reshaped, with per-row caching and counting."""

    def __init__(self, mdlm, allowed: torch.Tensor, temperature: float, top_p: float, stats: SamplingStats):
        self.mdlm, self.allowed, self.temperature, self.top_p, self.stats = mdlm, allowed, temperature, top_p, stats

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, t: float) -> torch.Tensor:
        self.stats.network_calls += 1
        self.stats.row_evaluations += z.shape[0]
        tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.float32)
        logp = self.mdlm.denoise(z, tt)[..., self.allowed.to(z.device)]
        # SUBS puts no mass on [MASK]; removing specials/N/padding as well needs a renormalisation.
        logp = torch.log_softmax(logp.double(), dim=-1)
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


@torch.no_grad()
def denoise_window(denoiser: _Denoiser, z: torch.Tensor, steps: int, sampler: str, generator: torch.Generator,
                   progress=None) -> torch.Tensor:
    """Run the reverse chain on z (B, W): [MASK] positions are generated, all others are kept as they are."""
    schedule = denoiser.mdlm.schedule
    cache_ok = sampler == "ddpm_cache" and not denoiser.mdlm.time_conditioning
    allowed = denoiser.allowed.to(z.device)
    times = torch.linspace(1.0, SAMPLING_EPS, steps + 1, dtype=torch.float64)
    dt = (1.0 - SAMPLING_EPS) / steps
    probs = None
    stale = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)  # rows whose cached output is out of date
    for k in range(steps):
        t = float(times[k])
        s = t - dt
        if not (z == MASK_ID).any():
            # Nothing left to generate (both samplers stop calling the network here alike).
            if progress is not None:
                progress.update(1)
            continue
        probs = _refresh(denoiser, z, t, probs, stale, cache_ok)
        move_t = float(1 - schedule.alpha(torch.tensor(t, dtype=torch.float64)))
        move_s = float(1 - schedule.alpha(torch.tensor(s, dtype=torch.float64)))
        # Unnormalised q(z_s | z_t, x0): p_theta * (m_t - m_s) on the bases, m_s on staying masked.
        q = torch.cat([probs * (move_t - move_s), torch.full_like(probs[..., :1], move_s)], dim=-1)
        choice = sample_categorical(q, generator)
        unmask = (z == MASK_ID) & (choice < allowed.numel())
        new_z = torch.where(unmask, allowed[choice.clamp_max(allowed.numel() - 1)], z)
        stale = (new_z != z).any(dim=1)
        z = new_z
        if progress is not None:
            progress.update(1)
    still_masked = z == MASK_ID
    if still_masked.any():
        # Final noise removal: one more (cached if unchanged) evaluation at t = eps, greedy fill.
        probs = _refresh(denoiser, z, SAMPLING_EPS, probs, stale, cache_ok)
        z = torch.where(still_masked, allowed[probs.argmax(-1)], z)
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
                generator: torch.Generator, denoiser: _Denoiser, progress=None) -> torch.Tensor:
    """Generate every [MASK] of canvas (B, L), window by window; already fixed bases are context."""
    canvas = canvas.clone()
    for start in window_starts(canvas.shape[1], window, overlap):
        end = min(start + window, canvas.shape[1])
        denoiser.stats.windows.append((start, end))
        if not (canvas[:, start:end] == MASK_ID).any():
            if progress is not None:
                progress.update(steps)
            continue
        canvas[:, start:end] = denoise_window(denoiser, canvas[:, start:end], steps, sampler, generator, progress)
    return canvas
