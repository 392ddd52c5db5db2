"""Fine-tuning Caduceus classifiers on labelled DNA, the frozen-encoder probe and the Genomic Benchmarks
protocol (prediction with a trained classifier is `dna_mdlm.prediction`).

Owns:

* `FinetuneConfig` — every knob of one training run, readable from a `configs/finetune/*.yaml` recipe.
* `build_classifier` — a `CaduceusForSequenceClassification` whose encoder is loaded from a pretrained model
  directory (the MLM's `lm_head` is dropped, the head is freshly initialised), or randomly initialised with the
  same config for the from-scratch baseline.
* `probe_features` — the frozen encoder's features: every layer's output pooled over real bases and made
  reverse-complement invariant (`models.modeling_caduceus.rc_invariant_features`; `dna-mdlm embed --layers`
  writes the same numbers), computed once per sequence and reused by every fold and seed.
* `train_classifier` — one run. Frozen encoder, default head: scikit-learn `StandardScaler` +
  `LogisticRegressionCV` on the cached features (C by inner cross-validation on the training fold only,
  multinomial for > 2 classes; the standard linear-probing protocol), stored in the model exactly as a
  standardisation + linear layer. Frozen encoder + MLP, full fine-tuning and from scratch: Lightning, with
  length-bucketed batches, gradient accumulation over token-budgeted micro-batches up to the recipe's batch,
  linear warm-up then cosine decay, and `ValLossStopping` (validation loss, patience in optimiser steps, a
  minimum number of steps, never while still at chance). The weights with the best validation loss are kept.
* `run_protocol` — several seeds with 90/10 train/val splits scored on a test set (the published GB protocol),
  or stratified k-fold cross-validation when only one labelled set exists, for the Caduceus variants and the
  baselines (k-mer LR, CNN, and a plain standardised logistic regression on the probe's own features) on
  identical splits; writes metrics JSON, a Markdown table, a ROC/confusion PNG and the model directory,
  atomically. A run whose test predictions are indistinguishable from chance is flagged in the log, the
  JSON and the table (`evaluation.classification.chance_level`).

RC handling follows the backbone. Probe features are RC-invariant by construction. For full fine-tuning a
Caduceus-PS encoder pools each strand's stream separately and averages the head's logits over the two, so the
classifier is exactly RC-invariant; a plain or Ph encoder is trained with RC augmentation (p = 0.5) and
evaluated on the average of the forward and reverse-complement logits (`conjoin`, Caduceus-Ph).

Padding: variable-length inputs are right-padded within length-bucketed batches; the encoder makes padded
positions inert, pooling counts real bases only, and the loss is over sequences, so padding reaches neither.
A sequence longer than `max_length` is an error unless `truncate` is set.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from transformers.utils import logging as hf_logging

from ..baselines.cnn import train_cnn
from ..baselines.kmer_lr import DEFAULT_CS, cv_summary, fit_kmer_lr, logistic_regression_cv
from ..data.labelled import LabelledSequences, LengthBucketSampler, collate_labelled, micro_batches
from ..embedding import clean_timesteps, pooled_features
from ..errors import InputError, TrainingDiverged, check_int
from ..evaluation.classification import (
    ValLossStopping,
    chance_level,
    classification_metrics,
    markdown_table,
    plot_roc_confusion,
    summarize,
)
from ..io.writers import atomic_path, dumps_json
from ..loading import load_encoder_model, load_model
from ..models import CaduceusConfig, CaduceusForSequenceClassification
from ..models.modeling_caduceus import rc_padded
from ..prediction import encode_sequences, predict_proba
from ..units import fmt_number
from .common import EMA, NonFiniteGuard, export_model_dir, optimizer_groups, render_model_card, warmup_cosine
from .recipes import Spec, load_recipe, parse_overrides

CADUCEUS_METHODS = ("frozen", "finetuned", "scratch")
BASELINE_METHODS = ("kmer_lr", "cnn", "linear_probe")
METHODS = CADUCEUS_METHODS + BASELINE_METHODS
METHOD_LABELS = {"frozen": "pretrained, frozen encoder + probe", "finetuned": "pretrained, fine-tuned",
                 "scratch": "same backbone from scratch", "cnn": "CNN (GB-style, global pooling)",
                 "kmer_lr": "k-mer (1..6) LR", "linear_probe": "standardised LR (C fixed) on the probe's features"}
HEADS = ("logreg", "mlp", "linear")
# Every FinetuneConfig field's type and range (recipes.Spec): a bad value is one line naming its flag or key.
FINETUNE_SCHEMA = {
    "head": Spec("choice", choices=HEADS, none=True),
    "features": Spec("choice", choices=("all", "last")),
    "pooling": Spec("choice", choices=("mean", "max", "mean+max", "first", "last")),
    "unfreeze": Spec("bool"), "conjoin": Spec("bool"), "rc_aug": Spec("bool", none=True),
    "class_weights": Spec("choice", choices=("auto", "balanced", "none")),
    "probe_folds": Spec("int", 2),
    "linear_probe_C": Spec("float", 0, lo_open=True),
    "lr": Spec("float", 0, lo_open=True),  # no upper bound: too large a rate is a diverged run (exit 1)
    "weight_decay": Spec("float", 0, 10),
    "warmup_fraction": Spec("float", 0, 1),
    "batch_size": Spec("int", 1), "max_tokens": Spec("int", 1), "epochs": Spec("int", 1),
    "min_steps": Spec("int", 0), "patience_steps": Spec("int", 1), "val_every": Spec("int", 1, none=True),
    "ema_decay": Spec("float", 0, 1, lo_open=True, hi_open=True, none=True),
    "val_fraction": Spec("float", 0, 1, lo_open=True, hi_open=True),
    "max_length": Spec("int", 1, none=True), "truncate": Spec("bool"), "max_steps": Spec("int", 1, none=True),
    "time_budget_s": Spec("float", 0, lo_open=True, none=True),
    "eval_batch_size": Spec("int", 1), "device": Spec("str"),
}
AUROC_NA = "n/a (one class in the test set)"  # AUROC is undefined there; metrics.json writes null
DIVERGED_HINT = "lower the learning rate (--lr)"
# The flags whose name is not `--` + the key with dashes.
FINETUNE_FLAGS = {"ema_decay": "--ema"}


@dataclass
class FinetuneConfig:
    """One training run. `lr`/`weight_decay` apply to the whole trainable part (head, or head + encoder)."""

    head: str | None = None             # logreg (frozen default) | mlp | linear (fine-tuning default)
    features: str = "all"               # frozen probe: pooled output of "all" layers or the "last" one
    pooling: str = "mean"               # mean | max | mean+max (probe); mean | max | first | last (fine-tuning)
    unfreeze: bool = False              # full fine-tuning instead of a frozen encoder
    conjoin: bool = True                # fine-tuning, non-PS: average forward and RC logits at evaluation (Ph)
    rc_aug: bool | None = None          # None: on for non-PS encoders, off for PS (already RC-invariant)
    class_weights: str = "auto"         # auto (balanced when the largest class is > 1.5x the smallest) | balanced | none
    probe_folds: int = 5                # logreg head: inner CV folds for C (on the training fold only)
    probe_Cs: list | None = None        # logreg head: candidate C values (default 13 values, 1e-4 .. 1e2)
    linear_probe_C: float = 1.0         # the `linear_probe` comparator: fixed C (scikit-learn's default)
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.01       # linear warm-up over this fraction of the planned steps (at least 10)
    batch_size: int = 64                # sequences per optimiser step (the recipe's effective batch)
    max_tokens: int = 16384             # padded bases per micro-batch; larger batches accumulate gradients
    epochs: int = 10
    min_steps: int = 100                # early stopping never acts before this many optimiser steps
    patience_steps: int = 200           # ... nor before this many steps without a better validation loss
    val_every: int | None = None        # optimiser steps between validations (default min(epoch, 50))
    ema_decay: float | None = None      # e.g. 0.999: validate and export the exponential moving average
    val_fraction: float = 0.1
    max_length: int | None = None       # longer sequences are an error unless truncate
    truncate: bool = False
    max_steps: int | None = None
    time_budget_s: float | None = None  # wall-clock budget per run (Lightning max_time)
    eval_batch_size: int = 64
    device: str = "cpu"

    @classmethod
    def from_dict(cls, values: dict, where: str = "config", labels: dict | None = None) -> FinetuneConfig:
        """Settings -> a checked config. `labels` (key -> text) names where a value came from (`--ema 1.5`,
        `--set lr=abc`); values without one are named `where: key=value`. InputError for any bad value."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{where}: unknown fine-tuning setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        labels = labels or {}
        cfg = cls(**values)
        cfg.check(where, labels)
        return cfg

    def head_for(self, method: str) -> str:
        """The head a method trains: the configured one, else logreg for a frozen encoder and linear otherwise."""
        if self.head is not None and not (self.head == "logreg" and method != "frozen"):
            return self.head
        return "logreg" if method == "frozen" else "linear"

    def check(self, where: str = "config", labels: dict | None = None) -> None:
        """Every field's type and range (`FINETUNE_SCHEMA`) and the combinations that cannot work."""
        labels = labels or {}
        for f in fields(self):
            value, spec = getattr(self, f.name), FINETUNE_SCHEMA.get(f.name)
            if spec is not None:
                setattr(self, f.name, spec.check(labels.get(f.name) or f"{where}: {f.name}={value}", value))
        if self.probe_Cs is not None:
            if not isinstance(self.probe_Cs, (list, tuple)) or not self.probe_Cs or any(
                    isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < math.inf for c in self.probe_Cs):
                raise InputError(f"{labels.get('probe_Cs') or where}: probe_Cs must be a list of positive finite numbers")
        if self.head == "logreg" and self.unfreeze:
            raise InputError(f"{labels.get('head') or where}: head logreg is the frozen-encoder probe; full fine-tuning "
                             f"trains a linear or mlp head")

    def check_pooling(self, method: str) -> None:
        probe = method == "frozen"
        ok = ("mean", "max", "mean+max") if probe else ("mean", "max", "first", "last")
        if self.pooling not in ok:
            what = "the frozen probe" if probe else "fine-tuning"
            raise InputError(f"pooling {self.pooling!r} is not available for {what} (choose {', '.join(ok)})")


