"""Open any model a verb is given — a local directory or a Hugging Face hub id — and the device it runs on.

Every verb consumes a directory written by `save_pretrained` (config.json + model.safetensors + tokenizer files):
a Caduceus model (MDLM, AR or fine-tuned classifier) or a k-mer Markov LM. `--model` may also be a hub id
(`org/name`, optionally `@revision`): `model_dir` resolves it with `huggingface_hub.snapshot_download`, restricted to
the config, safetensors and tokenizer files, so the cache, `HF_HOME` and `HF_HUB_OFFLINE=1` work as users expect.
The published Caduceus checkpoints (kuleshov-group/caduceus-{ps,ph}_...) load as they are: their `auto_map` to
remote code is never executed (there is no `trust_remote_code` here), weights are read from safetensors only, and a
masked-LM checkpoint is read as an MDLM denoiser (the objectives share the network; Sahoo et al. 2024 §5.2 train
Caduceus MLM checkpoints on with the MDLM loss). `load_model` checks what it reads with one-line
errors — a missing or foreign directory, weights that are not safetensors, weights that do not fit the config,
weights that are not finite — and returns the model. `load_language_model` returns the language-model view
(`diffusion.mdlm.MDLM`, `baselines.ar.AR` or `baselines.markov.MarkovLM`) that `likelihood`, `evaluate-samples`
and `sample` call through their shared methods (`kind`, `upper_bound`, `window`, `nats_per_window`, ...).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import huggingface_hub
import torch
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers.utils import logging as hf_logging

from .baselines.ar import AR
from .baselines.markov import MarkovLM
from .diffusion.mdlm import MDLM
from .errors import InputError
from .models import CaduceusForMaskedLM, CaduceusForSequenceClassification

KINDS = ("mdlm", "ar", "markov", "classifier")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`; a one-line error for anything else or
    for CUDA on a machine without it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device}: expected cpu, cuda, cuda:N or auto")
    return dev


HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
HUB_FILES = ["config.json", "*.safetensors", "tokenizer*", "vocab*", "special_tokens_map.json", "README.md"]


def model_dir(spec: str | os.PathLike) -> Path:
    """A local model directory for `spec`: the directory itself, or the hub snapshot of `org/name[@revision]`
    (downloaded into the Hugging Face cache unless `HF_HUB_OFFLINE=1`). One-line errors: not found locally or on
    the hub, offline and not cached (with the command that downloads it), a gated or private repository."""
    path = Path(spec)
    if path.exists() or isinstance(spec, Path):
        return path
    match = HUB_ID.match(str(spec))
    if match is None:
        return path  # reported as a missing directory by read_model_config
    repo, revision = match["repo"], match["revision"]
    # Read the environment now, not at import time, so HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE set by a caller count.
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    cache = os.environ.get("HF_HUB_CACHE") or (str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME")
                                               else None)
    try:
        return Path(huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=HUB_FILES,
                                                      cache_dir=cache, local_files_only=offline))
    except LocalEntryNotFoundError:
        raise InputError(f"--model {spec}: not a local directory, and not in the Hugging Face cache while offline "
                         f"(HF_HUB_OFFLINE=1 or no network); download it once with `hf download {repo}` (or "
                         f"`huggingface-cli download {repo}`) where there is internet, or point HF_HOME at a cache "
                         f"that holds it") from None
    except RevisionNotFoundError:
        raise InputError(f"--model {spec}: the hub repository {repo} has no revision {revision!r}") from None
    except GatedRepoError:
        raise InputError(f"--model {spec}: {repo} is gated on the hub; accept its terms and log in "
                         f"(`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise InputError(f"--model {spec}: no such local directory, and no such model on the Hugging Face hub "
                         f"(or it is private: log in with `hf auth login`)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise InputError(f"--model {spec}: could not fetch it from the Hugging Face hub "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None


def read_model_config(spec: str | os.PathLike) -> dict:
    path = model_dir(spec)
    if not path.exists():
        raise InputError(f"--model {spec}: no such directory or hub id (expected a model directory written by "
                         f"save_pretrained, or org/name on the Hugging Face hub)")
    if not path.is_dir():
        raise InputError(f"--model {path}: not a directory (expected a model directory with config.json)")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise InputError(f"--model {path}: config.json missing (expected a model directory written by save_pretrained)")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"--model {cfg}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"--model {cfg}: expected a JSON object")
    return data


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
    objective = cfg.get("objective", "mdlm")
    if objective not in ("mdlm", "ar"):
        raise InputError(f"--model {path}: objective {objective!r} in config.json is not mdlm or ar")
    return objective


def _check_finite(model, path) -> None:
    tensors = model.named_parameters() if isinstance(model, torch.nn.Module) else (
        (f"counts.{j}", torch.as_tensor(c, dtype=torch.float64)) for j, c in enumerate(model.counts))
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise InputError(f"--model {path}: {n} weight(s) of {name} are not finite (NaN or inf); the model is "
                             f"unusable (a diverged training run?); retrain or use an earlier checkpoint")


def load_model(spec: str | os.PathLike, device: str | torch.device = "cpu"):
    """Returns (model, kind) for a model directory or hub id. Caduceus models come back in eval mode on `device`;
    every weight is finite."""
    path = model_dir(spec)
    kind = model_kind(path)
    device = resolve_device(device)
    if kind == "markov":
        model = MarkovLM.from_pretrained(path)
        _check_finite(model, spec)
        return model, kind
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    cls = CaduceusForSequenceClassification if kind == "classifier" else CaduceusForMaskedLM
    if not (Path(path) / "model.safetensors").is_file():
        raise InputError(f"--model {spec}: model.safetensors missing (weights are read from safetensors only, never "
                         f"from pickled .bin files)")
    try:
        # Our classes are registered for model_type "caduceus": a published config's auto_map is never followed.
        # Mismatched shapes are loaded leniently and reported below, because transformers' own error points at a
        # multi-line table ("For details look at the above report!") instead of naming the tensor.
        model, info = cls.from_pretrained(str(path), use_safetensors=True, ignore_mismatched_sizes=True,
                                          output_loading_info=True)
    except Exception as exc:  # a truncated or mismatched file: say which, in one line
        raise InputError(f"--model {spec}: could not load weights ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]})") from None
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: m[0])
    if mismatched:
        key, stored, built = mismatched[0]
        raise InputError(f"--model {spec}: config.json does not fit model.safetensors: {key} is "
                         f"{tuple(stored)} in the weights but {tuple(built)} from config.json (d_model "
                         f"{model.config.d_model}, n_layer {model.config.n_layer}); {len(mismatched)} tensor(s) "
                         f"differ (was config.json edited or copied from another model?)")
    _check_finite(model, spec)
    return model.to(device).eval(), kind


def load_encoder_model(spec: str | os.PathLike, device: str | torch.device = "cpu", flag: str = "--model",
                       verb: str = "this verb"):
    """A Caduceus model (masked LM, AR or classifier: anything with a `.caduceus` encoder) from `spec`, in eval mode.

    Raises InputError naming `flag` for a Markov baseline (it has no encoder) and for every `load_model` error."""
    if model_kind(model_dir(spec)) == "markov":
        raise InputError(f"{flag} {spec}: a Markov baseline has no encoder; {verb} needs a Caduceus model directory")
    return load_model(spec, device)[0]


def load_language_model(path: str | os.PathLike, device: str | torch.device = "cpu", verb: str = "this verb"):
    """The language model in `path`: an `MDLM`, `AR` or `MarkovLM` (see the module docstring). A fine-tuned
    classifier is a one-line error naming `verb`."""
    model, kind = load_model(path, device)
    return as_language_model(model, kind, path, verb)


def as_language_model(model, kind: str | None = None, path="model", verb: str = "this verb"):
    """Wrap a loaded model (a CaduceusForMaskedLM, an MDLM, an AR or a MarkovLM) as a language model."""
    if isinstance(model, (MDLM, AR, MarkovLM)):
        return model
    if kind is None:
        kind = getattr(getattr(model, "config", None), "objective", None)
        if kind is None or not hasattr(model, "lm_head"):
            raise InputError(f"model: expected a model directory, CaduceusForMaskedLM, MDLM, AR or MarkovLM, got "
                             f"{type(model).__name__}")
    if kind == "classifier":
        raise InputError(f"--model {path}: a fine-tuned classifier is not a language model; {verb} needs a "
                         f"pretrained MDLM, AR or Markov model")
    return MDLM(model) if kind == "mdlm" else AR(model)
