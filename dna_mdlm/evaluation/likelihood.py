"""Likelihood of DNA under a language model: nats, bits and perplexity per scored base.

`score_windows` is the one scoring loop: windows of token ids (each with the mask of positions it scores) go
through a language model's `nats_per_window` in batches of equal length, giving per-window sums, their
Monte-Carlo variance (MDLM: K time samples per window) and the bases scored. `likelihood` tiles a FASTA (whole
records, a BED, or regions) into windows of the model's length and scores every A/C/G/T base exactly once; the
sample-quality judge (`evaluation.judge`) scores lists of strings with the same loop. The MDLM figure is its NELBO,
an upper bound on the negative log-likelihood, with a standard error; AR and Markov figures are exact. N, padding
and other symbols are never scored.
"""

from __future__ import annotations

import math
import os
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..data.genome import GenomeWindows
from ..errors import InputError, check_int
from ..io.regions import Interval, intersect_intervals, merge_intervals, parse_regions
from ..loading import as_language_model, load_language_model, resolve_device
from ..seeding import derived_seed
from ..tokenizer import A_ID, T_ID
from ..units import LN2, fmt_number, per_base

MARKOV_CHUNK = 1_000_000  # a Markov LM scores records exactly; long records are read in chunks this long


def score_windows(lm, windows: Sequence[tuple[np.ndarray, np.ndarray]], num_samples: int = 1, batch_size: int = 16,
                  device: torch.device | str = "cpu", seed: int | torch.Generator = 0,
                  keys: Sequence | None = None) -> np.ndarray:
    """(W, 3) float64 rows (mean nats, Monte-Carlo variance of that mean, bases scored) for W windows
    `(ids (L_i,), score_mask (L_i,))`, in the order given. Windows of equal length are batched together.

    An MDLM's Monte-Carlo draws (times and masks) for window i come from `seeding.derived_seed(seed, *keys[i])` (keys
    default to the window's index), so a window's figure depends on (seed, key) only: not on `batch_size`, on
    which windows share its batch, or on the order of the input. A `torch.Generator` as `seed` stands for its
    initial seed."""
    if isinstance(seed, torch.Generator):
        seed = seed.initial_seed()
    if keys is None:
        keys = range(len(windows))
    if len(keys) != len(windows):
        raise ValueError(f"score_windows: {len(keys)} keys for {len(windows)} windows")
    out = np.zeros((len(windows), 3), dtype=np.float64)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, (ids, _) in enumerate(windows):
        by_length[len(ids)].append(i)
    for length in sorted(by_length):
        idx = by_length[length]
        for b in range(0, len(idx), batch_size):
            rows = idx[b: b + batch_size]
            x = torch.from_numpy(np.stack([windows[i][0] for i in rows])).to(device)
            mask = torch.from_numpy(np.stack([windows[i][1] for i in rows])).to(device)
            seeds = [derived_seed(int(seed), *(keys[i] if isinstance(keys[i], tuple) else (keys[i],))) for i in rows]
            with torch.no_grad():
                sums = lm.nats_per_window(x, score_mask=mask, num_samples=num_samples, seeds=seeds)
            sums = sums.detach().double().cpu().numpy()
            if not np.isfinite(sums).all():
                raise InputError("the model produced a non-finite likelihood; its weights or inputs are broken")
            out[rows, 0] = sums.mean(axis=1)
            out[rows, 1] = sums.var(axis=1, ddof=1) / sums.shape[1] if sums.shape[1] > 1 else 0.0
            out[rows, 2] = mask.sum(1).cpu().numpy()
    return out


def _tiles(intervals: Iterable[Interval], window: int) -> list[tuple[str, int, int, int]]:
    """(record, start, length, first scored offset) tiles covering every base of each interval exactly once.

    Each interval is tiled from its start in steps of `window`; when its length is not a multiple of the window,
    one last tile is right-aligned to its end and its overlap with the previous tile is not scored again. An
    interval shorter than the window is one tile of its own length."""
    tiles = []
    for iv in intervals:
        L = min(window, len(iv))
        starts = list(range(iv.start, iv.end - L + 1, L))
        first = [0] * len(starts)
        if starts[-1] + L < iv.end:
            first.append(starts[-1] + L - (iv.end - L))
            starts.append(iv.end - L)
        tiles.extend((iv.record, s, L, f) for s, f in zip(starts, first))
    return tiles