def finetune_settings(recipe: str | os.PathLike | None = None, flags: dict | None = None,
                      overrides: Sequence[str] | None = None) -> FinetuneConfig:
    """A recipe (`dna_mdlm/configs/finetune/*.yaml` or a YAML file), then flags (None values ignored), then
    `--set key=value` overrides -> a checked FinetuneConfig. A bad value is an InputError naming where it came from
    (`--ema 1.5`, `--set lr=abc`, `--config tiny: ...`); a flag and a `--set` giving one key two values are an error."""
    values = load_recipe(recipe, "finetune")
    where = f"--config {recipe}" if recipe else "settings"
    labels = {k: f"{where}: {k}={v}" for k, v in values.items()}
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    over = parse_overrides(overrides)
    raw = {pair.split("=", 1)[0].strip(): pair.split("=", 1)[1] for pair in overrides or [] if "=" in pair}
    for key, value in over.items():
        if key in flags and flags[key] != value:
            raise InputError(f"{_flag(key, flags[key])} and --set {key}={raw.get(key, value)} both set {key}; give one")
    values.update(flags)
    values.update(over)
    labels.update({k: _flag(k, v) for k, v in flags.items()})
    labels.update({k: f"--set {k}={raw.get(k, v)}" for k, v in over.items()})
    return FinetuneConfig.from_dict(values, where=where, labels=labels)


def _flag(key: str, value) -> str:
    if key == "unfreeze":
        return "--unfreeze"
    return f"{FINETUNE_FLAGS.get(key, '--' + key.replace('_', '-'))} {value}"


def limit_training_set(train: LabelledSequences, max_train: int | None, seed: int = 0) -> LabelledSequences:
    """`--max-train N`: a stratified, seeded subsample of N sequences (the whole set when it has <= N)."""
    check_int("--seed", seed, 0)
    if max_train is None:
        return train
    if isinstance(max_train, bool) or not isinstance(max_train, int) or max_train < 1:
        raise InputError(f"--max-train {max_train}: expected a positive integer")
    if max_train < train.n_classes * 2:
        raise InputError(f"--max-train {max_train}: expected at least 2 sequences per class ({train.n_classes * 2})")
    if max_train >= len(train):
        return train
    return train.stratified_split(test_size=len(train) - max_train, seed=seed)[0]


