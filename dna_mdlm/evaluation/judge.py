"""A judge model for the sample-quality report: bits per base of a list of DNA strings under a language model.

Owns turning a model directory (MDLM, AR or Markov LM, see `loading.load_language_model`) into the callable
`evaluate_samples(judge=...)` expects: `judge(list_of_str) -> {"bits_per_base", "upper_bound", ...}`.
The same judge scores generated and real sequence, so their difference, not the absolute value, is what
the report reads.

Scoring is `evaluation.likelihood.score_windows`, as in `dna-mdlm likelihood`: neural models see each sequence
cut into windows of their training length (the last window of a sequence is shorter, never padded), the Markov
LM sees each sequence whole, and every A/C/G/T base is scored once, N never. The MDLM gives its Monte-Carlo
NELBO, an upper bound on the NLL, with `num_samples` time samples per window; its noise comes from a generator
re-seeded on every call, so two sets of sequences are scored with the same draws (common random numbers) and the
comparison between them is not blurred by independent Monte-Carlo noise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from ..errors import InputError
from ..loading import as_language_model, load_language_model, resolve_device
from ..tokenizer import A_ID, T_ID, encode_dna
from ..units import LN2
from .likelihood import score_windows


class ModelJudge:
    """Callable judge over a language model; build it with `load_judge(model_dir)`."""

    def __init__(self, lm, model_dir: str = "", window: int | None = None, num_samples: int = 4,
                 batch_size: int = 16, device: str = "cpu", seed: int = 0):
        if num_samples < 1:
            raise InputError(f"--judge-samples {num_samples}: expected a positive number of MDLM time samples")
        if window is not None and window < 1:
            raise InputError(f"judge: window must be a positive number of bases, got {window}")
        self.lm, self.model_dir = lm, str(model_dir)
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.device = resolve_device(device)
        self.window = window if window is not None else lm.window  # None: each sequence is scored whole
        self.upper_bound = bool(lm.upper_bound)

    @property
    def kind(self) -> str:
        return self.lm.kind

    @property
    def model(self):
        return getattr(self.lm, "model", self.lm)

    def describe(self) -> str:
        what = self.lm.describe()
        if self.window is not None:
            what += f", windows of {self.window} bp"
        if self.upper_bound:
            what += f", {self.num_samples} time samples per window"
        return what

    def __call__(self, sequences: Sequence[str]) -> dict:
        if not sequences:
            raise InputError("judge: no sequences to score")
        windows, keys = [], []
        for i, s in enumerate(sequences):
            ids = encode_dna(s, unknown="N")  # ambiguity codes cannot be scored: read as N, so skipped
            step = self.window or max(1, ids.size)
            for start in range(0, ids.size, step):
                piece = ids[start: start + step]
                windows.append((piece, (piece >= A_ID) & (piece <= T_ID)))
                keys.append((i, start))
        scores = score_windows(self.lm, windows, self.num_samples, self.batch_size, self.device, self.seed, keys)
        n = int(scores[:, 2].sum())
        if n == 0:
            raise InputError("judge: no A/C/G/T base to score (all sequences empty or N)")
        out = {"bits_per_base": float(scores[:, 0].sum()) / n / LN2, "upper_bound": self.upper_bound,
               "bases_scored": n, "judge": self.describe()}
        if self.upper_bound and self.num_samples > 1:
            out["stderr_bits_per_base"] = math.sqrt(float(scores[:, 1].sum())) / n / LN2
        return out


def load_judge(model_dir: str | os.PathLike, num_samples: int = 4, batch_size: int = 16, device: str = "auto",
               seed: int = 0, window: int | None = None) -> ModelJudge:
    """A judge from a model directory (or a loaded model); InputError for a missing, unreadable or classifier one."""
    if isinstance(model_dir, (str, os.PathLike)):
        lm = load_language_model(model_dir, device, "judging samples (--model)")
    else:
        lm = as_language_model(model_dir, verb="judging samples (--model)")
    return ModelJudge(lm, model_dir=str(model_dir), window=window, num_samples=num_samples,
                      batch_size=batch_size, device=device, seed=seed)
