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


DEMO_FASTA = Path(__file__).resolve().parent.parent / "data" / "chr20_demo.fa.gz"
DEMO_VAL_REGION = "20:32000001-34500000:2250001-2500000"


def add_pretrain_arguments(p):
    p.epilog = _examples(
        "dna-mdlm pretrain --out runs/demo                       # bundled chr20 excerpt, held-out last 250 kb",
        "dna-mdlm pretrain --fasta hg38.fa --val-region chr20:40000000-41000000 --config cpu-small --out runs/hg38",
        "dna-mdlm pretrain --fasta ecoli.fa.gz --objective ar --config tiny --out runs/ar --set trainer.max_steps=200",
        "dna-mdlm pretrain --out runs/demo --resume              # continue at the same step and data stream",
    )
    p.add_argument("--fasta", action="append", help="FASTA file (plain, bgzip or gzip); repeat for several. "
                   "Default: the bundled chr20 excerpt with its last 250 kb held out")
    p.add_argument("--bed", help="BED of intervals to draw training windows from (0-based, half-open)")
    p.add_argument("--config", help="YAML recipe file or a name in configs/pretrain/ (tiny, demo, cpu-small, gb-118, long-131k)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, model/ (what other verbs use), logs/")
    p.add_argument("--objective", choices=["mdlm", "ar", "markov"], help="MDLM (default), the AR baseline, or the k-mer Markov LM")
    p.add_argument("--val-region", action="append", default=None, help="held-out validation region chr:start-end (1-based), repeatable")
    p.add_argument("--val-records", action="append", default=None, help="held-out validation record(s)")
    p.add_argument("--test-region", action="append", default=None, help="held-out test region, repeatable")
    p.add_argument("--window", type=int, help="window length L (bases)")
    p.add_argument("--batch-size", type=int, help="windows per batch per device")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--max-time", help="wall-clock budget DD:HH:MM:SS (stops cleanly, checkpoint and model written)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--accelerator", help="cpu | gpu | auto")
    p.add_argument("--devices", help="devices per node (int or 'auto')")
    p.add_argument("--num-nodes", type=int, help="nodes")
    p.add_argument("--strategy", help="auto | ddp | fsdp (Lightning)")
    p.add_argument("--precision", help="32-true | bf16-mixed | auto")
    p.add_argument("--num-workers", type=int, help="DataLoader workers")
    p.add_argument("--seed", type=int, help="seed of the data stream, masks and init")
    p.add_argument("--unknown", choices=["error", "N"], help="IUPAC ambiguity codes: an error (default) or read as N")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any recipe key, e.g. model.d_model=64")


def pretrain_config(args) -> dict:
    from .training.pretrain import merge

    cfg = resolve_config(args.config, "pretrain")
    if args.fasta:
        cfg["fasta"] = args.fasta
        for key in ("val_regions", "val_records", "test_regions", "test_records"):
            cfg.pop(key, None)  # a recipe's hold-outs name the recipe's own records
    elif "fasta" in cfg:
        cfg["fasta"] = [str(Path(f) if Path(f).is_absolute() or Path(f).exists() else REPO_CONFIGS.parent / f) for f in cfg["fasta"]]
    else:
        cfg["fasta"] = [str(DEMO_FASTA)]
        cfg.setdefault("val_regions", [DEMO_VAL_REGION])
    if args.bed:
        cfg["bed"] = args.bed
    for arg, key in (("val_region", "val_regions"), ("val_records", "val_records"), ("test_region", "test_regions")):
        if getattr(args, arg):
            cfg[key] = getattr(args, arg)
    flat = {"objective": args.objective, "seed": args.seed}
    cfg.update({k: v for k, v in flat.items() if v is not None})
    sections = {
        "data": {"window": args.window, "batch_size": args.batch_size, "num_workers": args.num_workers,
                 "unknown": args.unknown},
        "optim": {"lr": args.lr},
        "trainer": {"max_steps": args.max_steps, "max_time": args.max_time, "accelerator": args.accelerator,
                    "devices": (int(args.devices) if args.devices and args.devices.isdigit() else args.devices),
                    "num_nodes": args.num_nodes, "strategy": args.strategy, "precision": args.precision},
    }
    for section, values in sections.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            cfg = merge(cfg, {section: values})
    return merge(cfg, parse_overrides(args.set))