# --------------------------------------------------------------------------------------------------
# Model construction and encoding
# --------------------------------------------------------------------------------------------------


def _quiet_transformers():
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def build_classifier(model_dir: str | os.PathLike, classes: Sequence[str], cfg: FinetuneConfig,
                     from_scratch: bool = False, seed: int = 0, method: str | None = None) -> CaduceusForSequenceClassification:
    """Classifier with the encoder of `model_dir` (any dna-mdlm Caduceus directory) and a new head.

    `method` "frozen" builds the probe layout (RC-invariant features of `cfg.features` layers, standardised,
    then the head); anything else the upstream per-strand-view head on the last layer.
    """
    method = method or ("scratch" if from_scratch else ("finetuned" if cfg.unfreeze else "frozen"))
    cfg.check_pooling(method)
    load_encoder_model(model_dir, verb="fine-tuning")  # a Markov, missing or non-finite --model fails here, in one line
    _quiet_transformers()
    torch.manual_seed(seed)
    head = cfg.head_for(method)
    kwargs = dict(num_labels=len(classes), pooling_strategy=cfg.pooling, head="linear" if head == "logreg" else head,
                  conjoin_train=False, conjoin_eval=cfg.conjoin, feature_layers=cfg.features if method == "frozen" else None,
                  id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)})
    if from_scratch:
        config = CaduceusConfig.from_pretrained(str(model_dir))
        for key in ("id2label", "label2id", "num_labels"):
            setattr(config, key, kwargs.pop(key))
        model = CaduceusForSequenceClassification(config, **kwargs)
    else:
        try:
            model = CaduceusForSequenceClassification.from_pretrained(str(model_dir), ignore_mismatched_sizes=True, **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise InputError(f"--model {model_dir}: could not load the encoder ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        model.reset_head()  # from_pretrained leaves the missing head and scaler buffers as torch.empty
    model.config.architectures = ["CaduceusForSequenceClassification"]
    return model.to(cfg.device)


def probe_features(model, ids: Sequence[np.ndarray], cfg: FinetuneConfig) -> np.ndarray:
    """(N, F) frozen-probe features of token-id arrays: `embedding.pooled_features` with the run's layers/pooling
    (the numbers `dna-mdlm embed --layers ... --pool ...` writes)."""
    return pooled_features(model, ids, cfg.features, cfg.pooling, cfg.eval_batch_size, cfg.max_tokens)


def _head_proba(model: CaduceusForSequenceClassification, features: np.ndarray) -> np.ndarray:
    """Probabilities of a probe-layout classifier from cached raw features: the same function as its forward."""
    with torch.no_grad():
        device = next(model.parameters()).device
        f = model.standardise(torch.as_tensor(features, device=device))
        return torch.softmax(model.score(f).float(), -1).cpu().numpy().astype(np.float64)


# --------------------------------------------------------------------------------------------------
# The frozen probe: standardised logistic regression with C by inner CV
# --------------------------------------------------------------------------------------------------


def fit_logreg_probe(features: np.ndarray, labels: np.ndarray, cfg: FinetuneConfig, seed: int = 0):
    """The default frozen head on any (N, F) features: a fitted scikit-learn Pipeline of StandardScaler +
    LogisticRegressionCV (C from `cfg.probe_Cs` by stratified inner `cfg.probe_folds`-fold CV on these rows
    only, scored by accuracy with log-loss tie-breaks; multinomial for > 2 classes; balanced class weights per
    `cfg.class_weights`)."""
    if not np.isfinite(features).all():
        raise InputError("probe features contain non-finite values (the encoder produced NaN/inf); check the model")
    n_classes = int(labels.max()) + 1
    weight = "balanced" if _balanced(labels, n_classes, cfg.class_weights) else None
    lr = logistic_regression_cv(labels, cfg.probe_Cs or DEFAULT_CS, cfg.probe_folds, seed, class_weight=weight)
    return Pipeline([("scale", StandardScaler()), ("lr", lr)]).fit(features, labels)


def fit_probe(model: CaduceusForSequenceClassification, features: np.ndarray, labels: np.ndarray,
              cfg: FinetuneConfig, seed: int = 0) -> dict:
    """`fit_logreg_probe` on (N, F) probe features, stored in `model` exactly (`store_linear_probe`), so the
    saved classifier reproduces scikit-learn's `predict_proba`. Returns {"C", "cv_score", "n_features"}."""
    pipe = fit_logreg_probe(features, labels, cfg, seed)
    scaler, lr = pipe.named_steps["scale"], pipe.named_steps["lr"]
    store_linear_probe(model, scaler.mean_, scaler.scale_, lr.coef_, lr.intercept_, lr.classes_)
    C, score = cv_summary(lr)
    return {"C": C, "cv_score": score, "n_features": int(features.shape[1])}


@torch.no_grad()
def store_linear_probe(model: CaduceusForSequenceClassification, mean, scale, coef, intercept, classes_seen) -> None:
    """Write a fitted standardiser + logistic regression into a probe-layout classifier's buffers and `score`."""
    k = model.config.num_labels
    coef, intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    weight = np.zeros((k, coef.shape[1]))
    bias = np.zeros(k)
    seen = np.asarray(classes_seen, dtype=np.int64)
    if coef.shape[0] == 1:  # binary: sklearn's z is the log-odds of classes_seen[1] against classes_seen[0]
        weight[seen[0]], weight[seen[1]] = -coef[0] / 2, coef[0] / 2
        bias[seen[0]], bias[seen[1]] = -intercept[0] / 2, intercept[0] / 2
    else:
        weight[seen], bias[seen] = coef, intercept
        bias[np.setdiff1d(np.arange(k), seen)] = -1e4  # a class absent from training is never predicted
    scale = np.where(np.asarray(scale) > 0, scale, 1.0)
    dev = model.feature_mean.device
    model.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32, device=dev))
    model.feature_scale.copy_(torch.as_tensor(scale, dtype=torch.float32, device=dev))
    model.score.weight.copy_(torch.as_tensor(weight, dtype=torch.float32, device=dev))
    model.score.bias.copy_(torch.as_tensor(bias, dtype=torch.float32, device=dev))


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int, C: float,
                     seed: int = 0) -> np.ndarray:
    """The comparator: StandardScaler + LogisticRegression(C) on the same features; (N_test, K) probabilities."""
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000, random_state=seed)).fit(train_x, train_y)
    out = np.zeros((len(test_x), n_classes))
    out[:, pipe.classes_] = pipe.predict_proba(test_x)
    return out


