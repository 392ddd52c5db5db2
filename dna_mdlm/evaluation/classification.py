"""Classification metrics, their summary over seeds/folds, and the report (JSON, Markdown table, ROC/confusion PNG).

Owns the numbers every classifier in dna-mdlm is judged by (fine-tuned Caduceus and the baselines alike):
top-1 accuracy, Matthews correlation, macro-F1 and AUROC from scikit-learn, computed from class probabilities
so that all methods go through the same code. Summaries follow the Caduceus Genomic Benchmarks convention:
the mean over runs and the spread `±(max − min)`, not a standard deviation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

METRICS = ("accuracy", "mcc", "macro_f1", "auroc")


def classification_metrics(labels: Sequence[int], proba: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, MCC, macro-F1, AUROC (binary: positive = class 1; multiclass: one-vs-rest macro) and the
    confusion matrix (rows = true class, columns = predicted class), plus `warnings` a reader must see:

    * a classifier that predicts one class for every sequence (its accuracy is that class's share, not skill);
    * an evaluated set that lacks some classes (macro-F1 and AUROC then cover the classes present only, instead of
      counting an absent class as a zero).
    Non-finite probabilities are a ValueError (they must never reach a report)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef, roc_auc_score

    y = np.asarray(labels, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (len(y), len(classes)):
        raise ValueError(f"proba must have shape ({len(y)}, {len(classes)}), got {proba.shape}")
    if not np.isfinite(proba).all():
        raise ValueError("class probabilities are not finite")
    pred = proba.argmax(axis=1)
    present = np.unique(y)
    warnings = []
    if len(y) and np.unique(pred).size == 1:
        warnings.append(f"predicts one class ({classes[int(pred[0])]}) for all {len(y)} sequences: its accuracy is "
                        f"that class's share, not skill")
    if len(present) < len(classes):
        missing = [str(classes[k]) for k in range(len(classes)) if k not in set(present.tolist())]
        warnings.append(f"the evaluated set has no sequence of class(es) {', '.join(missing)}: macro scores cover the "
                        f"{len(present)} class(es) present")
    out = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "mcc": float(matthews_corrcoef(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=present.tolist(), zero_division=0)),
    }
    if len(present) < 2:
        out["auroc"] = float("nan")  # undefined with one class in the evaluated set
    elif len(classes) == 2:
        out["auroc"] = float(roc_auc_score(y, proba[:, 1]))
    else:
        # roc_auc_score needs rows that sum to 1 over exactly the classes present
        sub = proba[:, present] / np.clip(proba[:, present].sum(1, keepdims=True), 1e-12, None)
        out["auroc"] = float(roc_auc_score(y, sub, multi_class="ovr", average="macro", labels=present)) \
            if len(present) > 2 else float(roc_auc_score(y == present[1], sub[:, 1]))
    out["confusion"] = confusion_matrix(y, pred, labels=list(range(len(classes)))).tolist()
    out["warnings"] = warnings
    return out


def summarize(runs: Sequence[dict]) -> dict:
    """{metric: {"mean", "spread" (max − min), "min", "max", "n_runs"}} over a list of per-run metric dicts."""
    out = {}
    for key in METRICS + ("cpu_s", "wall_s"):
        vals = np.array([r[key] for r in runs if key in r and r[key] is not None], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size:
            out[key] = {"mean": float(vals.mean()), "spread": float(vals.max() - vals.min()),
                        "min": float(vals.min()), "max": float(vals.max()), "n_runs": int(vals.size)}
    return out


def fmt_mean_spread(entry: dict | None, digits: int = 3) -> str:
    if not entry:
        return "—"
    return f"{entry['mean']:.{digits}f} ±{entry['spread']:.{digits}f}"


def markdown_table(methods: dict[str, dict], title: str | None = None) -> str:
    """One row per method (its `summarize` output): mean ±(max−min) of every metric and the CPU time per run."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| method | accuracy | MCC | macro-F1 | AUROC | runs | CPU s/run |", "|---|---|---|---|---|---|---|"]
    for name, summ in methods.items():
        runs = summ.get("accuracy", {}).get("n_runs", 0)
        cpu = summ.get("cpu_s", {}).get("mean")
        lines.append(f"| {name} | " + " | ".join(fmt_mean_spread(summ.get(m)) for m in METRICS)
                     + f" | {runs} | {'—' if cpu is None else f'{cpu:.1f}'} |")
    return "\n".join(lines) + "\n"


