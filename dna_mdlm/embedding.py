"""Embeddings of DNA sequences from any Caduceus model directory: the `embed` API, `pooled_features` (the
frozen probe's features, shared with `dna-mdlm finetune`), and the streaming FASTA -> .npz writer.

Pooled embeddings (`pool` "mean", "max" or "mean+max") are `models.modeling_caduceus.rc_invariant_features`:
each chosen layer's output (`layers="last"`: the final hidden state; `"all"`: the embeddings, every block's
output and the final one) pooled over the sequence's own bases (padding is masked out, so batching changes
nothing) and made reverse-complement invariant (PS: the two strand halves combined; plain/Ph: averaged with
the reverse-complement input), width d_model per layer and pool. `pool="none"` keeps the per-base (L_i, C)
final hidden states (C = `config.hidden_size`: 2*d_model for Caduceus-PS, whose halves are the forward and
reverse-complement streams aligned to the same position).

`embed_fasta` streams: records are read in chunks with Biopython, embedded batch by batch (batches of similar
length, so padding costs little), and written straight into the output zip archive, so memory is bounded by a
chunk, never by the file. Pooling writes `ids` (N,) and `embeddings` (N, F) float32, the rows appended to a
temporary raw file and copied into the archive at the end; `pool="none"` writes `ids` (N,) and one (L_i, C)
array per record named `bases_<i>` after its row i in `ids` (never after the record name, which may hold `/` or
`..` and would become a path when the archive is unzipped). The archive appears only when complete.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data.genome import iter_fasta_batches
from .data.labelled import length_sorted_batches
from .errors import InputError, check_int
from .io.writers import atomic_path
from .loading import load_encoder_model
from .models.modeling_caduceus import FEATURE_LAYERS, FEATURE_POOLS, feature_width, rc_invariant_features
from .tokenizer import encode_dna

POOLS = FEATURE_POOLS + ("none",)


def _load_encoder(model_or_dir, device: str):
    """(model with a `.caduceus` encoder, in eval mode) from a model or a model directory."""
    if isinstance(model_or_dir, (str, os.PathLike)):
        model = load_encoder_model(model_or_dir, device, verb="embed")
    else:
        model = model_or_dir
    if not hasattr(model, "caduceus"):
        raise InputError(f"embed: expected a Caduceus model (with a .caduceus encoder), got {type(model).__name__}")
    return model.eval()


def _check(pool: str, layers: str) -> None:
    if pool not in POOLS:
        raise InputError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if layers not in FEATURE_LAYERS:
        raise InputError(f"--layers must be one of {', '.join(FEATURE_LAYERS)}, got {layers!r}")
    if pool == "none" and layers != "last":
        raise InputError("--pool none gives per-base hidden states of the last layer; use --layers last (or pool them)")


def clean_timesteps(model, n: int, device) -> torch.Tensor | None:
    """(n,) zeros for a time-conditioned MDLM encoder (features and predictions are of clean inputs: noise
    level 0), None for a model without time conditioning."""
    return torch.zeros(n, device=device) if model.config.time_conditioning else None


@torch.no_grad()
def pooled_features(model, ids: Sequence[np.ndarray], layers: str = "last", pool: str = "mean",
                    batch_size: int = 32, max_tokens: int = 65536) -> np.ndarray:
    """(N, F) float32 RC-invariant pooled features of token-id arrays (N >= 0), F = `feature_width`.

    `model`: any Caduceus model with a `.caduceus` encoder (MLM/MDLM, AR or classifier). Batches are length
    sorted and hold at most `batch_size` sequences and `max_tokens` padded bases; every row equals the
    sequence encoded alone. The frozen probe of `dna-mdlm finetune` trains on exactly these numbers.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = np.empty((len(ids), feature_width(model.config, layers, pool)), dtype=np.float32)
    try:
        for rows, x, mask in length_sorted_batches(ids, batch_size, max_tokens):
            feats = rc_invariant_features(model.caduceus, x.to(device), mask.to(device),
                                          clean_timesteps(model, len(rows), device), layers, pool)
            out[rows] = feats.float().cpu().numpy()
    finally:
        model.train(was_training)
    if not np.isfinite(out).all():
        raise InputError("embed: the model produced non-finite embeddings (NaN/inf); check the model weights")
    return out


