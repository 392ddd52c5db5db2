"""Pretraining with Lightning: the MDLM (or AR) LightningModule, EMA, optimizer groups, checkpoints, export.

`PretrainModule` trains a `CaduceusForMaskedLM` with the MDLM NELBO (dna_mdlm/diffusion/mdlm.py) or, for
the AR baseline, next-base cross-entropy on the same backbone made causal. With a labels table (`--labels`) it
trains a class-conditional MDLM on labelled sequences (`data.datamodules.LabelledDataModule`): each label is
replaced by the null class with probability `cond_dropout` (classifier-free guidance training, Ho & Salimans,
arXiv 2207.12598; Schiff et al., arXiv 2412.10193), and validation reports the conditional NELBO. Validation runs with the EMA
weights and reports nats, bits and perplexity per scored base. `pretrain()` wires a `GenomeDataModule`,
a Trainer (devices / nodes / DDP / FSDP from Lightning), atomic checkpoints (`last.ckpt`, best by
validation), the exported model directory (EMA weights, written at each new best and at the end), CSV logs
and a loss-curve PNG.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy

from .._quiet import quiet_libraries
from ..baselines.ar import AR
from ..baselines.markov import MarkovLM, markov_yardstick
from ..data.datamodules import GenomeDataModule, LabelledDataModule
from ..data.genome import GenomeWindows
from ..diffusion.mdlm import MDLM, stratified_times
from ..errors import InputError, TrainingDiverged
from ..evaluation.likelihood import score_windows
from ..io.writers import atomic_path, atomic_write_text, write_json
from ..loading import load_language_model, load_model, read_model_config
from ..models import CaduceusConfig, CaduceusForMaskedLM
from ..tokenizer import DEFAULT_WINDOW
from ..units import LN2
from .common import (
    EMA,
    AtomicCheckpointIO,
    NonFiniteGuard,
    StepCheckpoint,
    ValidateAtLastStep,
    export_model_dir,
    optimizer_groups,
    read_json,
    render_model_card,
    run_status,
    segment_timer,
    warmup_cosine,
)
from .recipes import reconcile_resume, resolve_pretrain

RUN_CONFIG = "run_config.json"
CLASS_EMBED_KEY = "caduceus.backbone.class_embed.weight"


# ---------------------------------------------------------------------------------------------------
# the LightningModule
# ---------------------------------------------------------------------------------------------------


class PretrainModule(pl.LightningModule):
    """Trains a `CaduceusForMaskedLM` as an MDLM (`diffusion.mdlm.MDLM.loss`) or as the causal AR baseline
    (`baselines.ar.AR.loss`); validates with the EMA weights; owns its optimiser (AdamW, decay groups, warm-up +
    cosine: `training.common`)."""

    def __init__(self, model_cfg: dict, objective: str = "mdlm", schedule: str = "loglinear", lr: float = 1e-3,
                 weight_decay: float = 0.0, betas=(0.9, 0.95), warmup_steps: int = 100, lr_schedule: str = "cosine",
                 min_lr_ratio: float = 0.1, max_steps: int = 1000, ema_decay: float = 0.999, seed: int = 0,
                 window: int = DEFAULT_WINDOW, classes: list | None = None):
        super().__init__()
        self.save_hyperparameters()
        if objective not in ("mdlm", "ar"):
            raise InputError(f"objective: expected mdlm or ar for a neural model, got {objective!r}")
        cfg = dict(model_cfg)
        if classes:
            cfg.update(num_classes=len(classes), class_names=list(classes))
        if objective == "ar":
            cfg.update(bidirectional=False, rcps=False)
        try:
            self.config = CaduceusConfig(objective=objective, train_window=window, schedule=schedule, **cfg)
        except (TypeError, ValueError) as exc:
            raise InputError(f"model settings: {exc}") from None
        self.model = CaduceusForMaskedLM(self.config)
        self.lm = MDLM(self.model, schedule) if objective == "mdlm" else AR(self.model)
        self.ema = EMA(self.model, ema_decay) if ema_decay else None
        self._val = None

    @torch.no_grad()
    def load_weights(self, model: torch.nn.Module) -> None:
        """Start from another model's weights (`--init`): same architecture; the EMA starts there too."""
        missing, unexpected = self.model.load_state_dict(model.state_dict(), strict=False)
        if CLASS_EMBED_KEY in missing:
            # An unconditional init model gains a class table: zeros, so training starts exactly at the init model
            # (for every class) and the class vectors grow from there.
            self.model.caduceus.backbone.class_embed.weight.zero_()
            missing = [k for k in missing if k != CLASS_EMBED_KEY]
        tied = set(getattr(self.model, "_tied_weights_keys", None) or {})
        if unexpected or set(missing) - tied - {k for k in missing if "mamba_rev" in k and "_proj" in k}:
            raise InputError(f"--init: weights do not fit the architecture (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]})")
        if self.ema is not None:
            self.ema = EMA(self.model, self.ema.decay)

    def _noise(self, n: int, stage: str, batch_idx: int = 0):
        """Times and mask draws from a generator seeded by (seed, step, rank): a resumed run draws exactly
        what the uninterrupted one would have, and every validation pass uses the same draws."""
        if not isinstance(self.lm, MDLM):
            return None, None
        step = self.global_step if stage == "train" else 10**9 + batch_idx
        g_t = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + step)
        # One uniform shared by every rank, each rank taking its slice of the global batch: the
        # stratification covers [eps, 1] across the whole global batch.
        world = self.trainer.world_size if self._trainer else 1
        t = stratified_times(n, self.lm.sampling_eps, None, g_t, offset=self.global_rank * n, total=world * n)
        g_mask = torch.Generator().manual_seed((self.hparams.seed * 1_000_003 + step) * 64 + self.global_rank + 1)
        return t.to(self.device), g_mask

    def _class_labels(self, batch, stage: str):
        """A labelled batch's classes; in training each is replaced by the null class with probability
        `cond_dropout`, drawn from a generator seeded by (seed, step, rank) like the masks (resumable)."""
        labels = batch.get("class_labels")
        if labels is None or stage != "train" or not self.config.cond_dropout:
            return labels
        g = torch.Generator().manual_seed((self.hparams.seed * 1_000_003 + self.global_step) * 64 + self.global_rank + 33)
        drop = (torch.rand(labels.shape, generator=g) < self.config.cond_dropout).to(labels.device)
        return torch.where(drop, torch.full_like(labels, self.config.null_class), labels)

    def batch_loss(self, batch, stage: str, batch_idx: int = 0):
        """(mean nats per scored base, scored bases) of a batch: the language model's own loss (for a labelled
        batch the NELBO given each sequence's class)."""
        t, g = self._noise(batch["input_ids"].shape[0], stage, batch_idx)
        labels = self._class_labels(batch, stage)
        extra = {} if labels is None else {"class_labels": labels}
        mask = batch.get("attention_mask")
        if mask is not None and not bool(mask.all()):
            extra["attention_mask"] = mask
        return self.lm.loss(batch["input_ids"], score_mask=batch["loss_mask"], t=t, generator=g, **extra)

    def training_step(self, batch, batch_idx):
        loss, n = self.batch_loss(batch, "train")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=int(n.clamp_min(1)))
        return loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # Here rather than in on_train_batch_end: Lightning runs the checkpoint callback's on_train_batch_end
        # first, which would save an EMA one update behind the weights and make a resumed run differ.
        if self.ema is not None:
            self.ema.update(self.model)

    # --- validation with EMA weights --------------------------------------------------------------
    def on_validation_epoch_start(self):
        if self.ema is not None:
            self.ema.swap(self.model)
        self._val = [torch.zeros((), dtype=torch.float64, device=self.device),
                     torch.zeros((), dtype=torch.float64, device=self.device)]

    def validation_step(self, batch, batch_idx):
        loss, n = self.batch_loss(batch, "val", batch_idx)
        self._val[0] += loss.double() * n
        self._val[1] += n.double()

    def on_validation_epoch_end(self):
        nats, n = self.all_gather(self._val[0]).sum(), self.all_gather(self._val[1]).sum()
        nll = (nats / n.clamp_min(1)).float()
        self.log_dict({"val/nll": nll, "val/bpd": nll / LN2, "val/ppl": torch.exp(nll), "val/bases": n.float()},
                      prog_bar=True, sync_dist=False)
        if self.ema is not None:
            self.ema.swap(self.model)

    # --- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(optimizer_groups(self.model, h.weight_decay), lr=h.lr, betas=tuple(h.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(h.warmup_steps, h.max_steps, h.lr_schedule, h.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint):
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])

    # --- export -----------------------------------------------------------------------------------
    def export(self, directory: str | os.PathLike, extra: dict | None = None) -> None:
        """Write the model directory with the EMA weights (`training.common.export_model_dir`)."""
        model = copy.deepcopy(self.model).cpu().float()
        if self.ema is not None:
            self.ema.copy_to(model)
        meta = {"step": int(self.global_step), "ema": self.ema is not None, **(extra or {})}
        export_model_dir(model, directory, {"training_state.json": meta})