def plot_roc_confusion(labels: Sequence[int], proba: np.ndarray, classes: Sequence[str],
                       path: str | os.PathLike, title: str = "") -> Path:
    """ROC curves (one-vs-rest per class; the positive class only for binary tasks) beside the confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    y = np.asarray(labels, dtype=np.int64)
    proba = np.asarray(proba)
    fig, (ax_roc, ax_cm) = plt.subplots(1, 2, figsize=(11, 4.8))
    targets = [1] if len(classes) == 2 else list(range(len(classes)))
    for k in targets:
        if 0 < (y == k).sum() < len(y):
            RocCurveDisplay.from_predictions(y == k, proba[:, k], name=str(classes[k]), ax=ax_roc)
    ax_roc.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax_roc.set_title("ROC" + (" (one-vs-rest)" if len(classes) > 2 else f" (positive = {classes[1]})"))
    ConfusionMatrixDisplay.from_predictions(y, proba.argmax(1), labels=list(range(len(classes))),
                                            display_labels=list(classes), ax=ax_cm, colorbar=False)
    ax_cm.set_title("confusion (rows: true)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chance_level(labels: Sequence[int], proba: np.ndarray, classes: Sequence[str], z: float = 2.0) -> dict:
    """Is a classifier's output on a labelled set indistinguishable from chance? {"at_chance", "reason", "auroc", "z"}.

    At chance when every prediction is one class, or when AUROC (binary, or one-vs-rest macro) is not above
    0.5 by `z` null standard errors. The null standard error of AUROC is the Mann-Whitney one,
    sqrt((n1 + n0 + 1) / (12 n1 n0)) (Hanley & McNeil 1982); for several classes the largest per-class value
    is used (conservative). With ~100 validation sequences that asks for AUROC > ~0.62, so a weak but real
    model can be flagged on a small set: the flag says "not shown to be better than chance", not "useless".
    """
    y = np.asarray(labels, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    pred = proba.argmax(axis=1)
    out = {"at_chance": False, "reason": "", "auroc": float("nan"), "z": float("nan"), "n": int(len(y))}
    present = np.unique(y)
    if len(present) < 2:
        out["reason"] = "one class only in the evaluated set: chance level undefined"
        return out
    if len(np.unique(pred)) == 1:
        out.update(at_chance=True, reason=f"predicts only class {classes[int(pred[0])]!r} for all {len(y)} sequences")
    auroc = classification_metrics(y, proba, classes)["auroc"]
    se = max(np.sqrt((len(y) + 1) / (12.0 * (y == k).sum() * (y != k).sum())) for k in present)
    out["auroc"], out["z"] = float(auroc), float((auroc - 0.5) / se)
    if not out["at_chance"] and 0.5 / se < z:  # even AUROC 1 would not pass: the set cannot tell
        out["reason"] = f"too few sequences (n={len(y)}) to tell a classifier from chance"
    elif not out["at_chance"] and out["z"] < z:
        out.update(at_chance=True, reason=f"AUROC {auroc:.3f} is not above 0.5 by {z:g} standard errors "
                                          f"(±{se:.3f} at n={len(y)})")
    return out


class ValLossStopping:
    """Early stopping on validation loss that cannot stop a model still at chance.

    `update(step, val_loss)` after each validation returns True when the loss improved (keep those weights);
    `should_stop(step)` is True only when all hold: at least `min_steps` optimiser steps were taken, the best
    validation loss is below `chance_loss` (the cross-entropy of predicting the training class prior) by
    `margin`, and `patience_steps` steps have passed since the best. Validation loss, not accuracy: on a
    ~100-sequence validation split accuracy moves in 1 % jumps and stalls for hundreds of steps while the
    loss is already falling, which made accuracy-based patience stop runs at chance.
    """

    def __init__(self, patience_steps: int, min_steps: int, chance_loss: float, margin: float = 0.005):
        self.patience_steps, self.min_steps = int(patience_steps), int(min_steps)
        self.chance_loss, self.margin = float(chance_loss), float(margin)
        self.best_loss, self.best_step, self.checks = float("inf"), -1, 0

    @staticmethod
    def prior_loss(labels: Sequence[int], n_classes: int) -> float:
        """Cross-entropy (nats) of always predicting the class frequencies of `labels`."""
        p = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes) / max(1, len(labels))
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    def update(self, step: int, val_loss: float) -> bool:
        self.checks += 1
        if np.isfinite(val_loss) and val_loss < self.best_loss:
            self.best_loss, self.best_step = float(val_loss), int(step)
            return True
        return False

    @property
    def off_chance(self) -> bool:
        return self.best_loss < self.chance_loss - self.margin

    def should_stop(self, step: int) -> bool:
        return (step >= self.min_steps and self.off_chance and step - self.best_step >= self.patience_steps)
