"""Likelihood of a FASTA under a model: nats, bits and perplexity per scored base.

`likelihood()` tiles the input (whole records, a BED, or regions) into windows of the model's length
and scores every A/C/G/T base once: the MDLM with its NELBO (an upper bound on the negative
log-likelihood, K Monte-Carlo time samples per window, with a standard error), the AR model and the
Markov LM exactly. N, padding and other symbols are never scored.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, atomic_path

LN2 = math.log(2.0)


def _summary(nats: float, n: int) -> dict:
    nll = nats / max(n, 1)
    return {"nats_per_base": nll, "bits_per_base": nll / LN2, "perplexity": math.exp(nll), "bases_scored": int(n)}


def likelihood(model_dir: str | os.PathLike, fasta, bed=None, regions=(), window: int | None = None,
               num_samples: int = 2, batch_size: int = 16, device: str = "auto", seed: int = 0,
               max_windows: int | None = None, progress: bool = False) -> dict:
    """Score `fasta` under the model in `model_dir`. Returns the report dict (see module docstring).

    The report has `per_window` rows (record, start, end, bases, nats) for the TSV outputs.
    """
    from ..data.genome import GenomeWindows, Interval, TiledWindows, intersect_intervals, merge_intervals, parse_region
    from ..loading import load_model

    if num_samples < 1:
        raise InputError(f"--samples: expected a positive number of time samples per window, got {num_samples}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, kind = load_model(model_dir, device)
    if kind == "classifier":
        raise InputError(f"--model {model_dir}: a fine-tuned classifier has no likelihood; give a pretrained model")
    if window is None:
        window = getattr(model, "window", None) or getattr(getattr(model, "config", None), "train_window", None) or 1024
        if kind == "markov":
            window = 1_000_000  # exact and cheap: whole records in large chunks
    genome = GenomeWindows(fasta, bed=bed, window=1, max_n_frac=1.0)
    intervals = list(genome.train_intervals)
    if regions:
        wanted = merge_intervals([parse_region(r, "--region") for r in regions])
        for iv in wanted:
            if iv.record not in genome.lengths:
                raise InputError(f"--region {iv.region_string()}: record {iv.record!r} is not in the FASTA "
                                 f"(records: {', '.join(list(genome.lengths)[:5])})")
        intervals = intersect_intervals(intervals, wanted)
    # Windows no longer than the shortest interval would drop it: clip the window per interval instead.
    per_window, nats_total, n_total, var_total = [], 0.0, 0, 0.0
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    groups: dict[int, list] = defaultdict(list)
    for iv in intervals:
        groups[min(window, len(iv))].append(iv)
    for L, ivs in sorted(groups.items()):
        genome.window = L
        tiles = TiledWindows(genome, ivs, max_windows=max_windows)
        loader = torch.utils.data.DataLoader(tiles, batch_size=batch_size, shuffle=False)
        for batch in loader:
            x, mask = batch["input_ids"], batch["loss_mask"]
            if kind == "markov":
                sums = []
                for row, m in zip(x.numpy(), mask.numpy()):
                    lp = model.log_probs(row)
                    sums.append(-float(np.where(m, lp, 0.0).sum()))
                s = np.asarray(sums)[:, None]
            else:
                s = _neural_window_sums(model, kind, x.to(device), mask.to(device), num_samples, gen)
            counts = mask.sum(1).numpy()
            for r, st, en, k, row in zip(batch["record"], batch["start"].tolist(), batch["end"].tolist(), counts, s):
                mean = float(np.mean(row))
                per_window.append((r, st, en, int(k), mean))
                nats_total += mean
                n_total += int(k)
                if len(row) > 1:
                    var_total += float(np.var(row, ddof=1)) / len(row)
    if n_total == 0:
        raise InputError(f"--fasta {fasta}: nothing to score (no A/C/G/T bases in the selected records/regions)")
    report = {"model": str(model_dir), "kind": kind, "fasta": [str(f) for f in np.atleast_1d(fasta)],
              "window": int(window), "windows": len(per_window), **_summary(nats_total, n_total)}
    if kind == "mdlm":
        report["upper_bound"] = True
        report["mc_samples_per_window"] = num_samples
        if num_samples > 1:
            se_nats = math.sqrt(var_total) / n_total
            report["stderr_nats_per_base"] = se_nats
            report["stderr_bits_per_base"] = se_nats / LN2
        report["note"] = "MDLM figures are Monte-Carlo estimates of the NELBO: an upper bound on the true NLL"
    else:
        report["upper_bound"] = False
        report["note"] = "exact likelihood (each window scored from its own first base)"
    per_record = defaultdict(lambda: [0.0, 0])
    for r, _, _, k, nats in per_window:
        per_record[r][0] += nats
        per_record[r][1] += k
    report["per_record"] = {r: _summary(v[0], v[1]) for r, v in per_record.items()}
    report["per_window"] = per_window
    return report


@torch.no_grad()
def _neural_window_sums(model, kind, x, mask, num_samples, gen) -> np.ndarray:
    if kind == "ar":
        from ..baselines.ar import ar_token_nll

        tok = ar_token_nll(model, x)
        return torch.where(mask, tok, torch.zeros_like(tok)).double().sum(1, keepdim=True).cpu().numpy()
    from ..diffusion.mdlm import MDLM

    mdlm = MDLM(model, getattr(model.config, "schedule", "loglinear"))
    return mdlm.nelbo_per_window(x, score_mask=mask, num_samples=num_samples, generator=gen).cpu().numpy()


def write_tsv(rows, header, path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write("\t".join(header) + "\n")
            for row in rows:
                fh.write("\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) + "\n")