class ExportModel(Callback):
    """Export the model directory whenever validation improves, and at the end of training."""

    def __init__(self, directory: Path, monitor: str = "val/nll"):
        self.directory, self.monitor, self.best = Path(directory), monitor, math.inf

    def on_train_start(self, trainer, module):
        # The exported model is the record of the best so far: a checkpoint taken at a stop step, before the
        # validation that stop ran, does not know that validation's figure.
        exported = (read_json(self.directory / "training_state.json") or {}).get("best_val_nll")
        if exported is not None:
            self.best = min(self.best, float(exported))

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best = float(value)
            module.export(self.directory, {"best_val_nll": self.best, "best_val_bpd": self.best / LN2})

    def on_train_end(self, trainer, module):
        if trainer.global_rank == 0:
            module.export(self.directory.parent / "final_model", {"final": True})
            if not (self.directory / "config.json").exists():
                module.export(self.directory, {"final": True})

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state["best"]


def plot_loss_curve(log_dir: Path, out_png: Path) -> Path | None:
    """Training loss and validation bits/base from Lightning's CSV logs: every segment of the run (a resumed run
    logs into a new `segment-N` folder), a later segment's row replacing an earlier one for the same step."""
    import matplotlib  # heavy (~0.5 s): loaded only when a run draws its curve

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(Path(log_dir).glob("*/metrics.csv"), key=lambda f: _segment_number(f.parent.name))
    if not files:
        return None
    train, val = {}, {}
    for f in files:
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("train/loss"):
                    train[int(row["step"])] = float(row["train/loss"]) / LN2
                if row.get("val/bpd"):
                    val[int(row["step"])] = float(row["val/bpd"])
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*sorted(train.items())), lw=0.8, alpha=0.7, label="train loss (bits/base)")
    if val:
        ax.plot(*zip(*sorted(val.items())), "o-", label="validation (bits/base)")
    ax.axhline(2.0, ls=":", c="grey", label="uniform (2 bits)")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per base")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out_png


