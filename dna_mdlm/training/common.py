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
* `SegmentTimer`, `ValidateAtLastStep`, `StepCheckpoint`: how a run stops (its `--max-time` budget, counted per run
  segment, or `max_steps`): validated at its last step and checkpointed mid-epoch, exactly as a step checkpoint,
  so `--resume` continues bit for bit.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, Timer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from ..errors import InputError, TrainingDiverged
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


STOPPED_BY_TIME = "stopped: time budget"


def run_status(step: int, max_steps: int, max_time) -> str:
    """"finished" at `max_steps`; a run that ended before it was stopped by its `--max-time` budget (the only other
    way a run ends without an error): `--resume` continues it."""
    return "finished" if step >= max_steps or not max_time else STOPPED_BY_TIME


class SegmentTimer(Timer):
    """Lightning's `Timer` (the `max_time` budget) counted per run segment: a resumed run gets the whole budget again.

    Lightning's own Timer restores the elapsed time from the checkpoint, so a run stopped by its budget resumed with
    the same budget would stop again at once without training a step. The budget is checked at the end of each
    training step (`interval="step"`), from the first one on."""

    def on_fit_start(self, trainer, *args, **kwargs) -> None:
        pass  # no check before the first step: every segment trains at least one step, so each --resume advances

    def load_state_dict(self, state_dict: dict) -> None:
        pass  # the budget is per segment: nothing of the previous segment's clock carries over


class ValidateAtLastStep(Callback):
    """Ask the Trainer to stop at `max_steps` itself, so the fit loop validates at the last step as it does when a
    run is stopped early (Lightning runs validation after a batch that set `trainer.should_stop`): the best-model
    export and the reported held-out figure cover the last weights, however the run was cut into segments."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last.ckpt` is only ever taken where Lightning's restart logic expects one: at the end
    of a training step, or after a scheduled validation; including the step at which training is told to stop (the
    time budget, `max_steps`), so a resume continues exactly as after a crash.

    Lightning would otherwise write `last.ckpt` at the end of training, after the interrupted epoch has been counted
    as complete: a resume would start the next epoch (another data stream) instead of continuing this one. A step
    checkpoint records the batches consumed in the epoch (`data.ResumableDataLoader`)."""

    _off_schedule = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        # The validation Lightning runs because training stops is not a scheduled one: a checkpoint taken after it
        # restarts one logging step behind (Lightning only expects them after scheduled validations), so the stop
        # step is saved here, before it.
        self._off_schedule = trainer.should_stop and not _scheduled_validation(trainer)
        if trainer.should_stop and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, module):
        if self._off_schedule:
            self._defer_save_until_validation = False
            return
        # Lightning skips a step already saved before its validation ran, leaving a last.ckpt that lacks what the
        # validation updated (the best value so far, per-round figures in callback states): save it again.
        again = self._last_global_step_saved == trainer.global_step and not trainer.sanity_checking
        super().on_validation_end(trainer, module)
        if again and trainer.state.fn == TrainerFn.FITTING and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer, module):
        pass  # the stop step was saved above; a save here would record the interrupted epoch as finished


def segment_timer(max_time: str | None) -> SegmentTimer:
    """The `--max-time` budget (DD:HH:MM:SS) as a `SegmentTimer`, inert when None; a one-line InputError otherwise."""
    try:
        return SegmentTimer(duration=max_time or None, interval="step")
    except (MisconfigurationException, ValueError, TypeError):
        raise InputError(f"--max-time {max_time}: expected a wall-clock budget DD:HH:MM:SS, e.g. 00:12:00:00") from None


def _scheduled_validation(trainer) -> bool:
    """Whether the batch just trained is one after which the Trainer's `val_check_interval` validates."""
    every = trainer.val_check_batch
    return isinstance(every, int) and (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % every == 0


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
