"""Embeddings of DNA sequences from any Caduceus model directory: the `embed` API and the streaming FASTA -> .npz writer.

The embedding of a base is the encoder's final hidden state there (width `config.hidden_size`: 2*d_model for
Caduceus-PS, whose two halves are the forward and reverse-complement streams aligned to the same position).
`pool="mean"` averages over the sequence's own bases (padding is masked out, so batching changes nothing);
`pool="none"` keeps the per-base (L_i, C) array.

`embed_fasta` streams: records are read in chunks with Biopython, embedded batch by batch (batches of similar
length, so padding costs little), and written straight into the output zip archive, so memory is bounded by a
chunk, never by the file. Mean pooling writes `ids` (N,) and `embeddings` (N, C) float32, the rows appended to a
temporary raw file and copied into the archive at the end; `pool="none"` writes one (L_i, C) array per record,
keyed by record id. The archive appears only when complete.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import InputError
from .io.writers import atomic_path
from .tokenizer import encode_dna

POOLS = ("mean", "none")


def _load_encoder(model_or_dir, device: str):
    """(model with a `.caduceus` encoder, in eval mode) from a model or a model directory."""
    if isinstance(model_or_dir, (str, os.PathLike)):
        from .loading import load_model

        model, kind = load_model(model_or_dir, device)
        if kind == "markov":
            raise InputError(f"--model {model_or_dir}: a Markov baseline has no embeddings; pass a Caduceus model directory")
    else:
        model = model_or_dir
    if not hasattr(model, "caduceus"):
        raise InputError(f"embed: expected a Caduceus model (with a .caduceus encoder), got {type(model).__name__}")
    return model.eval()


@torch.no_grad()
def _embed_ids(model, ids: Sequence[np.ndarray], pool: str, batch_size: int) -> list[np.ndarray]:
    from .data.labelled import collate_labelled
    from .models.modeling_caduceus import masked_pool

    device = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(ids)
    order = np.argsort([len(a) for a in ids], kind="stable")
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = collate_labelled([(ids[i], 0) for i in idx])
        x, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        t = torch.zeros(len(idx), device=device) if model.config.time_conditioning else None
        h = model.caduceus(x, timesteps=t, attention_mask=mask).last_hidden_state.float()
        if pool == "mean":
            pooled = masked_pool(h, mask, "mean").cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = pooled[j]
        else:
            h = h.cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = h[j, : len(ids[i])].copy()
    return out


def embed(model_or_dir, sequences: Sequence[str] | str, pool: str = "mean", batch_size: int = 32,
          device: str = "cpu") -> np.ndarray | list[np.ndarray]:
    """Embeddings of DNA strings: (N, C) float32 for `pool="mean"`, a list of (L_i, C) arrays for `"none"`.

    `model_or_dir` is any dna-mdlm Caduceus model (MLM/MDLM, AR or fine-tuned classifier) or its directory.
    """
    if pool not in POOLS:
        raise InputError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if isinstance(sequences, str):
        sequences = [sequences]
    model = _load_encoder(model_or_dir, device)
    ids = []
    for i, s in enumerate(sequences):
        if not s:
            raise InputError(f"embed: sequence {i + 1} is empty")
        ids.append(encode_dna(s))
    vectors = _embed_ids(model, ids, pool, batch_size)
    if pool == "mean":
        return np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, model.config.hidden_size), np.float32)
    return [v.astype(np.float32) for v in vectors]


def _write_npy_entry(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(name + ".npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)


def embed_fasta(model_or_dir, fasta: str | os.PathLike, out: str | os.PathLike, pool: str = "mean",
                batch_size: int = 32, device: str = "cpu", chunk_records: int | None = None,
                unknown: str = "error") -> dict:
    """Stream FASTA records into an .npz at `out` (see the module doc for its layout); returns a summary.

    Records follow the `dna_mdlm.io.fasta` rules (unique names, no empty records; errors name file and line)."""
    from .data.genome import iter_fasta_batches

    if pool not in POOLS:
        raise InputError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    model = _load_encoder(model_or_dir, device)
    width = model.config.hidden_size
    chunk_records = chunk_records or 8 * batch_size
    names: list[str] = []
    n_bases = 0
    with atomic_path(out) as tmp, tempfile.TemporaryFile(dir=Path(tmp).parent) as rows, \
            zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for chunk in iter_fasta_batches(fasta, chunk_records, unknown):
            ids = [a for _, a in chunk]
            names.extend(rid for rid, _ in chunk)
            n_bases += sum(len(a) for a in ids)
            vectors = _embed_ids(model, ids, pool, batch_size)
            if pool == "mean":
                rows.write(np.stack(vectors).astype(np.float32).tobytes())
            else:
                for (rid, _), v in zip(chunk, vectors):
                    _write_npy_entry(zf, rid, v.astype(np.float32))
        if pool == "mean":
            _write_npy_entry(zf, "ids", np.array(names, dtype=str))
            rows.seek(0)
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (len(names), width)}
            with zf.open("embeddings.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_1_0(fh, header)
                while block := rows.read(1 << 22):
                    fh.write(block)
    return {"records": len(names), "bases": n_bases, "width": width, "pool": pool, "out": str(out)}
