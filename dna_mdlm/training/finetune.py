"""Fine-tuning Caduceus classifiers on labelled DNA, the Genomic Benchmarks protocol, and prediction.

Owns:

* `FinetuneConfig` — every knob of one training run (head, pooling, frozen or full fine-tuning, RC handling,
  class weights, early stopping, EMA, budgets), readable from a `configs/finetune/*.yaml` recipe.
* `build_classifier` — a `CaduceusForSequenceClassification` whose encoder is loaded from a pretrained model
  directory (the MLM's `lm_head` is dropped, the head is freshly initialised), or randomly initialised with the
  same config for the from-scratch baseline.
* `train_classifier` — one run with Lightning (LightningModule + Trainer, EarlyStopping and ModelCheckpoint on
  validation accuracy, CSV logger). The weights with the best validation accuracy are the ones returned.
* `run_protocol` — several seeds with 90/10 train/val splits scored on a test set (the published GB protocol),
  or stratified k-fold cross-validation when only one labelled set exists, for the Caduceus variants and the
  CNN / k-mer LR baselines on identical splits; writes metrics JSON, a Markdown table, a ROC/confusion PNG and
  the fine-tuned model directory, atomically.
* `predict_proba` / `predict_fasta` — class probabilities from a fine-tuned model directory.

RC handling follows the backbone. A Caduceus-PS encoder pools each strand's stream separately and averages the
head's logits over the two, so the classifier is exactly RC-invariant and needs no RC augmentation. For a plain
or Ph encoder the protocol is Caduceus-Ph: RC augmentation (p = 0.5) in training and, at evaluation, the logits
of the forward and reverse-complement inputs averaged (`conjoin`).

Frozen encoder = cached features: when the encoder is frozen, its pooled features never change, so they are
computed once (both strand views: forward and RC for Ph, the two PS streams for PS) and only the head is trained
on the cached tensors. RC augmentation then becomes "pick one of the two cached views per example", which is
exactly what augmenting the tokens would have given. On CPU this turns a run that would push every sequence
through the encoder every epoch into one encoder pass per sequence, typically 10-50x faster.

Variable-length inputs are batched with right padding and an attention mask (the encoder's outputs on real
tokens do not depend on padding); a sequence longer than `max_length` is an error unless `truncate` is set.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Iterable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.labelled import LabelledSequences, collate_labelled
from ..data.genome import iter_fasta_batches
from ..errors import InputError
from ..io.writers import atomic_path, dumps_json
from ..models import CaduceusConfig, CaduceusForSequenceClassification
from ..models.modeling_caduceus import rc_padded
from ..tokenizer import PAD_ID, DNATokenizer, encode_dna

CADUCEUS_METHODS = ("frozen", "finetuned", "scratch")
BASELINE_METHODS = ("cnn", "kmer_lr")
METHODS = CADUCEUS_METHODS + BASELINE_METHODS
METHOD_LABELS = {"frozen": "pretrained, frozen encoder + head", "finetuned": "pretrained, fine-tuned",
                 "scratch": "same backbone from scratch", "cnn": "CNN (GB baseline)", "kmer_lr": "k-mer (1..6) LR"}


@dataclass
class FinetuneConfig:
    """One training run. `lr`/`weight_decay` apply to the whole trainable part (head, or head + encoder)."""

    head: str = "mlp"                   # "mlp" or "linear"
    pooling: str = "mean"               # mean | max | first | last (padding masked out)
    unfreeze: bool = False              # full fine-tuning instead of a frozen encoder
    conjoin: bool = True                # non-PS: average forward and RC logits at evaluation (Caduceus-Ph)
    rc_aug: bool | None = None          # None: on for non-PS encoders, off for PS (already RC-invariant)
    class_weights: str = "auto"         # auto (balanced when the largest class is > 1.5x the smallest) | balanced | none
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.01
    batch_size: int = 64
    epochs: int = 10
    patience: int = 3                   # early stopping on validation accuracy (epochs without a gain)
    ema_decay: float | None = None      # e.g. 0.999: validate and export the exponential moving average
    val_fraction: float = 0.1
    max_length: int | None = None       # longer sequences are an error unless truncate
    truncate: bool = False
    max_steps: int | None = None
    time_budget_s: float | None = None  # wall-clock budget per run (Lightning max_time)
    cache_features: bool = True         # frozen encoder: train the head on cached pooled features
    eval_batch_size: int = 64
    device: str = "cpu"

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "FinetuneConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{where}: unknown fine-tuning setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        cfg = cls(**values)
        cfg.check(where)
        return cfg

    def check(self, where: str = "config") -> None:
        if self.head not in ("mlp", "linear"):
            raise InputError(f"{where}: head must be mlp or linear, got {self.head!r}")
        if self.pooling not in ("mean", "max", "first", "last"):
            raise InputError(f"{where}: pooling must be mean, max, first or last, got {self.pooling!r}")
        if self.class_weights not in ("auto", "balanced", "none"):
            raise InputError(f"{where}: class_weights must be auto, balanced or none, got {self.class_weights!r}")
        if self.batch_size < 1 or self.epochs < 1 or self.lr <= 0 or self.patience < 1:
            raise InputError(f"{where}: batch_size, epochs and patience must be >= 1 and lr > 0")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"{where}: val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise InputError(f"{where}: ema_decay must lie in (0, 1), got {self.ema_decay}")


# --------------------------------------------------------------------------------------------------
# Model construction and encoding
# --------------------------------------------------------------------------------------------------


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def build_classifier(model_dir: str | os.PathLike, classes: Sequence[str], cfg: FinetuneConfig,
                     from_scratch: bool = False, seed: int = 0) -> CaduceusForSequenceClassification:
    """Classifier with the encoder of `model_dir` (any dna-mdlm Caduceus directory) and a new head."""
    from ..loading import model_kind

    kind = model_kind(model_dir)
    if kind == "markov":
        raise InputError(f"--model {model_dir}: a Markov baseline has no encoder to fine-tune; pass a Caduceus model directory")
    _quiet_transformers()
    torch.manual_seed(seed)
    kwargs = dict(num_labels=len(classes), pooling_strategy=cfg.pooling, head=cfg.head, conjoin_train=False,
                  conjoin_eval=cfg.conjoin, id2label=dict(enumerate(classes)),
                  label2id={c: i for i, c in enumerate(classes)})
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
        # from_pretrained leaves the missing head's Linear weights uninitialised (torch.empty: NaN or 1e37 seen),
        # because _init_weights only reaches them through the top-level module; initialise the head explicitly.
        std = model.config.initializer_cfg.get("initializer_range", 0.02)
        with torch.no_grad():
            for p in model.score.parameters():
                p.normal_(0.0, std) if p.dim() > 1 else p.zero_()
    model.config.architectures = ["CaduceusForSequenceClassification"]
    return model.to(cfg.device)


def _timesteps(model, n: int, device) -> torch.Tensor | None:
    # A time-conditioned MDLM encoder sees clean inputs here: noise level 0.
    return torch.zeros(n, device=device) if model.config.time_conditioning else None


def _encode_all(seqs: Sequence[str], cfg_max_length: int | None, truncate: bool, where: str) -> list[np.ndarray]:
    out = []
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise InputError(f"{where}: sequence {i + 1} is empty")
        ids = encode_dna(s)  # IUPAC codes other than N are an error (DESIGN contract)
        if cfg_max_length is not None and len(ids) > cfg_max_length:
            if not truncate:
                raise InputError(f"{where}: sequence {i + 1} has {len(ids)} bases > max_length={cfg_max_length} "
                                 f"(raise max_length or set truncate)")
            ids = ids[:cfg_max_length]
        out.append(ids)
    return out


def _length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length: padding costs encoder time on every padded position."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pad(ids: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate_labelled([(a, 0) for a in ids], pad_id=PAD_ID)
    return batch["input_ids"], batch["attention_mask"]


@torch.no_grad()
def extract_features(model: CaduceusForSequenceClassification, ids: Sequence[np.ndarray], batch_size: int = 64) -> torch.Tensor:
    """(N, 2, d) pooled features of every sequence, both strand views (PS streams, or forward + RC input)."""
    was_training = model.training
    model.eval()
    conjoin = model.config.conjoin_eval
    model.config.conjoin_eval = True  # always cache both views; whether to use the RC one is decided later
    device = next(model.parameters()).device
    out = torch.empty(len(ids), 2, model.config.d_model)
    try:
        for idx in _length_sorted_batches(np.array([len(a) for a in ids]), batch_size):
            x, mask = _pad([ids[i] for i in idx])
            feats = model.pooled_features(x.to(device), mask.to(device), _timesteps(model, len(idx), device))
            out[torch.as_tensor(idx)] = feats.float().cpu()
    finally:
        model.config.conjoin_eval = conjoin
        model.train(was_training)
    return out


@torch.no_grad()
def predict_proba(model: CaduceusForSequenceClassification, seqs: Sequence[str] | Sequence[np.ndarray],
                  batch_size: int = 64, max_length: int | None = None, truncate: bool = False) -> np.ndarray:
    """(N, n_classes) softmax probabilities, column j = class id j (`model.config.id2label[j]`)."""
    ids = [s if isinstance(s, np.ndarray) else None for s in seqs]
    if any(a is None for a in ids):
        ids = _encode_all(seqs, max_length, truncate, "predict")
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float64)
    for idx in _length_sorted_batches(np.array([len(a) for a in ids]), batch_size):
        x, mask = _pad([ids[i] for i in idx])
        logits = model(x.to(device), attention_mask=mask.to(device), timesteps=_timesteps(model, len(idx), device)).logits
        out[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------------
# Lightning
# --------------------------------------------------------------------------------------------------


class _TokenDataset(torch.utils.data.Dataset):
    def __init__(self, ids: list[np.ndarray], labels: np.ndarray):
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.ids[i], int(self.labels[i])


class _BucketBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches of similar length: shuffle, sort within pools of 50 batches, shuffle the batches."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def __len__(self):
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        perm = rng.permutation(len(self.lengths))
        pool = 50 * self.batch_size
        batches = []
        for s in range(0, len(perm), pool):
            chunk = perm[s : s + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        for j in rng.permutation(len(batches)):
            yield batches[j]


class ClassifierModule(pl.LightningModule):
    """Trains `net`: the head alone on cached (B, 2, d) features, or the whole classifier on token batches."""

    def __init__(self, net: nn.Module, cfg: FinetuneConfig, rcps: bool, cached: bool,
                 class_weight: torch.Tensor | None, total_steps: int):
        super().__init__()
        self.net, self.cfg, self.rcps, self.cached, self.total_steps = net, cfg, rcps, cached, total_steps
        self.rc_aug = (not rcps) if cfg.rc_aug is None else (cfg.rc_aug and not rcps)
        self.register_buffer("class_weight", class_weight, persistent=False)
        self.ema = None
        if cfg.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)

    def logits(self, net: nn.Module, batch: dict, train: bool) -> torch.Tensor:
        if self.cached:
            feats = batch["features"]
            if self.rcps:
                views = feats  # the two PS streams, always averaged
            elif train:
                if self.rc_aug:  # a random strand per example = RC augmentation of the input
                    pick = torch.randint(0, 2, (len(feats),), device=feats.device)
                    views = feats[torch.arange(len(feats), device=feats.device), pick][:, None]
                else:
                    views = feats[:, :1]
            else:
                views = feats if self.cfg.conjoin else feats[:, :1]
            return net(views).mean(1).float()
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if train and self.rc_aug:
            flip = torch.rand(len(ids), device=ids.device) < 0.5
            ids = torch.where(flip[:, None], rc_padded(ids, mask), ids)
        model = net.module if hasattr(net, "n_averaged") else net
        return net(ids, attention_mask=mask, timesteps=_timesteps(model, len(ids), ids.device)).logits

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self.logits(self.net, batch, True), batch["labels"], weight=self.class_weight)
        self.log("train_loss", loss, batch_size=len(batch["labels"]), on_step=True, on_epoch=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def validation_step(self, batch, batch_idx):
        net = self.ema if self.ema is not None else self.net
        logits = self.logits(net, batch, False)
        y = batch["labels"]
        self.log("val_loss", F.cross_entropy(logits, y), batch_size=len(y), on_epoch=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), batch_size=len(y), on_epoch=True)

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # biases and norm gains are not decayed
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.cfg.lr, betas=(0.9, 0.999))
        warmup = max(1, int(self.cfg.warmup_fraction * self.total_steps))

        def schedule(step):  # linear warm-up, then cosine down to 0.1 x lr (the Caduceus GB recipe)
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _collate_features(batch):
    feats, labels = zip(*batch)
    return {"features": torch.stack(feats), "labels": torch.tensor(labels, dtype=torch.long)}


def _class_weight(labels: np.ndarray, n_classes: int, mode: str) -> torch.Tensor | None:
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    if mode == "none" or (mode == "auto" and counts.max() <= 1.5 * counts[counts > 0].min()):
        return None
    from sklearn.utils.class_weight import compute_class_weight

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
    history: dict

    def predict_proba(self, data: LabelledSequences | Sequence[str], batch_size: int = 64,
                      max_length: int | None = None, truncate: bool = False) -> np.ndarray:
        seqs = data.seqs if isinstance(data, LabelledSequences) else data
        return predict_proba(self.model, seqs, batch_size, max_length, truncate)


def train_classifier(model_dir: str | os.PathLike, train: LabelledSequences, val: LabelledSequences,
                     cfg: FinetuneConfig, seed: int = 0, method: str = "frozen",
                     work_dir: str | os.PathLike | None = None) -> TrainedClassifier:
    """One Lightning run of `method` ("frozen", "finetuned" or "scratch"), early-stopped on val accuracy.

    `work_dir` receives the CSV logs and the best checkpoint (default: a temporary folder, removed after).
    """
    if method not in CADUCEUS_METHODS:
        raise InputError(f"method must be one of {', '.join(CADUCEUS_METHODS)}, got {method!r}")
    if len(np.unique(train.labels)) < 2:
        raise InputError(f"training data {train.source} holds only one class ({train.classes[int(train.labels[0])] if len(train) else 'empty'}); need at least two")
    if val.classes != train.classes:
        raise InputError(f"val classes {val.classes} differ from train classes {train.classes}")
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    pl.seed_everything(seed, verbose=False)
    model = build_classifier(model_dir, train.classes, cfg, from_scratch=(method == "scratch"), seed=seed)
    frozen = method == "frozen"
    cached = frozen and cfg.cache_features
    tr_ids = _encode_all(train.seqs, cfg.max_length, cfg.truncate, f"training data {train.source}")
    va_ids = _encode_all(val.seqs, cfg.max_length, cfg.truncate, f"validation data {val.source}")
    t0, c0 = time.monotonic(), time.process_time()
    if frozen:
        model.caduceus.requires_grad_(False)
    if cached:
        tr = list(zip(extract_features(model, tr_ids, cfg.eval_batch_size), train.labels.tolist()))
        va = list(zip(extract_features(model, va_ids, cfg.eval_batch_size), val.labels.tolist()))
        gen = torch.Generator().manual_seed(seed)
        train_loader = torch.utils.data.DataLoader(tr, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                                                   collate_fn=_collate_features)
        val_loader = torch.utils.data.DataLoader(va, batch_size=4 * cfg.batch_size, collate_fn=_collate_features)
        net = model.score
    else:
        collate = lambda b: {k: v for k, v in collate_labelled(b).items() if k != "n_truncated"}  # noqa: E731
        train_loader = torch.utils.data.DataLoader(
            _TokenDataset(tr_ids, train.labels),
            batch_sampler=_BucketBatchSampler(np.array([len(a) for a in tr_ids]), cfg.batch_size, seed), collate_fn=collate)
        val_loader = torch.utils.data.DataLoader(
            _TokenDataset(va_ids, val.labels),
            batch_sampler=[b.tolist() for b in _length_sorted_batches(np.array([len(a) for a in va_ids]), cfg.eval_batch_size)],
            collate_fn=collate)
        net = model
    feature_s = time.monotonic() - t0
    steps_per_epoch = len(train_loader)
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or 10**12)
    module = ClassifierModule(net, cfg, model.config.rcps, cached,
                              _class_weight(train.labels, train.n_classes, cfg.class_weights), total_steps)
    own_work = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="dna-mdlm-ft-")) if own_work else Path(work_dir)
    try:
        ckpt = ModelCheckpoint(dirpath=work / "checkpoints", monitor="val_acc", mode="max", save_top_k=1,
                               save_weights_only=True, filename="best")
        trainer = pl.Trainer(
            accelerator="gpu" if str(cfg.device).startswith("cuda") else "cpu", devices=1,
            max_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
            max_time=timedelta(seconds=cfg.time_budget_s) if cfg.time_budget_s else None,
            val_check_interval=min(steps_per_epoch, cfg.max_steps) if cfg.max_steps else None,
            callbacks=[ckpt, EarlyStopping(monitor="val_acc", mode="max", patience=cfg.patience)],
            logger=CSVLogger(work, name="logs", version=0), gradient_clip_val=1.0,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            log_every_n_steps=max(1, min(50, steps_per_epoch)), enable_checkpointing=True,
        )
        net.train()  # from_pretrained returns eval mode; Lightning keeps the modes it finds (head dropout must be on)
        trainer.fit(module, train_loader, val_loader)
        best_path = ckpt.best_model_path
        if best_path:
            state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state, strict=False)
        if module.ema is not None:
            net.load_state_dict(module.ema.module.state_dict())
        best = float(ckpt.best_model_score) if ckpt.best_model_score is not None else None
        history = {"method": method, "seed": seed, "epochs_run": trainer.current_epoch, "steps": trainer.global_step,
                   "stopped_early": bool(trainer.early_stopping_callback and trainer.early_stopping_callback.stopped_epoch),
                   "feature_cache_s": feature_s if cached else 0.0, "cached_features": cached,
                   "rc_aug": module.rc_aug, "n_train": len(train), "n_val": len(val)}
        metrics_csv = work / "logs" / "version_0" / "metrics.csv"
        if metrics_csv.is_file():
            import csv

            with open(metrics_csv) as fh:
                history["val_acc_per_check"] = [float(r["val_acc"]) for r in csv.DictReader(fh) if r.get("val_acc")]
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    model.requires_grad_(True)
    model.eval()
    history["wall_s"] = time.monotonic() - t0
    history["cpu_s"] = time.process_time() - c0
    return TrainedClassifier(model, list(train.classes), method, best, history)


# --------------------------------------------------------------------------------------------------
# The protocol: seeds x splits x methods, metrics, report, model directory
# --------------------------------------------------------------------------------------------------


def protocol_splits(train: LabelledSequences, test: LabelledSequences | None, seeds: Sequence[int],
                    folds: int | None, val_fraction: float = 0.1) -> tuple[str, list[dict]]:
    """(description, [{"name", "seed", "train", "val", "test"}]) for the seeds protocol or k-fold CV."""
    if test is not None:
        if folds:
            raise InputError("--folds is for a single labelled set; with a test set the protocol is --seeds")
        if test.classes != train.classes:
            test = test.with_class_order(train.classes)
        desc = (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), each a stratified {1 - val_fraction:.0%}/"
                f"{val_fraction:.0%} train/val split of the training set, scored on the test set")
        runs = []
        for s in seeds:
            tr, va = train.stratified_split(val_fraction, seed=s)
            runs.append({"name": f"seed{s}", "seed": s, "train": tr, "val": va, "test": test})
        return desc, runs
    k = folds or 5
    if k < 2:
        raise InputError(f"--folds must be >= 2, got {k}")
    counts = np.bincount(train.labels, minlength=train.n_classes)
    if counts[counts > 0].min() < k:
        raise InputError(f"{train.source}: the smallest class has {counts[counts > 0].min()} sequences, fewer than --folds {k}")
    desc = (f"stratified {k}-fold cross-validation within one labelled set ({train.source}); in each fold a "
            f"stratified {val_fraction:.0%} of the training part is the validation set. NOT an official train/test protocol")
    runs = []
    for i, (tr_all, te) in enumerate(train.stratified_folds(k, seed=0)):
        tr, va = tr_all.stratified_split(val_fraction, seed=i)
        runs.append({"name": f"fold{i}", "seed": i, "train": tr, "val": va, "test": te})
    return desc, runs


def _run_baseline(method: str, run: dict, cfg: FinetuneConfig) -> tuple[np.ndarray, dict]:
    t0, c0 = time.monotonic(), time.process_time()
    if method == "cnn":
        from ..baselines.cnn import train_cnn

        clf = train_cnn(run["train"], run["val"], epochs=cfg.epochs, seed=run["seed"], patience=cfg.patience,
                        time_budget_s=cfg.time_budget_s, device=cfg.device, truncate=True,
                        input_len=int(max(run["train"].lengths.max(), run["val"].lengths.max(), run["test"].lengths.max())))
        proba = clf.predict_proba(run["test"].seqs)
        info = {"best_val_accuracy": clf.best_val_accuracy}
    else:
        from ..baselines.kmer_lr import fit_kmer_lr

        clf = fit_kmer_lr(run["train"], run["val"], seed=run["seed"])
        proba = clf.predict_proba(run["test"].seqs)
        info = {"best_val_accuracy": clf.val_accuracy, "C": clf.C}
    info.update(wall_s=time.monotonic() - t0, cpu_s=time.process_time() - c0)
    return proba, info


def run_protocol(model_dir: str | os.PathLike, train: LabelledSequences, out_dir: str | os.PathLike,
                 cfg: FinetuneConfig | None = None, test: LabelledSequences | None = None,
                 seeds: Sequence[int] = (1, 2, 3), folds: int | None = None,
                 methods: Sequence[str] | None = None, task: str | None = None, log=print) -> dict:
    """Train and score every method on the same splits; write `out_dir` atomically and return the report.

    `out_dir` gets `metrics.json` (per-run and summary metrics), `metrics.md` (the table), `roc_confusion.png`
    and `model/` (the primary method's best run: save_pretrained + tokenizer files). The primary method is
    the first Caduceus method in `methods` (default: `finetuned` if `cfg.unfreeze` else `frozen`).
    """
    from ..evaluation.classification import classification_metrics, markdown_table, plot_roc_confusion, summarize

    cfg = cfg or FinetuneConfig()
    cfg.check()
    methods = list(methods or ["finetuned" if cfg.unfreeze else "frozen"])
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise InputError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    primary = next((m for m in methods if m in CADUCEUS_METHODS), None)
    if primary is None:
        raise InputError("at least one Caduceus method (frozen, finetuned, scratch) is needed to write a model")
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
    from ..loading import load_model

    load_model(model_dir)  # a missing, foreign or non-finite --model fails before any work
    desc, runs = protocol_splits(train, test, seeds, folds, cfg.val_fraction)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    oof: dict[str, tuple[list, list]] = {m: ([], []) for m in methods}
    best_primary: tuple[float, TrainedClassifier | None] = (-math.inf, None)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for run in runs:
            for method in methods:
                log(f"[finetune] {run['name']} {method}: train {len(run['train'])}, val {len(run['val'])}, test {len(run['test'])}")
                if method in CADUCEUS_METHODS:
                    trained = train_classifier(model_dir, run["train"], run["val"], cfg, seed=run["seed"], method=method,
                                               work_dir=tmp / "runs" / f"{run['name']}-{method}")
                    proba = trained.predict_proba(run["test"], cfg.eval_batch_size, cfg.max_length, cfg.truncate)
                    info = {"best_val_accuracy": trained.best_val_accuracy, **trained.history}
                    shutil.rmtree(tmp / "runs" / f"{run['name']}-{method}" / "checkpoints", ignore_errors=True)
                    if method == primary and (trained.best_val_accuracy or 0.0) > best_primary[0]:
                        best_primary = (trained.best_val_accuracy or 0.0, trained)
                else:
                    proba, info = _run_baseline(method, run, cfg)
                metrics = classification_metrics(run["test"].labels, proba, train.classes)
                results[method].append({"run": run["name"], **metrics, **info})
                oof[method][0].append(run["test"].labels)
                oof[method][1].append(proba)
                log(f"[finetune] {run['name']} {method}: test accuracy {metrics['accuracy']:.4f}, AUROC {metrics['auroc']:.4f}"
                    + "".join(f"; WARNING: {w}" for w in metrics["warnings"]))
        summaries = {m: summarize(results[m]) for m in methods}
        for m in methods:  # every distinct warning, with the runs it came from
            seen: dict[str, list[str]] = {}
            for r in results[m]:
                for w in r.get("warnings", []):
                    seen.setdefault(w, []).append(r["run"])
            summaries[m]["warnings"] = [f"{w} ({', '.join(runs)})" for w, runs in seen.items()]
        title = f"{task or train.source}: {desc}"
        table = markdown_table({METHOD_LABELS[m]: summaries[m] for m in methods}, title=None)
        report = {"task": task, "data": train.source, "test_data": test.source if test is not None else None,
                  "protocol": desc, "cross_validation": test is None, "classes": train.classes,
                  "class_counts": train.class_counts(), "model": str(model_dir), "primary_method": primary,
                  "config": asdict(cfg), "summary": summaries, "runs": results,
                  "spread": "± is max − min over runs (the Caduceus GB convention), not a standard deviation"}
        (tmp / "metrics.json").write_text(dumps_json(report) + "\n")
        warned = "".join(f"\n**Warning ({METHOD_LABELS[m]})**: {w}\n" for m in methods for w in summaries[m]["warnings"])
        (tmp / "metrics.md").write_text(f"## {title}\n\n{table}\n± = max − min over {len(runs)} runs.\n{warned}")
        labels = np.concatenate(oof[primary][0])
        proba = np.concatenate(oof[primary][1])
        what = "out-of-fold predictions" if test is None else f"test predictions pooled over {len(runs)} seeds"
        plot_roc_confusion(labels, proba, train.classes, tmp / "roc_confusion.png",
                           title=f"{task or 'classifier'} — {METHOD_LABELS[primary]} ({what})")
        save_classifier(best_primary[1], tmp / "model")
    log(f"[finetune] wrote {out_dir}")
    print(table)
    return report


def save_classifier(trained: TrainedClassifier, path: str | os.PathLike) -> Path:
    """save_pretrained (config.json + model.safetensors) plus the tokenizer files."""
    path = Path(path)
    trained.model.save_pretrained(str(path))
    DNATokenizer().save_pretrained(str(path))
    return path


# --------------------------------------------------------------------------------------------------
# Prediction on FASTA
# --------------------------------------------------------------------------------------------------


def load_classifier(model_dir: str | os.PathLike, device: str = "cpu") -> CaduceusForSequenceClassification:
    from ..loading import load_model

    model, kind = load_model(model_dir, device)
    if kind != "classifier":
        raise InputError(f"--model {model_dir}: a {kind} model, not a fine-tuned classifier (make one with dna-mdlm finetune)")
    return model


def predict_fasta(model_dir: str | os.PathLike, fasta: str | os.PathLike, out: str | os.PathLike,
                  batch_size: int = 64, device: str = "cpu", max_length: int | None = None,
                  truncate: bool = False, unknown: str = "error") -> dict:
    """Write a TSV (record name + one probability column per class name) atomically, rows in FASTA order.

    Returns {"records", "truncated"}: with `truncate`, records longer than `max_length` keep their first
    `max_length` bases and are counted (never silently); without it they are an error naming the record."""
    model = load_classifier(model_dir, device)
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    n = truncated = 0
    with atomic_path(out) as tmp, open(tmp, "w") as fh:
        fh.write("\t".join(["record"] + [str(c) for c in classes]) + "\n")
        for chunk in iter_fasta_batches(fasta, 16 * batch_size, unknown):
            ids = []
            for rid, a in chunk:
                if max_length is not None and len(a) > max_length:
                    if not truncate:
                        raise InputError(f"--fasta {fasta}: record {rid!r} has {len(a)} bases > --max-length "
                                         f"{max_length} (raise --max-length or pass --truncate)")
                    a, truncated = a[:max_length], truncated + 1
                ids.append(a)
            proba = predict_proba(model, ids, batch_size)
            if not np.isfinite(proba).all():
                raise InputError(f"--model {model_dir}: the classifier produced non-finite probabilities")
            for (rid, _), row in zip(chunk, proba):
                fh.write(rid + "\t" + "\t".join(f"{p:.6g}" for p in row) + "\n")
            n += len(chunk)
    return {"records": n, "truncated": truncated}
