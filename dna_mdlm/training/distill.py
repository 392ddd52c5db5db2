"""Few-step MDLM students by self-distillation through time (SDTT).

Deschenaux & Gulcehre, "Beyond Autoregression: Fast LLMs via Self-Distillation Through Time", arXiv 2410.21035
(method read in jdeschena/sdtt `core/distill/multi_round_sdtt.py`; nothing copied). A teacher MDLM that samples
well in T reverse steps per window teaches a student, initialised from it, to do in one step what the teacher
does in two:

* a clean training window x is masked at a time t (z_t ~ q(z_t | x), one stratified t per window);
* the teacher takes two ancestral steps of size dt = 1/T from z_t: p1 = x_teacher(z_t), an ancestral draw to
  z_{t-dt}, then p2 = x_teacher(z_{t-dt});
* the target at each position masked in z_t is p1 where the first step unmasked it, else p2 (the teacher's
  two-step distribution, position by position), and the student's x_student(z_t) is fitted to it with a KL
  divergence (`kl-bwd` = KL(student || target), the reference config's default, or `kl-fwd`) over the masked
  A/C/G/T positions.

A round lasts `steps_per_round` optimiser steps; then the student (its EMA weights) becomes the teacher of the
next round and the step count halves: after R rounds a teacher of T0 steps has a student of T0 / 2^R steps.
Each round's student is exported as an ordinary model directory (`OUT/round-r`; the last one also as
`OUT/model`) whose config records `distillation` (method, teacher, teacher_steps, rounds, steps), so `sample`
uses its own step count by default and every verb loads it.

The run is a Lightning fit like pretraining (`training.common`: EMA, AdamW groups, warm-up, NonFiniteGuard,
AtomicCheckpointIO, export_model_dir; `OUT/run_config.json` + `--resume` continue exactly: the noise of step n
comes from a generator seeded by (seed, n), the data stream is `GenomeDataModule`'s resumable one, and the round,
the teacher's weights and the EMA are in the checkpoint). Validation (with the EMA weights) reports the student's
KL to the teacher's two-step target next to the KL of the teacher's own one-step prediction: the comparison that
says whether the student learnt anything a plain T/2-step teacher does not already do.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from .._quiet import quiet_libraries
from ..data.datamodules import GenomeDataModule
from ..diffusion.mdlm import MDLM, mask_tokens, stratified_times
from ..diffusion.sampling import AncestralUnmasker, ReverseStep
from ..errors import InputError, TrainingDiverged
from ..io.writers import write_json
from ..loading import as_language_model, load_model
from ..tokenizer import MASK_ID
from .common import (
    EMA,
    AtomicCheckpointIO,
    NonFiniteGuard,
    StepCheckpoint,
    ValidateAtLastStep,
    export_model_dir,
    optimizer_groups,
    read_json,
    run_status,
    segment_timer,
    warmup_cosine,
)
from .pretrain import _precision, _segment_number, check_sequence
from .recipes import DISTILL_SCHEMA, check_fields, explicit_settings, flatten, merge, normalize_precision

RUN_CONFIG = "run_config.json"
DIVERGENCES = ("kl-bwd", "kl-fwd")
DISTILL_DEFAULTS = {
    "teacher": None,              # the teacher model directory (an MDLM)
    "teacher_steps": None,        # T0: the teacher's reverse steps per window (default: its own, else 128)
    "rounds": 1,                  # halvings: the student samples in teacher_steps / 2^rounds steps
    "divergence": "kl-bwd",       # KL(student || teacher's two-step target) or kl-fwd
    "seed": 0,
    "data": {"window": None, "batch_size": 8, "num_workers": 0, "max_n_frac": 0.5, "rc_aug": None,
             "unknown": "error", "train_samples_per_epoch": 100_000, "max_val_windows": 32},
    "optim": {"lr": 3e-4, "weight_decay": 0.0, "betas": [0.9, 0.95], "warmup_steps": 20, "grad_clip": 1.0,
              "ema_decay": 0.99},
    "trainer": {"steps_per_round": 200, "max_time": None, "accelerator": "auto", "devices": 1, "precision": "auto",
                "log_every": 10, "progress_bar": True},
}
DATA_KEYS = ("fasta", "bed", "val_regions", "val_records", "test_regions", "test_records")
# What a resumed run may change: more rounds, its time budget and the hardware.
RESUMABLE = {"rounds", "trainer.max_time", "trainer.accelerator", "trainer.devices", "trainer.precision",
             "trainer.progress_bar", "trainer.log_every", "data.num_workers", "description"}


# ---------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------


def distill_settings(recipe: str | os.PathLike | None = None, flags: dict | None = None,
                     overrides: list[str] | None = None) -> dict:
    """The user's explicit settings: a recipe (`dna_mdlm/configs/distill/*.yaml` or a YAML file), then flags
    (None values ignored), then `--set` overrides. Defaults and the teacher's data come in `resolve_distill`."""
    return explicit_settings("distill", DISTILL_SCHEMA, recipe, flags, overrides)


