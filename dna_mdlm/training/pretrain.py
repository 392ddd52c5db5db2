"""Pretraining with Lightning: the MDLM (or AR) LightningModule, EMA, optimizer groups, checkpoints, export.

`PretrainModule` trains a `CaduceusForMaskedLM` with the MDLM NELBO (dna_mdlm/diffusion/mdlm.py) or, for
the AR baseline, next-base cross-entropy on the same backbone made causal. Validation runs with the EMA
weights and reports nats, bits and perplexity per scored base. `pretrain()` wires a `GenomeDataModule`,
a Trainer (devices / nodes / DDP / FSDP from Lightning), atomic checkpoints (`last.ckpt`, best by
validation), the exported model directory (EMA weights, written at each new best and at the end), CSV logs
and a loss-curve PNG.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..diffusion.mdlm import MDLM, scorable, stratified_times
from .._quiet import quiet_libraries
from ..errors import InputError, atomic_path
from ..baselines.ar import ar_token_nll
from ..baselines.markov import markov_yardstick
from ..models import CaduceusConfig, CaduceusForMaskedLM
from ..tokenizer import DNATokenizer

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------------


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
                self.shadow[n].mul_(d).add_(p.detach().float(), alpha=1 - d)

    @torch.no_grad()
    def swap(self, model: torch.nn.Module) -> None:
        """Exchange live and EMA weights (call twice to restore)."""
        for n, p in model.named_parameters():
            if n in self.shadow:
                tmp = p.detach().clone()
                p.copy_(self.shadow[n].to(p.dtype))
                self.shadow[n].copy_(tmp.float())

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


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename, so a kill never leaves a truncated .ckpt."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------
# the LightningModule
# ---------------------------------------------------------------------------------------------------


class PretrainModule(pl.LightningModule):
    def __init__(self, model_cfg: dict, objective: str = "mdlm", schedule: str = "loglinear", lr: float = 1e-3,
                 weight_decay: float = 0.0, betas=(0.9, 0.95), warmup_steps: int = 100, lr_schedule: str = "cosine",
                 min_lr_ratio: float = 0.1, max_steps: int = 1000, ema_decay: float = 0.999, seed: int = 0,
                 window: int = 1024):
        super().__init__()
        self.save_hyperparameters()
        if objective not in ("mdlm", "ar"):
            raise InputError(f"objective: expected mdlm or ar for a neural model, got {objective!r}")
        cfg = dict(model_cfg)
        if objective == "ar":
            cfg.update(bidirectional=False, rcps=False)
        self.config = CaduceusConfig(objective=objective, **cfg)
        self.config.train_window = window
        self.config.schedule = schedule
        self.model = CaduceusForMaskedLM(self.config)
        self.mdlm = MDLM(self.model, schedule) if objective == "mdlm" else None
        self.ema = EMA(self.model, ema_decay) if ema_decay else None
        self._val = None

    # --- losses -----------------------------------------------------------------------------------
    def token_losses(self, batch, t=None, generator=None):
        """(per-token nats (B, L), scored mask (B, L)); MDLM values are NELBO terms (upper bound)."""
        x, score = batch["input_ids"], batch["loss_mask"]
        if self.mdlm is not None:
            tok, s = self.mdlm.token_nelbo(x, t, generator=generator)
            score = score & s
        else:
            tok = ar_token_nll(self.model, x)
            score = score & scorable(x)
        return torch.where(score, tok, torch.zeros_like(tok)), score

    def _noise(self, n: int, stage: str, batch_idx: int = 0):
        """Times and mask draws from a generator seeded by (seed, step, rank): a resumed run draws exactly
        what the uninterrupted one would have, and every validation pass uses the same draws."""
        if self.mdlm is None:
            return None, None
        step = self.global_step if stage == "train" else 10**9 + batch_idx
        g_t = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + step)
        # One uniform shared by every rank, each rank taking its slice of the global batch: the
        # stratification covers [eps, 1] across the whole global batch.
        world = self.trainer.world_size if self._trainer else 1
        t = stratified_times(n, self.mdlm.sampling_eps, None, g_t, offset=self.global_rank * n, total=world * n)
        g_mask = torch.Generator().manual_seed((self.hparams.seed * 1_000_003 + step) * 64 + self.global_rank + 1)
        return t.to(self.device), g_mask

    def training_step(self, batch, batch_idx):
        t, g = self._noise(batch["input_ids"].shape[0], "train")
        tok, score = self.token_losses(batch, t, g)
        n = score.sum()
        # A batch with nothing scorable (all N) contributes exactly zero, never NaN.
        loss = tok.sum() / n.clamp_min(1)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=int(n.clamp_min(1)))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update(self.model)

    # --- validation with EMA weights --------------------------------------------------------------
    def on_validation_epoch_start(self):
        if self.ema is not None:
            self.ema.swap(self.model)
        self._val = [torch.zeros((), dtype=torch.float64, device=self.device),
                     torch.zeros((), dtype=torch.float64, device=self.device)]

    def validation_step(self, batch, batch_idx):
        t, g = self._noise(batch["input_ids"].shape[0], "val", batch_idx)
        tok, score = self.token_losses(batch, t, g)
        self._val[0] += tok.double().sum()
        self._val[1] += score.sum().double()

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
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(h.warmup_steps, h.max_steps, h.lr_schedule, h.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint):
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])

    # --- export -----------------------------------------------------------------------------------
    def export(self, directory: str | os.PathLike, extra: dict | None = None) -> None:
        """Write the model directory (EMA weights) atomically: config.json, model.safetensors, tokenizer."""
        model = copy.deepcopy(self.model).cpu().float()
        if self.ema is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self.ema.shadow:
                        p.copy_(self.ema.shadow[n].cpu())
        with atomic_path(directory) as tmp:
            model.save_pretrained(tmp)
            DNATokenizer().save_pretrained(tmp)
            meta = {"step": int(self.global_step), "ema": self.ema is not None, **(extra or {})}
            (tmp / "training_state.json").write_text(json.dumps(meta, indent=1))


class ExportModel(Callback):
    """Export the model directory whenever validation improves, and at the end of training."""

    def __init__(self, directory: Path, monitor: str = "val/nll"):
        self.directory, self.monitor, self.best = Path(directory), monitor, math.inf

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
    """Training loss and validation bits/base from Lightning's CSV log."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(Path(log_dir).rglob("metrics.csv"))
    if not files:
        return None
    train, val = [], []
    for f in files:
        with open(f) as fh:
            for row in csv.DictReader(fh):
                if row.get("train/loss"):
                    train.append((int(row["step"]), float(row["train/loss"]) / LN2))
                if row.get("val/bpd"):
                    val.append((int(row["step"]), float(row["val/bpd"])))
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*sorted(train)), lw=0.8, alpha=0.7, label="train loss (bits/base)")
    if val:
        ax.plot(*zip(*sorted(val)), "o-", label="validation (bits/base)")
    ax.axhline(2.0, ls=":", c="grey", label="uniform (2 bits)")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per base")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out_png


