"""`dna-mdlm`: the command line, a thin layer of verbs over the library.

Each verb has an `add_<verb>_arguments(parser)` and a `run_<verb>(args)` that calls library functions.
Bad input raises `InputError`; `main` prints it on one line and exits 2, and nothing half-written is left. A
diverged training run raises `TrainingDiverged`: one line, exit 1. Library modules are imported inside each
`run_<verb>`, so that `dna-mdlm --help` and argument errors answer without loading torch and Lightning.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import InputError, TrainingDiverged


def _examples(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def _unknown_arg(p, what: str = "sequences") -> None:
    p.add_argument("--unknown", choices=["error", "N"], default="error",
                   help=f"IUPAC ambiguity codes (R, Y, S, ...) in {what}: an error naming file and line (default), "
                        f"or read as N (never scored, never generated)")


def _device_arg(p) -> None:
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default: CUDA when available)")


# ------------------------------------------------------------------------------------------------
# verbs (each section is owned by the module it calls)
# ------------------------------------------------------------------------------------------------


def add_pretrain_arguments(p):
    p.epilog = _examples(
        "dna-mdlm pretrain --out runs/demo                       # bundled chr20 excerpt, held-out last 250 kb",
        "dna-mdlm pretrain --out runs/demo --resume              # continue: same data, recipe, model and seed",
        "dna-mdlm pretrain --fasta hg38.fa --val-region chr20:1000001-2000000 --config cpu-small --out runs/hg38",
        "dna-mdlm pretrain --fasta hg38.fa --val-region chr20:1000001-2000000 --objective ar --config tiny --out runs/ar",
        "dna-mdlm pretrain --fasta hg38.fa --val-region chr20:1000001-2000000 --objective markov --out runs/markov",
        "dna-mdlm pretrain --init runs/demo/model --fasta ecoli.fa.gz --val-region K-12-MG1655:4000001-4639675 --out runs/ecoli",
        "dna-mdlm pretrain --init runs/demo/model --labels promoters.csv --window 256 --out runs/cond   # class-conditional",
    )
    p.add_argument("--fasta", action="append", help="FASTA file (plain, bgzip or gzip); repeat for several. "
                   "Default: the bundled chr20 excerpt with its last 250 kb held out")
    p.add_argument("--bed", help="BED of intervals to draw training windows from (0-based, half-open)")
    p.add_argument("--labels", metavar="TABLE", help="class-conditional MDLM: train on these labelled sequences instead "
                   "of FASTA (CSV/TSV with seq,label columns, FASTA with label=... headers, or a Genomic Benchmarks "
                   "task, as finetune reads them; >= 2 classes; 10%% held out, stratified); with --init, continue a model")
    p.add_argument("--config", help="YAML recipe file or a recipe name (tiny, demo, cpu-small, gb-118, long-131k)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, model/ (what other verbs use), logs/")
    p.add_argument("--objective", choices=["mdlm", "ar", "markov"], help="MDLM (default), the AR baseline, or the k-mer Markov LM")
    p.add_argument("--val-region", action="append", default=None, help="held-out validation region chr:start-end (1-based), repeatable")
    p.add_argument("--val-records", action="append", default=None, help="held-out validation record(s)")
    p.add_argument("--test-region", action="append", default=None, help="held-out test region, repeatable")
    p.add_argument("--window", type=int, help="window length L (bases)")
    p.add_argument("--batch-size", type=int, help="windows per batch per device")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--max-time", help="wall-clock budget DD:HH:MM:SS per run segment: training stops cleanly "
                   "(checkpoint and model written, status 'stopped: time budget'); --resume continues exactly towards "
                   "--max-steps with the same budget again (or a new --max-time; --set trainer.max_time=null: none)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--accelerator", help="cpu | gpu | auto")
    p.add_argument("--devices", help="devices per node (int or 'auto')")
    p.add_argument("--num-nodes", type=int, help="nodes")
    p.add_argument("--strategy", help="auto | ddp | fsdp (Lightning)")
    p.add_argument("--precision", help="32 | bf16 | 16 (GPU) | 64 | auto (default: bf16 on GPU, 32 on CPU)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers")
    p.add_argument("--seed", type=int, help="seed of the data stream, masks and init")
    p.add_argument("--unknown", choices=["error", "N"], help="IUPAC ambiguity codes in the FASTA: an error naming "
                   "file and line (default) or read as N")
    p.add_argument("--init", metavar="MODEL", help="start from this model's weights (a model directory or a hub id such "
                   "as kuleshov-group/caduceus-ps_seqlen-1k_d_model-118_n_layer-4_lr-8e-3); its architecture and "
                   "objective are kept, the optimiser starts fresh")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint, with "
                   "its own data, recipe, model and seed (only the budget and hardware flags may change)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any recipe key, e.g. model.d_model=64")


def pretrain_flags(args) -> dict:
    """The pretraining settings the user typed (None = not given); `training.recipes` resolves the rest."""
    return {
        "fasta": args.fasta, "bed": args.bed, "labels": args.labels, "val_regions": args.val_region, "val_records": args.val_records,
        "init": args.init,
        "test_regions": args.test_region, "objective": args.objective, "seed": args.seed,
        "data": {"window": args.window, "batch_size": args.batch_size, "num_workers": args.num_workers,
                 "unknown": args.unknown},
        "optim": {"lr": args.lr},
        "trainer": {"max_steps": args.max_steps, "max_time": args.max_time, "accelerator": args.accelerator,
                    "devices": args.devices, "num_nodes": args.num_nodes, "strategy": args.strategy,
                    "precision": args.precision},
    }


def run_pretrain(args):
    from .io.writers import dumps_json
    from .training.common import STOPPED_BY_TIME
    from .training.pretrain import pretrain
    from .training.recipes import pretrain_settings

    settings = pretrain_settings(args.config, pretrain_flags(args), args.set)
    summary = pretrain(settings, args.out, resume=args.resume)
    print(dumps_json(summary))
    extra = ""
    held = summary.get("heldout")
    if held:
        bound = "<= " if held["upper_bound"] else ""
        se = f" ± {held['stderr_bits_per_base']:.4f}" if "stderr_bits_per_base" in held else ""
        extra = f", held-out {bound}{held['bits_per_base']:.4f}{se} bits/base"
        if held.get("conditional"):
            extra += f" given the class ({bound}{held['null_bits_per_base']:.4f} with the null class)"
        yard = summary.get("markov_yardstick")
        if yard and held.get("conditional"):
            extra += f" (one k-mer Markov LM per class on the same sequences: {yard['bits_per_base']:.4f})"
        elif yard:
            extra += f" (k-mer Markov LM, order {yard['order']}, on the same windows: {yard['bits_per_base']:.4f})"
    stopped = ""
    if summary.get("status") == STOPPED_BY_TIME:
        stopped = (f"; stopped by its --max-time budget at step {summary['steps']} of {summary['max_steps']}: continue "
                   f"with `dna-mdlm pretrain --out {args.out} --resume` (each resumed segment gets the budget again)")
    print(f"dna-mdlm pretrain: {summary['objective']} model written to {summary['model_dir']}{extra}{stopped}",
          file=sys.stderr)
    return 0


def add_likelihood_arguments(p):
    p.epilog = _examples(
        "dna-mdlm likelihood --model runs/demo/model --fasta genome.fa --region chr20:1000001-1100000",
        "dna-mdlm likelihood --model runs/ar/model --fasta reads.fa --per-record records.tsv --out report.json",
    )
    p.add_argument("--model", required=True, help="model directory (MDLM, AR or Markov)")
    p.add_argument("--fasta", required=True, action="append", help="FASTA to score (repeatable)")
    p.add_argument("--bed", help="score only these intervals (BED, 0-based half-open)")
    p.add_argument("--region", action="append", default=[], help="score only this region chr:start-end (1-based), "
                   "or a whole record by name; repeatable; never clipped")
    p.add_argument("--window", type=int, help="window length (default: the model's training length)")
    p.add_argument("--mc-samples", type=int, default=2, help="MDLM: Monte-Carlo time samples per window "
                   "(>= 2 gives a standard error)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-windows", type=int, help="score at most this many windows in total, spread evenly "
                   "(reported as a truncation)")
    _unknown_arg(p, "the FASTA")
    _device_arg(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the MDLM's Monte-Carlo noise: each window's draws depend on (seed, record, "
                   "window start) only, so --batch-size and the other records never change a figure")
    p.add_argument("--out", help="write the JSON report here (default: print it)")
    p.add_argument("--per-window", help="TSV of per-window results")
    p.add_argument("--per-record", help="TSV of per-record results (FASTA order, with standard errors, and "
                   "windows_scored of windows_available: fewer under --max-windows, 0 for a record left out)")


def run_likelihood(args):
    from .evaluation.likelihood import likelihood, report_line
    from .io.writers import atomic_write_text, dumps_json, write_tsv

    note = lambda msg: print(f"dna-mdlm likelihood: note: {msg}", file=sys.stderr)  # noqa: E731
    report = likelihood(args.model, args.fasta if len(args.fasta) > 1 else args.fasta[0], bed=args.bed,
                        regions=args.region, window=args.window, num_samples=args.mc_samples,
                        batch_size=args.batch_size, device=args.device, seed=args.seed, max_windows=args.max_windows,
                        unknown=args.unknown, log=note)
    rows = report.pop("per_window")
    if args.per_window:
        write_tsv(args.per_window, ["record", "start", "end", "bases_scored", "nats"], rows)
    if args.per_record:
        write_tsv(args.per_record, ["record", "bases_scored", "nats_per_base", "bits_per_base", "perplexity",
                                    "stderr_bits_per_base", "windows_scored", "windows_available"],
                  [(r, v["bases_scored"], _na(v["nats_per_base"]), _na(v["bits_per_base"]), _na(v["perplexity"]),
                    _na(v.get("stderr_bits_per_base")), v["windows_scored"], v["windows_available"])
                   for r, v in report["per_record"].items()])
    text = dumps_json(report)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    else:
        print(text)
    print(f"dna-mdlm likelihood: {report_line(report)}", file=sys.stderr)
    return 0


def _na(value):
    return "NA" if value is None else value


def add_sample_arguments(p):
    p.epilog = _examples(
        "dna-mdlm sample --model runs/demo/model --num-samples 64 --length 1024 --out samples.fa",
        "dna-mdlm sample --model runs/demo/model --num-samples 8 --length 8192 --steps 256 --out long.fa   # semi-AR",
        "dna-mdlm sample --model runs/demo/model --num-samples 64 --length 1024 --steps 16 --order dilated --out fast.fa",
        "dna-mdlm sample --model runs/demo/model --num-samples 8 --length 512 --order entropy-bound --gamma 0.5 --steps 32 --out eb.fa",
        "dna-mdlm sample --model runs/demo/model --num-samples 4 --prefix ACGTTGCA --suffix GGATCC --length 600 --out infill.fa",
        "dna-mdlm sample --model runs/demo/model --num-samples 4 --template ACGTNNNNNNNNNNACGT --out t.fa",
        "dna-mdlm sample --model runs/ar/model --num-samples 64 --length 1024 --prefix ACGT --out ar.fa",
        "dna-mdlm sample --model runs/cond/model --class promoter --guidance 2 --num-samples 8 --length 200 --out cond.fa"
        "   # runs/cond: pretrain --labels",
    )
    p.add_argument("--model", required=True, help="model directory (MDLM, AR or Markov)")
    p.add_argument("--num-samples", type=int, required=True, help="number of sequences")
    p.add_argument("--length", type=int, help="bases per sequence (prefix and suffix included); implied by --template")
    p.add_argument("--steps", type=int, help="MDLM reverse steps per window, at most one network call each (default 128; "
                   "a distilled student: its own step count)")
    p.add_argument("--sampler", choices=["ddpm", "ddpm_cache"], default="ddpm_cache",
                   help="ddpm_cache (default) reuses the network output while a sequence is unchanged: same samples, fewer calls")
    p.add_argument("--order", choices=["random", "dilated", "confidence", "margin", "entropy-bound"],
                   help="MDLM: which masked positions each step fills: random (default, the ancestral sampler), dilated "
                        "(far-apart positions first, coarse to fine), confidence / margin (most certain first), "
                        "entropy-bound (lowest entropy first, as many as --gamma allows, never fewer than the schedule); "
                        "with few steps (--steps <= 16) dilated gave the samples closest to real (benchmarks/RESULTS.md)")
    p.add_argument("--gamma", type=float, help="--order entropy-bound: bits of summed entropy a step may add beyond its "
                   "most uncertain base (default 0.5; larger = fewer calls)")
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
    p.add_argument("--class", dest="class_name", metavar="NAME", help="class-conditional MDLM (pretrain --labels): "
                   "generate sequences of this class (written in each FASTA header and the sidecar)")
    p.add_argument("--guidance", type=float, metavar="G", help="with --class: classifier-free guidance weight, "
                   "log p = G log p(x|class) + (1-G) log p(x|no class), renormalised (default 1 = conditional; "
                   "0 = unconditional; > 1 = stronger class signal, two network passes per step)")
    _unknown_arg(p, "--prefix/--suffix/--template (with N they are generated)")
    _device_arg(p)
    p.add_argument("--seed", type=int, default=0, help="same seed, same samples: sample i depends on (seed, i) only, not on --batch-size or "
                   "--num-samples (on one device; accelerators may round batched arithmetic differently)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="FASTA to write (settings and costs go to OUT.json)")


def run_sample(args):
    from .generate import generate, write_samples

    result = generate(args.model, args.num_samples, args.length, steps=args.steps, sampler=args.sampler,
                      order=args.order, gamma=args.gamma, prefix=args.prefix, suffix=args.suffix, template=args.template, temperature=args.temperature,
                      top_p=args.top_p, batch_size=args.batch_size, device=args.device, seed=args.seed,
                      window=args.window, overlap=args.overlap, allow_n=args.allow_n, unknown=args.unknown,
                      progress=not args.no_progress and sys.stderr.isatty(), class_name=args.class_name,
                      guidance=args.guidance)
    write_samples(result, args.out, model_name=str(args.model))
    s, how = result.stats, result.settings
    per_window = f" ({s.network_calls / len(s.windows):.1f} per window)" if s.windows else ""
    order = f", order {how['order']}, {how['steps']} steps" if "order" in how else ""
    if "class" in how:
        order += f", class {how['class']}, guidance {how['guidance']:g}"
    print(f"dna-mdlm sample: {len(result.sequences)} x {how['length']} bp ({how['kind']}{order}) written to {args.out}; "
          f"{s.network_calls} network calls{per_window}, {s.seconds:.1f} s", file=sys.stderr)
    return 0


def add_distill_arguments(p):
    p.epilog = _examples(
        "dna-mdlm distill --teacher runs/demo/model --out runs/sdtt --rounds 3 --teacher-steps 64   # 64 -> 8 steps",
        "dna-mdlm distill --teacher runs/demo/model --out runs/sdtt --rounds 4 --teacher-steps 64 --resume   # one round more",
        "dna-mdlm sample --model runs/sdtt/model --num-samples 16 --length 1024 --out student.fa   # its own 4 steps",
    )
    p.add_argument("--teacher", required=True, help="MDLM model directory to distil (its training data, from the "
                   "run_config.json beside it, is used unless --fasta is given)")
    p.add_argument("--out", required=True, help="run directory: round-R/ (each round's student), model/ (the last), "
                   "checkpoints/, logs/, summary.json")
    p.add_argument("--rounds", type=int, help="halvings of the step count: the student samples in "
                   "teacher-steps / 2^rounds steps (default 1)")
    p.add_argument("--teacher-steps", type=int, help="the teacher's reverse steps per window (default: its own if it "
                   "is a student, else 128)")
    p.add_argument("--config", help="YAML recipe file or a recipe name (tiny, cpu)")
    p.add_argument("--fasta", action="append", help="training FASTA (repeatable; default: the teacher run's)")
    p.add_argument("--val-region", action="append", default=None, help="held-out region chr:start-end (1-based) for "
                   "the validation KL, repeatable (default: the teacher run's)")
    p.add_argument("--steps-per-round", type=int, help="optimiser steps per round")
    p.add_argument("--batch-size", type=int, help="windows per optimiser step")
    p.add_argument("--lr", type=float, help="learning rate (constant after warm-up)")
    p.add_argument("--max-time", help="wall-clock budget DD:HH:MM:SS per run segment (stops cleanly, status 'stopped: "
                   "time budget'; --resume continues exactly with the same budget again, or a new --max-time; "
                   "--set trainer.max_time=null: none)")
    p.add_argument("--accelerator", help="cpu | gpu | auto")
    p.add_argument("--precision", help="32 | bf16 | auto")
    p.add_argument("--seed", type=int, help="seed of the data stream and the noise")
    p.add_argument("--unknown", choices=["error", "N"], help="IUPAC ambiguity codes in the FASTA: an error naming "
                   "file and line, or read as N (default: as the teacher run read its FASTA, else error)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (more --rounds, a new --max-time "
                   "or other hardware may be given)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any recipe key, e.g. optim.ema_decay=0.999")


def run_distill(args):
    from .io.writers import dumps_json
    from .training.distill import distill, distill_settings

    flags = {"teacher": args.teacher, "rounds": args.rounds, "teacher_steps": args.teacher_steps, "fasta": args.fasta,
             "val_regions": args.val_region, "seed": args.seed,
             "data": {"batch_size": args.batch_size, "unknown": args.unknown}, "optim": {"lr": args.lr},
             "trainer": {"steps_per_round": args.steps_per_round, "max_time": args.max_time,
                         "accelerator": args.accelerator, "precision": args.precision}}
    summary = distill(distill_settings(args.config, flags, args.set), args.out, resume=args.resume)
    print(dumps_json(summary))
    rows = "; ".join(f"round {r['round']} ({r['teacher_steps']}->{r['student_steps']} steps): student "
                     f"{r['val_kl']:.4f} vs teacher in one step {r['val_kl_teacher_one_step']:.4f}"
                     for r in summary["per_round"] if "val_kl" in r)
    held = f"; held-out KL to the teacher's two-step distribution per masked base: {rows}" if rows else ""
    where = f"student written to {summary['model_dir']}" if summary["model_dir"] else \
        f"stopped at step {summary['steps']} ({summary['status']}); continue with `dna-mdlm distill --teacher " \
        f"{args.teacher} --out {args.out} --resume` (each resumed segment gets the --max-time budget again)"
    print(f"dna-mdlm distill: {summary['teacher_steps']} -> {summary['student_steps']} steps per window; {where}{held}",
          file=sys.stderr)
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
    p.add_argument("--config", help="YAML recipe file or a recipe name (tiny, frozen, full)")
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
    _unknown_arg(p, "the labelled sequences")
    _device_arg(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-train subsample")
    p.add_argument("--out", required=True, help="output directory (metrics.json, metrics.md, roc_confusion.png, model/)")


def finetune_config(args):
    from .loading import resolve_device
    from .training.finetune import finetune_settings

    flags = {key: getattr(args, key) for key in ("head", "features", "pooling", "epochs", "batch_size", "max_tokens",
                                                  "lr", "ema_decay", "max_steps")}
    flags["unfreeze"] = True if args.unfreeze else None
    flags["device"] = str(resolve_device(args.device))
    return finetune_settings(args.config, flags, args.set)


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
    from .data.labelled import read_labelled
    from .training.finetune import AUROC_NA, limit_training_set, run_protocol
    from .units import fmt_number

    cfg = finetune_config(args)
    extra = _baseline_methods(args.baselines)
    if args.task:
        train = read_labelled(args.task, split="train", data_dir=args.data_dir, unknown=args.unknown, what="--task")
    else:
        train = read_labelled(args.train, unknown=args.unknown, what="--train")
    test = None
    if args.test:
        test = read_labelled(args.test, split="test", data_dir=args.data_dir, classes=train.classes,
                             unknown=args.unknown, what="--test")
    train = limit_training_set(train, args.max_train, seed=args.seed)
    try:
        seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--seeds {args.seeds}: expected comma-separated integers, e.g. 1,2,3") from None
    primary = "finetuned" if cfg.unfreeze else "frozen"
    report = run_protocol(args.model, train, args.out, cfg, test=test, seeds=seeds, folds=args.folds,
                          methods=[primary] + [m for m in extra if m != primary], task=args.task,
                          log=lambda msg: print(msg, file=sys.stderr))
    s = report["summary"][primary]
    acc, auroc = s["accuracy"], fmt_number(s.get("auroc", {}).get("mean"), ".4f", AUROC_NA)
    where = "cross-validation" if report["cross_validation"] else "test set"
    line = (f"dna-mdlm finetune: {primary} accuracy {acc['mean']:.4f} ±{acc['spread']:.4f}, AUROC {auroc} "
            f"(mean, max-min over {acc['n_runs']} runs; {where})")
    if s.get("runs_at_chance"):
        line += f"; AT CHANCE in {s['runs_at_chance']}/{acc['n_runs']} runs"
    cmp = report.get("comparison")
    if cmp and "accuracy" in cmp:
        a = cmp["accuracy"]
        line += (f"; model vs k-mer LR: accuracy {a['model']:.4f} vs {a['baseline']:.4f} ({a['difference']:+.4f})"
                 + (f", AUROC {cmp['auroc']['model']:.4f} vs {cmp['auroc']['baseline']:.4f}" if "auroc" in cmp else "")
                 + f": {cmp['verdict']}")
    warnings = "".join(f"; WARNING: {w}" for w in s.get("warnings", []))
    print(f"{line}; model and report in {args.out}{warnings}", file=sys.stderr)
    return 0


def add_predict_arguments(p):
    p.epilog = _examples("dna-mdlm predict --model runs/nontata/model --fasta candidates.fa --out probs.tsv")
    p.add_argument("--model", required=True, help="fine-tuned classifier directory (from dna-mdlm finetune)")
    p.add_argument("--fasta", required=True, help="FASTA of sequences to classify (gzip allowed)")
    p.add_argument("--out", required=True, help="TSV: record id + one probability column per class name + n_fraction "
                   "(a record with no A/C/G/T base gets empty probabilities)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, help="longer records are an error unless --truncate")
    p.add_argument("--truncate", action="store_true", help="keep the first --max-length bases of longer records "
                   "(counted, reported, and marked in a last TSV column truncated_to: bases kept, NA if whole)")
    _unknown_arg(p, "the FASTA")
    _device_arg(p)


def run_predict(args):
    from .prediction import predict_fasta

    summary = predict_fasta(args.model, args.fasta, args.out, args.batch_size, args.device, args.max_length,
                            args.truncate, args.unknown)
    cut = f", {summary['truncated']} truncated to {args.max_length} bp" if summary["truncated"] else ""
    if summary["no_bases"] or summary["mostly_n"]:
        more = ", ..." if summary["no_bases"] + summary["mostly_n"] > len(summary["flagged"]) else ""
        print(f"dna-mdlm predict: warning: {summary['no_bases']} record(s) with no A/C/G/T base (probabilities left "
              f"empty) and {summary['mostly_n']} more than half N (probabilities from little sequence; see the "
              f"n_fraction column): {', '.join(summary['flagged'])}{more}", file=sys.stderr)
    print(f"dna-mdlm predict: {summary['records']} records -> {args.out}{cut}", file=sys.stderr)
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
    p.add_argument("--out", required=True, help=".npz output: ids (N,) and embeddings (N, F), or with --pool none "
                   "one (L_i, C) array bases_<i> per record i of ids")
    p.add_argument("--batch-size", type=int, default=32)
    _unknown_arg(p, "the FASTA")
    _device_arg(p)


def run_embed(args):
    from .embedding import embed_fasta

    summary = embed_fasta(args.model, args.fasta, args.out, pool=args.pool, layers=args.layers,
                          batch_size=args.batch_size, device=args.device, unknown=args.unknown)
    print(f"dna-mdlm embed: {summary['records']} records ({summary['bases']} bases), width {summary['width']}, "
          f"pool {summary['pool']}, layers {summary['layers']} -> {summary['out']}", file=sys.stderr)
    return 0


def add_evaluate_samples_arguments(p):
    p.epilog = _examples(
        "dna-mdlm evaluate-samples --samples samples.fa --reference genome.fa --region chr20:1000001-2000000 --out report/",
        "dna-mdlm evaluate-samples --samples samples.fa --reference heldout.fa --train train.fa --model runs/ar/model "
        "--motifs JASPAR_core.txt --out report/",
        "dna-mdlm evaluate-samples --samples designed.fa --reference real_promoters.fa --out report/   # a set of real ones",
        "dna-mdlm evaluate-samples --samples designed.fa --reference real_promoters.fa --oracle runs/ft/model "
        "--target-class 1 --out report/",
    )
    p.add_argument("--samples", required=True, help="FASTA of generated sequences (each >= 6 bp)")
    p.add_argument("--reference", required=True, help="real sequence: a genome (windows of the samples' lengths are "
                   "drawn from it) or a set of real sequences of the samples' kind (see --reference-mode)")
    p.add_argument("--reference-mode", choices=["auto", "genome", "set"], default="auto",
                   help="auto (default): a set when the reference records are about the samples' length, else a "
                        "genome; with a set, the real-vs-real floor comes from a random half of it or --reference2")
    p.add_argument("--reference2", help="a second real set for the real-vs-real floor (set mode)")
    p.add_argument("--region", help="draw the reference windows only from this region chr:start-end (1-based) or "
                   "record; never clipped")
    p.add_argument("--train", help="training FASTA: longest exact match of each sample on either strand (memorisation)")
    p.add_argument("--model", help="judge model directory (AR, Markov or MDLM): bits/base of samples next to real sequence")
    p.add_argument("--motifs", help="motif file (JASPAR, PFM or MEME) instead of the JASPAR database")
    p.add_argument("--jaspar-taxon", default="vertebrates", help="JASPAR CORE motifs of this taxon (pyjaspar's "
                   "bundled database, offline): vertebrates (default), insects, plants, fungi, nematodes, ...")
    p.add_argument("--no-motifs", action="store_true", help="skip the motif scan")
    p.add_argument("--out", required=True, help="report directory: metrics.json, PNG plots, report.html (replaced atomically)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference draw and of the MDLM judge's noise")
    p.add_argument("--index-k", type=int, default=24, help="k of the training k-mer index (matches shorter than k count as 0)")
    p.add_argument("--copy-min-bp", type=int, default=100, help="a sample is memorised if its longest training match is >= this")
    p.add_argument("--copy-fraction", type=float, default=0.5, help="... or >= this fraction of its length")
    p.add_argument("--motif-threshold", type=float, default=0.8, help="relative PSSM score threshold for a motif hit")
    p.add_argument("--judge-samples", type=int, default=4, help="MDLM judge: Monte-Carlo time samples per window")
    p.add_argument("--oracle", metavar="MODEL", help="classifier directory from dna-mdlm finetune: its class "
                   "probabilities of the samples and of the real sets")
    p.add_argument("--target-class", metavar="NAME", help="with --oracle: the class the samples were designed for "
                   "(the report gives the fraction of samples and of real sequences called it)")
    _unknown_arg(p, "the samples, reference and training FASTA")
    _device_arg(p)


def run_evaluate_samples(args):
    from .evaluation.report import verdicts
    from .evaluation.sample_quality import evaluate_samples_files, notices
    from .units import fmt_number

    oracle = None
    if args.target_class is not None and args.oracle is None:
        raise InputError("--target-class needs --oracle (the classifier that calls the class)")
    if args.oracle is not None:
        from .evaluation.oracle import Oracle

        oracle = Oracle(args.oracle, args.target_class, device=args.device)
    judge = None
    if args.model is not None:
        from .evaluation.judge import load_judge

        judge = load_judge(args.model, num_samples=args.judge_samples, device=args.device, seed=args.seed)
    result = evaluate_samples_files(args.samples, args.reference, args.out, region=args.region, train_fa=args.train,
                                    judge=judge, motifs_path=args.motifs, seed=args.seed, index_k=args.index_k,
                                    copy_min_bp=args.copy_min_bp, copy_fraction=args.copy_fraction,
                                    motif_threshold=args.motif_threshold, unknown=args.unknown,
                                    reference_mode=args.reference_mode, reference2_fa=args.reference2,
                                    jaspar_taxon=None if args.no_motifs else args.jaspar_taxon, oracle=oracle)
    rows = verdicts(result)
    warned = [r["metric"] for r in rows if r["verdict"] == "warn"]
    passed = sum(r["verdict"] == "pass" for r in rows)
    js6 = result["kmer_spectrum"]["6"]["js_distance"]
    ref = result["reference"]
    print(f"dna-mdlm evaluate-samples: {result['n_samples']} samples against a real {ref['mode']} "
          f"({ref['n_compared']} compared); 6-mer JS {fmt_number(js6['generated'])} vs "
          f"real-vs-real {fmt_number(js6['real_vs_real'])}; {passed} pass, {len(warned)} warn"
          + (f" ({', '.join(warned)})" if warned else ""), file=sys.stderr)
    for line in notices(result):
        print(f"dna-mdlm evaluate-samples: warning: {line}", file=sys.stderr)
    if judge is not None:
        j = result["judge_bits_per_base"]
        bound = "<= " if judge.upper_bound else ""
        print(f"dna-mdlm evaluate-samples: judge ({judge.describe()}): samples {bound}{fmt_number(j['generated'])}, "
              f"real {bound}{fmt_number(j['reference'])} bits/base", file=sys.stderr)
    if oracle is not None and oracle.target_class is not None:
        o = result["oracle"]
        print(f"dna-mdlm evaluate-samples: oracle calls {fmt_number(o['generated']['target_rate'], '.3f')} of the "
              f"samples {oracle.target_class} (real set A {fmt_number(o['reference']['target_rate'], '.3f')}, set B "
              f"{fmt_number(o['reference_b']['target_rate'], '.3f')})", file=sys.stderr)
    print(f"dna-mdlm evaluate-samples: report written to {Path(args.out) / 'report.html'}", file=sys.stderr)
    return 0


def add_score_variants_arguments(p):
    p.epilog = _examples(
        "dna-mdlm score-variants --model runs/demo/model --fasta dna_mdlm/resources/chr20_demo.fa.gz --vcf dna_mdlm/resources/demo_variants.vcf --out scores.tsv",
        "dna-mdlm score-variants --model runs/demo/model --fasta dna_mdlm/resources/chr20_demo.fa.gz --vcf dna_mdlm/resources/demo_variants.vcf "
        "--scores llr,elbo,embedding_distance --mc-samples 16 --out scores.vcf",
        "dna-mdlm score-variants --model runs/markov/model --fasta dna_mdlm/resources/chr20_demo.fa.gz --variants dna_mdlm/resources/demo_variants.tsv "
        "--window 512 --out markov.tsv   # runs/markov: dna-mdlm pretrain --objective markov --out runs/markov",
    )
    p.add_argument("--model", required=True, help="model directory (MDLM, AR or Markov)")
    p.add_argument("--fasta", required=True, help="reference FASTA (plain, gzip or bgzip); contig names `chr20` and `20` match")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--vcf", help="VCF (plain, gzip or bgzip); multi-allelic records are split, one row per ALT")
    src.add_argument("--variants", help="TSV with a header naming chrom, pos (1-based), ref, alt (+ optional id); "
                     "'-' is an empty allele")
    p.add_argument("--out", required=True, help="TSV, or a sites-only VCF with DM_* INFO fields when it ends in .vcf / .vcf.gz")
    p.add_argument("--scores", help="comma-separated: llr, elbo, embedding_distance (default: llr,elbo for an MDLM, "
                   "llr for AR / Markov)")
    p.add_argument("--window", type=int, help="bases per window centred on the variant (default: the model's training length)")
    p.add_argument("--mc-samples", type=int, default=8, help="elbo: Monte-Carlo time samples per window (>= 2; the "
                   "standard error shrinks as 1/sqrt(samples))")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    p.add_argument("--skip-mismatched", action="store_true", help="a REF that does not match the FASTA becomes a "
                   "counted warning and an NA row (status ref_mismatch) instead of an error")
    _device_arg(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the elbo's Monte-Carlo draws (same seed, same scores)")
    _unknown_arg(p, "the reference bases a variant's windows read")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_score_variants(args):
    import json

    from .evaluation.variants import score_variants

    path, flag = (args.vcf, "vcf") if args.vcf else (args.variants, "variants")
    summary = score_variants(args.model, args.fasta, path, args.out, scores=args.scores, window=args.window,
                             samples=args.mc_samples, batch_size=args.batch_size, device=args.device, seed=args.seed,
                             skip_mismatched=args.skip_mismatched, fmt=flag.replace("variants", "tsv"),
                             progress=not args.no_progress and sys.stderr.isatty(), flag=flag, unknown=args.unknown)
    for line in summary["warnings"]:
        print(f"dna-mdlm score-variants: warning: {line}", file=sys.stderr)
    print(json.dumps({k: v for k, v in summary.items() if k != "warnings"}), file=sys.stderr)
    skipped = sum(summary["skipped"].values())
    print(f"dna-mdlm score-variants: {summary['scored']} of {summary['alleles']} alleles scored "
          f"({', '.join(summary['scores'])}; {summary['kind']}, window {summary['window']}), {skipped} skipped, "
          f"{summary['padded']} padded -> {args.out}", file=sys.stderr)
    return 0


VERBS = {
    "pretrain": ("train an MDLM (or AR / Markov baseline) on FASTA files, or a class-conditional MDLM on labelled sequences", "add_pretrain_arguments", "run_pretrain"),
    "likelihood": ("bits per base of a FASTA under a model (MDLM: an upper bound)", "add_likelihood_arguments", "run_likelihood"),
    "sample": ("generate DNA: unconditional or of a class (classifier-free guidance), any length, infilling", "add_sample_arguments", "run_sample"),
    "distill": ("few-step MDLM student by self-distillation through time (SDTT)", "add_distill_arguments", "run_distill"),
    "finetune": ("fine-tune a classifier on labelled sequences or a Genomic Benchmark", "add_finetune_arguments", "run_finetune"),
    "predict": ("class probabilities per FASTA record from a fine-tuned model", "add_predict_arguments", "run_predict"),
    "embed": ("embeddings of FASTA records (mean-pooled or per base)", "add_embed_arguments", "run_embed"),
    "evaluate-samples": ("how real generated DNA looks: k-mers, GC, memorisation, motifs", "add_evaluate_samples_arguments", "run_evaluate_samples"),
    "score-variants": ("variant effect scores from a VCF or TSV: masked-marginal LLR, ELBO difference, embedding distance",
                       "add_score_variants_arguments", "run_score_variants"),
}


# What each verb writes and reads, by argument name: `io.writers.check_outputs` applies the output rules to these
# before the verb starts (a directory output: its verb, the signature file of a previous output and, for verbs that
# replace the directory as a whole, every name they write in it).
RUN_DIR = ("run_config.json",)
PATHS = {
    "pretrain": {"dirs": {"out": RUN_DIR}, "inputs": ["fasta", "bed", "labels", "config", "init"]},
    "likelihood": {"files": ["out", "per_window", "per_record"], "inputs": ["model", "fasta", "bed"]},
    "sample": {"files": ["out"], "sidecars": {"out": ".json"}, "inputs": ["model"]},
    "distill": {"dirs": {"out": RUN_DIR}, "inputs": ["teacher", "config", "fasta"]},
    "finetune": {"dirs": {"out": ("metrics.md", "metrics.json", "metrics.md", "roc_confusion.png", "model", "runs")},
                 "inputs": ["model", "task", "train", "test", "data_dir", "config"]},
    "predict": {"files": ["out"], "inputs": ["model", "fasta"]},
    "embed": {"files": ["out"], "inputs": ["model", "fasta"]},
    "evaluate-samples": {"dirs": {"out": ("report.html", "metrics.json", "report.html", "*.png")},
                         "inputs": ["samples", "reference", "reference2", "train", "model", "motifs", "oracle"]},
    "score-variants": {"files": ["out"], "inputs": ["model", "fasta", "vcf", "variants"]},
}


def check_paths(verb: str, args) -> None:
    """Apply `io.writers.check_outputs` to the verb's output and input flags (see PATHS), before any work."""
    from .io.writers import OutputDirectory, check_outputs

    spec = PATHS[verb]
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    files = [(flag(n), getattr(args, n)) for n in spec.get("files", [])]
    files += [(flag(n), getattr(args, n) and getattr(args, n) + ext) for n, ext in spec.get("sidecars", {}).items()]
    dirs = []
    for n, (signature, *entries) in spec.get("dirs", {}).items():
        dirs.append((flag(n), getattr(args, n), OutputDirectory(verb, signature, tuple(entries) or None)))
    inputs = []
    for n in spec["inputs"]:
        value = getattr(args, n)
        inputs += [(flag(n), v) for v in (value if isinstance(value, list) else [value])]
    check_outputs(files, dirs, inputs)


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (`dna-mdlm VERB: error: ...; see dna-mdlm VERB --help`), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dna-mdlm",
        description="Masked diffusion language models for DNA on a Caduceus (RC-aware BiMamba) backbone.",
        epilog=_examples("dna-mdlm pretrain --config tiny --out runs/tiny", "dna-mdlm likelihood --model runs/tiny/model --fasta genome.fa"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dna-mdlm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=OneLineParser)
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
        check_paths(args.verb, args)
        return int(run(args) or 0)
    except InputError as exc:
        print(f"dna-mdlm {args.verb}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"dna-mdlm {args.verb}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dna-mdlm {args.verb}: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
