"""Recipes: the YAML settings shipped with the package (`dna_mdlm/configs/<verb>/*.yaml`), one schema per verb,
resolved and validated here so that the command line only parses and calls.

Pretraining settings are a nested dict (`PRETRAIN_DEFAULTS` documents every key). Precedence, lowest first: the
defaults, a recipe (`--config NAME` or a YAML file), explicit flags, `--set key=value` overrides (a flag and a
`--set` that give one key two values are an error). Every value has a type and range (`Spec`, `check_fields`). A fresh run
writes the fully resolved settings to `RUN/run_config.json`; `--resume` reads them back, so a resumed run trains
on the same data with the same recipe, model and seed, and an explicit setting that contradicts the saved run
is a one-line error (only the budget and the hardware may change: `RESUMABLE`).
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from pathlib import Path

import yaml

from ..errors import InputError
from ..loading import model_kind, read_model_config
from ..models import CaduceusConfig

PACKAGE = Path(__file__).resolve().parents[1]
RECIPES = PACKAGE / "configs"
BUNDLED_DEMO_FASTA = PACKAGE / "resources" / "chr20_demo.fa.gz"
# The bundled excerpt's last 250 kb (record name, then 1-based positions within it): held out by default.
BUNDLED_DEMO_VAL_REGION = "20:32000001-34500000:2250001-2500000"

PRETRAIN_DEFAULTS = {
    "objective": "mdlm",          # mdlm | ar | markov
    "schedule": "loglinear",      # MDLM noise schedule: loglinear | cosine | linear
    "seed": 0,                    # seeds the init, the data stream and the masks
    "model": {"d_model": 64, "n_layer": 4, "rcps": True},  # any CaduceusConfig field
    "data": {
        "window": 1024,           # bases per training window
        "batch_size": 16,         # windows per step per device
        "num_workers": 0,         # DataLoader processes (items do not depend on it)
        "max_n_frac": 0.5,        # windows with more N than this are skipped
        "rc_aug": None,           # reverse-complement half the windows; None: on unless the model is RC-PS
        "unknown": "error",       # IUPAC ambiguity codes: error | N
        "train_samples_per_epoch": 100_000,
        "max_val_windows": 256,   # validation windows, spread evenly over the held-out intervals
        "max_test_windows": 256,
        "val_fraction": 0.1,      # --labels: seeded stratified share of the labels table held out for validation
    },
    "optim": {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.95], "warmup_steps": 100, "lr_schedule": "cosine",
              "min_lr_ratio": 0.1, "grad_clip": 1.0, "ema_decay": 0.999},
    "trainer": {"max_steps": 1000, "max_time": None, "val_every": 250, "accelerator": "auto", "devices": 1,
                "num_nodes": 1, "strategy": "auto", "precision": "auto", "log_every": 10, "progress_bar": True},
}
# Top-level keys that name the data rather than how to train on it.
# `labels`: a class-labelled table (CSV/TSV, labelled FASTA or a GB task) instead of FASTA: a class-conditional MDLM.
DATA_KEYS = ("fasta", "bed", "val_regions", "val_records", "test_regions", "test_records", "labels")
OTHER_KEYS = ("description", "init")
# What a resumed run may change: its budget and the hardware it runs on.
RESUMABLE = {"trainer.max_steps", "trainer.max_time", "trainer.accelerator", "trainer.devices", "trainer.num_nodes",
             "trainer.strategy", "trainer.precision", "trainer.progress_bar", "trainer.log_every", "data.num_workers",
             "description"}

# Model keys a recipe may set: CaduceusConfig's declared fields, less those the run itself writes.
MODEL_KEYS = set(inspect.signature(CaduceusConfig.__init__).parameters) - {
    "self", "kwargs", "objective", "train_window", "schedule", "distillation", "num_classes", "class_names"}
MARKOV_MODEL_KEYS = {"order"}
# The fields that make an architecture: `--init` takes them from the init model, and a recipe may not change them.
ARCHITECTURE_KEYS = ("d_model", "n_layer", "vocab_size", "ssm_cfg", "rms_norm", "residual_in_fp32", "fused_add_norm",
                     "pad_vocab_size_multiple", "norm_epsilon", "initializer_cfg", "bidirectional",
                     "bidirectional_strategy", "bidirectional_weight_tie", "rcps", "complement_map", "time_conditioning")

PRECISIONS = {
    "auto": "auto",
    "32": "32-true", "fp32": "32-true", "32-true": "32-true", "float32": "32-true",
    "16": "16-mixed", "fp16": "16-mixed", "16-mixed": "16-mixed", "half": "16-mixed", "16-true": "16-true",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed", "bfloat16": "bf16-mixed", "bf16-true": "bf16-true",
    "64": "64-true", "fp64": "64-true", "64-true": "64-true", "double": "64-true",
}


# ------------------------------------------------------------------------------------------------
# Field checks: every recipe value has a type and a range, checked here (and only here) so that a bad value is a
# one-line error naming where it came from (`--set model.d_model=abc: expected a positive integer`), never a
# traceback from deep inside torch or Lightning, and never a value written into config.json unchecked.
# ------------------------------------------------------------------------------------------------
class Spec:
    """A value's type and range: kind int | float | bool | choice | str | floats | mapping; `lo`/`hi` bounds
    (open ends with `lo_open`/`hi_open`); `none` allows None."""

    def __init__(self, kind: str, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
                 none: bool = False, choices: tuple = (), n: int = 0):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open
        self.none, self.choices, self.n = none, choices, n

    def expected(self) -> str:
        if self.kind == "bool":
            text = "true or false"
        elif self.kind == "choice":
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.kind == "str":
            text = "a string"
        elif self.kind == "mapping":
            text = "a mapping of settings"
        elif self.kind == "int" and self.lo == 1 and self.hi is None:
            text = "a positive integer"
        elif self.kind == "int" and self.lo == 0 and self.hi is None:
            text = "an integer >= 0"
        elif self.kind == "int":
            text = f"an integer >= {self.lo}" + (f" and <= {self.hi}" if self.hi is not None else "")
        else:
            what = f"a list of {self.n} finite numbers" if self.kind == "floats" else "a finite number"
            if self.lo is not None and self.hi is not None:
                text = f"{what} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
            elif self.lo is not None:
                text = f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
            else:
                text = what
        return text + (" (or null)" if self.none else "")

    def check(self, label: str, value):
        """`value` normalised (an integral float read as an int); InputError `label: expected ...` otherwise."""
        if value is None and self.none:
            return None
        text = self.expected()
        if label.startswith("--") and not label.startswith(("--set", "--config")):
            text = text.replace(" (or null)", "")  # a flag cannot be given as null; leaving it out is the default
        bad = InputError(f"{label}: expected {text}")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind == "choice":
            if isinstance(value, bool) or value not in self.choices:
                raise bad
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise bad
            return value
        if self.kind == "mapping":
            if not isinstance(value, dict):
                raise bad
            return value
        if self.kind == "floats":
            if not isinstance(value, (list, tuple)) or len(value) != self.n:
                raise bad
            return [self._number(bad, v) for v in value]
        if self.kind == "int":
            if isinstance(value, float) and math.isfinite(value) and value == int(value):
                value = int(value)  # YAML reads 1e3 as a float; it is the integer people mean
            if isinstance(value, bool) or not isinstance(value, int) or not self._in_range(value):
                raise bad
            return value
        return self._number(bad, value)

    def _number(self, bad, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not self._in_range(value):
            raise bad
        return value

    def _in_range(self, v) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))


POSITIVE = Spec("int", 1)
BOOL = Spec("bool")
# Shared by pretraining and distillation (their sections overlap); each verb's own keys are added below.
COMMON_SCHEMA = {
    "seed": Spec("int", 0),
    "data.window": Spec("int", 2),
    "data.batch_size": POSITIVE,
    "data.num_workers": Spec("int", 0),
    "data.max_n_frac": Spec("float", 0, 1),
    "data.rc_aug": Spec("bool", none=True),
    "data.unknown": Spec("choice", choices=("error", "N")),
    "data.train_samples_per_epoch": POSITIVE,
    "data.max_val_windows": POSITIVE,
    "optim.lr": Spec("float", 0, lo_open=True),  # no upper bound: too large a rate is a diverged run (exit 1)
    "optim.weight_decay": Spec("float", 0, 10),
    "optim.betas": Spec("floats", 0, 1, hi_open=True, n=2),
    "optim.warmup_steps": Spec("int", 0),
    "optim.grad_clip": Spec("float", 0, lo_open=True, none=True),
    "optim.ema_decay": Spec("float", 0, 1, hi_open=True, none=True),
    "trainer.max_time": Spec("str", none=True),
    "trainer.accelerator": Spec("str"),
    "trainer.log_every": POSITIVE,
    "trainer.progress_bar": BOOL,
}
PRETRAIN_SCHEMA = {
    **COMMON_SCHEMA,
    "schedule": Spec("choice", choices=("loglinear", "cosine", "linear")),
    "data.max_test_windows": POSITIVE,
    "data.val_fraction": Spec("float", 0, 1, lo_open=True, hi_open=True),
    "optim.lr_schedule": Spec("choice", choices=("cosine", "constant")),
    "optim.min_lr_ratio": Spec("float", 0, 1),
    "trainer.max_steps": POSITIVE,
    "trainer.val_every": POSITIVE,
    "trainer.num_nodes": POSITIVE,
    "trainer.strategy": Spec("str"),
}

DISTILL_SCHEMA = {
    **COMMON_SCHEMA,
    "rounds": POSITIVE,
    "teacher_steps": Spec("int", 2, none=True),
    "data.window": Spec("int", 2, none=True),
    "trainer.steps_per_round": POSITIVE,
}


def _model_schema() -> dict:
    """CaduceusConfig's fields by the type of their default (a bool only true/false, an int positive, a float
    finite), with the few that need another range named."""
    out = {}
    for name, p in inspect.signature(CaduceusConfig.__init__).parameters.items():
        if name not in MODEL_KEYS:
            continue
        d = p.default
        out[f"model.{name}"] = (BOOL if isinstance(d, bool) else POSITIVE if isinstance(d, int)
                                else Spec("float", 0, lo_open=True) if isinstance(d, float)
                                else Spec("str") if isinstance(d, str) else Spec("mapping", none=True))
    out.update({"model.head_dropout": Spec("float", 0, 1, hi_open=True), "model.cond_dropout": Spec("float", 0, 1, hi_open=True),
                "model.pad_token_id": Spec("int", 0), "model.head_hidden": Spec("int", 1, none=True),
                "model.feature_layers": Spec("str", none=True),
                "model.bidirectional_strategy": Spec("choice", choices=("add", "ew_multiply")),
                "model.order": Spec("int", 0, 16, none=True)})
    return out


def flag_label(key: str, value) -> str:
    """How a setting is named in an error when nothing better is known: its flag (`--window 1`)."""
    return f"--{key.split('.')[-1].replace('_', '-')} {value}"


def check_fields(cfg: dict, schema: dict, labels: dict | None = None) -> dict:
    """Check every value of `cfg` that `schema` (dotted key -> Spec) covers; `labels` (dotted key -> text) says
    where a value came from (`--set model.d_model=abc`, `--config tiny: ...`); normalised values are written back."""
    labels = labels or {}
    for key, value in flatten(cfg).items():
        spec = schema.get(key) or (MODEL_SCHEMA.get(key) if key.startswith("model.") else None)
        if spec is None:
            continue
        new = spec.check(labels.get(key) or flag_label(key, value), value)
        if new is not value:
            node = cfg
            parts = key.split(".")
            for part in parts[:-1]:
                node = node[part]
            node[parts[-1]] = new
    return cfg


def explicit_settings(verb: str, schema: dict, recipe, flags: dict | None, overrides: list[str] | None,
                      drop_holdouts: bool = False) -> dict:
    """A recipe, then flags (a nested dict, None values ignored), then `--set` overrides, each value checked
    against `schema` with an error naming where it came from. A flag and a `--set` that give the same key
    different values are an error (which one was meant cannot be guessed)."""
    cfg = load_recipe(recipe, verb)
    labels = {k: f"--config {recipe}: {k}={v}" for k, v in flatten(cfg).items()}
    flags = _drop_none(flags or {})
    if drop_holdouts and flags.get("fasta"):
        for key in ("val_regions", "val_records", "test_regions", "test_records", "bed"):
            cfg.pop(key, None)
    flat_flags = flatten(flags)
    labels.update({k: flag_label(k, v) for k, v in flat_flags.items()})
    over = parse_overrides(overrides)
    raw = {pair.split("=", 1)[0].strip(): pair.split("=", 1)[1] for pair in overrides or [] if "=" in pair}
    for key, value in flatten(over).items():
        labels[key] = f"--set {key}={raw.get(key, value)}"
        if key in flat_flags and flat_flags[key] != value:
            raise InputError(f"{flag_label(key, flat_flags[key])} and --set {key}={raw.get(key, value)} both set {key}; "
                             f"give one")
    return check_fields(merge(merge(cfg, flags), over), schema, labels)


MODEL_SCHEMA = _model_schema()


def recipe_names(verb: str) -> list[str]:
    return sorted(p.stem for p in (RECIPES / verb).glob("*.yaml"))


def load_recipe(name_or_path: str | os.PathLike | None, verb: str) -> dict:
    """A recipe: a YAML file, or a name in `dna_mdlm/configs/<verb>/` (e.g. `tiny`). Relative `fasta`/`bed` paths
    in a YAML file are read relative to the file's folder when they do not exist relative to the current one."""
    if name_or_path is None:
        return {}
    p = Path(name_or_path)
    if not p.exists() and (RECIPES / verb / f"{name_or_path}.yaml").is_file():
        p = RECIPES / verb / f"{name_or_path}.yaml"
    if not p.is_file():
        raise InputError(f"--config {name_or_path}: no such file or recipe (recipes: {', '.join(recipe_names(verb))})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"--config {p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {p}: expected a mapping of settings at the top level")
    data = _numbers(data)
    for key in ("fasta", "bed"):
        if key in data and data[key] is not None:
            values = data[key] if isinstance(data[key], list) else [data[key]]
            values = [str(v if Path(v).is_absolute() or Path(v).exists() else p.parent / v) for v in values]
            data[key] = values if isinstance(data[key], list) else values[0]
    return data


def parse_overrides(pairs: list[str] | None) -> dict:
    """`--set key=value` (dotted keys allowed, values parsed as YAML scalars) -> a nested dict."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InputError(f"--set {pair}: expected KEY=VALUE, e.g. --set model.d_model=64")
        key, value = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {pair}: {part!r} is a value, not a section")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(f"--set {pair}: cannot read the value {value!r}") from None
        node[parts[-1]] = _number(parsed)
    return out


def _number(value):
    """YAML 1.1 reads `2e-3` (no dot) as a string; people mean the number."""
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    return value


def _numbers(node):
    if isinstance(node, dict):
        return {k: _numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_numbers(v) for v in node]
    return _number(node)


def merge(base: dict, over: dict) -> dict:
    """Deep merge: `over`'s leaves replace `base`'s (neither is modified)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def flatten(cfg: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def normalize_precision(value) -> str:
    """The spellings people type (`fp16`, `16`, `bf16`, `32`, ...) -> Lightning's names; else a one-line error."""
    key = str(value).strip().lower()
    if key not in PRECISIONS:
        raise InputError(f"--precision {value}: expected one of 32, 16, bf16, 64 (or auto; Lightning's names such as "
                         f"bf16-mixed work too)")
    return PRECISIONS[key]


def check_pretrain(cfg: dict) -> dict:
    """Validate merged pretraining settings (unknown keys, value ranges); returns `cfg` with normalised values."""
    unknown = set(cfg) - set(PRETRAIN_DEFAULTS) - set(DATA_KEYS) - set(OTHER_KEYS)
    if unknown:
        raise InputError(f"config: unknown top-level key(s) {sorted(unknown)}; expected "
                         f"{sorted(set(PRETRAIN_DEFAULTS) | set(DATA_KEYS) | set(OTHER_KEYS))}")
    for section in ("data", "optim", "trainer"):
        if not isinstance(cfg[section], dict):
            raise InputError(f"config: '{section}' must be a mapping of settings")
        bad = set(cfg[section]) - set(PRETRAIN_DEFAULTS[section])
        if bad:
            raise InputError(f"config: unknown key(s) {sorted(bad)} in '{section}'; expected "
                             f"{sorted(PRETRAIN_DEFAULTS[section])}")
    if cfg["objective"] not in ("mdlm", "ar", "markov"):
        raise InputError(f"--objective {cfg['objective']}: expected mdlm, ar or markov")
    if cfg.get("labels") and cfg["objective"] != "mdlm":
        raise InputError(f"--labels: class-conditional training is implemented for the MDLM objective, not "
                         f"{cfg['objective']}" + (f" (the --init model {cfg['init']} is {cfg['objective']})"
                                                   if cfg.get("init") else "; leave --objective out"))
    if cfg.get("init") and cfg["objective"] == "markov":
        raise InputError("--init: a Markov LM is counted from scratch; leave --init out")
    if not isinstance(cfg["model"], dict):
        raise InputError("config: 'model' must be a mapping of settings")
    allowed = MARKOV_MODEL_KEYS | set(PRETRAIN_DEFAULTS["model"]) if cfg["objective"] == "markov" else MODEL_KEYS
    bad = set(cfg["model"]) - allowed
    if bad:
        raise InputError(f"config: unknown key(s) {sorted(bad)} in 'model'; expected CaduceusConfig fields "
                         f"({', '.join(sorted(allowed))})")
    check_fields(cfg, PRETRAIN_SCHEMA)
    t = cfg["trainer"]
    t["precision"] = normalize_precision(t["precision"])
    if isinstance(t["devices"], str) and t["devices"].isdigit():
        t["devices"] = int(t["devices"])
    return cfg


def pretrain_settings(recipe: str | os.PathLike | None = None, flags: dict | None = None,
                      overrides: list[str] | None = None) -> dict:
    """The user's explicit pretraining settings: a recipe, then flags (a nested dict, None values ignored), then
    `--set` overrides. A recipe's hold-outs name the recipe's own records, so they are dropped when the flags
    give other FASTA files. Each value is checked (`check_fields`), and a flag and a `--set` giving one key two
    values are an error. Defaults are applied by `resolve_pretrain` (fresh run) or come from the saved run."""
    return explicit_settings("pretrain", PRETRAIN_SCHEMA, recipe, flags, overrides, drop_holdouts=True)


def apply_init(cfg: dict, settings: dict) -> dict:
    """`--init MODEL`: the architecture comes from the init model's config (a model directory or hub id); an explicit
    setting that would change it is a one-line error. The objective follows the init model (a masked-LM or MDLM
    checkpoint trains on as an MDLM, an AR one as AR); optimiser and schedule start fresh."""
    spec = cfg["init"]
    kind = model_kind(spec)
    if kind not in ("mdlm", "ar"):
        raise InputError(f"--init {spec}: a {kind} model cannot be trained on; give a pretrained MDLM, masked-LM or "
                         f"AR Caduceus model")
    init_cfg = read_model_config(spec)
    arch = {k: init_cfg[k] for k in ARCHITECTURE_KEYS if k in init_cfg}
    for key, value in (settings.get("model") or {}).items():
        if key in arch and arch[key] != value:
            raise InputError(f"--init {spec}: model.{key} = {value!r} would change the init model's architecture "
                             f"({key} = {arch[key]!r}); drop it (recipes with a 'model' section set it)")
    objective = settings.get("objective", kind)
    if objective != kind:
        raise InputError(f"--init {spec}: --objective {objective} does not fit a {kind} model "
                         f"({'causal' if kind == 'ar' else 'bidirectional'}); leave --objective out")
    cfg["objective"] = kind
    cfg["model"] = {**{k: v for k, v in cfg["model"].items() if k not in ARCHITECTURE_KEYS}, **arch}
    if "schedule" not in settings and init_cfg.get("schedule"):
        cfg["schedule"] = init_cfg["schedule"]
    cfg["init"] = str(Path(spec).resolve()) if Path(str(spec)).exists() else str(spec)  # a hub id stays an id
    return cfg


def resolve_pretrain(settings: dict) -> dict:
    """A fresh run's full settings: defaults, the bundled demo excerpt (with its last 250 kb held out) when no
    FASTA is given, then `settings` (and `apply_init` with `--init`); validated, with absolute paths."""
    cfg = merge(PRETRAIN_DEFAULTS, settings)
    if cfg.get("init"):
        cfg = apply_init(cfg, settings)
    if cfg.get("labels"):
        if cfg.get("fasta"):
            raise InputError("--labels: a class-conditional model trains on the labelled sequences; leave --fasta out")
        cfg["labels"] = str(Path(cfg["labels"]).resolve()) if Path(cfg["labels"]).exists() else str(cfg["labels"])
        cfg["fasta"] = []
    elif not cfg.get("fasta"):
        cfg["fasta"] = [str(BUNDLED_DEMO_FASTA)]
        if not any(cfg.get(k) for k in ("val_regions", "val_records", "test_regions", "test_records")):
            cfg["val_regions"] = [BUNDLED_DEMO_VAL_REGION]
    if isinstance(cfg["fasta"], (str, os.PathLike)):
        cfg["fasta"] = [cfg["fasta"]]
    cfg["fasta"] = [str(Path(f).resolve()) if Path(f).exists() else str(f) for f in cfg["fasta"]]
    if cfg.get("bed"):
        cfg["bed"] = str(Path(cfg["bed"]).resolve()) if Path(cfg["bed"]).exists() else cfg["bed"]
    for key in ("val_regions", "val_records", "test_regions", "test_records"):
        if isinstance(cfg.get(key), str):
            cfg[key] = [cfg[key]]
    return check_pretrain(cfg)


def reconcile_resume(saved: dict, settings: dict, run_dir: Path) -> dict:
    """The saved run's settings with the explicit ones allowed to change (`RESUMABLE`); InputError naming the
    first explicit setting that contradicts the saved run."""
    explicit = resolve_paths(settings)
    saved_flat = flatten(saved)
    for key, value in flatten(explicit).items():
        if key in RESUMABLE:
            continue
        if key not in saved_flat:
            raise InputError(f"--resume: {key} was not set in the saved run ({run_dir / 'run_config.json'}); a "
                             f"resumed run keeps its recipe")
        old = saved_flat[key]
        same = (normalize_precision(old) == normalize_precision(value)) if key == "trainer.precision" else old == value
        if not same:
            raise InputError(f"--resume: {key} = {value!r} contradicts the saved run ({old!r} in "
                             f"{run_dir / 'run_config.json'}); a resumed run keeps its data, recipe, model and seed "
                             f"(only {', '.join(sorted(k.split('.')[-1] for k in RESUMABLE))} may change)")
    allowed = {}
    for key, value in flatten(explicit).items():
        if key in RESUMABLE:
            node = allowed
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
    return check_pretrain(merge(saved, allowed))


def resolve_paths(settings: dict) -> dict:
    out = copy.deepcopy(settings)
    if out.get("labels") and Path(out["labels"]).exists():
        out["labels"] = str(Path(out["labels"]).resolve())
    if out.get("fasta"):
        files = [out["fasta"]] if isinstance(out["fasta"], (str, os.PathLike)) else out["fasta"]
        out["fasta"] = [str(Path(f).resolve()) if Path(f).exists() else str(f) for f in files]
    if out.get("bed") and Path(out["bed"]).exists():
        out["bed"] = str(Path(out["bed"]).resolve())
    return out


def _drop_none(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out