def _segment_number(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


# ---------------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------------


def check_sequence(genome, intervals, chunk: int = 1 << 22) -> None:
    """Read every training base once, so an invalid character fails now (file, line, column) rather than
    mid-run with half a run directory written. About 1 s per 60 Mb."""
    for iv in intervals:
        for lo in range(iv.start, iv.end, chunk):
            genome.read(iv.record, lo, min(iv.end, lo + chunk))


def _precision(precision: str, accelerator: str) -> str:
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if precision == "auto":
        return "bf16-mixed" if on_gpu else "32-true"  # bf16 autocast on GPU; fp32 on CPU
    if precision.startswith("16") and not on_gpu:
        # Lightning would silently switch to bf16 here; say so instead of training at another precision.
        raise InputError(f"--precision {precision}: fp16 needs a GPU (no fp16 autocast on CPU); use --precision bf16 "
                         f"or 32")
    return precision


def _launched_worker() -> bool:
    """True in the extra processes Lightning starts for DDP (it re-runs the command with LOCAL_RANK/NODE_RANK set):
    they train the run that rank 0 set up, so they neither check nor write the run directory."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 or int(os.environ.get("NODE_RANK", "0") or 0) > 0


def _settings_for_run(settings: dict, out: Path, resume: bool) -> dict:
    """The run's full settings: a fresh run's (defaults + settings), or the saved run's on `resume`."""
    last = out / "checkpoints" / "last.ckpt"
    saved = read_json(out / RUN_CONFIG)
    if _launched_worker():
        return reconcile_resume(saved, settings, out) if resume else resolve_pretrain(settings)
    if resume:
        if saved is None:
            raise InputError(f"--resume: {out} holds no run to resume ({RUN_CONFIG} missing); start one without "
                             f"--resume")
        if saved.get("objective") != "markov" and not last.is_file():
            raise InputError(f"--resume: {out} has no checkpoint yet ({last} missing): the run stopped before its "
                             f"first checkpoint; start it again with a new --out")
        return reconcile_resume(saved, settings, out)
    if last.exists() or saved is not None:
        raise InputError(f"--out {out}: already holds a run; pass --resume to continue it or choose a new --out")
    return resolve_pretrain(settings)


def pretrain(settings: dict, out_dir: str | os.PathLike, resume: bool = False) -> dict:
    """Train per `settings` (see `training.recipes`: recipe + flags + overrides) into `out_dir`; returns a summary.

    out_dir/run_config.json (the resolved settings; what `resume` reads back), checkpoints/{last,best}.ckpt,
    model/ (best EMA weights: what the other verbs consume), final_model/, logs/segment-N/metrics.csv (one
    segment per start or resume, never overwritten), loss_curve.png and summary.json (strict JSON).

    Raises InputError (nothing written) for bad settings or inputs, and TrainingDiverged when a loss, gradient or
    weight becomes non-finite: training stops, the last finite checkpoint stays, no model is exported from the
    diverged weights, and summary.json records what happened.
    """
    quiet_libraries()
    out = Path(out_dir)
    cfg = _settings_for_run(settings, out, resume)
    if cfg["objective"] == "markov":
        return pretrain_markov(cfg, out)
    d, o, tr = cfg["data"], cfg["optim"], cfg["trainer"]
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    rc_aug = d["rc_aug"] if d["rc_aug"] is not None else not cfg["model"].get("rcps", True)
    classes = None
    if cfg.get("labels"):
        dm = LabelledDataModule(cfg["labels"], d["window"], d["batch_size"], d["num_workers"], d.get("val_fraction", 0.1),
                                cfg["seed"], d["train_samples_per_epoch"], rc_aug, d["unknown"], d["max_val_windows"])
        classes = dm.classes
        check_init_classes(None if resume else cfg.get("init"), classes)
    else:
        check_init_classes(None if resume else cfg.get("init"), None)
        dm = GenomeDataModule(
            fasta=cfg["fasta"], bed=cfg.get("bed"), window=d["window"], batch_size=d["batch_size"],
            num_workers=d["num_workers"], val_records=cfg.get("val_records") or (),
            val_regions=cfg.get("val_regions") or (), test_records=cfg.get("test_records") or (),
            test_regions=cfg.get("test_regions") or (), max_n_frac=d["max_n_frac"], rc_aug=rc_aug, seed=cfg["seed"],
            train_samples_per_epoch=d["train_samples_per_epoch"], max_val_windows=d["max_val_windows"],
            max_test_windows=d["max_test_windows"], unknown=d["unknown"],
        )
        dm.setup()  # validate every input before anything is written
        check_sequence(dm.genome, dm.genome.train_intervals)
    module = PretrainModule(
        cfg["model"], cfg["objective"], cfg["schedule"], lr=o["lr"], weight_decay=o["weight_decay"], betas=o["betas"],
        warmup_steps=o["warmup_steps"], lr_schedule=o["lr_schedule"], min_lr_ratio=o["min_lr_ratio"],
        max_steps=tr["max_steps"], ema_decay=o["ema_decay"], seed=cfg["seed"], window=d["window"], classes=classes,
    )
    if cfg.get("init") and not resume:
        module.load_weights(load_model(cfg["init"])[0])
    has_val = len(dm._eval_set("val")) > 0
    trainer = _trainer(cfg, out, has_val)
    if not resume and not _launched_worker():
        write_json(out / RUN_CONFIG, cfg)
    start = time.time()
    last = out / "checkpoints" / "last.ckpt"
    error = None
    init_val = None
    try:
        if cfg.get("init") and not resume and has_val:
            # The init model's own held-out bound at step 0: what continued training starts from.
            trainer.validate(module, datamodule=dm, verbose=False)
            init_val = float(trainer.callback_metrics["val/bpd"])
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None, weights_only=True)
    except TrainingDiverged as exc:
        error = exc
    summary = {"objective": cfg["objective"], "upper_bound": cfg["objective"] == "mdlm",
               "status": "diverged" if error else run_status(trainer.global_step, tr["max_steps"], tr["max_time"]),
               "steps": int(trainer.global_step), "max_steps": int(tr["max_steps"]), "seconds": round(time.time() - start, 1),
               "parameters": sum(p.numel() for p in module.model.parameters()), "model_dir": str(out / "model"),
               "world_size": int(trainer.world_size),
               "train_bases": int(trainer.global_step * d["batch_size"] * (dm.length if classes else d["window"])
                                  * trainer.world_size)}
    if classes:
        summary["classes"] = dm.data.class_counts()
        summary["cond_dropout"] = module.config.cond_dropout
    if cfg.get("init"):
        summary["init"] = cfg["init"]
        if init_val is not None:
            summary["init_val_bpd"] = round(init_val, 5)
    if trainer.global_rank == 0:
        for key in ("val/nll", "val/bpd", "val/ppl"):
            if key in trainer.callback_metrics:
                summary[key.replace("/", "_")] = round(float(trainer.callback_metrics[key]), 5)
        if error is None and has_val and (out / "model" / "config.json").is_file() and classes:
            summary["heldout"] = heldout_bound_labelled(out / "model", dm._eval_set("val"))
            summary["markov_yardstick"] = per_class_markov_yardstick(dm.train, dm.val)
        elif error is None and has_val and (out / "model" / "config.json").is_file():
            summary["heldout"] = heldout_bound(out / "model", dm._eval_set("val"))
            summary["markov_yardstick"] = markov_yardstick(dm.genome, dm._eval_set("val"))
        if error is not None:
            summary["error"] = str(error)
            summary["last_checkpoint"] = str(last) if last.is_file() else None
            if not (out / "model" / "config.json").is_file():
                summary["model_dir"] = None
        plot_loss_curve(out / "logs", out / "loss_curve.png")
        write_json(out / "summary.json", {**summary, "config": cfg})
        if error is None:
            for directory in (out / "model", out / "final_model"):
                if (directory / "config.json").is_file():
                    write_model_card(directory, cfg, summary, None if classes else dm.genome,
                                     dm.data if classes else None)
    if error is not None:
        where = f"; the last finite checkpoint is {last}" if last.is_file() else "; no checkpoint had been written"
        raise TrainingDiverged(f"{error}{where}")
    return summary