def likelihood(model, fasta, bed=None, regions=(), window: int | None = None, num_samples: int = 2,
               batch_size: int = 16, device: str = "auto", seed: int = 0, max_windows: int | None = None,
               unknown: str = "error", log=None) -> dict:
    """Score `fasta` (a path or a list) under `model` (a model directory or a loaded language model).

    Returns the report: `bits_per_base`, `nats_per_base`, `perplexity`, `bases_scored`, `windows`, `upper_bound`
    (MDLM: the NELBO, with `stderr_*` when `num_samples` >= 2), `per_record` (FASTA order, each with its own
    standard error and `windows_scored` of `windows_available`; a record `max_windows` left out has 0 scored),
    `per_window` rows (record, start, end, bases, nats) for the TSV outputs, and, when `max_windows` keeps fewer
    windows than the input holds, `windows_available` and a `truncated` note (also passed to `log`).
    Raises InputError for bad files, regions (never clipped), windows or models.
    """
    if num_samples < 1:
        raise InputError(f"--mc-samples {num_samples}: expected a positive number of time samples per window")
    if window is not None:
        check_int("--window", window, 2, "bases per window, as sample and pretrain need")
    if max_windows is not None and max_windows < 1:
        raise InputError(f"--max-windows {max_windows}: expected a positive number of windows")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected a positive number")
    dev = resolve_device(device)
    genome = GenomeWindows(fasta, bed=bed, window=1, max_n_frac=1.0, unknown=unknown)
    intervals = list(genome.train_intervals)
    if regions:
        intervals = intersect_intervals(intervals, merge_intervals(parse_regions(regions, genome.lengths, "--region")))
        if not intervals:
            raise InputError("--region: the regions lie outside the --bed intervals; nothing to score")
    lm = (load_language_model(model, dev, "likelihood") if isinstance(model, (str, os.PathLike))
          else as_language_model(model, verb="likelihood"))
    if window is None:
        window = lm.window or MARKOV_CHUNK  # None: the model scores any length exactly
    order = {name: i for i, name in enumerate(genome.lengths)}
    tiles = _tiles(sorted(intervals, key=lambda iv: (order[iv.record], iv.start)), window)
    available = len(tiles)
    per_record_available = Counter(t[0] for t in tiles)  # every record with bases to score, in FASTA order
    if max_windows is not None and max_windows < available:
        keep = np.unique(np.linspace(0, available - 1, int(max_windows)).round().astype(np.int64))
        tiles = [tiles[i] for i in keep]
    windows, keys = [], []
    for record, start, length, first in tiles:
        keys.append((record, start, length))
        ids = genome.read(record, start, start + length)
        mask = (ids >= A_ID) & (ids <= T_ID)
        mask[:first] = False
        windows.append((ids, mask))
    # Per-window seeds from (seed, record, start, length): a record's figure does not depend on --batch-size,
    # on the other records in the file or on their order.
    scores = score_windows(lm, windows, num_samples, batch_size, dev, seed, keys)
    n_total = int(scores[:, 2].sum())
    if n_total == 0:
        raise InputError(f"--fasta {fasta}: nothing to score (no A/C/G/T bases in the selected records/regions)")
    report = {"model": str(model), "kind": lm.kind, "fasta": [str(f) for f in np.atleast_1d(fasta)],
              "window": int(window), "windows": len(tiles), **per_base(float(scores[:, 0].sum()), n_total),
              "upper_bound": bool(lm.upper_bound)}
    if available > len(tiles):
        report["windows_available"] = available
        report["truncated"] = (f"--max-windows {max_windows}: scored {len(tiles)} of {available} windows, spread "
                               f"evenly; the figures cover {n_total:,} bases, not the whole input")
        if log is not None:
            log(report["truncated"])
    if lm.upper_bound:
        report["mc_samples_per_window"] = num_samples
        if num_samples > 1:
            se = math.sqrt(float(scores[:, 1].sum())) / n_total
            report["stderr_nats_per_base"] = se
            report["stderr_bits_per_base"] = se / LN2
        report["note"] = "MDLM figures are Monte-Carlo estimates of the NELBO: an upper bound on the true NLL"
    else:
        report["note"] = "exact likelihood (each window scored from its own first base)"
    # A record that --max-windows left out keeps its row (0 windows scored), so the per-record table says so.
    per_record: OrderedDict[str, list[float]] = OrderedDict((r, [0.0, 0.0, 0, 0]) for r in per_record_available)
    for (record, _, _, _), (nats, var, n) in zip(tiles, scores):
        acc = per_record[record]
        acc[0] += nats
        acc[1] += var
        acc[2] += int(n)
        acc[3] += 1
    report["per_record"] = {}
    for record, (nats, var, n, w) in per_record.items():
        row = per_base(nats, n) if n else {"nats_per_base": None, "bits_per_base": None, "perplexity": None,
                                           "bases_scored": 0}
        if lm.upper_bound and num_samples > 1 and n:
            row["stderr_bits_per_base"] = math.sqrt(var) / n / LN2
        row["windows_scored"], row["windows_available"] = int(w), per_record_available[record]
        report["per_record"][record] = row
    report["per_window"] = [(record, start, start + length, int(n), float(nats))
                            for (record, start, length, _), (nats, _, n) in zip(tiles, scores)]
    return report


def report_line(report: dict) -> str:
    """The one-line summary `dna-mdlm likelihood` prints."""
    bound = "<= " if report["upper_bound"] else ""
    se = f" ± {fmt_number(report['stderr_bits_per_base'])}" if "stderr_bits_per_base" in report else ""
    cut = f" (truncated: {report['windows']} of {report['windows_available']} windows)" if "truncated" in report else ""
    return (f"{bound}{fmt_number(report['bits_per_base'])}{se} bits/base, perplexity "
            f"{bound}{fmt_number(report['perplexity'])}, "
            f"{report['bases_scored']} bases in {report['windows']} windows ({report['kind']}){cut}")

