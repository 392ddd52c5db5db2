"""Sampling DNA from trained models: MDLM ancestral samplers, semi-AR long generation, AR and Markov decoding.

Owns everything `dna-mdlm sample` and `dna_mdlm.sample` do (reference/mdlm.md §2):

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
- AR baselines decode by recurrent state stepping (O(1) work per base); Markov models sample through
  `MarkovLM.sample`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..tokenizer import A_ID, BASE_IDS, BOS_ID, MASK_ID, N_ID, InvalidSequenceError, decode_dna, encode_dna

SAMPLERS = ("ddpm", "ddpm_cache")
SAMPLING_EPS = 1e-5  # last time of the reverse grid (the reference's sampling eps)
DEFAULT_STEPS = 128  # the reference config's sampling.steps
DEFAULT_WINDOW = 1024


@dataclass
class SamplingStats:
    """What a sampling run cost: forward passes, sequences pushed through them, windows, seconds."""

    network_calls: int = 0  # forward passes of the network (recurrent steps for AR models)
    row_evaluations: int = 0  # sequences (windows) summed over those passes: the compute actually spent
    windows: list = field(default_factory=list)  # (start, end) of each semi-AR window, per batch
    seconds: float = 0.0
    draw_dtype: str = "float64"


@dataclass
class SamplingResult:
    sequences: list
    stats: SamplingStats
    settings: dict


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


# ---------------------------------------------------------------------------------------------------
# AR recurrent decoding
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def ar_decode(model, num: int, length: int, prefix_ids: np.ndarray, allowed: torch.Tensor, temperature: float,
              top_p: float, generator: torch.Generator, device, stats: SamplingStats, progress=None) -> torch.Tensor:
    """Causal Mamba decoding by state stepping: [BOS] then the prefix are fed, then one base per step."""
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


# ---------------------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------------------


def _constraint_ids(seq: str | None, what: str) -> np.ndarray:
    if seq is None:
        return np.zeros(0, dtype=np.int64)
    try:
        return encode_dna(seq)
    except InvalidSequenceError as exc:
        raise InputError(f"{what}: {exc}") from None


def build_canvas(length: int | None, prefix: str | None = None, suffix: str | None = None,
                 template: str | None = None) -> np.ndarray:
    """The (L,) ids to complete: fixed bases where given, [MASK] where a base is to be generated.

    template: A/C/G/T are fixed, N marks a position to generate (so a template cannot fix an N)."""
    if template is not None:
        if prefix is not None or suffix is not None:
            raise InputError("--template cannot be combined with --prefix/--suffix (write the flanks into the template)")
        ids = _constraint_ids(template, "--template")
        if ids.size == 0:
            raise InputError("--template: empty (expected A/C/G/T fixed bases and N at positions to generate)")
        if length is not None and length != ids.size:
            raise InputError(f"--length {length} does not match the --template length {ids.size}")
        return np.where(ids == N_ID, MASK_ID, ids)
    if length is None or length <= 0:
        raise InputError(f"--length: expected a positive number of bases, got {length}")
    pre, suf = _constraint_ids(prefix, "--prefix"), _constraint_ids(suffix, "--suffix")
    if pre.size + suf.size > length:
        which = "--prefix" if suf.size == 0 else ("--suffix" if pre.size == 0 else "--prefix plus --suffix")
        raise InputError(f"{which} is {pre.size + suf.size} bp, longer than --length {length}")
    canvas = np.full(length, MASK_ID, dtype=np.int64)
    canvas[: pre.size] = pre
    canvas[length - suf.size:] = suf
    return canvas


def _resolve_model(model, device):
    """(object, kind) for a model directory, a Caduceus model, an MDLM wrapper or a MarkovLM."""
    from ..baselines.markov import MarkovLM
    from .mdlm import MDLM

    if isinstance(model, (str, os.PathLike)):
        from ..loading import load_model

        model, kind = load_model(model, device=device)
        if kind == "classifier":
            raise InputError("--model: a fine-tuned classifier cannot generate sequences (give a pretrained MDLM, AR or Markov model)")
        return model, kind
    if isinstance(model, MarkovLM):
        return model, "markov"
    if isinstance(model, MDLM):
        return model.to(device).eval(), "mdlm"
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "lm_head"):
        raise InputError(f"model: expected a model directory, CaduceusForMaskedLM, MDLM or MarkovLM, got {type(model).__name__}")
    return model.to(device).eval(), getattr(config, "objective", "mdlm")


def _schedule_name(config) -> str:
    from .schedules import SCHEDULES

    name = getattr(config, "schedule", None) or "loglinear"  # pretraining records the schedule it trained with
    if name not in SCHEDULES:
        raise InputError(f"--model: config.json schedule {name!r} is not one of {', '.join(sorted(SCHEDULES))}")
    return name


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return dev


def generate(model, num_samples: int, length: int | None = None, *, steps: int | None = None,
             sampler: str = "ddpm_cache", prefix: str | None = None, suffix: str | None = None,
             template: str | None = None, temperature: float = 1.0, top_p: float = 1.0,
             batch_size: int | None = None, device: str | None = "cpu", seed: int = 0,
             window: int | None = None, overlap: int | None = None, allow_n: bool = False,
             progress: bool = False) -> SamplingResult:
    """Generate `num_samples` DNA strings of `length` bases (or the template's length), with costs.

    model: a model directory, a CaduceusForMaskedLM (MDLM or AR), an MDLM or a MarkovLM. Every argument
    is checked before the model is loaded or anything runs; bad ones raise a one-line InputError."""
    if num_samples is None or num_samples <= 0:
        raise InputError(f"--num-samples: expected a positive count, got {num_samples}")
    if sampler not in SAMPLERS:
        raise InputError(f"--sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if steps is not None and steps <= 0:
        raise InputError(f"--steps: expected a positive number of reverse steps, got {steps}")
    if not temperature >= 0:
        raise InputError(f"--temperature: expected >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise InputError(f"--top-p: expected 0 < p <= 1, got {top_p}")
    if batch_size is not None and batch_size <= 0:
        raise InputError(f"--batch-size: expected a positive number, got {batch_size}")
    if window is not None and window <= 1:
        raise InputError(f"--window: expected at least 2 bases, got {window}")
    canvas = build_canvas(length, prefix, suffix, template)
    length = canvas.size
    dev = _resolve_device(device)
    model, kind = _resolve_model(model, dev)
    steps = steps or DEFAULT_STEPS
    batch_size = batch_size or min(num_samples, 64)
    stats = SamplingStats()
    settings = {"kind": kind, "num_samples": num_samples, "length": length, "seed": seed,
                "temperature": temperature, "top_p": top_p, "prefix": prefix, "suffix": suffix, "template": template,
                "allow_n": allow_n}
    started = time.perf_counter()

    if kind == "markov":
        if suffix is not None or template is not None:
            raise InputError("a Markov model generates left to right: only --prefix is supported (not --suffix/--template)")
        if temperature == 0 or top_p < 1:
            raise InputError("a Markov model samples with temperature > 0 and no --top-p")
        seqs = model.sample(num_samples, length, seed=seed, temperature=temperature, prefix=prefix)
        stats.seconds = time.perf_counter() - started
        return SamplingResult(seqs, stats, settings)

    if kind == "ar":
        if suffix is not None or template is not None:
            raise InputError("an AR model generates left to right: only --prefix is supported (not --suffix/--template)")
        settings["decoding"] = "recurrent state stepping"
    else:
        if window is None:
            config = model.config if hasattr(model, "config") else model.model.config
            # `train_window` is what pretraining records; `max_length` is the released checkpoints' name.
            window = int(getattr(config, "train_window", None) or getattr(config, "max_length", None) or DEFAULT_WINDOW)
        overlap = window // 2 if overlap is None else overlap
        if not 0 <= overlap < window:
            raise InputError(f"--overlap: expected 0 <= overlap < window ({window}), got {overlap}")
        settings.update({"steps": steps, "sampler": sampler, "window": window, "overlap": overlap})

    from .mdlm import MDLM

    allowed = allowed_ids(allow_n)
    generator = torch.Generator().manual_seed(int(seed))
    if kind == "mdlm":
        mdlm = model if isinstance(model, MDLM) else MDLM(model, _schedule_name(model.config))
        denoiser = _Denoiser(mdlm, allowed, temperature, top_p, stats)
        per_batch = steps * len(window_starts(length, window, overlap))
    else:
        per_batch = length
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=per_batch * -(-num_samples // batch_size), desc=f"sampling ({kind})", unit="step", leave=False)
    out: list[str] = []
    try:
        for first in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - first)
            if kind == "ar":
                ids = ar_decode(model, n, length, canvas[canvas != MASK_ID], allowed, temperature, top_p,
                                generator, dev, stats, bar)
            else:
                batch = torch.as_tensor(canvas, device=dev).repeat(n, 1)
                ids = fill_canvas(mdlm, batch, steps, sampler, window, overlap, generator, denoiser, bar)
            out.extend(decode_dna(row) for row in ids.cpu())
    finally:
        if bar is not None:
            bar.close()
    stats.seconds = time.perf_counter() - started
    return SamplingResult(out, stats, settings)


def sample(model, num_samples: int, length: int | None = None, **kwargs) -> list[str]:
    """`num_samples` generated DNA strings; see `generate` for every option (steps, sampler, prefix, ...)."""
    return generate(model, num_samples, length, **kwargs).sequences


def write_samples(result: SamplingResult, out: str | os.PathLike, model_name: str = "") -> None:
    """FASTA (one record per sample, settings in each header) + `<out>.json` sidecar, both atomic."""
    import json

    from Bio.Seq import Seq
    from Bio.SeqIO import write as write_fasta
    from Bio.SeqRecord import SeqRecord

    from ..errors import atomic_path, atomic_write_text

    s = result.settings
    desc = " ".join(f"{k}={s[k]}" for k in ("kind", "sampler", "steps", "seed", "temperature", "top_p") if k in s)
    records = [SeqRecord(Seq(seq), id=f"sample_{i}", description=f"model={model_name} {desc}".strip())
               for i, seq in enumerate(result.sequences)]
    sidecar = {"model": model_name, **s, "stats": asdict(result.stats), "fasta": Path(out).name}
    # The sidecar first: a FASTA on disk always has its settings beside it.
    atomic_write_text(str(out) + ".json", json.dumps(sidecar, indent=1) + "\n")
    with atomic_path(out) as tmp:
        write_fasta(records, tmp, "fasta")