def run_pretrain(args):
    import json

    from .training.pretrain import pretrain

    cfg = pretrain_config(args)
    summary = pretrain(cfg, args.out, resume=args.resume)
    extra = ""
    if "val_bpd" in summary:
        extra = f", held-out {summary['val_bpd']:.4f} bits/base" + (" (upper bound)" if summary["objective"] == "mdlm" else "")
    if "markov_val_bpd" in summary:  # the yardstick beside the number, so a newcomer can read it
        extra += (f"{' vs' if extra else ', not validated (raise trainer.max_steps past trainer.val_every);'} "
                  f"k-mer Markov LM (order {summary['markov_order']}, same training split, same bases) "
                  f"{summary['markov_val_bpd']:.4f} bits/base")
    print(json.dumps(summary, indent=1))
    print(f"dna-mdlm pretrain: {summary['objective']} model written to {summary['model_dir']}{extra}")
    return 0


def add_likelihood_arguments(p):
    p.epilog = _examples(
        "dna-mdlm likelihood --model runs/demo/model --fasta genome.fa --region chr20:40000001-40100000",
        "dna-mdlm likelihood --model runs/ar/model --fasta reads.fa --per-record records.tsv --out report.json",
    )
    p.add_argument("--model", required=True, help="model directory (MDLM, AR or Markov)")
    p.add_argument("--fasta", required=True, action="append", help="FASTA to score (repeatable)")
    p.add_argument("--bed", help="score only these intervals (BED, 0-based half-open)")
    p.add_argument("--region", action="append", default=[], help="score only this region chr:start-end (1-based), repeatable")
    p.add_argument("--window", type=int, help="window length (default: the model's training length)")
    p.add_argument("--samples", type=int, default=2, help="MDLM: Monte-Carlo time samples per window (>= 2 gives a standard error)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-windows", type=int, help="score at most this many windows, spread evenly")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the JSON report here (default: print it)")
    p.add_argument("--per-window", help="TSV of per-window results")
    p.add_argument("--per-record", help="TSV of per-record results")


def run_likelihood(args):
    import json

    from .evaluation.likelihood import likelihood, write_tsv

    for path in args.fasta:
        if not Path(path).exists():
            raise InputError(f"--fasta {path}: no such file")
    report = likelihood(args.model, args.fasta if len(args.fasta) > 1 else args.fasta[0], bed=args.bed,
                        regions=args.region, window=args.window, num_samples=args.samples,
                        batch_size=args.batch_size, device=args.device, seed=args.seed, max_windows=args.max_windows)
    rows = report.pop("per_window")
    if args.per_window:
        write_tsv(rows, ["record", "start", "end", "bases_scored", "nats"], args.per_window)
    if args.per_record:
        write_tsv([(r, v["bases_scored"], v["nats_per_base"], v["bits_per_base"], v["perplexity"])
                   for r, v in report["per_record"].items()],
                  ["record", "bases_scored", "nats_per_base", "bits_per_base", "perplexity"], args.per_record)
    text = json.dumps(report, indent=1)
    if args.out:
        from .errors import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    else:
        print(text)
    bound = "<= " if report["upper_bound"] else ""
    se = f" ± {report['stderr_bits_per_base']:.4f}" if "stderr_bits_per_base" in report else ""
    print(f"dna-mdlm likelihood: {bound}{report['bits_per_base']:.4f}{se} bits/base, perplexity {bound}"
          f"{report['perplexity']:.4f}, {report['bases_scored']} bases in {report['windows']} windows ({report['kind']})",
          file=sys.stderr)
    return 0


