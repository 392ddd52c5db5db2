"""The Genomic Benchmarks CNN classifier baseline, made length-agnostic, and its small training loop.

Owns `GBCNN`, `train_cnn` and the fitted `CNNClassifier`.

Architecture: the GB paper's CNN (the "CNN" column of Caduceus Table 1: token embedding of width 100, three
Conv1d blocks with kernel 8, each followed by BatchNorm, ReLU and MaxPool(2), then Linear(512) -> ReLU ->
Linear(n_classes)), with one change so that it works from 50 bp to 5 kb: the GB model flattens a fixed padded
width into its first Linear layer, so it needs one input length and sees padding as signal; here the last
block's channels are pooled over the sequence's **real** positions (global mean and max, concatenated), the
standard length-agnostic CNN head (e.g. DeepBind, Alipanahi et al. 2015, global max pooling). Convolutions use
"same" padding with everything beyond a sequence's end zeroed before each block, and BatchNorm statistics are
taken over real positions only (`MaskedBatchNorm1d`), so a padded batch gives each sequence the output it gets
alone. Channels default to 32 per block (the GB widths 16/8/4 feed 512 units through the flatten; pooled, 4
channels would leave the head 8 numbers).

Training is a plain loop rather than Lightning: the model is tiny and the best weights are kept in memory.
Length-bucketed batches of `batch_size` sequences (one optimiser step each, gradients accumulated over
micro-batches of at most `max_tokens` padded bases), Adam with linear warm-up, cross-entropy, and
`ValLossStopping` on validation loss (patience in steps, a minimum number of steps, never while at chance).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.labelled import LabelledSequences, LengthBucketSampler, collate_labelled, length_sorted_batches, micro_batches
from ..errors import InputError
from ..evaluation.classification import ValLossStopping, chance_level
from ..tokenizer import PAD_ID, PADDED_VOCAB_SIZE, encode_dna


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over (B, C, L) whose batch statistics count only positions where mask (B, 1, L) is 1."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        n = mask.sum().clamp_min(1.0)
        mean = (x * mask).sum((0, 2)) / n
        var = (((x - mean[None, :, None]) * mask) ** 2).sum((0, 2)) / n
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * var * n / (n - 1).clamp_min(1.0))  # unbiased, as nn.BatchNorm1d
            self.num_batches_tracked += 1
        y = (x - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        return y * self.weight[None, :, None] + self.bias[None, :, None]


class GBCNN(nn.Module):
    """(B, L) token ids + (B, L) attention mask -> (B, n_classes) logits, for any L >= 1."""

    def __init__(self, n_classes: int, vocab_size: int = PADDED_VOCAB_SIZE, embedding_dim: int = 100,
                 channels: Sequence[int] = (32, 32, 32), kernel_size: int = 8, hidden: int = 512, pad_id: int = PAD_ID):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        width = embedding_dim
        for out in channels:
            self.convs.append(nn.Conv1d(width, out, kernel_size))
            self.norms.append(MaskedBatchNorm1d(out))
            width = out
        self.classifier = nn.Sequential(nn.Linear(2 * width, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
        self.same_padding = ((kernel_size - 1) // 2, kernel_size // 2)  # "same" output length for an even kernel

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        m = (torch.ones_like(input_ids, dtype=torch.float32) if attention_mask is None else attention_mask.float())[:, None]
        x = self.embedding(input_ids).transpose(1, 2)  # (B, E, L) for Conv1d
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(F.pad(x * m, self.same_padding)), m)) * m  # zeros past the end = a lone sequence's padding
            # a pooled pair with one real position keeps it (ReLU output >= 0 = the zeroed partner)
            x, m = F.max_pool1d(x, 2, ceil_mode=True), F.max_pool1d(m, 2, ceil_mode=True)
        mean = (x * m).sum(-1) / m.sum(-1).clamp_min(1.0)
        mx = x.masked_fill(m == 0, float("-inf")).amax(-1)
        return self.classifier(torch.cat([mean, mx], dim=-1))


@dataclass
class CNNClassifier:
    """A trained `GBCNN` with its class names and training record."""

    model: GBCNN
    classes: list[str]
    history: dict = field(default_factory=dict)
    best_step: int | None = None
    best_val_accuracy: float | None = None

    @torch.no_grad()
    def predict_proba(self, seqs: Sequence[str], batch_size: int = 256, max_tokens: int = 1 << 18) -> np.ndarray:
        """(n, n_classes) softmax probabilities, column j = class id j. Any length; no truncation."""
        return _predict_ids(self.model, [encode_dna(s) for s in seqs], batch_size, max_tokens)

    def predict(self, seqs: Sequence[str], **kwargs) -> np.ndarray:
        return self.predict_proba(seqs, **kwargs).argmax(axis=1)

    def accuracy(self, data: LabelledSequences, **kwargs) -> float:
        return float((self.predict(data.seqs, **kwargs) == data.labels).mean())


def _chunks(batch: dict, max_tokens: int):
    for rows, width in micro_batches(batch["attention_mask"], max_tokens):
        yield batch["input_ids"][rows, :width], batch["attention_mask"][rows, :width], batch["labels"][rows]


@torch.no_grad()
def _predict_ids(model: GBCNN, ids: Sequence[np.ndarray], batch_size: int, max_tokens: int) -> np.ndarray:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(ids), model.classifier[-1].out_features))
    for rows, x, mask in length_sorted_batches(ids, batch_size, max_tokens):
        out[rows] = torch.softmax(model(x.to(device), mask.to(device)).float(), -1).cpu().numpy()
    model.train(was_training)
    return out


def train_cnn(train: LabelledSequences, val: LabelledSequences | None = None, epochs: int = 10,
              lr: float = 1e-3, batch_size: int = 64, seed: int = 0, patience_steps: int = 200, min_steps: int = 100,
              val_every: int | None = None, warmup_steps: int = 10, time_budget_s: float | None = None,
              max_steps: int | None = None, device: str | torch.device = "cpu", max_tokens: int = 1 << 17,
              channels: Sequence[int] = (32, 32, 32)) -> CNNClassifier:
    """Train `GBCNN` from scratch and keep the weights with the best validation loss.

    Validates every `val_every` optimiser steps (default min(steps per epoch, 50)); stops at `epochs`,
    `max_steps`, `time_budget_s` of wall time (checked every step), or by `ValLossStopping`. Without `val`
    the last weights are returned. `history`: `step_loss`, `val` (step, loss, accuracy per check),
    `stopped_by`, `steps`, `val_chance` (`chance_level` of the kept weights on `val`).
    """
    if len(np.unique(train.labels)) < 2:
        raise InputError(f"training data {train.source} holds only one class; need at least two")
    if val is not None and val.classes != train.classes:
        raise InputError(f"val classes {val.classes} differ from train classes {train.classes}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise InputError(f"epochs and batch_size must be >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    torch.manual_seed(seed)
    model = GBCNN(train.n_classes, channels=channels).to(device)
    tr_ids = [encode_dna(s) for s in train.seqs]
    va_ids = [encode_dna(s) for s in val.seqs] if val is not None else None
    sampler = LengthBucketSampler([len(a) for a in tr_ids], batch_size, shuffle=True, seed=seed)
    steps_per_epoch = len(sampler)
    total = min(epochs * steps_per_epoch, max_steps or 10**12)
    val_every = val_every or min(steps_per_epoch, 50)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
    stopper = ValLossStopping(patience_steps, min_steps, ValLossStopping.prior_loss(train.labels, train.n_classes))
    history = {"step_loss": [], "val": [], "stopped_by": "epochs"}
    best_state, best_acc = None, None
    start, step = time.monotonic(), 0

    def validate() -> None:
        nonlocal best_state, best_acc
        proba = _predict_ids(model, va_ids, 256, max_tokens)
        loss = float(-np.log(np.clip(proba[np.arange(len(val)), val.labels], 1e-12, None)).mean())
        acc = float((proba.argmax(1) == val.labels).mean())
        history["val"].append({"step": step, "val_loss": loss, "val_acc": acc})
        if stopper.update(step, loss):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_acc = acc

    while history["stopped_by"] == "epochs" and step < total:
        model.train()
        for idx in sampler:
            batch = collate_labelled([(tr_ids[i], int(train.labels[i])) for i in idx])
            if len(idx) < 2:  # BatchNorm cannot normalise a batch of one
                continue
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for x, mask, y in _chunks(batch, max_tokens):
                loss = F.cross_entropy(model(x.to(device), mask.to(device)), y.to(device), reduction="sum") / len(idx)
                loss.backward()
                step_loss += loss.item()
            optimizer.step()
            sched.step()
            step += 1
            history["step_loss"].append(step_loss)
            if va_ids is not None and (step % val_every == 0 or step == total):
                validate()
                if stopper.should_stop(step):
                    history["stopped_by"] = "early_stopping"
                    break
            if step >= total:
                history["stopped_by"] = "max_steps" if max_steps is not None and step >= max_steps else "epochs"
                break
            if time_budget_s is not None and time.monotonic() - start > time_budget_s:
                history["stopped_by"] = "time_budget"
                break
        if history["stopped_by"] != "epochs" or step >= total:
            break
    if va_ids is not None and (not history["val"] or history["val"][-1]["step"] != step):
        validate()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if va_ids is not None:
        history["val_chance"] = chance_level(val.labels, _predict_ids(model, va_ids, 256, max_tokens), train.classes)
    else:
        history["val_chance"] = {"at_chance": False, "reason": "no validation set"}
    history.update(wall_s=time.monotonic() - start, steps=step, best_step=stopper.best_step if best_state else None)
    return CNNClassifier(model, list(train.classes), history, history["best_step"], best_acc)