def _trainer(cfg: dict, out: Path, has_val: bool) -> pl.Trainer:
    """The Lightning Trainer for a run; a setting Lightning rejects is a one-line InputError naming it."""
    o, tr = cfg["optim"], cfg["trainer"]
    callbacks = [
        NonFiniteGuard(),
        ValidateAtLastStep(),
        StepCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val/nll" if has_val else None,
                        mode="min", save_top_k=1 if has_val else 0, save_last=True, every_n_train_steps=tr["val_every"]),
        ExportModel(out / "model"),
    ]
    if tr["progress_bar"]:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, tr["log_every"])))
    segment = 1 + max((_segment_number(p.name) for p in (out / "logs").glob("segment-*")), default=0) \
        if (out / "logs").is_dir() else 1
    loggers = [CSVLogger(out, name="logs", version=f"segment-{segment}", flush_logs_every_n_steps=tr["log_every"])]
    strategy = tr["strategy"]
    if strategy == "ddp" and (tr["accelerator"] == "cpu" or not torch.cuda.is_available()):
        strategy = DDPStrategy(process_group_backend="gloo")
    precision = _precision(tr["precision"], tr["accelerator"])
    # Always present (inert without a budget), so a checkpoint's timer state always has its callback.
    callbacks.insert(0, segment_timer(tr["max_time"]))
    try:
        return pl.Trainer(
            max_steps=tr["max_steps"], val_check_interval=tr["val_every"] if has_val else None,
            check_val_every_n_epoch=None, **({} if has_val else {"limit_val_batches": 0}), accelerator=tr["accelerator"],
            devices=tr["devices"], num_nodes=tr["num_nodes"], strategy=strategy,
            precision=precision, gradient_clip_val=o["grad_clip"],
            callbacks=callbacks, logger=loggers, log_every_n_steps=tr["log_every"], enable_progress_bar=tr["progress_bar"],
            enable_model_summary=False, plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0,
            use_distributed_sampler=False, default_root_dir=out,
        )
    except Exception as exc:  # Lightning's MisconfigurationException, ValueError, RuntimeError for bad hardware settings
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"trainer settings (--accelerator {tr['accelerator']}, --devices {tr['devices']}, "
                         f"--strategy {tr['strategy']}, --precision {tr['precision']}): {first}") from None


