"""MDLM vs AR vs Markov on held-out human DNA, at an equal CPU wall budget.

Trains an MDLM (Caduceus-PS) and an AR model (the same backbone made causal) of comparable size on chr20
(GRCh37) for the same wall-clock budget each, fits the k-mer Markov LM on the same training split, then
scores one held-out region with all three through the `likelihood` verb's library function.

The two neural runs go side by side, one thread each, so machine noise hits both alike.

    .venv/bin/python benchmarks/pretrain_quality.py                       # 20 min each (default)
    .venv/bin/python benchmarks/pretrain_quality.py --budget-min 2 --out runs/bench_quality_smoke

Targets (issue 3): the MDLM bound beats the Markov LM; MDLM/AR perplexity ratio <= 1.05.
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


def run_pretrain(objective: str, args, out: Path, max_steps: int = 1_000_000, schedule: str = "constant",
                 val_every: int | None = None) -> subprocess.Popen:
    budget = f"00:00:{int(args.budget_min):02d}:{int(round((args.budget_min % 1) * 60)):02d}"
    cmd = [sys.executable, "-m", "dna_mdlm.cli", "pretrain", "--fasta", args.fasta, "--objective", objective,
           "--val-region", args.val_region, "--test-region", args.test_region, "--out", str(out),
           "--max-time", budget, "--seed", str(args.seed),
           "--set", f"model.d_model={args.d_model}", "--set", f"model.n_layer={args.n_layer}",
           "--set", f"data.window={args.window}", "--set", f"data.batch_size={args.batch_size}",
           "--set", f"data.max_val_windows={args.val_windows}", "--set", f"trainer.max_steps={max_steps}",
           "--set", f"trainer.val_every={val_every or args.val_every}", "--set", "trainer.progress_bar=false",
           "--set", f"optim.lr={args.lr}", "--set", f"optim.lr_schedule={schedule}", "--set", "optim.warmup_steps=100",
           "--set", "optim.ema_decay=0.999", "--set", f"model.rcps={str(args.rcps and objective == 'mdlm').lower()}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", default=str(SHARED / "genomes" / "human_GRCh37_chr20.fa.gz"))
    p.add_argument("--test-region", default="20:40000001-41000000")
    p.add_argument("--val-region", default="20:41000001-41500000")
    p.add_argument("--budget-min", type=float, default=20.0, help="wall minutes of training for each neural model")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--val-windows", type=int, default=64)
    p.add_argument("--eval-windows", type=int, default=512, help="held-out windows scored, spread evenly over the region")
    p.add_argument("--mc-samples", type=int, default=4, help="MDLM time samples per window")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rcps", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
                   help="MDLM backbone: Caduceus-PS (true) or the plain bidirectional Ph model with RC augmentation")
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine",
                   help="cosine: time each model's step in a short calibration run (side by side, as in the real "
                        "runs) and decay to 10%% over the steps that fit its budget; constant: fixed lr")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_quality"))
    args = p.parse_args()
    if not Path(args.fasta).exists():
        print(f"skip: {args.fasta} not found (needs ../shared/data)")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = {"mdlm": 1_000_000, "ar": 1_000_000}
    if args.schedule == "cosine":
        calib_min, args.budget_min = args.budget_min, 1.0
        procs = {obj: run_pretrain(obj, args, out / f"calibrate_{obj}", 40, "constant", 10**6) for obj in steps}
        for obj, proc in procs.items():
            proc.wait()
            summary = json.loads((out / f"calibrate_{obj}" / "summary.json").read_text())
            per_step = summary["seconds"] / max(1, summary["steps"])
            steps[obj] = max(200, int(calib_min * 60 / per_step * 0.9))  # 10% margin for validation passes
            print(f"{obj}: {per_step:.2f} s/step in calibration -> cosine over {steps[obj]} steps")
        args.budget_min = calib_min
    t0 = time.time()
    procs = {obj: run_pretrain(obj, args, out / obj, steps[obj], args.schedule) for obj in ("mdlm", "ar")}
    for obj, proc in procs.items():
        if proc.wait() != 0:
            print(f"{obj} training failed; see {out / (obj + '.log')}")
            return 1
    train_s = time.time() - t0

    from dna_mdlm.evaluation.likelihood import likelihood
    from dna_mdlm.training.pretrain import pretrain

    t1 = time.time()
    pretrain({"objective": "markov", "fasta": [args.fasta], "val_regions": [args.val_region],
              "test_regions": [args.test_region]}, out / "markov")
    markov_s = time.time() - t1
    rows = {}
    for name in ("mdlm", "ar", "markov"):
        summary = json.loads((out / name / "summary.json").read_text())
        t2 = time.time()
        rep = likelihood(out / name / "model", args.fasta, regions=[args.test_region], window=args.window,
                         num_samples=args.mc_samples, max_windows=args.eval_windows, seed=args.seed)
        rows[name] = {"bits_per_base": rep["bits_per_base"], "perplexity": rep["perplexity"],
                      "stderr_bits": rep.get("stderr_bits_per_base"), "bases": rep["bases_scored"],
                      "upper_bound": rep["upper_bound"], "steps": summary.get("steps"), "order": summary.get("order"),
                      "parameters": summary.get("parameters"), "train_seconds": summary.get("seconds"),
                      "eval_seconds": round(time.time() - t2, 1)}
    ratio = rows["mdlm"]["perplexity"] / rows["ar"]["perplexity"]
    result = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "args": vars(args), "rows": rows, "planned_steps": steps,
              "mdlm_over_ar_ppl": ratio, "mdlm_beats_markov": rows["mdlm"]["bits_per_base"] < rows["markov"]["bits_per_base"],
              "wall_train_seconds": round(train_s, 1), "markov_fit_seconds": round(markov_s, 1)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"\nheld-out {args.test_region} ({rows['mdlm']['bases']} bases, window {args.window}); "
          f"{args.budget_min:g} min wall each, {args.threads} thread(s)")
    print(f"{'model':8} {'params':>8} {'steps':>7} {'bits/base':>10} {'ppl':>8}")
    for name, r in rows.items():
        se = f" ±{r['stderr_bits']:.4f}" if r["stderr_bits"] else ""
        bound = "<=" if r["upper_bound"] else "  "
        size = r["parameters"] or f"k={r['order']}"
        print(f"{name:8} {size!s:>8} {r['steps'] or '-':>7} {bound}{r['bits_per_base']:.4f}{se} {r['perplexity']:8.4f}")
    print(f"MDLM/AR perplexity ratio: {ratio:.4f} (target <= 1.05); MDLM beats Markov: {result['mdlm_beats_markov']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
