"""An oracle for designed sequences: a fine-tuned classifier that says which class each sequence looks like.

Conditional generators are judged by an independent classifier trained on real sequences of the classes (the
"class F1" / oracle accuracy of DNA-Diffusion, DRAKES and Schiff et al., arXiv 2412.10193, §5). `Oracle` wraps a
classifier directory written by `dna-mdlm finetune`; `evaluate-samples --oracle` reports its class probabilities
of the samples and of both real sets, and the fraction of each called the target class (`--target-class`). The
oracle must not have seen the generator's training sequences, or its calls reward memorisation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..prediction import class_names, load_classifier, predict_proba


class Oracle:
    """A fine-tuned classifier (`dna-mdlm finetune` output directory) scoring sequences by class.

    Args:
        model_dir: the classifier directory (InputError naming `--oracle` when it is not a classifier).
        target_class: the class the samples were generated for (a name from the classifier's `id2label`), or None
            to report every class without a target rate; an unknown name is an InputError listing the classes.
        device, batch_size: where and how many sequences per forward pass.
    """

    def __init__(self, model_dir: str | os.PathLike, target_class: str | None = None, device: str = "cpu",
                 batch_size: int = 64):
        self.model_dir = str(model_dir)
        try:
            self.model = load_classifier(model_dir, device)
        except InputError as exc:
            raise InputError(f"--oracle: {exc}") from None
        self.classes = class_names(self.model)
        if target_class is not None and str(target_class) not in self.classes:
            raise InputError(f"--target-class {target_class}: not a class of the --oracle {model_dir} "
                             f"(known: {', '.join(self.classes)})")
        self.target_class = None if target_class is None else str(target_class)
        self.batch_size = batch_size

    def probabilities(self, seqs: Sequence[str]) -> np.ndarray:
        """(N, n_classes) softmax probabilities, columns in `self.classes` order; InputError if not finite."""
        proba = predict_proba(self.model, list(seqs), self.batch_size)
        if not np.isfinite(proba).all():
            raise InputError(f"--oracle {self.model_dir}: the classifier produced non-finite probabilities")
        return proba

    def summary(self, seqs: Sequence[str]) -> dict:
        """Mean probability of each class, the fraction called each class (argmax), and the target-class rate."""
        proba = self.probabilities(seqs)
        called = np.bincount(proba.argmax(1), minlength=len(self.classes)) / max(len(seqs), 1)
        out = {"n": len(seqs),
               "mean_probability": {c: float(p) for c, p in zip(self.classes, proba.mean(0))},
               "called_fraction": {c: float(f) for c, f in zip(self.classes, called)}}
        if self.target_class is not None:
            out["target_rate"] = out["called_fraction"][self.target_class]
        return out

    def report(self, samples: Sequence[str], reference_a: Sequence[str], reference_b: Sequence[str]) -> dict:
        """The oracle section of `evaluate-samples`: `generated`, `reference` (set A) and `reference_b` summaries
        (each: n, mean_probability, called_fraction[, target_rate]); the target class and the classifier used."""
        return {"model": self.model_dir, "classes": list(self.classes), "target_class": self.target_class,
                "generated": self.summary(samples), "reference": self.summary(reference_a),
                "reference_b": self.summary(reference_b),
                "note": "fraction called = argmax of the classifier's probabilities"}