def add_sample_arguments(p):
    p.epilog = _examples(
        "dna-mdlm sample --model runs/demo/model --num-samples 64 --length 1024 --out samples.fa",
        "dna-mdlm sample --model runs/demo/model --num-samples 8 --length 8192 --steps 256 --out long.fa   # semi-AR",
        "dna-mdlm sample --model runs/demo/model --num-samples 4 --prefix ACGTTGCA --suffix GGATCC --length 600 --out infill.fa",
        "dna-mdlm sample --model runs/demo/model --num-samples 4 --template ACGTNNNNNNNNNNACGT --out t.fa",
        "dna-mdlm sample --model runs/ar/model --num-samples 64 --length 1024 --prefix ACGT --out ar.fa",
    )
    p.add_argument("--model", required=True, help="model directory (MDLM, AR or Markov)")
    p.add_argument("--num-samples", type=int, required=True, help="number of sequences")
    p.add_argument("--length", type=int, help="bases per sequence (prefix and suffix included); implied by --template")
    p.add_argument("--steps", type=int, help="MDLM reverse steps per window (default 128)")
    p.add_argument("--sampler", choices=["ddpm", "ddpm_cache"], default="ddpm_cache",
                   help="ddpm_cache (default) reuses the network output while a sequence is unchanged: same samples, fewer calls")
    p.add_argument("--prefix", help="fixed start of every sequence (A/C/G/T/N)")
    p.add_argument("--suffix", help="fixed end of every sequence (MDLM only); with --prefix this is infilling")
    p.add_argument("--template", help="MDLM only: A/C/G/T fixed, N at every position to generate, e.g. ACGTNNNNNNACGT")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the most likely bases up to this mass")
    p.add_argument("--batch-size", type=int, help="sequences generated together (default min(N, 64))")
    p.add_argument("--window", type=int, help="MDLM window (default: the model's training length, else 1024); longer "
                   "sequences are generated semi-autoregressively")
    p.add_argument("--overlap", type=int, help="MDLM semi-AR: bases of context kept from the previous window (default window/2)")
    p.add_argument("--allow-n", action="store_true", help="let N be generated too (default: only A/C/G/T)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--seed", type=int, default=0, help="same seed, same samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="FASTA to write (settings and costs go to OUT.json)")


def run_sample(args):
    from .diffusion.sampling import generate, write_samples

    result = generate(args.model, args.num_samples, args.length, steps=args.steps, sampler=args.sampler,
                      prefix=args.prefix, suffix=args.suffix, template=args.template, temperature=args.temperature,
                      top_p=args.top_p, batch_size=args.batch_size, device=args.device, seed=args.seed,
                      window=args.window, overlap=args.overlap, allow_n=args.allow_n,
                      progress=not args.no_progress and sys.stderr.isatty())
    write_samples(result, args.out, model_name=str(args.model))
    s = result.stats
    print(f"dna-mdlm sample: {len(result.sequences)} x {result.settings['length']} bp ({result.settings['kind']}) "
          f"written to {args.out}; {s.network_calls} network calls, {s.seconds:.1f} s", file=sys.stderr)
    return 0


def add_finetune_arguments(p):
    p.epilog = _examples(
        "dna-mdlm finetune --model runs/demo/model --task human_nontata_promoters --folds 5 --out runs/nontata",
        "dna-mdlm finetune --model runs/demo/model --train train.csv --test test.csv --seeds 1,2,3 --unfreeze --out runs/ft",
        "dna-mdlm finetune --model runs/demo/model --task human_enhancers_cohn --baselines scratch,cnn,kmer_lr,linear_probe --out runs/cohn",
    )
    p.add_argument("--model", required=True, help="pretrained model directory (its encoder is probed or fine-tuned)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="Genomic Benchmarks task name (offline split) or a GB task folder")
    src.add_argument("--train", help="labelled training set: CSV/TSV (seq,label columns) or FASTA with label=... headers")
    p.add_argument("--data-dir", help="with --task: shared data folder or genomic_benchmarks/sequences (default: ../shared/data)")
    p.add_argument("--test", help="labelled test set (then the protocol is seeds x 90/10 train/val, scored on it)")
    p.add_argument("--folds", type=int, help="stratified k-fold CV within the one labelled set (default 5 when there is no test set)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds for the train/test protocol (default 1,2,3)")
    p.add_argument("--config", help="YAML recipe (file or name in configs/finetune/)")
    p.add_argument("--set", action="append", help="override a setting, e.g. --set lr=2e-3 (repeatable)")
    p.add_argument("--unfreeze", action="store_true", help="full fine-tuning instead of a frozen encoder + probe")
    p.add_argument("--head", choices=["logreg", "mlp", "linear"],
                   help="classifier head (default: logreg = StandardScaler + LogisticRegressionCV for a frozen "
                   "encoder, linear for fine-tuning)")
    p.add_argument("--features", choices=["all", "last"], help="frozen probe: pool every layer's output (default) or the last")
    p.add_argument("--pooling", choices=["mean", "max", "mean+max", "first", "last"],
                   help="pooling over real bases (default mean; mean+max for the probe only, first/last for fine-tuning only)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="sequences per optimiser step (gradients accumulate over micro-batches)")
    p.add_argument("--max-tokens", type=int, help="padded bases per micro-batch (default 16384)")
    p.add_argument("--lr", type=float)
    p.add_argument("--ema", type=float, dest="ema_decay", help="EMA decay of the trained weights, e.g. 0.999")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-train", type=int, help="subsample the labelled set to this many sequences (stratified, seeded)")
    p.add_argument("--baselines", default="kmer_lr",
                   help="also run on the same splits (default kmer_lr; 'none' for none): any of "
                   "kmer_lr,cnn,linear_probe,scratch,frozen,finetuned")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-train subsample")
    p.add_argument("--out", required=True, help="output directory (metrics.json, metrics.md, roc_confusion.png, model/)")


def finetune_config(args):
    from .training.finetune import FinetuneConfig

    values = resolve_config(args.config, "finetune")
    values.update(parse_overrides(args.set))
    for key in ("head", "features", "pooling", "epochs", "batch_size", "max_tokens", "lr", "ema_decay", "max_steps"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.unfreeze:
        values["unfreeze"] = True
    values["device"] = args.device
    try:
        return FinetuneConfig.from_dict(values, where=f"--config {args.config}" if args.config else "settings")
    except TypeError as exc:
        raise InputError(f"settings: {exc}") from None


def _baseline_methods(text: str) -> list[str]:
    from .training.finetune import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    if names == ["none"]:
        return []
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise InputError(f"--baselines {text}: unknown method(s) {', '.join(bad)} (choose from {', '.join(METHODS)}, or none)")
    return names


def run_finetune(args):
    from .data.benchmarks import read_labelled
    from .training.finetune import run_protocol

    cfg = finetune_config(args)
    extra = _baseline_methods(args.baselines)
    if args.task:
        train = read_labelled(args.task, split="train", data_dir=args.data_dir)
    else:
        if not Path(args.train).exists():
            raise InputError(f"--train {args.train}: no such file")
        train = read_labelled(args.train)
    test = None
    if args.test:
        if not Path(args.test).exists():
            raise InputError(f"--test {args.test}: no such file")
        test = read_labelled(args.test, classes=train.classes) if not args.task else read_labelled(args.test)
    if args.max_train and args.max_train < len(train):
        train = train.stratified_split(test_size=len(train) - args.max_train, seed=args.seed)[0]
    try:
        seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--seeds {args.seeds}: expected comma-separated integers, e.g. 1,2,3") from None
    primary = "finetuned" if cfg.unfreeze else "frozen"
    report = run_protocol(args.model, train, args.out, cfg, test=test, seeds=seeds, folds=args.folds,
                          methods=[primary] + [m for m in extra if m != primary], task=args.task,
                          log=lambda msg: print(msg, file=sys.stderr))
    s = report["summary"][primary]
    acc, auroc = s["accuracy"], s.get("auroc", {}).get("mean", float("nan"))
    where = "cross-validation" if report["cross_validation"] else "test set"
    line = (f"dna-mdlm finetune: {primary} accuracy {acc['mean']:.4f} ±{acc['spread']:.4f}, AUROC {auroc:.4f} "
            f"(mean, max-min over {acc['n_runs']} runs; {where})")
    if s.get("runs_at_chance"):
        line += f"; AT CHANCE in {s['runs_at_chance']}/{acc['n_runs']} runs"
    cmp = report.get("comparison")
    if cmp and "accuracy" in cmp:
        a = cmp["accuracy"]
        line += (f"; model vs k-mer LR: accuracy {a['model']:.4f} vs {a['baseline']:.4f} ({a['difference']:+.4f})"
                 + (f", AUROC {cmp['auroc']['model']:.4f} vs {cmp['auroc']['baseline']:.4f}" if "auroc" in cmp else "")
                 + f": {cmp['verdict']}")
    print(f"{line}; model and report in {args.out}", file=sys.stderr)
    return 0


def add_predict_arguments(p):
    p.epilog = _examples("dna-mdlm predict --model runs/nontata/model --fasta candidates.fa --out probs.tsv")
    p.add_argument("--model", required=True, help="fine-tuned classifier directory (from dna-mdlm finetune)")
    p.add_argument("--fasta", required=True, help="FASTA of sequences to classify (gzip allowed)")
    p.add_argument("--out", required=True, help="TSV: record id + one probability column per class name")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, help="longer records are an error unless --truncate")
    p.add_argument("--truncate", action="store_true", help="keep the first --max-length bases of longer records")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)


def run_predict(args):
    from .training.finetune import predict_fasta

    n = predict_fasta(args.model, args.fasta, args.out, args.batch_size, args.device, args.max_length, args.truncate)
    print(f"dna-mdlm predict: {n} records -> {args.out}", file=sys.stderr)
    return 0


def add_embed_arguments(p):
    p.epilog = _examples(
        "dna-mdlm embed --model runs/demo/model --fasta reads.fa --out emb.npz              # ids + (N, d) RC-invariant means",
        "dna-mdlm embed --model runs/demo/model --fasta reads.fa --layers all --pool mean+max --out probe.npz  # the probe's features",
        "dna-mdlm embed --model runs/demo/model --fasta reads.fa --pool none --out bases.npz # one (L_i, C) per record",
    )
    p.add_argument("--model", required=True, help="any Caduceus model directory (pretrained or fine-tuned)")
    p.add_argument("--fasta", required=True, help="FASTA (gzip allowed); streamed, memory bounded by a batch")
    p.add_argument("--pool", choices=["mean", "max", "mean+max", "none"], default="mean",
                   help="pool over each record's bases (RC-invariant), or none: per-base hidden states")
    p.add_argument("--layers", choices=["last", "all"], default="last",
                   help="pooled output of the last layer, or of every layer concatenated (what finetune's frozen probe uses)")
    p.add_argument("--out", required=True, help=".npz output")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)


def run_embed(args):
    from .embedding import embed_fasta

    summary = embed_fasta(args.model, args.fasta, args.out, pool=args.pool, layers=args.layers,
                          batch_size=args.batch_size, device=args.device)
    print(f"dna-mdlm embed: {summary['records']} records ({summary['bases']} bases), width {summary['width']}, "
          f"pool {summary['pool']}, layers {summary['layers']} -> {summary['out']}", file=sys.stderr)
    return 0


def add_evaluate_samples_arguments(p):
    p.epilog = _examples(
        "dna-mdlm evaluate-samples --samples samples.fa --reference genome.fa --region chr20:40000001-41000000 --out report/",
        "dna-mdlm evaluate-samples --samples samples.fa --reference heldout.fa --train train.fa --model runs/ar/model "
        "--motifs JASPAR_core.txt --out report/",
    )
    p.add_argument("--samples", required=True, help="FASTA of generated sequences (each >= 6 bp)")
    p.add_argument("--reference", required=True, help="real (held-out) FASTA: two disjoint sets of windows with the "
                   "samples' lengths are drawn from it, one to compare against, one for the real-vs-real baseline")
    p.add_argument("--region", help="draw the reference windows only from this region chr:start-end (1-based)")
    p.add_argument("--train", help="training FASTA: longest exact match of each sample on either strand (memorisation)")
    p.add_argument("--model", help="judge model directory (AR, Markov or MDLM): bits/base of samples next to real sequence")
    p.add_argument("--motifs", help="motif file (JASPAR, PFM or MEME): occurrences per kb, generated vs real")
    p.add_argument("--out", required=True, help="report directory: metrics.json, PNG plots, report.html (replaced atomically)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference draw and of the MDLM judge's noise")
    p.add_argument("--index-k", type=int, default=24, help="k of the training k-mer index (matches shorter than k count as 0)")
    p.add_argument("--copy-min-bp", type=int, default=100, help="a sample is memorised if its longest training match is >= this")
    p.add_argument("--copy-fraction", type=float, default=0.5, help="... or >= this fraction of its length")
    p.add_argument("--motif-threshold", type=float, default=0.8, help="relative PSSM score threshold for a motif hit")
    p.add_argument("--judge-samples", type=int, default=4, help="MDLM judge: Monte-Carlo time samples per window")
    p.add_argument("--device", default="cpu", help="judge model device: cpu | cuda | auto")


def run_evaluate_samples(args):
    from .evaluation.report import verdicts
    from .evaluation.sequences import evaluate_samples_files

    for flag, value in (("--samples", args.samples), ("--reference", args.reference), ("--train", args.train),
                        ("--motifs", args.motifs)):
        if value is not None and not Path(value).is_file():
            raise InputError(f"{flag} {value}: no such file")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out}: exists and is not a directory (expected a report directory)")
    if args.index_k < 8 or args.index_k > 32:
        raise InputError(f"--index-k {args.index_k}: expected 8..32")
    if args.copy_min_bp < 1:
        raise InputError(f"--copy-min-bp {args.copy_min_bp}: expected a positive number of bases")
    if not 0 < args.copy_fraction <= 1:
        raise InputError(f"--copy-fraction {args.copy_fraction}: expected a fraction in (0, 1]")
    if not 0 <= args.motif_threshold <= 1:
        raise InputError(f"--motif-threshold {args.motif_threshold}: expected a relative score in [0, 1]")
    judge = None
    if args.model is not None:
        from .evaluation.judge import load_judge

        judge = load_judge(args.model, num_samples=args.judge_samples, device=args.device, seed=args.seed)
    result = evaluate_samples_files(args.samples, args.reference, args.out, region=args.region, train_fa=args.train,
                                    judge=judge, motifs_path=args.motifs, seed=args.seed, index_k=args.index_k,
                                    copy_min_bp=args.copy_min_bp, copy_fraction=args.copy_fraction,
                                    motif_threshold=args.motif_threshold)
    rows = verdicts(result)
    warned = [r["metric"] for r in rows if r["verdict"] == "warn"]
    passed = sum(r["verdict"] == "pass" for r in rows)
    js6 = result["kmer_spectrum"]["6"]["js_distance"]
    print(f"dna-mdlm evaluate-samples: {result['n_samples']} samples; 6-mer JS {js6['generated']:.4f} vs "
          f"real-vs-real {js6['real_vs_real']:.4f}; {passed} pass, {len(warned)} warn"
          + (f" ({', '.join(warned)})" if warned else ""), file=sys.stderr)
    if judge is not None:
        j = result["judge_bits_per_base"]
        bound = "<= " if judge.upper_bound else ""
        print(f"dna-mdlm evaluate-samples: judge ({judge.describe()}): samples {bound}{j['generated']:.4f}, "
              f"real {bound}{j['reference']:.4f} bits/base", file=sys.stderr)
    print(f"dna-mdlm evaluate-samples: report written to {Path(args.out) / 'report.html'}", file=sys.stderr)
    return 0


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
    from ._quiet import quiet_libraries

    quiet_libraries()
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