def resolve_distill(settings: dict) -> dict:
    """A fresh run's full settings: defaults, then the teacher run's data (its `run_config.json` beside the model
    directory: FASTA, held-out regions and how IUPAC codes were read) when no `fasta` is given, then `settings`;
    validated."""
    cfg = merge(DISTILL_DEFAULTS, settings)
    if not cfg.get("teacher"):
        raise InputError("--teacher: required (an MDLM model directory)")
    teacher = Path(cfg["teacher"])
    cfg["teacher"] = str(teacher.resolve()) if teacher.exists() else str(teacher)
    if not cfg.get("fasta"):
        run = read_json(teacher.resolve().parent / "run_config.json") if teacher.exists() else None
        if not run or not run.get("fasta"):
            raise InputError(f"--fasta: needed (the teacher {teacher} has no run_config.json beside it naming its "
                             f"training data; give the FASTA it was trained on, with --val-region for a held-out part)")
        for key in DATA_KEYS:
            if run.get(key) and not cfg.get(key):
                cfg[key] = run[key]
        # The teacher's FASTA is read as the teacher run read it (`pretrain --unknown N` for IUPAC codes).
        if "unknown" not in (settings.get("data") or {}) and (run.get("data") or {}).get("unknown"):
            cfg["data"]["unknown"] = run["data"]["unknown"]
    if isinstance(cfg["fasta"], (str, os.PathLike)):
        cfg["fasta"] = [cfg["fasta"]]
    cfg["fasta"] = [str(Path(f).resolve()) if Path(f).exists() else str(f) for f in cfg["fasta"]]
    for key in ("val_regions", "val_records", "test_regions", "test_records"):
        if isinstance(cfg.get(key), str):
            cfg[key] = [cfg[key]]
    return check_distill(cfg)


def check_distill(cfg: dict) -> dict:
    """Validate merged settings (unknown keys, ranges); one-line InputErrors."""
    unknown = set(cfg) - set(DISTILL_DEFAULTS) - set(DATA_KEYS) - {"description"}
    if unknown:
        raise InputError(f"config: unknown top-level key(s) {sorted(unknown)}; expected "
                         f"{sorted(set(DISTILL_DEFAULTS) | set(DATA_KEYS))}")
    for section in ("data", "optim", "trainer"):
        if not isinstance(cfg[section], dict):
            raise InputError(f"config: '{section}' must be a mapping of settings")
        bad = set(cfg[section]) - set(DISTILL_DEFAULTS[section])
        if bad:
            raise InputError(f"config: unknown key(s) {sorted(bad)} in '{section}'; expected "
                             f"{sorted(DISTILL_DEFAULTS[section])}")
    check_fields(cfg, DISTILL_SCHEMA)  # types and ranges of every value (rounds, steps, lr, window, unknown, ...)
    t0 = cfg["teacher_steps"]
    if t0 is not None and t0 % (2 ** cfg["rounds"]):
        raise InputError(f"--rounds {cfg['rounds']}: --teacher-steps {t0} cannot be halved {cfg['rounds']} times "
                         f"(use a multiple of {2 ** cfg['rounds']}, e.g. {2 ** cfg['rounds'] * max(1, t0 // 2 ** cfg['rounds'])})")
    if cfg["divergence"] not in DIVERGENCES:
        raise InputError(f"divergence {cfg['divergence']!r}: expected one of {', '.join(DIVERGENCES)}")
    cfg["trainer"]["precision"] = normalize_precision(cfg["trainer"]["precision"])
    return cfg