@torch.no_grad()
def _per_base(model, ids: Sequence[np.ndarray], batch_size: int, max_tokens: int = 65536) -> list[np.ndarray]:
    device = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(ids)
    for rows, x, mask in length_sorted_batches(ids, batch_size, max_tokens):
        x, mask = x.to(device), mask.to(device)
        h = model.caduceus(x, timesteps=clean_timesteps(model, len(rows), device), attention_mask=mask).last_hidden_state
        h = h.float().cpu().numpy()
        for j, i in enumerate(rows):
            out[i] = h[j, : len(ids[i])].astype(np.float32)
    return out


def _embed_ids(model, ids: Sequence[np.ndarray], pool: str, layers: str, batch_size: int):
    if pool == "none":
        return _per_base(model, ids, batch_size)
    return pooled_features(model, ids, layers, pool, batch_size)


def embed(model_or_dir, sequences: Sequence[str] | str, pool: str = "mean", batch_size: int = 32,
          device: str = "cpu", layers: str = "last") -> np.ndarray | list[np.ndarray]:
    """Embeddings of DNA strings: (N, F) float32 RC-invariant pooled features (`pool` mean | max | mean+max;
    F = d_model x pools x (1 for `layers="last"`, n_layer + 1 for `"all"`)), or for `pool="none"` a list of
    per-base (L_i, hidden_size) arrays of the final hidden state.

    `model_or_dir` is any dna-mdlm Caduceus model (MLM/MDLM, AR or fine-tuned classifier) or its directory.
    Raises InputError for an unknown pool/layers, an empty sequence or a non-DNA character.
    """
    _check(pool, layers)
    if isinstance(sequences, str):
        sequences = [sequences]
    model = _load_encoder(model_or_dir, device)
    ids = []
    for i, s in enumerate(sequences):
        if not s:
            raise InputError(f"embed: sequence {i + 1} is empty")
        ids.append(encode_dna(s))
    return _embed_ids(model, ids, pool, layers, batch_size)


def _write_npy_entry(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(name + ".npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)


def embed_fasta(model_or_dir, fasta: str | os.PathLike, out: str | os.PathLike, pool: str = "mean",
                batch_size: int = 32, device: str = "cpu", chunk_records: int | None = None, layers: str = "last",
                unknown: str = "error") -> dict:
    """Stream FASTA records into an .npz at `out` (see the module doc for its layout); returns a summary.

    Records follow the `dna_mdlm.io.fasta` rules (unique names, no empty records; errors name file and line)."""

    _check(pool, layers)
    check_int("--batch-size", batch_size)
    model = _load_encoder(model_or_dir, device)
    width = model.config.hidden_size if pool == "none" else feature_width(model.config, layers, pool)
    chunk_records = chunk_records or 8 * batch_size
    names: list[str] = []
    n_bases = 0
    with atomic_path(out) as tmp, tempfile.TemporaryFile(dir=Path(tmp).parent) as rows, \
            zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for chunk in iter_fasta_batches(fasta, chunk_records, unknown):
            ids = [a for _, a in chunk]
            names.extend(rid for rid, _ in chunk)
            n_bases += sum(len(a) for a in ids)
            vectors = _embed_ids(model, ids, pool, layers, batch_size)
            if pool != "none":
                rows.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
            else:
                for i, v in enumerate(vectors, start=len(names) - len(chunk)):
                    _write_npy_entry(zf, f"bases_{i}", v.astype(np.float32))
        _write_npy_entry(zf, "ids", np.array(names, dtype=str))
        if pool != "none":
            rows.seek(0)
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (len(names), width)}
            with zf.open("embeddings.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_1_0(fh, header)
                while block := rows.read(1 << 22):
                    fh.write(block)
    return {"records": len(names), "bases": n_bases, "width": width, "pool": pool, "layers": layers, "out": str(out)}