# --------------------------------------------------------------------------------------------------
# Lightning: heads on cached features, or the whole classifier on token batches
# --------------------------------------------------------------------------------------------------


class _TokenDataset(torch.utils.data.Dataset):
    def __init__(self, ids: list[np.ndarray], labels: np.ndarray):
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.ids[i], int(self.labels[i])


class _FeatureHead(nn.Module):
    """A probe-layout classifier's head on cached raw features: score(standardise(f))."""

    def __init__(self, model: CaduceusForSequenceClassification):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.score(self.model.standardise(features)).float()


def accumulate_backward(logits_fn, chunks, labels: torch.Tensor, class_weight: torch.Tensor | None, backward) -> float:
    """Backpropagate the batch's (class-weighted) mean cross-entropy through its micro-batches `chunks`.

    Each chunk's summed loss is divided by the whole batch's weight total before `backward`, so the
    accumulated gradient equals that of the full batch in one piece. Returns the batch loss.
    """
    norm = float(class_weight[labels].sum()) if class_weight is not None else float(len(labels))
    total = 0.0
    for chunk in chunks:
        ce = F.cross_entropy(logits_fn(chunk), chunk["labels"], weight=class_weight, reduction="sum")
        loss = ce / norm  # reduction="sum" with weights = sum of w_y * ce, the numerator of the weighted mean
        backward(loss)
        total += float(loss.detach())
    return total