def heldout_bound(model_dir: Path, val_windows, num_samples: int = 4) -> dict:
    """The exported model's bits/base on the validation windows, with a Monte-Carlo standard error for an MDLM
    (`num_samples` time samples per window; the validation during training used one)."""
    lm = load_language_model(model_dir, "cpu", "pretrain")
    windows = [(item["input_ids"].numpy(), item["loss_mask"].numpy())
               for item in (val_windows[i] for i in range(len(val_windows)))]
    k = num_samples if lm.upper_bound else 1
    scores = score_windows(lm, windows, k, 16, "cpu", torch.Generator().manual_seed(0))
    n = int(scores[:, 2].sum())
    out = {"bits_per_base": round(float(scores[:, 0].sum()) / max(n, 1) / LN2, 5), "upper_bound": bool(lm.upper_bound),
           "bases": n, "windows": len(windows), "mc_samples_per_window": k}
    if k > 1:
        out["stderr_bits_per_base"] = round(math.sqrt(float(scores[:, 1].sum())) / max(n, 1) / LN2, 5)
    return out


def check_init_classes(init: str | None, classes: list | None) -> None:
    """`--init` with `--labels`: a class-conditional init model must have the labels' classes, in the same order; a
    class-conditional init model needs `--labels` (its class table would have nothing to train on)."""
    if not init:
        return
    config = read_model_config(init)
    names = config.get("class_names") if config.get("num_classes") else None
    if names and classes is None:
        raise InputError(f"--init {init}: a class-conditional model ({', '.join(names)}); continue it with --labels")
    if names and classes is not None and list(names) != list(classes):
        raise InputError(f"--labels: classes {', '.join(classes)} differ from those of the --init model {init} "
                         f"({', '.join(names)})")


