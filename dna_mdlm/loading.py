"""Open any model directory a verb is given: a Caduceus model (MDLM or AR) or a Markov baseline.

Every verb consumes a directory written by `save_pretrained` (config.json + model.safetensors +
tokenizer files). `load_model` checks it with one-line errors and returns the right object.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import InputError


def read_model_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(f"--model {path}: no such directory (expected a model directory written by save_pretrained)")
    if not path.is_dir():
        raise InputError(f"--model {path}: not a directory (expected a model directory with config.json)")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise InputError(f"--model {path}: config.json missing (expected a model directory written by save_pretrained)")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"--model {cfg}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def model_kind(path: str | os.PathLike) -> str:
    """'mdlm', 'ar', 'markov' or 'classifier'."""
    cfg = read_model_config(path)
    if cfg.get("model_type") == "markov":
        return "markov"
    if cfg.get("model_type") != "caduceus":
        raise InputError(f"--model {path}: model_type {cfg.get('model_type')!r} is not a dna-mdlm model")
    archs = cfg.get("architectures") or []
    if any("SequenceClassification" in a for a in archs):
        return "classifier"
    return cfg.get("objective", "mdlm")


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Returns (model, kind). Caduceus models come back in eval mode on `device`."""
    kind = model_kind(path)
    if kind == "markov":
        from .baselines.markov import MarkovLM

        return MarkovLM.from_pretrained(path), kind
    from transformers.utils import logging as hf_logging

    from .models import CaduceusForMaskedLM, CaduceusForSequenceClassification

    hf_logging.disable_progress_bar()
    cls = CaduceusForSequenceClassification if kind == "classifier" else CaduceusForMaskedLM
    if not (Path(path) / "model.safetensors").is_file():
        raise InputError(f"--model {path}: model.safetensors missing (weights are stored as safetensors only)")
    try:
        model = cls.from_pretrained(str(path))
    except Exception as exc:  # a truncated or mismatched file: say which, in one line
        raise InputError(f"--model {path}: could not load weights ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), kind