class ClassifierModule(pl.LightningModule):
    """Trains `net` with manual optimisation: each batch of `cfg.batch_size` sequences is one optimiser step,
    its gradient accumulated over micro-batches of at most `cfg.max_tokens` padded bases."""

    def __init__(self, net: nn.Module, cfg: FinetuneConfig, rcps: bool, cached: bool,
                 class_weight: torch.Tensor | None, total_steps: int, stopper: ValLossStopping):
        super().__init__()
        self.automatic_optimization = False
        self.net, self.cfg, self.rcps, self.cached, self.total_steps = net, cfg, rcps, cached, total_steps
        self.rc_aug = (not rcps) if cfg.rc_aug is None else (cfg.rc_aug and not rcps)
        self.register_buffer("class_weight", class_weight, persistent=False)
        self.stopper = stopper
        self.best_state: dict | None = None
        self.stopped_early = False
        self.val_history: list[dict] = []
        self._val_out: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.ema = EMA(net, cfg.ema_decay) if cfg.ema_decay else None  # validated and kept with the EMA weights

    def logits(self, net: nn.Module, batch: dict, train: bool) -> torch.Tensor:
        if self.cached:
            return net(batch["features"])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if train and self.rc_aug:
            flip = torch.rand(len(ids), device=ids.device) < 0.5
            ids = torch.where(flip[:, None], rc_padded(ids, mask), ids)
        return net(ids, attention_mask=mask, timesteps=clean_timesteps(net, len(ids), ids.device)).logits

    def _chunks(self, batch: dict):
        if self.cached:
            yield batch
            return
        for rows, width in micro_batches(batch["attention_mask"], self.cfg.max_tokens):
            yield {"input_ids": batch["input_ids"][rows, :width], "attention_mask": batch["attention_mask"][rows, :width],
                   "labels": batch["labels"][rows]}

    def training_step(self, batch, batch_idx):
        opt, sched = self.optimizers(), self.lr_schedulers()
        opt.zero_grad(set_to_none=True)
        y = batch["labels"]
        total = accumulate_backward(lambda c: self.logits(self.net, c, True), self._chunks(batch), y,
                                    self.class_weight, self.manual_backward)
        if not math.isfinite(float(total)):  # before the step applies it: the weights stay finite
            raise TrainingDiverged(f"training diverged at step {self.global_step + 1}: the loss is {float(total):.4g}; "
                                   f"{DIVERGED_HINT}")
        self.clip_gradients(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        opt.step()
        sched.step()
        if self.ema is not None:
            self.ema.update(self.net)
        self.log("train_loss", total, batch_size=len(y), on_step=True, on_epoch=False)

    def on_validation_epoch_start(self):
        if self.ema is not None:
            self.ema.swap(self.net)  # validate (and keep) the averaged weights; swapped back at the epoch's end

    def validation_step(self, batch, batch_idx):
        logits = torch.cat([self.logits(self.net, c, False) for c in self._chunks(batch)])
        self._val_out.append((logits.float().cpu(), batch["labels"].cpu()))

    def on_validation_epoch_end(self):
        try:
            self._end_validation()
        finally:
            if self.ema is not None:
                self.ema.swap(self.net)

    def _end_validation(self):
        if not self._val_out:
            return
        logits = torch.cat([a for a, _ in self._val_out])
        y = torch.cat([b for _, b in self._val_out])
        self._val_out = []
        loss = float(F.cross_entropy(logits, y))
        acc = float((logits.argmax(-1) == y).float().mean())
        step = int(self.global_step)
        self.log("val_loss", loss)
        self.log("val_acc", acc)
        self.val_history.append({"step": step, "val_loss": loss, "val_acc": acc})
        if self.stopper.update(step, loss):
            self.best_state = {k: v.detach().clone() for k, v in _trained_part(self.net).state_dict().items()}
        if self.stopper.should_stop(step):
            self.stopped_early = True
            self.trainer.should_stop = True

    def configure_optimizers(self):
        opt = torch.optim.AdamW(optimizer_groups(self.net, self.cfg.weight_decay), lr=self.cfg.lr, betas=(0.9, 0.999))
        # linear warm-up, then cosine down to 0.1 x lr (the Caduceus GB recipe)
        schedule = warmup_cosine(max(10, int(self.cfg.warmup_fraction * self.total_steps)), self.total_steps, "cosine", 0.1)
        return [opt], [torch.optim.lr_scheduler.LambdaLR(opt, schedule)]


def _trained_part(net: nn.Module) -> nn.Module:
    """The module whose weights training changes: on cached features, the head only."""
    return net.model.score if isinstance(net, _FeatureHead) else net


def _collate_features(batch):
    feats, labels = zip(*batch)
    return {"features": torch.as_tensor(np.stack(feats)), "labels": torch.tensor(labels, dtype=torch.long)}


def _balanced(labels: np.ndarray, n_classes: int, mode: str) -> bool:
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return mode == "balanced" or (mode == "auto" and counts.max() > 1.5 * counts[counts > 0].min())


def _class_weight(labels: np.ndarray, n_classes: int, mode: str) -> torch.Tensor | None:
    if not _balanced(labels, n_classes, mode):
        return None

    present = np.unique(labels)
    w = np.ones(n_classes)
    w[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(w, dtype=torch.float32)


@dataclass
class TrainedClassifier:
    """A trained Caduceus classifier (best validation weights, eval mode) and its training record."""

    model: CaduceusForSequenceClassification
    classes: list[str]
    method: str
    best_val_accuracy: float | None
    history: dict = field(default_factory=dict)

    def predict_proba(self, data: LabelledSequences | Sequence[str], batch_size: int = 64,
                      max_length: int | None = None, truncate: bool = False) -> np.ndarray:
        seqs = data.seqs if isinstance(data, LabelledSequences) else data
        return predict_proba(self.model, seqs, batch_size, max_length, truncate)

    def proba_from_features(self, features: np.ndarray) -> np.ndarray:
        """Probe-layout classifiers only: probabilities from cached `probe_features` (no encoder pass)."""
        return _head_proba(self.model, features)


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def train_classifier(model_dir: str | os.PathLike, train: LabelledSequences, val: LabelledSequences,
                     cfg: FinetuneConfig, seed: int = 0, method: str = "frozen",
                     work_dir: str | os.PathLike | None = None,
                     features: tuple[np.ndarray, np.ndarray] | None = None, log=None) -> TrainedClassifier:
    """One run of `method` ("frozen", "finetuned" or "scratch"); see the module doc for what each trains.

    `features`: the (train, val) `probe_features` when the caller has cached them (frozen only). The logreg
    head is fitted on train + val together (C by inner CV); the other heads train on train and early-stop on
    val. `work_dir` receives the CSV logs (default: a temporary folder, removed after). `log` gets a warning
    line when the trained model is still at chance on the validation set.
    """
    if method not in CADUCEUS_METHODS:
        raise InputError(f"method must be one of {', '.join(CADUCEUS_METHODS)}, got {method!r}")
    if len(np.unique(train.labels)) < 2:
        raise InputError(f"training data {train.source} holds only one class ({train.classes[int(train.labels[0])] if len(train) else 'empty'}); need at least two")
    if val.classes != train.classes:
        raise InputError(f"val classes {val.classes} differ from train classes {train.classes}")
    pl.seed_everything(seed, verbose=False)
    model = build_classifier(model_dir, train.classes, cfg, from_scratch=(method == "scratch"), seed=seed, method=method)
    head = cfg.head_for(method)
    t0, c0 = time.monotonic(), time.process_time()
    history: dict = {"method": method, "seed": seed, "head": head, "n_train": len(train), "n_val": len(val)}
    if method == "frozen":
        model.caduceus.requires_grad_(False)
        if features is None:
            enc = lambda d, w: encode_sequences(d.seqs, cfg.max_length, cfg.truncate, w)  # noqa: E731
            features = tuple(probe_features(model, enc(d, f"{w} data {d.source}"), cfg)
                             for d, w in ((train, "training"), (val, "validation")))
        history["feature_s"] = time.monotonic() - t0
        if head == "logreg":
            x = np.concatenate(features)
            y = np.concatenate([train.labels, val.labels])
            history.update(fit_probe(model, x, y, cfg, seed))
            model.eval()
            history.update(wall_s=time.monotonic() - t0, cpu_s=time.process_time() - c0)
            return TrainedClassifier(model, list(train.classes), method, None, history)

        scaler = StandardScaler().fit(features[0])
        with torch.no_grad():
            model.feature_mean.copy_(torch.as_tensor(scaler.mean_, dtype=torch.float32))
            model.feature_scale.copy_(torch.as_tensor(np.where(scaler.scale_ > 0, scaler.scale_, 1.0), dtype=torch.float32))
        tr = list(zip(features[0], train.labels.tolist()))
        va = list(zip(features[1], val.labels.tolist()))
        gen = torch.Generator().manual_seed(seed)
        train_loader = torch.utils.data.DataLoader(tr, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                                                   collate_fn=_collate_features)
        val_loader = torch.utils.data.DataLoader(va, batch_size=4 * cfg.batch_size, collate_fn=_collate_features)
        net, cached = _FeatureHead(model), True
    else:
        tr_ids = encode_sequences(train.seqs, cfg.max_length, cfg.truncate, f"training data {train.source}")
        va_ids = encode_sequences(val.seqs, cfg.max_length, cfg.truncate, f"validation data {val.source}")
        collate = lambda b: {k: v for k, v in collate_labelled(b).items() if k != "n_truncated"}  # noqa: E731
        train_loader = torch.utils.data.DataLoader(
            _TokenDataset(tr_ids, train.labels),
            batch_sampler=LengthBucketSampler([len(a) for a in tr_ids], cfg.batch_size, shuffle=True, seed=seed),
            collate_fn=collate)
        val_loader = torch.utils.data.DataLoader(
            _TokenDataset(va_ids, val.labels),
            batch_sampler=LengthBucketSampler([len(a) for a in va_ids], cfg.eval_batch_size, shuffle=False),
            collate_fn=collate)
        net, cached = model, False
    steps_per_epoch = _steps_per_epoch(len(train), cfg.batch_size)
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or 10**12)
    val_every = min(cfg.val_every or min(steps_per_epoch, 50), total_steps)
    stopper = ValLossStopping(cfg.patience_steps, cfg.min_steps, ValLossStopping.prior_loss(train.labels, train.n_classes))
    module = ClassifierModule(net, cfg, model.config.rcps, cached,
                              _class_weight(train.labels, train.n_classes, cfg.class_weights), total_steps, stopper)

    own_work = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="dna-mdlm-ft-")) if own_work else Path(work_dir)
    try:
        trainer = pl.Trainer(
            accelerator="gpu" if str(cfg.device).startswith("cuda") else "cpu", devices=1,
            max_epochs=cfg.epochs, max_steps=total_steps,
            max_time=timedelta(seconds=cfg.time_budget_s) if cfg.time_budget_s else None,
            val_check_interval=val_every, check_val_every_n_epoch=None,
            logger=CSVLogger(work, name="logs", version=0), enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            log_every_n_steps=max(1, min(50, steps_per_epoch)), callbacks=[NonFiniteGuard(DIVERGED_HINT)],
        )
        net.train()  # from_pretrained returns eval mode; Lightning keeps the modes it finds (dropout must be on)
        trainer.fit(module, train_loader, val_loader)
        if not module.val_history or module.val_history[-1]["step"] != trainer.global_step:
            trainer.validate(module, val_loader, verbose=False)  # the steps after the last validation count too
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    if module.best_state is not None:
        _trained_part(net).load_state_dict(module.best_state)
    model.requires_grad_(True)
    model.eval()
    best = min(module.val_history, key=lambda r: r["val_loss"]) if module.val_history else None
    history.update(steps=int(trainer.global_step), epochs_run=int(trainer.current_epoch), val_every=val_every,
                   stopped_early=module.stopped_early, best_step=stopper.best_step, chance_loss=stopper.chance_loss,
                   rc_aug=module.rc_aug, cached_features=cached, val_curve=module.val_history)
    va_proba = (_head_proba(model, features[1]) if cached else predict_proba(model, val.seqs, cfg.eval_batch_size,
                                                                            cfg.max_length, cfg.truncate))
    if not np.isfinite(va_proba).all():
        raise TrainingDiverged(f"{method} (seed {seed}): the trained classifier gives non-finite class probabilities "
                               f"on the validation set; {DIVERGED_HINT}")
    history["val_chance"] = chance_level(val.labels, va_proba, train.classes)
    if history["val_chance"]["at_chance"] and log is not None:
        log(f"[finetune] WARNING: {method} (seed {seed}) ended AT CHANCE on validation: {history['val_chance']['reason']}")
    history.update(wall_s=time.monotonic() - t0, cpu_s=time.process_time() - c0)
    return TrainedClassifier(model, list(train.classes), method, best["val_acc"] if best else None, history)