# ---------------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------------

DEFAULTS = {
    "objective": "mdlm",
    "schedule": "loglinear",
    "seed": 0,
    "model": {"d_model": 64, "n_layer": 4, "rcps": True},
    "data": {"window": 1024, "batch_size": 16, "num_workers": 0, "max_n_frac": 0.5, "rc_aug": None, "unknown": "error",
             "train_samples_per_epoch": 100_000, "max_val_windows": 256, "max_test_windows": 256},
    "optim": {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.95], "warmup_steps": 100, "lr_schedule": "cosine",
              "min_lr_ratio": 0.1, "grad_clip": 1.0, "ema_decay": 0.999},
    "trainer": {"max_steps": 1000, "max_time": None, "val_every": 250, "accelerator": "auto", "devices": 1,
                "num_nodes": 1, "strategy": "auto", "precision": "auto", "log_every": 10, "progress_bar": True},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def check_config(cfg: dict) -> None:
    unknown = set(cfg) - set(DEFAULTS) - {"fasta", "bed", "val_regions", "val_records", "test_regions", "test_records",
                                           "description"}
    if unknown:
        raise InputError(f"config: unknown top-level key(s) {sorted(unknown)}; expected {sorted(DEFAULTS)}")
    for section in ("data", "optim", "trainer"):
        bad = set(cfg[section]) - set(DEFAULTS[section])
        if bad:
            raise InputError(f"config: unknown key(s) {sorted(bad)} in '{section}'; expected {sorted(DEFAULTS[section])}")
    if cfg["objective"] not in ("mdlm", "ar", "markov"):
        raise InputError(f"objective: expected mdlm, ar or markov, got {cfg['objective']!r}")


def check_sequence(genome, intervals, chunk: int = 1 << 22) -> None:
    """Read every training base once, so an invalid character fails now (file, record, line) rather than
    mid-run with half a run directory written. About 1 s per 60 Mb."""
    for iv in intervals:
        for lo in range(iv.start, iv.end, chunk):
            genome.read(iv.record, lo, min(iv.end, lo + chunk))


def _precision(cfg_precision: str, accelerator: str) -> str:
    if cfg_precision != "auto":
        return cfg_precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"  # bf16 autocast on GPU; fp32 on CPU


