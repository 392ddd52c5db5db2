"""Class probabilities from a fine-tuned classifier directory: the `predict` verb's library side, and what the
`evaluate-samples --oracle` report and the benchmarks call.

* `load_classifier` — a `CaduceusForSequenceClassification` directory written by `dna-mdlm finetune`
  (safetensors only, finite weights checked by `loading.load_model`).
* `encode_sequences` — DNA strings to token-id arrays with the length policy of a run (`max_length`, `truncate`).
* `predict_proba` — (N, n_classes) softmax probabilities, batched by length so padding costs little; the model's
  forward masks padding, so a sequence's probabilities do not depend on its batch.
* `predict_fasta` — a TSV of probabilities for every FASTA record, streamed and written atomically, with each
  record's `n_fraction`: a record with no A/C/G/T base gets empty (missing) probabilities, never a confident call
  on nothing, and records above `MOSTLY_N` are counted and named in a warning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .data.genome import iter_fasta_batches
from .data.labelled import length_sorted_batches
from .embedding import clean_timesteps
from .errors import InputError, check_int
from .io.writers import atomic_path
from .loading import load_model
from .models import CaduceusForSequenceClassification
from .tokenizer import A_ID, T_ID, encode_dna

MOSTLY_N = 0.5  # records with more N than this (fraction of the bases the model sees) are flagged


def encode_sequences(seqs: Sequence[str], max_length: int | None, truncate: bool, where: str) -> list[np.ndarray]:
    """Token-id arrays of DNA strings (IUPAC codes other than N are an error, `tokenizer.encode_dna`).

    Raises InputError naming `where` and the 1-based sequence number for an empty sequence, or for one longer
    than `max_length` unless `truncate` (then its first `max_length` bases are kept)."""
    out = []
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise InputError(f"{where}: sequence {i + 1} is empty")
        ids = encode_dna(s)
        if max_length is not None and len(ids) > max_length:
            if not truncate:
                raise InputError(f"{where}: sequence {i + 1} has {len(ids)} bases > max_length={max_length} "
                                 f"(raise max_length or set truncate)")
            ids = ids[:max_length]
        out.append(ids)
    return out


@torch.no_grad()
def predict_proba(model: CaduceusForSequenceClassification, seqs: Sequence[str] | Sequence[np.ndarray],
                  batch_size: int = 64, max_length: int | None = None, truncate: bool = False,
                  max_tokens: int = 65536) -> np.ndarray:
    """(N, n_classes) float64 softmax probabilities, column j = class id j (`model.config.id2label[j]`).

    `seqs`: DNA strings or token-id arrays. Batches hold at most `batch_size` sequences and `max_tokens` tokens."""
    ids = [s if isinstance(s, np.ndarray) else None for s in seqs]
    if any(a is None for a in ids):
        ids = encode_sequences(seqs, max_length, truncate, "predict")
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float64)
    for idx, x, mask in length_sorted_batches(ids, batch_size, max_tokens):
        logits = model(x.to(device), attention_mask=mask.to(device), timesteps=clean_timesteps(model, len(idx), device)).logits
        out[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
    return out


def load_classifier(model_dir: str | os.PathLike, device: str = "cpu") -> CaduceusForSequenceClassification:
    """The fine-tuned classifier in `model_dir`. Raises InputError when the directory holds another kind of model."""
    model, kind = load_model(model_dir, device)
    if not isinstance(model, CaduceusForSequenceClassification):
        raise InputError(f"--model {model_dir}: a {kind} model, not a fine-tuned classifier (make one with dna-mdlm finetune)")
    return model


def class_names(model: CaduceusForSequenceClassification) -> list[str]:
    """Class names in column order of `predict_proba`."""
    return [str(model.config.id2label[i]) for i in range(model.config.num_labels)]


def predict_fasta(model_dir: str | os.PathLike, fasta: str | os.PathLike, out: str | os.PathLike,
                  batch_size: int = 64, device: str = "cpu", max_length: int | None = None,
                  truncate: bool = False, unknown: str = "error") -> dict:
    """Write a TSV (record name, one probability column per class name, `n_fraction`, and with `truncate` a last
    column `truncated_to`: the bases kept of a truncated record, NA when read whole) atomically, rows in FASTA
    order. `n_fraction` is the fraction of the record's (kept) bases that are N (or IUPAC codes read as N).

    Returns {"records", "truncated", "no_bases", "mostly_n", "flagged"}: with `truncate`, records longer than
    `max_length` keep their first `max_length` bases and are counted (never silently); without it they are an
    error naming the record. A record with no A/C/G/T base (`no_bases`) gets empty probability cells: the model
    would answer from padding-like input alone. Records with `n_fraction` > `MOSTLY_N` are counted (`mostly_n`),
    and `flagged` names the first ten of either kind. Raises InputError for bad flags or non-finite
    probabilities (nothing is written)."""
    check_int("--batch-size", batch_size)
    if max_length is not None:
        check_int("--max-length", max_length, 1, "bases")
    model = load_classifier(model_dir, device)
    n = truncated = no_bases = mostly_n = 0
    flagged: list[str] = []
    with atomic_path(out) as tmp, open(tmp, "w") as fh:
        fh.write("\t".join(["record"] + class_names(model) + ["n_fraction"] + (["truncated_to"] if truncate else [])) + "\n")
        for chunk in iter_fasta_batches(fasta, 16 * batch_size, unknown):
            ids, cut = [], []
            for rid, a in chunk:
                if max_length is not None and len(a) > max_length:
                    if not truncate:
                        raise InputError(f"--fasta {fasta}: record {rid!r} has {len(a)} bases > --max-length "
                                         f"{max_length} (raise --max-length or pass --truncate)")
                    a, truncated = a[:max_length], truncated + 1
                    cut.append(str(max_length))
                else:
                    cut.append("NA")
                ids.append(a)
            real = np.array([int(np.count_nonzero((a >= A_ID) & (a <= T_ID))) for a in ids])
            scored = np.flatnonzero(real > 0)
            proba = np.full((len(ids), model.config.num_labels), np.nan)
            if scored.size:
                proba[scored] = predict_proba(model, [ids[i] for i in scored], batch_size)
                if not np.isfinite(proba[scored]).all():
                    raise InputError(f"--model {model_dir}: the classifier produced non-finite probabilities")
            for i, ((rid, _), row, kept) in enumerate(zip(chunk, proba, cut)):
                n_frac = 1.0 - real[i] / len(ids[i])
                if real[i] == 0:
                    no_bases += 1
                elif n_frac > MOSTLY_N:
                    mostly_n += 1
                if n_frac > MOSTLY_N and len(flagged) < 10:
                    flagged.append(rid)
                cells = [f"{p:.6g}" for p in row] if real[i] else [""] * len(row)
                fh.write("\t".join([rid] + cells + [f"{n_frac:.4g}"] + ([kept] if truncate else [])) + "\n")
            n += len(chunk)
    return {"records": n, "truncated": truncated, "no_bases": no_bases, "mostly_n": mostly_n, "flagged": flagged}