@torch.no_grad()
def heldout_bound_labelled(model_dir: Path, val_set, num_samples: int = 4, batch_size: int = 16) -> dict:
    """A class-conditional model's held-out NELBO in bits/base on the validation sequences: given each sequence's
    class (`bits_per_base`, what validation reports) and with the null class (`null_bits_per_base`, the same
    model unconditionally), `num_samples` Monte-Carlo time samples per sequence with standard errors."""
    lm = load_language_model(model_dir, "cpu", "pretrain")
    null = lm.model.config.null_class
    g = torch.Generator().manual_seed(0)
    sums = {"class": [], "null": []}
    n = 0
    for lo in range(0, len(val_set), batch_size):
        items = [val_set[i] for i in range(lo, min(len(val_set), lo + batch_size))]
        x = torch.stack([it["input_ids"] for it in items])
        mask = torch.stack([it["loss_mask"] for it in items])
        am = torch.stack([it["attention_mask"] for it in items])
        am = None if bool(am.all()) else am
        labels = torch.stack([it["class_labels"] for it in items])
        n += int(mask.sum())
        for key, lab in (("class", labels), ("null", torch.full_like(labels, null))):
            sums[key].append(lm.nats_per_window(x, score_mask=mask, attention_mask=am, num_samples=num_samples,
                                                generator=g, class_labels=lab))
    out = {"upper_bound": True, "bases": n, "windows": len(val_set), "mc_samples_per_window": num_samples,
           "conditional": True}
    for key, name in (("class", "bits_per_base"), ("null", "null_bits_per_base")):
        s = torch.cat(sums[key]).numpy()
        if not np.isfinite(s).all():
            raise TrainingDiverged("the exported model gives a non-finite held-out NELBO")
        var = (s.var(axis=1, ddof=1) / s.shape[1]).sum() if s.shape[1] > 1 else 0.0
        out[name] = round(float(s.mean(axis=1).sum()) / max(n, 1) / LN2, 5)
        out[name.replace("bits", "stderr_bits")] = round(math.sqrt(float(var)) / max(n, 1) / LN2, 5)
    return out


