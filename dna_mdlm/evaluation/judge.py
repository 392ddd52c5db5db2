"""A judge model for the sample-quality report: bits per base of a list of DNA strings under a trained model.

Owns turning a model directory (MDLM, AR or Markov LM, see `loading.load_model`) into the callable
`evaluate_samples(judge=...)` expects: `judge(list_of_str) -> {"bits_per_base", "upper_bound", ...}`.
The same judge scores generated and real sequence, so their difference, not the absolute value, is what
the report reads.

Scoring matches `dna-mdlm likelihood`: neural models see each sequence cut into windows of their
training length (`config.train_window`; the last window of a sequence is shorter, never padded) and
every A/C/G/T base is scored once, N never. The AR model gives the exact NLL (each window from its own
first base); the MDLM gives its Monte-Carlo NELBO, an upper bound on the NLL, with `num_samples` time
samples per window. The MDLM noise comes from a generator re-seeded on every call, so two sets of
sequences are scored with the same draws (common random numbers) and the comparison between them is
not blurred by independent Monte-Carlo noise. The Markov LM scores each sequence exactly as one record.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..tokenizer import BASE_IDS, encode_dna

LN2 = math.log(2.0)
DEFAULT_WINDOW = 1024


class ModelJudge:
    """Callable judge over a loaded model; build it with `load_judge(model_dir)`."""

    def __init__(self, model, kind: str, model_dir: str = "", window: int | None = None, num_samples: int = 4,
                 batch_size: int = 16, device: str = "cpu", seed: int = 0):
        if kind not in ("mdlm", "ar", "markov"):
            raise InputError(f"--model {model_dir}: a {kind} model cannot judge sequences "
                             f"(give a pretrained MDLM, AR or Markov model)")
        if num_samples < 1:
            raise InputError(f"judge: expected a positive number of MDLM time samples per window, got {num_samples}")
        self.model, self.kind, self.model_dir = model, kind, str(model_dir)
        self.num_samples, self.batch_size, self.device, self.seed = int(num_samples), int(batch_size), device, int(seed)
        if window is None and kind != "markov":
            window = getattr(model.config, "train_window", None) or DEFAULT_WINDOW
        if window is not None and window < 1:
            raise InputError(f"judge: window must be a positive number of bases, got {window}")
        self.window = window
        self.upper_bound = kind == "mdlm"

    def describe(self) -> str:
        if self.kind == "markov":
            return f"Markov LM (order {self.model.order}), exact"
        if self.kind == "ar":
            return f"AR Caduceus, exact, windows of {self.window} bp"
        return f"MDLM Caduceus, NELBO upper bound, {self.num_samples} time samples per {self.window} bp window"

    def __call__(self, sequences: Sequence[str]) -> dict:
        if not sequences:
            raise InputError("judge: no sequences to score")
        if self.kind == "markov":
            # Ambiguity codes other than N cannot be scored; read them as N so they are skipped.
            ids = [encode_dna(s, unknown="N") for s in sequences]
            total, n = 0.0, 0
            for row in ids:
                nats, k = self.model.score(row)
                total, n = total + nats, n + k
            return self._summary(total, n, 0.0)
        return self._neural(sequences)

    def _summary(self, nats: float, n: int, var: float) -> dict:
        if n == 0:
            raise InputError("judge: no A/C/G/T base to score (all sequences empty or N)")
        out = {"bits_per_base": nats / n / LN2, "upper_bound": self.upper_bound, "bases_scored": int(n),
               "judge": self.describe()}
        if self.kind == "mdlm" and self.num_samples > 1:
            out["stderr_bits_per_base"] = math.sqrt(var) / n / LN2
        return out

    @torch.no_grad()
    def _neural(self, sequences: Sequence[str]) -> dict:
        from .likelihood import _neural_window_sums

        windows: dict[int, list[np.ndarray]] = defaultdict(list)
        for s in sequences:
            ids = encode_dna(s, unknown="N")
            for start in range(0, ids.size, self.window):
                piece = ids[start: start + self.window]
                windows[piece.size].append(piece)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        base_ids = torch.tensor(sorted(BASE_IDS))
        total, n, var = 0.0, 0, 0.0
        for length in sorted(windows):
            rows = windows[length]
            for b in range(0, len(rows), self.batch_size):
                x = torch.from_numpy(np.stack(rows[b: b + self.batch_size]))
                mask = torch.isin(x, base_ids)
                sums = _neural_window_sums(self.model, self.kind, x.to(self.device), mask.to(self.device),
                                           self.num_samples, gen)
                total += float(sums.mean(axis=1).sum())
                n += int(mask.sum())
                if sums.shape[1] > 1:
                    var += float((sums.var(axis=1, ddof=1) / sums.shape[1]).sum())
        return self._summary(total, n, var)


def load_judge(model_dir: str | os.PathLike, num_samples: int = 4, batch_size: int = 16, device: str = "cpu",
               seed: int = 0, window: int | None = None) -> ModelJudge:
    """A judge from a model directory; InputError for a missing, unreadable or classifier directory."""
    from ..loading import load_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, kind = load_model(model_dir, device)
    return ModelJudge(model, kind, model_dir=str(model_dir), window=window, num_samples=num_samples,
                      batch_size=batch_size, device=device, seed=seed)
