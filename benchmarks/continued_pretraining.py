"""Continued pretraining: a human-pretrained MDLM adapted to E. coli, against the same architecture from scratch.

Both runs train for the same number of steps with the same recipe on E. coli K-12 (its last ~640 kb held out), then
every model is scored on the held-out E. coli region and, for forgetting, on held-out human chr20 (20:40,000,001-
41,000,000 by default), with `dna_mdlm.evaluation.likelihood` (MDLM: a NELBO bound with its standard error) next to
a k-mer Markov LM fitted on each genome's training split.

    .venv/bin/python benchmarks/continued_pretraining.py --human-model runs/bench/mdlm/model --steps 300

Prints a Markdown table and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DNA_MDLM_SHARED_DATA", ROOT.parent / "shared" / "data"))
ECOLI = SHARED / "genomes" / "ecoli_K12_MG1655.fa.gz"
CHR20 = SHARED / "genomes" / "human_GRCh37_chr20.fa.gz"


def pretrain(args, out: Path, init: str | None, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "dna_mdlm.cli", "pretrain", "--fasta", str(args.ecoli), "--val-region",
           args.ecoli_val_region, "--out", str(out), "--max-steps", str(args.steps), "--seed", str(args.seed),
           "--set", f"data.window={args.window}", "--set", f"data.batch_size={args.batch_size}",
           "--set", "data.max_val_windows=128", "--set", f"trainer.val_every={max(1, args.steps // 3)}",
           "--set", "trainer.progress_bar=false", "--set", f"optim.lr={args.lr}", "--set", "optim.warmup_steps=30",
           *extra]
    if init:
        cmd += ["--init", init]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pretrain failed: {proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["wall_s"] = round(time.time() - started, 1)
    return summary


def score(model: Path, fasta: Path, region: str, args) -> dict:
    from dna_mdlm.evaluation.likelihood import likelihood

    rep = likelihood(str(model), str(fasta), regions=[region], max_windows=args.eval_windows,
                     num_samples=args.mc_samples, device="cpu", seed=0)
    return {"bits_per_base": rep["bits_per_base"], "stderr": rep.get("stderr_bits_per_base"),
            "upper_bound": rep["upper_bound"], "bases": rep["bases_scored"]}


def markov(fasta: Path, val_region: str, out: Path) -> Path:
    cmd = [sys.executable, "-m", "dna_mdlm.cli", "pretrain", "--objective", "markov", "--fasta", str(fasta),
           "--val-region", val_region, "--out", str(out)]
    if not (out / "model" / "config.json").is_file():
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return out / "model"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--human-model", required=True, help="MDLM pretrained on human (the init of the continued run)")
    p.add_argument("--ecoli", type=Path, default=ECOLI)
    p.add_argument("--ecoli-val-region", default="K-12-MG1655:4000001-4639675")
    p.add_argument("--human-fasta", type=Path, default=CHR20)
    p.add_argument("--human-region", default="20:40000001-41000000", help="held out of the human model's training")
    p.add_argument("--human-val-region", default="20:41000001-41500000", help="Markov order selection (human)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-windows", type=int, default=128)
    p.add_argument("--mc-samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_continued")
    args = p.parse_args()
    if not args.ecoli.is_file() or not args.human_fasta.is_file():
        print(f"skip: shared genomes not found under {SHARED}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, init in (("continued", args.human_model), ("scratch", None)):
        target = args.out / name
        if (target / "summary.json").is_file():
            runs[name] = json.loads((target / "summary.json").read_text())
        else:
            runs[name] = pretrain(args, target, init, [] if init else _architecture_flags(args.human_model))
    yard_e = markov(args.ecoli, args.ecoli_val_region, args.out / "markov_ecoli")
    yard_h = markov(args.human_fasta, args.human_val_region, args.out / "markov_human")
    models = {"human model (no E. coli)": Path(args.human_model), "continued on E. coli": args.out / "continued" / "model",
              "from scratch on E. coli": args.out / "scratch" / "model", "Markov LM (E. coli)": yard_e,
              "Markov LM (human)": yard_h}
    results = {}
    for name, model in models.items():
        results[name] = {"ecoli": score(model, args.ecoli, args.ecoli_val_region, args),
                         "human": score(model, args.human_fasta, args.human_region, args)}
    rows = ["| model | steps on E. coli | wall s | E. coli held-out bits/base | human held-out bits/base |",
            "|---|---|---|---|---|"]

    def fmt(r):
        b = "<= " if r["upper_bound"] else ""
        return f"{b}{r['bits_per_base']:.4f}" + (f" ± {r['stderr']:.4f}" if r.get("stderr") else "")

    for name, r in results.items():
        run = runs.get("continued" if name.startswith("continued") else "scratch" if name.startswith("from") else "")
        steps = run["steps"] if run else "-"
        wall = run["wall_s"] if run and "wall_s" in run else (run["seconds"] if run else "-")
        rows.append(f"| {name} | {steps} | {wall} | {fmt(r['ecoli'])} | {fmt(r['human'])} |")
    table = "\n".join(rows)
    print(table)
    (args.out / "results.json").write_text(json.dumps({"runs": runs, "results": results, "args": vars(args)},
                                                      indent=1, default=str))
    return 0


def _architecture_flags(model_dir: str) -> list[str]:
    """`--set model.*` flags that rebuild the init model's architecture from scratch."""
    from dna_mdlm.loading import read_model_config

    cfg = read_model_config(model_dir)
    return [x for key in ("d_model", "n_layer", "rcps") for x in ("--set", f"model.{key}={str(cfg[key]).lower()}")]


if __name__ == "__main__":
    sys.exit(main())