def per_class_markov_yardstick(train, val) -> dict:
    """The simple conditional baseline beside a class-conditional model: one k-mer Markov LM per class, fitted on
    that class's training sequences (order chosen on its validation sequences, the yardstick's best case), each
    validation sequence scored by its own class's model. Bits/base over all validation bases."""
    nats = bases = 0.0
    orders = {}
    for c, name in enumerate(train.classes):
        tr = [s for s, y in zip(train.seqs, train.labels) if y == c]
        va = [s for s, y in zip(val.seqs, val.labels) if y == c]
        if not tr or not va:
            continue
        model = MarkovLM.fit(tr, val=va)
        n = sum(len(s) for s in va)
        nats += model.bits_per_base(va) * LN2 * n
        bases += n
        orders[name] = int(model.order)
    return {"order": max(orders.values()) if orders else 0, "orders": orders,
            "bits_per_base": round(nats / max(bases, 1) / LN2, 5),
            "note": "one k-mer Markov LM per class, order chosen on the same validation sequences"}


ARCHITECTURES = {(True, True): "Caduceus-PS (RC-equivariant BiMamba)", (True, False): "Caduceus-Ph / BiMamba",
                 (False, False): "causal Mamba (the AR baseline)"}


def write_model_card(directory: Path, cfg: dict, summary: dict, genome, labelled=None) -> None:
    """README.md of an exported model directory: architecture, objective, data, training, held-out bits/base with its
    standard error next to the Markov yardstick, init source, data licence, and how to load it."""
    m, d, o = cfg["model"], cfg["data"], cfg["optim"]
    config = read_json(directory / "config.json") or {}
    arch = ARCHITECTURES.get((bool(config.get("bidirectional", True)), bool(config.get("rcps", False))), "Caduceus")
    held = summary.get("heldout") or {}
    yard = summary.get("markov_yardstick") or {}
    bound = "<= " if held.get("upper_bound") else ""
    se = f" ± {held['stderr_bits_per_base']:.4f}" if "stderr_bits_per_base" in held else ""
    heldout = (f"{bound}{held['bits_per_base']:.4f}{se} bits/base on {held['windows']} validation windows "
               f"({held['bases']:,} bases)" if held else "no validation split")
    holdouts = ", ".join(cfg.get("val_regions") or []) + " ".join(cfg.get("val_records") or [])
    tests = ", ".join((cfg.get("test_regions") or []) + (cfg.get("test_records") or []))
    files = ", ".join(Path(f).name for f in cfg["fasta"]) or Path(str(cfg.get("labels"))).name
    bundled = any("chr20_demo" in Path(f).name for f in cfg["fasta"])
    objective = {"mdlm": f"MDLM (masked diffusion, {cfg['schedule']} schedule); likelihoods are NELBO upper bounds",
                 "ar": "next-base prediction (autoregressive); likelihoods are exact"}[cfg["objective"]]
    facts = [
        ("architecture", f"{arch}, d_model {m.get('d_model')}, {m.get('n_layer')} layers, "
                         f"{summary.get('parameters', 0):,} parameters"),
        ("objective", objective),
        ("initialised from", cfg.get("init") or "random initialisation"),
        ("training data", f"{files}: {len(genome.lengths)} record(s), {sum(genome.lengths.values()):,} bp" if genome
         else f"{files}: {len(labelled)} labelled sequences, classes "
              f"{', '.join(f'{k} ({v})' for k, v in labelled.class_counts().items())}; class-conditional, label "
              f"dropout {summary.get('cond_dropout')}"),
        ("held out", f"validation {holdouts or 'none'}; test {tests or 'none'}"),
        ("training", f"{summary.get('steps', 0):,} steps x {d['batch_size']} windows x {d['window']} bp "
                     f"({summary.get('train_bases', 0):,} bases seen), lr {o['lr']}, seed {cfg['seed']}, "
                     f"{summary.get('seconds', 0):.0f} s wall time"),
        ("held-out bits/base", heldout),
        ("k-mer Markov LM on the same windows", f"{yard['bits_per_base']:.4f} bits/base (order {yard['order']})"
         if yard else "not computed"),
    ]
    licence = ("The bundled excerpt is GRCh37 human reference sequence, public data (provenance in "
               "dna_mdlm/resources/README.md)." if bundled else
               "The weights derive from the training data listed above: check its licence before sharing them.")
    sections = {
        "Data licence": licence,
        "How to load": f"""```python
from dna_mdlm import load_language_model, sample, likelihood
lm = load_language_model("{directory.name}")      # this directory, or its hub id after upload
seqs = sample(lm, num_samples=4, length={d['window']}, seed=0)
```
or on the command line: `dna-mdlm likelihood --model {directory.name} --fasta genome.fa`. The directory is a
Hugging Face `save_pretrained` directory (config.json + model.safetensors); loading never runs remote code.""",
        "Made with": "dna-mdlm `pretrain`; the full settings are in the run's `run_config.json`.",
    }
    title = f"{directory.parent.name}/{directory.name}: a dna-mdlm {cfg['objective'].upper()} model"
    atomic_write_text(directory / "README.md", render_model_card(title, facts, sections))


def pretrain_markov(cfg: dict, out: Path) -> dict:
    """The k-mer Markov baseline through the same verb: counts on the training split, order chosen on val."""
    genome = GenomeWindows(cfg["fasta"], bed=cfg.get("bed"), window=1, val_records=cfg.get("val_records") or (),
                           val_regions=cfg.get("val_regions") or (), test_records=cfg.get("test_records") or (),
                           test_regions=cfg.get("test_regions") or (), unknown=cfg["data"]["unknown"])
    read = lambda ivs: [genome.read(iv.record, iv.start, iv.end) for iv in ivs]  # noqa: E731
    start = time.time()
    val = read(genome.val_intervals) or None
    model = MarkovLM.fit(read(genome.train_intervals), k=cfg.get("model", {}).get("order"), val=val)
    model.save_pretrained(out / "model")
    summary = {"objective": "markov", "status": "finished", "order": model.order,
               "seconds": round(time.time() - start, 1), "model_dir": str(out / "model")}
    if val:
        summary["val_bpd"] = round(model.bits_per_base(val), 5)
    write_json(out / RUN_CONFIG, cfg)
    write_json(out / "summary.json", {**summary, "config": cfg})
    return summary