def pretrain(cfg: dict, out_dir: str | os.PathLike, resume: bool = False) -> dict:
    """Train per `cfg` (DEFAULTS merged with a recipe and overrides) into `out_dir`; returns a summary dict.

    out_dir/checkpoints/{last,best}.ckpt (resume), out_dir/model (best EMA weights, what verbs consume),
    out_dir/final_model, out_dir/logs (CSV), out_dir/loss_curve.png, out_dir/summary.json.
    """
    from lightning.pytorch.loggers import CSVLogger

    from ..data.datamodules import GenomeDataModule

    quiet_libraries()
    cfg = merge(DEFAULTS, cfg)
    check_config(cfg)
    out = Path(out_dir)
    if cfg["objective"] == "markov":
        return pretrain_markov(cfg, out)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise InputError(f"--resume: no checkpoint at {last} to resume from")
    if not resume and last.exists():
        raise InputError(f"--out {out}: already holds a run (checkpoints/last.ckpt); pass --resume or choose a new --out")
    d, o, tr = cfg["data"], cfg["optim"], cfg["trainer"]
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    rc_aug = d["rc_aug"] if d["rc_aug"] is not None else not cfg["model"].get("rcps", True)
    dm = GenomeDataModule(
        fasta=cfg["fasta"], bed=cfg.get("bed"), window=d["window"], batch_size=d["batch_size"],
        num_workers=d["num_workers"], val_records=cfg.get("val_records") or (), val_regions=cfg.get("val_regions") or (),
        test_records=cfg.get("test_records") or (), test_regions=cfg.get("test_regions") or (),
        max_n_frac=d["max_n_frac"], rc_aug=rc_aug, seed=cfg["seed"], train_samples_per_epoch=d["train_samples_per_epoch"],
        max_val_windows=d["max_val_windows"], max_test_windows=d["max_test_windows"], unknown=d["unknown"],
    )
    dm.setup()  # validate every input before anything is written
    check_sequence(dm.genome, dm.genome.train_intervals)
    module = PretrainModule(
        cfg["model"], cfg["objective"], cfg["schedule"], lr=o["lr"], weight_decay=o["weight_decay"], betas=o["betas"],
        warmup_steps=o["warmup_steps"], lr_schedule=o["lr_schedule"], min_lr_ratio=o["min_lr_ratio"],
        max_steps=tr["max_steps"], ema_decay=o["ema_decay"], seed=cfg["seed"], window=d["window"],
    )
    has_val = len(dm._eval_set("val")) > 0
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/nll" if has_val else None, mode="min",
                        save_top_k=1 if has_val else 0, save_last=True, every_n_train_steps=tr["val_every"]),
        ExportModel(out / "model"),
    ]
    if tr["progress_bar"]:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=max(1, tr["log_every"])))
    loggers = [CSVLogger(out, name="logs", version=0)]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(out, name="tensorboard", version=0))
    except ImportError:
        pass
    strategy = tr["strategy"]
    if strategy == "ddp" and (tr["accelerator"] == "cpu" or not torch.cuda.is_available()):
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    trainer = pl.Trainer(
        max_steps=tr["max_steps"], max_time=tr["max_time"], val_check_interval=tr["val_every"] if has_val else None,
        check_val_every_n_epoch=None, **({} if has_val else {"limit_val_batches": 0}), accelerator=tr["accelerator"],
        devices=tr["devices"], num_nodes=tr["num_nodes"], strategy=strategy, precision=_precision(tr["precision"], tr["accelerator"]),
        gradient_clip_val=o["grad_clip"], callbacks=callbacks, logger=loggers, log_every_n_steps=tr["log_every"],
        enable_progress_bar=tr["progress_bar"], enable_model_summary=False, plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0, use_distributed_sampler=False, default_root_dir=out,
    )
    start = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None, weights_only=True)
    summary = {"objective": cfg["objective"], "steps": int(trainer.global_step), "seconds": round(time.time() - start, 1),
               "parameters": sum(p.numel() for p in module.model.parameters()), "model_dir": str(out / "model"),
               "train_bases": int(trainer.global_step * d["batch_size"] * d["window"])}
    if trainer.global_rank == 0:
        for key in ("val/nll", "val/bpd", "val/ppl"):
            if key in trainer.callback_metrics:
                summary[key.replace("/", "_")] = round(float(trainer.callback_metrics[key]), 5)
        if has_val:  # the yardstick every pretraining run is judged against, on the same validation bases
            summary.update(markov_yardstick(dm.genome, dm._eval_set("val")))
        plot_loss_curve(out / "logs", out / "loss_curve.png")
        with atomic_path(out / "summary.json") as tmp:
            tmp.write_text(json.dumps({**summary, "config": cfg}, indent=1, default=str))
    return summary


def pretrain_markov(cfg: dict, out: Path) -> dict:
    """The k-mer Markov baseline through the same verb: counts on the training split, order chosen on val."""
    from ..baselines.markov import MarkovLM
    from ..data.genome import GenomeWindows

    genome = GenomeWindows(cfg["fasta"], bed=cfg.get("bed"), window=1, val_records=cfg.get("val_records") or (),
                           val_regions=cfg.get("val_regions") or (), test_records=cfg.get("test_records") or (),
                           test_regions=cfg.get("test_regions") or ())
    read = lambda ivs: [genome.read(iv.record, iv.start, iv.end) for iv in ivs]  # noqa: E731
    start = time.time()
    val = read(genome.val_intervals) or None
    model = MarkovLM.fit(read(genome.train_intervals), k=cfg.get("model", {}).get("order"), val=val)
    model.save_pretrained(out / "model")
    summary = {"objective": "markov", "order": model.order, "seconds": round(time.time() - start, 1),
               "model_dir": str(out / "model")}
    if val:
        summary["val_bpd"] = round(model.bits_per_base(val), 5)
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps({**summary, "config": cfg}, indent=1, default=str))
    return summary