def _reconcile_resume(saved: dict, settings: dict, out: Path) -> dict:
    """The saved run's settings, with the explicit ones `RESUMABLE` lets change; an InputError naming the first
    explicit setting that contradicts the saved run."""
    explicit = flatten(settings)
    saved_flat = flatten(saved)
    changed: dict = {}
    for key, value in explicit.items():
        if key == "teacher":
            value = str(Path(value).resolve()) if Path(value).exists() else str(value)
        if key in RESUMABLE:
            node = changed
            for part in key.split(".")[:-1]:
                node = node.setdefault(part, {})
            node[key.split(".")[-1]] = value
        elif key in saved_flat and saved_flat[key] != value and not (key == "fasta" and saved_flat[key] == [value]):
            raise InputError(f"--resume: {key} = {value!r} contradicts the saved run ({saved_flat[key]!r} in "
                             f"{out / RUN_CONFIG}); only {', '.join(sorted(RESUMABLE))} may change")
    return check_distill(merge(saved, changed))


# ---------------------------------------------------------------------------------------------------
# the LightningModule
# ---------------------------------------------------------------------------------------------------


class DistillModule(pl.LightningModule):
    """Student and teacher MDLMs (same architecture) and the SDTT objective; owns the round schedule.

    round r (1-based) distils a teacher of `teacher_steps / 2^(r-1)` reverse steps into a student of half as
    many; it covers optimiser steps [(r-1) * steps_per_round, r * steps_per_round)."""

    def __init__(self, teacher_model: torch.nn.Module, teacher_steps: int, steps_per_round: int,
                 divergence: str = "kl-bwd", lr: float = 3e-4, weight_decay: float = 0.0, betas=(0.9, 0.95),
                 warmup_steps: int = 20, ema_decay: float = 0.99, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["teacher_model"])
        self.teacher = MDLM(copy.deepcopy(teacher_model).float())
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.student = MDLM(copy.deepcopy(teacher_model).float())
        self.student.model.train()
        self.ema = EMA(self.student.model, ema_decay) if ema_decay else None
        self.round = 1
        self._val = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # Lightning switches every submodule to train mode; the teacher only ever predicts
        return self

    # --- the objective ------------------------------------------------------------------------------
    def teacher_steps_now(self) -> int:
        return self.hparams.teacher_steps // 2 ** (self.round - 1)

    def _noise(self, n: int, stage: str, batch_idx: int = 0):
        step = self.global_step if stage == "train" else 10**9 + batch_idx
        g = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + step)
        return stratified_times(n, self.student.sampling_eps, None, g).to(self.device), g

    def sdtt_loss(self, x: torch.Tensor, loss_mask: torch.Tensor, t: torch.Tensor, generator: torch.Generator):
        """(mean KL per masked scored base of the student, same for the teacher's own one-step prediction, count).

        x (B, L) clean windows, t (B,) times; the teacher's two steps of size 1/T end at clean data when they
        would pass t = 0 (as the sampler's last step does)."""
        schedule = self.teacher.schedule
        dt = 1.0 / self.teacher_steps_now()
        move = lambda tt: (1 - schedule.alpha(tt.double())).clamp(0, 1)  # noqa: E731
        m_t = move(t)
        z_t = mask_tokens(x, m_t.float(), generator)
        s = (t.double() - dt).clamp_min(0)
        m_s = torch.where(s > 0, move(s), torch.zeros_like(s))
        with torch.no_grad():
            logp1 = self.teacher.denoise(z_t, t)
            step = ReverseStep(0.0, m_t[:, None, None], m_s[:, None, None], 1.0, None)
            vocab = torch.arange(logp1.shape[-1], device=x.device)
            z_mid = AncestralUnmasker().step(z_t, logp1.exp(), step, vocab, generator)
            logp2 = self.teacher.denoise(z_mid, s.float())
            first = (z_t == MASK_ID) & (z_mid != MASK_ID)
            target = torch.where(first[..., None], logp1, logp2)
        logq = self.student.denoise(z_t, t)
        scored = (z_t == MASK_ID) & loss_mask.bool()
        n = scored.sum()
        kl_student = self._divergence(logq, target)
        kl_teacher = self._divergence(logp1, target)
        zero = torch.zeros_like(kl_student)
        mean = lambda v: torch.where(scored, v, zero).sum() / n.clamp_min(1)  # noqa: E731
        return mean(kl_student), mean(kl_teacher).detach(), n

    def _divergence(self, logq: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """Per-position KL over the vocabulary; SUBS's -1e6 at [MASK] carries no mass on either side."""
        if self.hparams.divergence == "kl-fwd":
            return (logp.exp() * (logp - logq)).sum(-1)
        return (logq.exp() * (logq - logp)).sum(-1)

    # --- training -------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        t, g = self._noise(batch["input_ids"].shape[0], "train")
        loss, base, n = self.sdtt_loss(batch["input_ids"], batch["loss_mask"], t, g)
        self.log_dict({"train/kl": loss, "train/kl_teacher_one_step": base, "round": float(self.round)},
                      prog_bar=True, on_step=True, on_epoch=False, batch_size=int(n.clamp_min(1)))
        return loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # Here rather than in on_train_batch_end: Lightning runs the checkpoint callback's on_train_batch_end
        # first, which would save an EMA one update behind the weights and make a resumed run differ.
        if self.ema is not None:
            self.ema.update(self.student.model)

    def student_weights(self) -> torch.nn.Module:
        """A CPU float copy of the student with its EMA weights (what is exported and what teaches next)."""
        model = copy.deepcopy(self.student.model).cpu().float()
        if self.ema is not None:
            self.ema.copy_to(model)
        return model

    def next_round(self) -> None:
        """The finished student (EMA weights) becomes the teacher; the student restarts from it; EMA restarts."""
        weights = self.student_weights().state_dict()
        self.teacher.model.load_state_dict(weights)
        self.student.model.load_state_dict(weights)
        if self.ema is not None:
            self.ema = EMA(self.student.model, self.hparams.ema_decay)
        self.round += 1

    # --- validation with EMA weights ------------------------------------------------------------
    def on_validation_epoch_start(self):
        if self.ema is not None:
            self.ema.swap(self.student.model)
        self._val = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        t, g = self._noise(batch["input_ids"].shape[0], "val", batch_idx)
        kl, base, n = self.sdtt_loss(batch["input_ids"], batch["loss_mask"], t, g)
        self._val += torch.stack([kl.double() * n, base.double() * n, n.double()])

    def on_validation_epoch_end(self):
        kl, base, n = self._val
        self.log_dict({"val/kl": (kl / n.clamp_min(1)).float(), "val/kl_teacher_one_step": (base / n.clamp_min(1)).float(),
                       "val/round": float(self.round)})
        if self.ema is not None:
            self.ema.swap(self.student.model)

    # --- optimisation and checkpoints ------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(optimizer_groups(self.student.model, h.weight_decay), lr=h.lr, betas=tuple(h.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(h.warmup_steps, 1, "constant"))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["sdtt_round"] = self.round
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint):
        self.round = int(checkpoint.get("sdtt_round", 1))
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])


