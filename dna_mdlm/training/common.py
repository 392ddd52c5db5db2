"""What pretraining and fine-tuning share: EMA, AdamW decay groups, warm-up + cosine schedule, non-finite checks,
atomic checkpoints and the exported model directory.

* `EMA`: exponential moving average of the trainable parameters with the warm-up the reference code uses
  (decay_n = min(d, (1 + n) / (10 + n)); kuleshov-group/mdlm `models/ema.py`).
* `optimizer_groups`: AdamW groups with no weight decay on biases, norms, embeddings and parameters flagged
  `_no_weight_decay` (Mamba's A_log and D), as in kuleshov-group/caduceus `src/utils/optim_groups.py`.
* `warmup_cosine`: linear warm-up then cosine decay to `min_ratio` x the peak (timm's cosine-with-warm-up).
* `check_finite` / `NonFiniteGuard`: a NaN or inf in a loss, a gradient or a weight stops training with
  `TrainingDiverged` before an optimiser step, a checkpoint or an export can spread it.
* `AtomicCheckpointIO`: Lightning checkpoints written to a temporary file and renamed, and refused when they
  hold non-finite weights, so the last checkpoint on disk is always whole and finite.
* `export_model_dir`: `save_pretrained` + tokenizer files (+ extra JSON files) into a directory, atomically,
  refused when a weight is not finite.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..errors import TrainingDiverged
from ..io.writers import atomic_path, dumps_json
from ..tokenizer import DNATokenizer


class EMA:
    """Exponential moving average of parameters with the reference warm-up: decay_n = min(d, (1+n)/(10+n))."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for n, p in model.named_parameters():
            if n in self.shadow:
                if self.shadow[n].device != p.device:
                    # Made while the model was still on the CPU; the Trainer moves the model (not this dict) to the GPU.
                    self.shadow[n] = self.shadow[n].to(p.device)
                self.shadow[n].mul_(d).add_(p.detach().float(), alpha=1 - d)

    @torch.no_grad()
    def swap(self, model: torch.nn.Module) -> None:
        """Exchange live and EMA weights (call twice to restore)."""
        for n, p in model.named_parameters():
            if n in self.shadow:
                tmp = p.detach().clone()
                p.copy_(self.shadow[n].to(p.dtype))
                self.shadow[n].copy_(tmp.float())

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the averaged weights into `model` (a copy of the trained one)."""
        for n, p in model.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n].to(device=p.device, dtype=p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms, embeddings and parameters flagged _no_weight_decay (A_log, D)."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) or "Norm" in type(module).__name__:
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # deduplicated: tied weights appear once
        if not p.requires_grad:
            continue
        if id(p) in no_decay_ids or getattr(p, "_no_weight_decay", False) or name.endswith("bias") or p.dim() < 2:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.1) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up over `warmup` steps, then `constant` or cosine to `min_ratio`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def first_non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """Name of the first tensor holding a NaN or an infinity, else None."""
    for name, t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite(model: torch.nn.Module, what: str) -> None:
    """TrainingDiverged naming the first non-finite parameter of `model`."""
    bad = first_non_finite(model.named_parameters())
    if bad is not None:
        raise TrainingDiverged(f"{what}: parameter {bad} is not finite")


class NonFiniteGuard(Callback):
    """Stop training at the first non-finite loss or gradient, before the optimiser step applies it.

    Lightning re-raises the error from `trainer.fit`; the caller turns it into a one-line message. The EMA and
    the checkpoints never see the bad step: the check runs after backward and before `optimizer.step`."""

    def __init__(self, hint: str = "lower the learning rate (--lr) or use 32-bit precision"):
        self.hint = hint

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs  # manual optimisation: {}
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            raise TrainingDiverged(f"training diverged at step {trainer.global_step}: the loss is "
                                   f"{float(loss.detach()):.4g}; {self.hint}")

    def on_before_optimizer_step(self, trainer, module, optimizer):
        bad = first_non_finite((n, p.grad) for n, p in module.named_parameters() if p.grad is not None)
        if bad is not None:
            raise TrainingDiverged(f"training diverged at step {trainer.global_step + 1}: the gradient of {bad} is "
                                   f"not finite; {self.hint}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename, so a kill never leaves a truncated .ckpt; refuse to write
    one whose weights are not finite, so the last checkpoint on disk is always usable."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        bad = first_non_finite(checkpoint.get("state_dict", {}).items())
        if bad is not None:
            raise TrainingDiverged(f"refusing to write checkpoint {path}: weight {bad} is not finite")
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def export_model_dir(model: torch.nn.Module, directory: str | os.PathLike, files: dict[str, object] | None = None,
                     readme: str | None = None) -> Path:
    """Write a model directory atomically: `save_pretrained` (config.json + model.safetensors), the tokenizer
    files, each `files[name]` as strict JSON, and `README.md` (the model card) when given.

    Raises TrainingDiverged (nothing written) when a weight is not finite."""
    check_finite(model, f"refusing to export {directory}")
    with atomic_path(directory) as tmp:
        model.save_pretrained(tmp)
        DNATokenizer().save_pretrained(tmp)
        for name, obj in (files or {}).items():
            (tmp / name).write_text(dumps_json(obj) + "\n")
        if readme is not None:
            (tmp / "README.md").write_text(readme)
    return Path(directory)


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def render_model_card(title: str, facts: list[tuple[str, str]], sections: dict[str, str] | None = None) -> str:
    """A model card (`README.md` of a model directory): a title, a table of facts, then free-text sections.

    What a shared model needs (Mitchell et al., "Model Cards for Model Reporting", FAT* 2019; Hugging Face's model
    card guide): what it is, what it was trained on and how, how well it does against a simple baseline, the data's
    licence, and how to load it."""
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts]
    for heading, text in (sections or {}).items():
        lines += ["", f"## {heading}", "", text.strip()]
    return "\n".join(lines) + "\n"
