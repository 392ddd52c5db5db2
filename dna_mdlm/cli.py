"""`dna-mdlm`: the command line, a thin layer of verbs over the library.

Each verb has an `add_<verb>_arguments(parser)` and a `run_<verb>(args)` that calls library functions.
Bad input raises `InputError`; `main` prints it on one line and exits 2, and nothing half-written is left.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import InputError

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _examples(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def resolve_config(path: str | None, kind: str) -> dict:
    """--config: a YAML file, or a recipe name from configs/<kind>/ (e.g. `tiny`)."""
    import yaml

    if path is None:
        return {}
    p = Path(path)
    if not p.exists() and (REPO_CONFIGS / kind / f"{path}.yaml").exists():
        p = REPO_CONFIGS / kind / f"{path}.yaml"
    if not p.is_file():
        names = sorted(x.stem for x in (REPO_CONFIGS / kind).glob("*.yaml"))
        raise InputError(f"--config {path}: no such file or recipe (recipes: {', '.join(names) or 'none'})")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"--config {p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {p}: expected a mapping of settings at the top level")
    return data


def parse_overrides(pairs: list[str] | None) -> dict:
    """--set key=value (dotted keys allowed, values parsed as YAML scalars)."""
    import yaml

    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InputError(f"--set {pair}: expected KEY=VALUE, e.g. --set model.d_model=64")
        key, value = pair.split("=", 1)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _not_built(verb: str, issue: int):
    def run(args):
        print(f"dna-mdlm {verb}: not built yet (issue {issue})", file=sys.stderr)
        return 2

    return run


# ------------------------------------------------------------------------------------------------
# verbs (each section is owned by the module it calls)
# ------------------------------------------------------------------------------------------------


def add_pretrain_arguments(p):
    pass


run_pretrain = _not_built("pretrain", 3)


def add_likelihood_arguments(p):
    pass


run_likelihood = _not_built("likelihood", 3)


def add_sample_arguments(p):
    pass


run_sample = _not_built("sample", 4)


def add_finetune_arguments(p):
    pass


run_finetune = _not_built("finetune", 5)


def add_predict_arguments(p):
    pass


run_predict = _not_built("predict", 5)


def add_embed_arguments(p):
    pass


run_embed = _not_built("embed", 5)


def add_evaluate_samples_arguments(p):
    pass


run_evaluate_samples = _not_built("evaluate-samples", 6)


VERBS = {
    "pretrain": ("train an MDLM (or AR / Markov baseline) on FASTA files", "add_pretrain_arguments", "run_pretrain"),
    "likelihood": ("bits per base of a FASTA under a model (MDLM: an upper bound)", "add_likelihood_arguments", "run_likelihood"),
    "sample": ("generate DNA: unconditional, any length, infilling", "add_sample_arguments", "run_sample"),
    "finetune": ("fine-tune a classifier on labelled sequences or a Genomic Benchmark", "add_finetune_arguments", "run_finetune"),
    "predict": ("class probabilities per FASTA record from a fine-tuned model", "add_predict_arguments", "run_predict"),
    "embed": ("embeddings of FASTA records (mean-pooled or per base)", "add_embed_arguments", "run_embed"),
    "evaluate-samples": ("how real generated DNA looks: k-mers, GC, memorisation, motifs", "add_evaluate_samples_arguments", "run_evaluate_samples"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dna-mdlm",
        description="Masked diffusion language models for DNA on a Caduceus (RC-aware BiMamba) backbone.",
        epilog=_examples("dna-mdlm pretrain --config tiny --out runs/tiny", "dna-mdlm likelihood --model runs/tiny/model --fasta genome.fa"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dna-mdlm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (help_text, add_name, _) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
        globals()[add_name](p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    run = globals()[VERBS[args.verb][2]]
    try:
        return int(run(args) or 0)
    except InputError as exc:
        print(f"dna-mdlm {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dna-mdlm {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