# --------------------------------------------------------------------------------------------------
# The protocol: seeds x splits x methods, metrics, report, model directory
# --------------------------------------------------------------------------------------------------


def protocol_splits(train: LabelledSequences, test: LabelledSequences | None, seeds: Sequence[int],
                    folds: int | None, val_fraction: float = 0.1) -> tuple[str, list[dict]]:
    """(description, runs) for the seeds protocol or k-fold CV. Each run: name, seed, the `train` / `val` /
    `test` sets and their index arrays `train_idx` / `val_idx` / `test_idx` into `train` (CV) or, for
    `test_idx`, into `test` (`test_pool` says which)."""
    def split(idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        # at least one validation sequence per class (as LabelledSequences.stratified_split): a one-line error for a
        # set too small for that, not scikit-learn's traceback
        k = int(np.unique(train.labels[idx]).size)
        n_val = max(k, math.ceil(val_fraction * len(idx)))
        if len(idx) - n_val < k:
            raise InputError(f"{train.source}: {len(idx)} training sequences in {k} classes are too few to hold out "
                             f"{n_val} stratified for validation (need at least {n_val + k} per run; use fewer --folds "
                             f"or more sequences)")
        a, b = next(StratifiedShuffleSplit(1, test_size=n_val, random_state=seed).split(idx, train.labels[idx]))
        return idx[a], idx[b]

    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2**32]
    if bad or not seeds:
        raise InputError(f"--seeds {','.join(map(str, seeds))}: expected comma-separated integers >= 0, e.g. 1,2,3")
    runs = []
    if test is not None:
        if folds:
            raise InputError("--folds is for a single labelled set; with a test set the protocol is --seeds")
        if test.classes != train.classes:
            test = test.with_class_order(train.classes)
        desc = (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), each a stratified {1 - val_fraction:.0%}/"
                f"{val_fraction:.0%} train/val split of the training set, scored on the test set")
        for s in seeds:
            tr, va = split(np.arange(len(train)), s)
            runs.append({"name": f"seed{s}", "seed": s, "train_idx": tr, "val_idx": va,
                         "test_idx": np.arange(len(test)), "test_pool": "test"})
    else:
        k = 5 if folds is None else folds  # --folds 0 is an error below, not the default
        if k < 2:
            raise InputError(f"--folds must be >= 2, got {k}")
        counts = np.bincount(train.labels, minlength=train.n_classes)
        if counts[counts > 0].min() < k:
            raise InputError(f"{train.source}: the smallest class has {counts[counts > 0].min()} sequences, fewer than --folds {k}")
        desc = (f"stratified {k}-fold cross-validation within one labelled set ({train.source}); in each fold a "
                f"stratified {val_fraction:.0%} of the training part is the validation set. NOT an official train/test protocol")
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=0)
        for i, (tr_all, te) in enumerate(cv.split(np.zeros(len(train)), train.labels)):
            tr, va = split(tr_all, i)
            runs.append({"name": f"fold{i}", "seed": i, "train_idx": tr, "val_idx": va, "test_idx": te, "test_pool": "train"})
    for run in runs:
        pool = test if run["test_pool"] == "test" else train
        run["train"] = train.subset(run["train_idx"], f"{train.source} [{run['name']} train]")
        run["val"] = train.subset(run["val_idx"], f"{train.source} [{run['name']} val]")
        run["test"] = pool.subset(run["test_idx"], f"{pool.source} [{run['name']} test]")
    return desc, runs


def _run_baseline(method: str, run: dict, cfg: FinetuneConfig, feats: dict | None, log) -> tuple[np.ndarray, dict]:
    t0, c0 = time.monotonic(), time.process_time()
    if method == "cnn":
        clf = train_cnn(run["train"], run["val"], epochs=cfg.epochs, seed=run["seed"], patience_steps=cfg.patience_steps,
                        min_steps=cfg.min_steps, time_budget_s=cfg.time_budget_s, device=cfg.device,
                        max_tokens=cfg.max_tokens)
        proba = clf.predict_proba(run["test"].seqs)
        info = {"best_val_accuracy": clf.best_val_accuracy, "steps": clf.history["steps"],
                "stopped_by": clf.history["stopped_by"], "val_chance": clf.history["val_chance"]}
        if clf.history["val_chance"]["at_chance"]:
            log(f"[finetune] WARNING: {run['name']} cnn ended AT CHANCE on validation: {clf.history['val_chance']['reason']}")
    elif method == "kmer_lr":
        clf = fit_kmer_lr(run["train"], run["val"], seed=run["seed"])
        proba = clf.predict_proba(run["test"].seqs)
        info = {"C": clf.C, "cv_score": clf.cv_score}
    else:  # linear_probe: the same cached features as the frozen probe, a fixed-C standardised LR
        x = np.concatenate([feats["train"][run["train_idx"]], feats["train"][run["val_idx"]]])
        y = np.concatenate([run["train"].labels, run["val"].labels])
        proba = fit_linear_probe(x, y, feats[run["test_pool"]][run["test_idx"]], run["train"].n_classes,
                                 cfg.linear_probe_C, run["seed"])
        info = {"C": cfg.linear_probe_C}
    info.update(wall_s=time.monotonic() - t0, cpu_s=time.process_time() - c0)
    return proba, info


