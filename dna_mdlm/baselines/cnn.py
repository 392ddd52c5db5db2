"""The Genomic Benchmarks CNN classifier baseline and its small training loop.

Owns `GBCNN` (the architecture the GB paper and Caduceus Table 1 use as "CNN": token embedding of width 100,
three Conv1d blocks with 16, 8 and 4 channels and kernel 8, each followed by BatchNorm, ReLU and MaxPool(2),
then flatten -> Linear(512) -> ReLU -> Linear(n_classes)), `train_cnn` and the fitted `CNNClassifier`.

Variable length: like the GB reference model, the network sees a fixed width `input_len` (by default the
longest training sequence) because the flatten layer's size depends on it. Shorter sequences are right-padded
with [PAD], whose embedding is pinned at zero (`padding_idx`), so padding adds no signal of its own. A longer
sequence at prediction time is an error unless the caller passes `truncate=True` (then it keeps its first
`input_len` bases and the count is reported).

Training is a plain loop rather than Lightning: the model is tiny, early stopping needs only the best
weights kept in memory (no checkpoint files), and a wall-clock budget is a two-line check. Cross-entropy
over n_classes outputs (also for binary tasks), Adam, early stopping on validation accuracy.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data.labelled import LabelledSequences
from ..errors import InputError
from ..tokenizer import PAD_ID, PADDED_VOCAB_SIZE, encode_dna


class GBCNN(nn.Module):
    """Genomic Benchmarks CNN: (B, input_len) token ids -> (B, n_classes) logits."""

    def __init__(self, n_classes: int, input_len: int, vocab_size: int = PADDED_VOCAB_SIZE,
                 embedding_dim: int = 100, channels: Sequence[int] = (16, 8, 4), kernel_size: int = 8,
                 hidden: int = 512, pad_id: int = PAD_ID):
        super().__init__()
        self.input_len = input_len
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        layers, width, length = [], embedding_dim, input_len
        for out in channels:
            layers += [nn.Conv1d(width, out, kernel_size), nn.BatchNorm1d(out), nn.ReLU(), nn.MaxPool1d(2)]
            width, length = out, (length - kernel_size + 1) // 2
        if length < 1:
            raise InputError(f"input_len={input_len} is too short for {len(channels)} conv blocks of kernel "
                             f"{kernel_size} with pooling; need at least {self.min_input_len(len(channels), kernel_size)}")
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(width * length, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    @staticmethod
    def min_input_len(n_blocks: int = 3, kernel_size: int = 8) -> int:
        length = 1
        for _ in range(n_blocks):
            length = 2 * length + kernel_size - 1
        return length

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(input_ids).transpose(1, 2)  # (B, E, L) for Conv1d
        return self.classifier(self.features(x))


def encode_fixed(seqs: Sequence[str], input_len: int, truncate: bool = False,
                 pad_id: int = PAD_ID) -> tuple[torch.Tensor, int]:
    """Right-padded (n, input_len) id tensor and the number of sequences truncated (0 unless `truncate`)."""
    out = torch.full((len(seqs), input_len), pad_id, dtype=torch.long)
    n_truncated = 0
    for i, s in enumerate(seqs):
        ids = encode_dna(s)
        if len(ids) > input_len:
            if not truncate:
                raise InputError(f"sequence {i} has length {len(ids)} > the model's input_len {input_len}; "
                                 f"pass truncate=True to keep its first {input_len} bases")
            ids, n_truncated = ids[:input_len], n_truncated + 1
        out[i, : len(ids)] = torch.from_numpy(ids)
    return out, n_truncated


@dataclass
class CNNClassifier:
    """A trained `GBCNN` with its class names and training record."""

    model: GBCNN
    classes: list[str]
    history: dict = field(default_factory=dict)
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    last_n_truncated: int = 0

    @property
    def input_len(self) -> int:
        return self.model.input_len

    @torch.no_grad()
    def predict_proba(self, seqs: Sequence[str], batch_size: int = 256, truncate: bool = False) -> np.ndarray:
        """(n, n_classes) softmax probabilities, column j = class id j. See the module doc on long inputs."""
        ids, self.last_n_truncated = encode_fixed(seqs, self.input_len, truncate)
        return _predict_ids(self.model, ids, batch_size).numpy()

    def predict(self, seqs: Sequence[str], **kwargs) -> np.ndarray:
        return self.predict_proba(seqs, **kwargs).argmax(axis=1)

    def accuracy(self, data: LabelledSequences, **kwargs) -> float:
        return float((self.predict(data.seqs, **kwargs) == data.labels).mean())


@torch.no_grad()
def _predict_ids(model: nn.Module, ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [torch.softmax(model(ids[i : i + batch_size].to(device)).float(), dim=-1).cpu()
           for i in range(0, len(ids), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.classifier[-1].out_features)


def train_cnn(train: LabelledSequences, val: LabelledSequences | None = None, epochs: int = 10,
              lr: float = 1e-3, batch_size: int = 64, seed: int = 0, patience: int | None = None,
              time_budget_s: float | None = None, max_steps: int | None = None, device: str | torch.device = "cpu",
              input_len: int | None = None, truncate: bool = False) -> CNNClassifier:
    """Train `GBCNN` from scratch (Adam, cross-entropy) and keep the epoch with the best val accuracy.

    `input_len` defaults to the longest sequence in train and val. Stops early after `patience` epochs
    without a val-accuracy gain, when `time_budget_s` of wall time is spent (checked every step), or after
    `max_steps` optimiser steps; the best-val weights (or the last ones without `val`) are returned.
    `history` holds `step_loss` (every step), `epoch_train_loss`, `val_accuracy` per epoch and `stopped_by`.
    """
    if len(np.unique(train.labels)) < 2:
        raise InputError(f"training data {train.source} holds only one class; need at least two")
    if val is not None and val.classes != train.classes:
        raise InputError(f"val classes {val.classes} differ from train classes {train.classes}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise InputError(f"epochs and batch_size must be >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if input_len is None:
        input_len = int(max(train.lengths.max(), val.lengths.max() if val is not None else 0))
    torch.manual_seed(seed)
    model = GBCNN(train.n_classes, input_len).to(device)
    x_train, n_trunc = encode_fixed(train.seqs, input_len, truncate)
    y_train = torch.as_tensor(train.labels, dtype=torch.long)
    x_val = encode_fixed(val.seqs, input_len, truncate)[0] if val is not None else None
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    order_rng = torch.Generator().manual_seed(seed)
    history = {"step_loss": [], "epoch_train_loss": [], "val_accuracy": [], "n_truncated": n_trunc,
               "input_len": input_len, "stopped_by": "epochs"}
    best_state, best_acc, best_epoch, stale = None, -math.inf, None, 0
    start, step = time.monotonic(), 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=order_rng)
        epoch_losses = []
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:  # BatchNorm cannot normalise a batch of one
                continue
            loss = loss_fn(model(x_train[idx].to(device)), y_train[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            history["step_loss"].append(loss.item())
            epoch_losses.append(loss.item())
            if max_steps is not None and step >= max_steps:
                history["stopped_by"] = "max_steps"
                break
            if time_budget_s is not None and time.monotonic() - start > time_budget_s:
                history["stopped_by"] = "time_budget"
                break
        history["epoch_train_loss"].append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
        if x_val is not None:
            acc = float((_predict_ids(model, x_val, 512).argmax(1).numpy() == val.labels).mean())
            history["val_accuracy"].append(acc)
            if acc > best_acc:
                best_acc, best_epoch, stale = acc, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        if history["stopped_by"] != "epochs":
            break
        if patience is not None and stale >= patience:
            history["stopped_by"] = "early_stopping"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history["wall_s"] = time.monotonic() - start
    history["steps"] = step
    return CNNClassifier(model, list(train.classes), history, best_epoch,
                         best_acc if best_state is not None else None)