class Rounds(Callback):
    """Advances the rounds at their boundaries and exports each finished student as a model directory."""

    def __init__(self, out: Path, cfg: dict):
        self.out, self.cfg = Path(out), cfg
        self.validated: dict[int, dict] = {}

    def export(self, module: DistillModule, directory: Path) -> None:
        model = module.student_weights()
        t0, r = module.hparams.teacher_steps, module.round
        model.config.distillation = {"method": "SDTT (arXiv 2410.21035)", "teacher": self.cfg["teacher"],
                                     "teacher_steps": t0, "rounds": r, "steps": t0 // 2 ** r,
                                     "divergence": module.hparams.divergence}
        meta = {"step": int(module.global_step), "round": r, "ema": module.ema is not None,
                **self.validated.get(r, {})}
        export_model_dir(model, directory, {"training_state.json": meta})

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        # A checkpoint taken at a round's last step resumes here too: the switch happens exactly once.
        while trainer.global_step >= module.round * module.hparams.steps_per_round:
            if trainer.global_rank == 0:
                self.export(module, self.out / f"round-{module.round}")
            module.next_round()

    def on_validation_end(self, trainer, module):
        metrics = trainer.callback_metrics
        if "val/kl" in metrics:
            self.validated[module.round] = {"val_kl": round(float(metrics["val/kl"]), 6),
                                            "val_kl_teacher_one_step": round(float(metrics["val/kl_teacher_one_step"]), 6)}

    def on_train_end(self, trainer, module):
        finished = trainer.global_step >= module.round * module.hparams.steps_per_round
        if trainer.global_rank == 0 and finished:
            self.export(module, self.out / f"round-{module.round}")
            self.export(module, self.out / "model")

    def state_dict(self):
        return {"validated": {str(k): v for k, v in self.validated.items()}}

    def load_state_dict(self, state):
        self.validated = {int(k): v for k, v in state.get("validated", {}).items()}


