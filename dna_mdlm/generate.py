"""Generate DNA with any language model and write it: what `dna-mdlm sample` and `dna_mdlm.sample` do.

Owns the parts of generation that do not depend on the model: checking every argument before anything runs,
building the canvas (fixed bases from `--prefix`, `--suffix` or a `--template`, [MASK] where a base is to be
generated), resolving the MDLM window for sequences longer than the model's (semi-autoregressive), batching,
the progress bar, and writing the FASTA with its JSON sidecar. The model itself generates through the language
model interface: `lm.infill(canvas, settings, generator, stats)` (`diffusion.mdlm.MDLM`: the reverse chain, any
mask pattern; `baselines.ar.AR` and `baselines.markov.MarkovLM`: left to right after a prefix, `infills = False`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from Bio.Seq import Seq
from Bio.SeqIO import write as write_fasta
from Bio.SeqRecord import SeqRecord

from .diffusion.sampling import (
    DEFAULT_GAMMA,
    DEFAULT_ORDER,
    ORDERS,
    SAMPLERS,
    GenerationSettings,
    RowGenerators,
    SamplingStats,
)
from .errors import InputError, check_int
from .io.writers import atomic_path, atomic_write_text
from .loading import as_language_model, load_language_model, resolve_device
from .seeding import derived_seed
from .tokenizer import MASK_ID, N_ID, InvalidSequenceError, decode_dna, encode_dna


@dataclass
class SamplingResult:
    sequences: list
    stats: SamplingStats
    settings: dict


def _constraint_ids(seq: str | None, flag: str, unknown: str) -> np.ndarray:
    if seq is None:
        return np.zeros(0, dtype=np.int64)
    try:
        return encode_dna(seq, unknown)
    except InvalidSequenceError as exc:
        raise InputError(f"{flag}: {exc}") from None


def build_canvas(length: int | None, prefix: str | None = None, suffix: str | None = None,
                 template: str | None = None, unknown: str = "error") -> np.ndarray:
    """The (L,) ids to complete: fixed bases where given, [MASK] where a base is to be generated.

    template: A/C/G/T are fixed, N marks a position to generate (so a template cannot fix an N; with
    `unknown="N"` an IUPAC code in it is generated too)."""
    if template is not None:
        if prefix is not None or suffix is not None:
            raise InputError("--template cannot be combined with --prefix/--suffix (write the flanks into the template)")
        ids = _constraint_ids(template, "--template", unknown)
        if ids.size == 0:
            raise InputError("--template: empty (expected A/C/G/T fixed bases and N at positions to generate)")
        if length is not None and length != ids.size:
            raise InputError(f"--length {length} does not match the --template length {ids.size}")
        return np.where(ids == N_ID, MASK_ID, ids)
    if length is None:
        raise InputError("--length: required (bases per sequence), unless --template gives the length")
    check_int("--length", length, 1, "bases per sequence")
    pre, suf = _constraint_ids(prefix, "--prefix", unknown), _constraint_ids(suffix, "--suffix", unknown)
    if pre.size + suf.size > length:
        which = "--prefix" if suf.size == 0 else ("--suffix" if pre.size == 0 else "--prefix plus --suffix")
        raise InputError(f"{which} is {pre.size + suf.size} bp, longer than --length {length}")
    canvas = np.full(length, MASK_ID, dtype=np.int64)
    canvas[: pre.size] = pre
    canvas[length - suf.size:] = suf
    return canvas


def generate(model, num_samples: int, length: int | None = None, *, steps: int | None = None,
             sampler: str = "ddpm_cache", order: str | None = None, gamma: float | None = None,
             prefix: str | None = None, suffix: str | None = None,
             template: str | None = None, temperature: float = 1.0, top_p: float = 1.0,
             batch_size: int | None = None, device: str | None = "auto", seed: int = 0,
             window: int | None = None, overlap: int | None = None, allow_n: bool = False,
             unknown: str = "error", progress: bool = False, class_name: str | None = None,
             guidance: float | None = None) -> SamplingResult:
    """Generate `num_samples` DNA strings of `length` bases (or the template's length), with their costs.

    model: a model directory or a loaded language model (CaduceusForMaskedLM, MDLM, AR or MarkovLM). Every
    argument is checked before the model is loaded or anything runs; bad ones raise a one-line InputError.
    MDLM only: steps (reverse steps per window, at most that many network calls per window; default 128, or a
    distilled student's own count), sampler, order (which masked positions each step fills, one of
    `diffusion.sampling.ORDERS`, default random) and gamma (the entropy-bound order's bound, bits).
    Class-conditional MDLM only (`pretrain --labels`): class_name (one of `config.class_names`) and guidance, the
    classifier-free guidance weight g >= 0 (default 1: the conditional model; 0: the unconditional one; > 1:
    stronger class signal), combined in log-probability space (Schiff et al., arXiv 2412.10193).
    Same seed, same samples."""
    if num_samples is None or num_samples <= 0:
        raise InputError(f"--num-samples: expected a positive count, got {num_samples}")
    if sampler not in SAMPLERS:
        raise InputError(f"--sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if steps is not None and steps <= 0:
        raise InputError(f"--steps: expected a positive number of reverse steps, got {steps}")
    if order is not None and order not in ORDERS:
        raise InputError(f"--order {order!r}: expected one of {', '.join(ORDERS)}")
    if gamma is not None:
        if not (isinstance(gamma, (int, float)) and 0 < gamma < float("inf")):
            raise InputError(f"--gamma {gamma}: expected a positive, finite entropy bound in bits")
        if order != "entropy-bound":
            raise InputError(f"--gamma applies to --order entropy-bound only (got --order {order or DEFAULT_ORDER})")
    if not temperature >= 0:
        raise InputError(f"--temperature: expected >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise InputError(f"--top-p: expected 0 < p <= 1, got {top_p}")
    if batch_size is not None and batch_size <= 0:
        raise InputError(f"--batch-size: expected a positive number, got {batch_size}")
    if window is not None and window <= 1:
        raise InputError(f"--window: expected at least 2 bases, got {window}")
    if guidance is not None:
        if class_name is None:
            raise InputError("--guidance needs --class (classifier-free guidance towards a class)")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance < float("inf"):
            raise InputError(f"--guidance {guidance}: expected a finite weight >= 0 (0 = unconditional, 1 = conditional)")
    canvas = build_canvas(length, prefix, suffix, template, unknown)
    length = canvas.size
    dev = resolve_device(device)
    lm = (load_language_model(model, dev, "sample") if isinstance(model, (str, os.PathLike))
          else as_language_model(model, verb="sample"))
    if isinstance(lm, torch.nn.Module):
        lm = lm.to(dev).eval()
    class_id = None if class_name is None else resolve_class(lm, class_name, str(model) if isinstance(
        model, (str, os.PathLike)) else "the model")
    settings = GenerationSettings(steps=steps or getattr(lm, "default_steps", GenerationSettings.steps),
                                  sampler=sampler, order=order or DEFAULT_ORDER,
                                  gamma=DEFAULT_GAMMA if gamma is None else float(gamma), temperature=temperature,
                                  top_p=top_p, allow_n=allow_n, seed=seed, class_id=class_id,
                                  guidance=1.0 if guidance is None else float(guidance))
    record = {"kind": lm.kind, "num_samples": num_samples, "length": length, "seed": seed,
              "temperature": temperature, "top_p": top_p, "prefix": prefix, "suffix": suffix, "template": template,
              "allow_n": allow_n}
    if class_id is not None:
        record.update({"class": str(class_name), "guidance": settings.guidance})
    if not lm.infills:
        fixed = np.flatnonzero(canvas != MASK_ID)
        if fixed.size and fixed[-1] != fixed.size - 1:
            raise InputError(f"a {lm.kind} model generates left to right: only --prefix is supported "
                             f"(not --suffix/--template)")
        if order not in (None, DEFAULT_ORDER):
            raise InputError(f"--order {order}: a {lm.kind} model generates left to right; orders are for MDLM models")
        if getattr(lm, "decoding", None):
            record["decoding"] = lm.decoding
    else:
        settings.window = int(window or lm.window)
        settings.overlap = settings.window // 2 if overlap is None else overlap
        if not 0 <= settings.overlap < settings.window:
            raise InputError(f"--overlap: expected 0 <= overlap < window ({settings.window}), got {settings.overlap}")
        record.update({"steps": settings.steps, "sampler": sampler, "order": settings.order, "window": settings.window,
                       "overlap": settings.overlap})
        if settings.order == "entropy-bound":
            record["gamma"] = settings.gamma
        distilled = getattr(getattr(getattr(lm, "model", None), "config", None), "distillation", None)
        if distilled:
            record["distilled"] = distilled
    batch_size = batch_size or min(num_samples, 64)
    stats = SamplingStats()
    bar = None
    if progress:
        from tqdm.auto import tqdm  # only with a terminal to draw on

        bar = tqdm(total=lm.progress_total(length, settings) * -(-num_samples // batch_size),
                   desc=f"sampling ({lm.kind})", unit="step", leave=False)
    started = time.perf_counter()
    out: list[str] = []
    try:
        for first in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - first)
            batch = torch.as_tensor(canvas, device=dev).repeat(n, 1)
            # Sample i draws from its own stream, seeded by (seed, i): the same seed gives the same sample i
            # whatever --batch-size (up to float rounding of batched arithmetic on an accelerator).
            generator = RowGenerators(torch.Generator().manual_seed(derived_seed(int(seed), "sample", first + j))
                                      for j in range(n))
            ids = lm.infill(batch, settings, generator, stats, bar)
            out.extend(decode_dna(row) for row in ids.cpu())
    finally:
        if bar is not None:
            bar.close()
    stats.seconds = time.perf_counter() - started
    return SamplingResult(out, stats, record)


def resolve_class(lm, class_name: str, where: str) -> int:
    """The class id of `class_name` in a class-conditional MDLM; InputError (naming --class and listing the known
    classes) for an unknown name or a model trained without classes."""
    config = getattr(getattr(lm, "model", None), "config", None)
    names = getattr(config, "class_names", None) if getattr(lm, "kind", None) == "mdlm" else None
    if not names:
        raise InputError(f"--class {class_name}: {where} is an unconditional {getattr(lm, 'kind', '')} model (train a "
                         f"class-conditional one with dna-mdlm pretrain --labels)")
    if str(class_name) not in names:
        raise InputError(f"--class {class_name}: not a class of {where} (known: {', '.join(names)})")
    return names.index(str(class_name))


def sample(model, num_samples: int, length: int | None = None, **kwargs) -> list[str]:
    """`num_samples` generated DNA strings; see `generate` for every option (steps, sampler, prefix, ...)."""
    return generate(model, num_samples, length, **kwargs).sequences


def write_samples(result: SamplingResult, out: str | os.PathLike, model_name: str = "") -> None:
    """FASTA (one record per sample, settings in each header) + `<out>.json` sidecar, both atomic."""
    s = result.settings
    desc = " ".join(f"{k}={s[k]}" for k in ("kind", "class", "guidance", "sampler", "order", "gamma", "steps", "seed",
                                             "temperature", "top_p") if k in s)
    records = [SeqRecord(Seq(seq), id=f"sample_{i}", description=f"model={model_name} {desc}".strip())
               for i, seq in enumerate(result.sequences)]
    sidecar = {"model": model_name, **s, "stats": asdict(result.stats), "fasta": Path(out).name}
    # The sidecar first: a FASTA on disk always has its settings beside it.
    atomic_write_text(str(out) + ".json", json.dumps(sidecar, indent=1) + "\n")
    with atomic_path(out) as tmp:
        write_fasta(records, tmp, "fasta")