def _check_sets(train: LabelledSequences, test: LabelledSequences | None) -> None:
    for name, data in (("training", train), ("test", test)):
        if data is None:
            continue
        if len(data) == 0:
            raise InputError(f"{name} data {data.source} is empty")
        if len(np.unique(data.labels)) < 2 and name == "training":
            raise InputError(f"training data {data.source} holds only one class ({data.classes[int(data.labels[0])]}); need at least two")
        for i, s in enumerate(data.seqs):
            if not s:
                raise InputError(f"{name} data {data.source}: sequence {i + 1} is empty")


def run_protocol(model_dir: str | os.PathLike, train: LabelledSequences, out_dir: str | os.PathLike,
                 cfg: FinetuneConfig | None = None, test: LabelledSequences | None = None,
                 seeds: Sequence[int] = (1, 2, 3), folds: int | None = None,
                 methods: Sequence[str] | None = None, task: str | None = None, log=print) -> dict:
    """Train and score every method on the same splits; write `out_dir` atomically and return the report.

    `out_dir` gets `metrics.json` (per-run and summary metrics, chance flags), `metrics.md` (the table),
    `roc_confusion.png` and `model/` (the primary method's best run: save_pretrained + tokenizer files). The
    primary method is the first Caduceus method in `methods` (default: `finetuned` if `cfg.unfreeze` else
    `frozen`). Frozen-probe features are computed once per sequence and shared by all runs and by
    `linear_probe`. The report's `comparison` holds the primary method against k-mer LR when both ran.
    """
    cfg = cfg or FinetuneConfig()
    cfg.check()
    methods = list(methods or ["finetuned" if cfg.unfreeze else "frozen"])
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise InputError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    primary = next((m for m in methods if m in CADUCEUS_METHODS), None)
    if primary is None:
        raise InputError("at least one Caduceus method (frozen, finetuned, scratch) is needed to write a model")
    if "linear_probe" in methods and "frozen" not in methods:
        raise InputError("linear_probe compares against the frozen probe's features: run it together with frozen")
    for m in methods:
        if m in CADUCEUS_METHODS:
            cfg.check_pooling(m)
    _check_sets(train, test)

    load_model(model_dir)  # a missing, foreign or non-finite --model fails before any work
    desc, runs = protocol_splits(train, test, seeds, folds, cfg.val_fraction)
    feats: dict[str, np.ndarray] | None = None
    feature_s = 0.0
    if "frozen" in methods:
        t0 = time.process_time()
        encoder = build_classifier(model_dir, train.classes, cfg, seed=0, method="frozen")
        feats = {"train": probe_features(encoder, encode_sequences(train.seqs, cfg.max_length, cfg.truncate,
                                                              f"training data {train.source}"), cfg)}
        if test is not None:
            feats["test"] = probe_features(encoder, encode_sequences(test.seqs, cfg.max_length, cfg.truncate,
                                                                f"test data {test.source}"), cfg)
        feature_s = time.process_time() - t0
        del encoder
        n_seq = len(train) + (len(test) if test is not None else 0)
        log(f"[finetune] probe features ({cfg.features} layers, {cfg.pooling} pooling, width {feats['train'].shape[1]}) "
            f"of {n_seq} sequences: {feature_s:.1f} CPU s, once for all runs")
    results: dict[str, list[dict]] = {m: [] for m in methods}
    oof: dict[str, tuple[list, list]] = {m: ([], []) for m in methods}
    best_primary: tuple[float, TrainedClassifier | None] = (-math.inf, None)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for run in runs:
            for method in methods:
                log(f"[finetune] {run['name']} {method}: train {len(run['train'])}, val {len(run['val'])}, test {len(run['test'])}")
                if method in CADUCEUS_METHODS:
                    run_feats = None
                    if method == "frozen":
                        run_feats = (feats["train"][run["train_idx"]], feats["train"][run["val_idx"]])
                    trained = train_classifier(model_dir, run["train"], run["val"], cfg, seed=run["seed"], method=method,
                                               work_dir=tmp / "runs" / f"{run['name']}-{method}", features=run_feats,
                                               log=lambda m, r=run: log(m.replace("(seed", f"{r['name']} (seed")))
                    if method == "frozen":
                        proba = trained.proba_from_features(feats[run["test_pool"]][run["test_idx"]])
                    else:
                        proba = trained.predict_proba(run["test"], cfg.eval_batch_size, cfg.max_length, cfg.truncate)
                    info = {"best_val_accuracy": trained.best_val_accuracy, **trained.history}
                    if method == "frozen":
                        info["feature_cpu_s_shared"] = feature_s / len(runs)
                        info["cpu_s"] = info["cpu_s"] + feature_s / len(runs)  # its share of the one encoder pass
                    # the kept run: the best validation accuracy, or for logreg the best inner-CV score
                    key = trained.best_val_accuracy if trained.best_val_accuracy is not None else info.get("cv_score", 0.0)
                    if method == primary and key > best_primary[0]:
                        best_primary = (key, trained)
                else:
                    proba, info = _run_baseline(method, run, cfg, feats, log)
                if not np.isfinite(proba).all():
                    raise TrainingDiverged(f"{run['name']} {method}: the trained classifier gives non-finite class "
                                           f"probabilities; {DIVERGED_HINT}")
                metrics = classification_metrics(run["test"].labels, proba, train.classes)
                chance = chance_level(run["test"].labels, proba, train.classes)
                results[method].append({"run": run["name"], **metrics, **info, "test_chance": chance})
                oof[method][0].append(run["test"].labels)
                oof[method][1].append(proba)
                if chance["at_chance"] and not any(w.startswith("predicts one class") for w in metrics["warnings"]):
                    results[method][-1]["warnings"] = metrics["warnings"] + [f"AT CHANCE on the test set: {chance['reason']}"]
                log(f"[finetune] {run['name']} {method}: test accuracy {metrics['accuracy']:.4f}, "
                    f"AUROC {fmt_number(metrics['auroc'], '.4f', AUROC_NA)}"
                    + "".join(f"; WARNING: {w}" for w in results[method][-1]["warnings"]))
        summaries = {m: summarize(results[m]) for m in methods}
        at_chance = {m: sum(r["test_chance"]["at_chance"] for r in results[m]) for m in methods}
        for m in methods:  # every distinct warning, with the runs it came from
            seen: dict[str, list[str]] = {}
            for r in results[m]:
                for w in r.get("warnings", []):
                    seen.setdefault(w, []).append(r["run"])
            summaries[m]["warnings"] = [f"{w} ({', '.join(runs)})" for w, runs in seen.items()]
            summaries[m]["runs_at_chance"] = at_chance[m]
        title = f"{task or train.source}: {desc}"
        labels = {m: METHOD_LABELS[m] + (f" (AT CHANCE in {at_chance[m]}/{len(runs)} runs)" if at_chance[m] else "")
                  for m in methods}
        table = markdown_table({labels[m]: summaries[m] for m in methods}, title=None)
        report = {"task": task, "data": train.source, "test_data": test.source if test is not None else None,
                  "protocol": desc, "cross_validation": test is None, "classes": train.classes,
                  "class_counts": train.class_counts(), "model": str(model_dir), "primary_method": primary,
                  "config": asdict(cfg), "summary": summaries, "runs": results,
                  "spread": "± is max − min over runs (the Caduceus GB convention), not a standard deviation"}
        if "kmer_lr" in methods:
            report["comparison"] = compare_to_baseline(summaries, primary, "kmer_lr")
        (tmp / "metrics.json").write_text(dumps_json(report) + "\n")
        warned = "".join(f"\n**Warning ({METHOD_LABELS[m]})**: {w}\n" for m in methods for w in summaries[m]["warnings"])
        (tmp / "metrics.md").write_text(f"## {title}\n\n{table}\n± = max − min over {len(runs)} runs.\n{warned}")
        y_all = np.concatenate(oof[primary][0])
        p_all = np.concatenate(oof[primary][1])
        what = "out-of-fold predictions" if test is None else f"test predictions pooled over {len(runs)} seeds"
        plot_roc_confusion(y_all, p_all, train.classes, tmp / "roc_confusion.png",
                           title=f"{task or 'classifier'} — {METHOD_LABELS[primary]} ({what})")
        save_classifier(best_primary[1], tmp / "model", report)
    log(f"[finetune] wrote {out_dir}")
    print(table)
    return report