# ---------------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------------


def _teacher(path) -> torch.nn.Module:
    try:
        model, kind = load_model(path, "cpu")
        lm = as_language_model(model, kind, path, "distill")
    except InputError as exc:  # the same checks as every verb, named by this verb's flag
        raise InputError(str(exc).replace("--model", "--teacher", 1)) from None
    if not isinstance(lm, MDLM):
        raise InputError(f"--teacher {path}: a {kind} model; distillation needs an MDLM teacher")
    return model


def distill(settings: dict, out_dir: str | os.PathLike, resume: bool = False) -> dict:
    """Distil per `settings` (`distill_settings`: recipe + flags + overrides) into `out_dir`; returns a summary.

    out_dir/run_config.json (the resolved settings; what `resume` reads back), checkpoints/last.ckpt, round-r/
    (each round's student), model/ (the last round's student: what other verbs use), logs/segment-N/metrics.csv,
    summary.json. Raises InputError (nothing written) for bad settings, and TrainingDiverged when a loss, gradient
    or weight becomes non-finite (the last finite checkpoint stays)."""
    quiet_libraries()
    # The teacher sits in eval mode on purpose (it only predicts); Lightning warns about any such module.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    out = Path(out_dir)
    saved = read_json(out / RUN_CONFIG)
    last = out / "checkpoints" / "last.ckpt"
    if resume:
        if saved is None:
            raise InputError(f"--resume: {out} holds no run to resume ({RUN_CONFIG} missing); start one without --resume")
        if not last.is_file():
            raise InputError(f"--resume: {out} has no checkpoint yet ({last} missing); start it again with a new --out")
        cfg = _reconcile_resume(saved, settings, out)
    else:
        if saved is not None or last.exists():
            raise InputError(f"--out {out}: already holds a run; pass --resume to continue it or choose a new --out")
        cfg = resolve_distill(settings)
    teacher_model = _teacher(cfg["teacher"])
    distilled = getattr(teacher_model.config, "distillation", None) or {}
    if cfg["teacher_steps"] is None:
        cfg["teacher_steps"] = int(distilled.get("steps") or 128)
        check_distill(cfg)
    if cfg["teacher_steps"] // 2 ** cfg["rounds"] < 1:
        raise InputError(f"--rounds {cfg['rounds']}: a teacher of {cfg['teacher_steps']} steps can be halved at most "
                         f"{int(math.log2(cfg['teacher_steps']))} times")
    d, o, tr = cfg["data"], cfg["optim"], cfg["trainer"]
    window = d["window"] or teacher_model.config.window
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    rc_aug = d["rc_aug"] if d["rc_aug"] is not None else not teacher_model.config.rcps
    dm = GenomeDataModule(
        fasta=cfg["fasta"], bed=cfg.get("bed"), window=window, batch_size=d["batch_size"], num_workers=d["num_workers"],
        val_records=cfg.get("val_records") or (), val_regions=cfg.get("val_regions") or (),
        test_records=cfg.get("test_records") or (), test_regions=cfg.get("test_regions") or (),
        max_n_frac=d["max_n_frac"], rc_aug=rc_aug, seed=cfg["seed"], train_samples_per_epoch=d["train_samples_per_epoch"],
        max_val_windows=d["max_val_windows"], unknown=d["unknown"])
    dm.setup()  # every input checked before anything is written
    check_sequence(dm.genome, dm.genome.train_intervals)
    module = DistillModule(teacher_model, cfg["teacher_steps"], tr["steps_per_round"], cfg["divergence"], lr=o["lr"],
                           weight_decay=o["weight_decay"], betas=o["betas"], warmup_steps=o["warmup_steps"],
                           ema_decay=o["ema_decay"], seed=cfg["seed"])
    has_val = len(dm._eval_set("val")) > 0
    rounds = Rounds(out, cfg)
    callbacks = [NonFiniteGuard(), ValidateAtLastStep(),
                 StepCheckpoint(dirpath=out / "checkpoints", save_top_k=0, save_last=True,
                                every_n_train_steps=max(1, tr["steps_per_round"] // 4)), rounds]
    if tr["progress_bar"]:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, tr["log_every"])))
    segment = 1 + max((_segment_number(p.name) for p in (out / "logs").glob("segment-*")), default=0) \
        if (out / "logs").is_dir() else 1
    # Always present (inert without a budget), so a checkpoint's timer state always has its callback.
    callbacks.insert(0, segment_timer(tr["max_time"]))
    try:
        trainer = pl.Trainer(
            max_steps=cfg["rounds"] * tr["steps_per_round"],
            val_check_interval=tr["steps_per_round"] if has_val else None, check_val_every_n_epoch=None,
            **({} if has_val else {"limit_val_batches": 0}), accelerator=tr["accelerator"], devices=tr["devices"],
            precision=_precision(tr["precision"], tr["accelerator"]), gradient_clip_val=o["grad_clip"],
            callbacks=callbacks, logger=[CSVLogger(out, name="logs", version=f"segment-{segment}",
                                                   flush_logs_every_n_steps=tr["log_every"])],
            log_every_n_steps=tr["log_every"], enable_progress_bar=tr["progress_bar"], enable_model_summary=False,
            plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0, use_distributed_sampler=False, default_root_dir=out)
    except InputError:
        raise
    except Exception as exc:  # Lightning rejects a hardware setting
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"trainer settings (--accelerator {tr['accelerator']}, --precision {tr['precision']}): "
                         f"{first}") from None
    if not resume:
        write_json(out / RUN_CONFIG, cfg)
    start = time.time()
    error = None
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None, weights_only=True)
    except TrainingDiverged as exc:
        error = exc
    done = int(trainer.global_step) >= cfg["rounds"] * tr["steps_per_round"]
    t0 = cfg["teacher_steps"]
    summary = {"status": "diverged" if error else run_status(trainer.global_step, cfg["rounds"] * tr["steps_per_round"],
                                                             tr["max_time"]),
               "teacher": cfg["teacher"], "teacher_steps": t0, "rounds": cfg["rounds"],
               "student_steps": t0 // 2 ** cfg["rounds"], "steps": int(trainer.global_step),
               "seconds": round(time.time() - start, 1), "model_dir": str(out / "model") if done and not error else None,
               "per_round": [{"round": r, "teacher_steps": t0 // 2 ** (r - 1), "student_steps": t0 // 2 ** r,
                              **rounds.validated.get(r, {})} for r in range(1, cfg["rounds"] + 1)]}
    if error is not None:
        summary["error"] = str(error)
    write_json(out / "summary.json", {**summary, "config": cfg})
    if error is not None:
        where = f"; the last finite checkpoint is {last}" if last.is_file() else "; no checkpoint had been written"
        raise TrainingDiverged(f"{error}{where}")
    return summary