def compare_to_baseline(summaries: dict, method: str, baseline: str) -> dict:
    """{"accuracy": {...}, "auroc": {...}, "verdict"} of two summarised methods (`summarize` output).

    Each metric gets "model", "baseline", "difference", "spread" (the larger of the two methods' max − min over
    runs) and "direction": "tie (within the spread)" when |difference| <= spread, else "model better" or
    "baseline better". The verdict gives accuracy's direction and AUROC's, so a one-sequence accuracy edge with a
    worse AUROC does not read as a better model."""
    out = {"method": method, "baseline": baseline}
    for key in ("accuracy", "auroc"):
        sa, sb = summaries[method].get(key, {}), summaries[baseline].get(key, {})
        a, b = sa.get("mean"), sb.get("mean")
        if a is not None and b is not None:
            spread = max(sa.get("spread", 0.0), sb.get("spread", 0.0))
            d = a - b
            direction = ("tie (within the spread)" if abs(d) <= spread else "model better" if d > 0
                         else "baseline better")
            out[key] = {"model": a, "baseline": b, "difference": d, "spread": spread, "direction": direction}
    if "accuracy" not in out:
        out["verdict"] = "no comparison"
    else:
        out["verdict"] = f"accuracy: {out['accuracy']['direction']}; AUROC: " + (
            out["auroc"]["direction"] if "auroc" in out else AUROC_NA)
    return out


def save_classifier(trained: TrainedClassifier, path: str | os.PathLike, report: dict | None = None) -> Path:
    """Export the classifier as a model directory (`training.common.export_model_dir`: config.json +
    model.safetensors + tokenizer files, atomic, refused when a weight is not finite) with a model card
    (README.md) stating what it was trained on and how it scored against the k-mer LR baseline."""
    return export_model_dir(trained.model, path, readme=classifier_model_card(trained, report or {}))


def classifier_model_card(trained: TrainedClassifier, report: dict) -> str:
    """README.md of a fine-tuned classifier directory (facts from the `run_protocol` report when given)."""
    def score(method: str, key: str) -> str:
        m = report.get("summary", {}).get(method, {}).get(key, {})
        return "—" if m.get("mean") is None else f"{m['mean']:.3f} ±{m.get('spread', 0.0):.3f}"

    facts = [("kind", "Caduceus sequence classifier (`CaduceusForSequenceClassification`)"),
             ("method", METHOD_LABELS.get(trained.method, trained.method)),
             ("classes", ", ".join(map(str, trained.classes))),
             ("encoder from", str(report.get("model", "—"))),
             ("training data", str(report.get("data", "—"))),
             ("protocol", str(report.get("protocol", "—")))]
    for m in (report.get("summary") or {}):
        facts.append((f"{METHOD_LABELS.get(m, m)}: accuracy / AUROC", f"{score(m, 'accuracy')} / {score(m, 'auroc')}"))
    if report.get("comparison"):
        facts.append(("model vs k-mer LR", report["comparison"]["verdict"]))
    use = ("```\ndna-mdlm predict --model THIS_DIR --fasta seqs.fa --out probs.tsv\n```\n"
           "or in Python: `dna_mdlm.prediction.load_classifier(dir)` then `predict_proba(model, seqs)`.")
    return render_model_card("dna-mdlm classifier", facts, {"How to use": use,
                             "Limitations": "Scores are from the protocol above on the data named; they say nothing "
                                            "about other cell types, species or sequence lengths."})
