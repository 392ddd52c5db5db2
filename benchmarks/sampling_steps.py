"""Few-step sampling: quality versus network calls and wall time, for every unmasking order and distilled students.

For T in --steps (orders other than `random` only at --order-steps, since the question is the few-step end) and
every order, plus each distilled student (`dna-mdlm distill`) at its own step count: --num sequences of one MDLM
window (default: the model's window, so calls per window = network calls) generated from the all-mask prior,
with the AR model (recurrent state stepping) and the k-mer Markov LM as baselines, all in one run on the same
held-out region. Per row: network calls per window, wall and CPU seconds, 6-mer (and 3-mer) Jensen-Shannon
distance to a large held-out real reference, the AR judge's bits/base of the samples (mean and standard error
over sequences), GC mean and spread, CpG o/e.

Noise: --replicates sets of --num real windows (disjoint from the reference) give the real-vs-real 6-mer JS
floor and its spread (sd); a row "matches" another when their 6-mer JS differ by less than 2 sd of that spread.
The targets of the issue are checked and printed: some order or student within noise of AR's 6-mer JS at <= 16
calls per window, and MDLM wall time at matched quality <= 5x AR's. Per-call costs (an MDLM call over a window,
an AR recurrent step) are printed for the GPU estimate.

    python benchmarks/sampling_steps.py --mdlm /work/bench_runs/mdlm/model --ar /work/bench_runs/ar/model \\
        --markov /work/bench_runs/markov/model --student runs/sdtt/round-2 --student runs/sdtt/round-3 \\
        --reference ../shared/data/genomes/human_GRCh37_chr20.fa.gz --region 20:40000001-41000000 \\
        --threads 1 --out runs/sampling_steps.json --png benchmarks/sampling_steps.png
    python benchmarks/sampling_steps.py --num 4 --steps 4,8 --order-steps 4 --replicates 2 --threads 1  # tiny, untrained
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from dna_mdlm.diffusion.mdlm import MDLM
from dna_mdlm.diffusion.sampling import DEFAULT_GAMMA, ORDERS
from dna_mdlm.evaluation.judge import load_judge
from dna_mdlm.evaluation.sample_quality import cpg_observed_expected, draw_reference_sets, gc_fraction, js_distance
from dna_mdlm.generate import generate
from dna_mdlm.io.fasta import read_sequences
from dna_mdlm.kmers import kmer_counts
from dna_mdlm.loading import load_model
from dna_mdlm.tokenizer import MASK_ID

DEFAULT_REFERENCE = Path(os.environ.get("DNA_MDLM_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")) \
    / "genomes" / "human_GRCh37_chr20_40000001-41000000.fa"


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def words(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def tiny_models(root: Path) -> tuple[Path, Path]:
    """Untrained d_model 16 MDLM and AR (window 128): a smoke run of the script when no trained ones exist."""
    from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM

    torch.manual_seed(0)
    CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=2, train_window=128)).save_pretrained(root / "mdlm")
    CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=2, objective="ar", bidirectional=False, rcps=False,
                                       train_window=128)).save_pretrained(root / "ar")
    return root / "mdlm", root / "ar"


class Scorer:
    """Quality of a set of sequences against one held-out reference, with the real-vs-real floor beside it."""

    def __init__(self, reference: list[str], replicates: list[list[str]], judge):
        self.ref6, self.ref3 = kmer_counts(reference, 6), kmer_counts(reference, 3)
        self.judge = judge
        floors = [js_distance(kmer_counts(r, 6), self.ref6) for r in replicates]
        self.floor = {"js6_mean": float(np.mean(floors)), "js6_sd": float(np.std(floors, ddof=1)) if len(floors) > 1
                      else float("nan"), "js6_all": floors}
        self.real = self(replicates[0])

    def __call__(self, seqs: list[str]) -> dict:
        bits = np.array([self.judge([s])["bits_per_base"] for s in seqs])
        gc = np.array([gc_fraction(s) for s in seqs])
        return {"js6": js_distance(kmer_counts(seqs, 6), self.ref6), "js3": js_distance(kmer_counts(seqs, 3), self.ref3),
                "judge_bits": float(bits.mean()), "judge_se": float(bits.std(ddof=1) / np.sqrt(len(bits))) if len(bits) > 1
                else float("nan"), "gc_mean": float(gc.mean()), "gc_sd": float(gc.std(ddof=1)) if len(gc) > 1 else 0.0,
                "cpg_oe": cpg_observed_expected(seqs)}


def run_row(label: str, kind: str, model_dir: Path, args, scorer: Scorer, **kwargs) -> dict:
    cpu = time.process_time()
    r = generate(model_dir, args.num, args.length, seed=args.seed, device=args.device, batch_size=args.num, **kwargs)
    cpu = time.process_time() - cpu
    windows = max(1, len(r.stats.windows))
    row = {"generator": label, "kind": kind, **kwargs, "network_calls": r.stats.network_calls,
           # AR: one recurrent step per base for the whole batch; the Markov LM makes no network calls, but it
           # too draws one base at a time, so it is placed at one step per base.
           "calls_per_window": {"ar": r.stats.network_calls, "markov": args.length}.get(kind, r.stats.network_calls / windows),
           "row_evaluations": r.stats.row_evaluations, "seconds": r.stats.seconds, "cpu_seconds": cpu,
           **scorer(r.sequences)}
    steps = kwargs.get("steps")
    print(f"| {label} | {kwargs.get('order', '-')} | {steps if steps else '-'} | {row['calls_per_window']:.1f} | "
          f"{row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {row['js6']:.4f} | {row['js3']:.4f} | "
          f"{row['judge_bits']:.4f} ± {row['judge_se']:.4f} | {row['gc_mean']:.3f} / {row['gc_sd']:.3f} | "
          f"{row['cpg_oe']:.3f} |", flush=True)
    return row


def per_call_costs(mdlm: Path, ar: Path, args) -> dict:
    """Seconds per MDLM call over a window (batch --num) and per AR recurrent step (batch --num), same moment."""
    m = generate(mdlm, args.num, args.length, steps=4, sampler="ddpm", seed=args.seed, device=args.device,
                 batch_size=args.num, order="dilated")
    a = generate(ar, args.num, args.length, seed=args.seed, device=args.device, batch_size=args.num)
    return {"mdlm_call_s": m.stats.seconds / m.stats.network_calls, "ar_step_s": a.stats.seconds / a.stats.network_calls,
            "ar_sequence_s": a.stats.seconds}


class _Recorder(torch.nn.Module):
    """The MDLM's network, keeping every input it is given (to see at which step each position was filled)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.inputs = model, model.config, []

    def forward(self, input_ids, **kwargs):
        self.inputs.append(input_ids.clone())
        return self.model(input_ids, **kwargs)


def same_step_neighbours(mdlm: Path, order: str, steps: int, args, num: int = 8) -> float:
    """Fraction of adjacent base pairs that one step fills together (so they are drawn independently of each
    other): 1/T for the random order, 0 for dilated; the plain sampler makes one call per step."""
    model, _ = load_model(mdlm, args.device)
    rec = _Recorder(model)
    generate(MDLM(rec), num, args.length, steps=steps, sampler="ddpm", order=order, seed=args.seed, batch_size=num,
             device=args.device, **({"gamma": args.gamma} if order == "entropy-bound" else {}))
    filled_at = torch.stack([z == MASK_ID for z in rec.inputs]).sum(0) - 1  # (B, L): the step that filled it
    return float((filled_at[:, 1:] == filled_at[:, :-1]).double().mean())


def leaf_ops(mdlm: Path, ar: Path, args) -> dict:
    """Operators a GPU would launch: leaf aten ops in one MDLM call over a window and in one AR recurrent step
    (torch profiler on CPU, batch --num). Small models on a GPU are launch-bound, so time per call ~ ops x launch
    latency: the basis of the GPU estimate."""
    from torch.profiler import ProfilerActivity, profile

    counts = {}
    model, _ = load_model(mdlm, "cpu")
    x = torch.full((args.num, args.length), MASK_ID)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    counts["mdlm_call"] = sum(1 for e in prof.events() if e.name.startswith("aten::") and not e.cpu_children)
    model, _ = load_model(ar, "cpu")
    cache = model.allocate_inference_cache(args.num)
    token = torch.full((args.num,), 7)
    with torch.no_grad():
        model.step(token, cache)  # warm the cache path once
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.step(token, cache)
    counts["ar_step"] = sum(1 for e in prof.events() if e.name.startswith("aten::") and not e.cpu_children)
    return counts


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fl = report["floor"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for col, (xkey, xlabel) in enumerate((("calls_per_window", "network calls per window (log)"),
                                          ("s_per_seq", "wall seconds per sequence (log)"))):
        for r in rows:
            r["s_per_seq"] = r["seconds"] / report["num"]
        for ax, (ykey, ylabel) in zip(axes[:, col], (("js6", "6-mer JS distance to held-out real (lower is better)"),
                                                     ("judge_bits", "AR judge bits/base of samples"))):
            for order in ORDERS:
                pts = sorted((r[xkey], r[ykey]) for r in rows if r["kind"] == "mdlm" and r.get("order") == order)
                if pts:
                    ax.plot(*zip(*pts), "o-", ms=4, label=f"MDLM {order}")
            studs = [r for r in rows if r["kind"] == "student"]
            for order in sorted({r["order"] for r in studs}):
                pts = sorted((r[xkey], r[ykey]) for r in studs if r["order"] == order)
                ax.plot(*zip(*pts), "s--", ms=6, label=f"SDTT students ({order})")
            for r, marker in ((x, "*") for x in rows if x["kind"] in ("ar", "markov")):
                ax.plot([r[xkey]], [r[ykey]], marker, ms=14, label=r["generator"])
            if ykey == "js6":
                ax.axhspan(fl["js6_mean"] - 2 * fl["js6_sd"], fl["js6_mean"] + 2 * fl["js6_sd"], color="grey", alpha=0.2,
                           label="real vs real (mean ± 2 sd)")
            else:
                ax.axhline(report["real"]["judge_bits"], ls=":", c="grey", label="real held-out")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{report['num']} x {report['length']} bp per row; MDLM {report['mdlm']}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def verdict(report: dict) -> list[str]:
    rows, fl = report["rows"], report["floor"]
    ar = next(r for r in rows if r["kind"] == "ar")
    noise = 2 * fl["js6_sd"]
    ok = [r for r in rows if r["kind"] in ("mdlm", "student") and r["js6"] <= ar["js6"] + noise]
    few = [r for r in ok if r["calls_per_window"] <= 16]
    lines = [f"AR 6-mer JS {ar['js6']:.4f}; noise (2 sd of real-vs-real over {len(fl['js6_all'])} replicates) "
             f"{noise:.4f}; real-vs-real {fl['js6_mean']:.4f}"]
    if few:
        best = min(few, key=lambda r: (r["calls_per_window"], r["js6"]))
        lines.append(f"target 1 (AR's 6-mer JS within noise at <= 16 calls per window): MET by {best['generator']} "
                     f"{best.get('order', '')} at {best['calls_per_window']:.0f} calls (JS {best['js6']:.4f})")
    else:
        lines.append("target 1 (AR's 6-mer JS within noise at <= 16 calls per window): NOT MET")
    if ok:
        fastest = min(ok, key=lambda r: r["seconds"])
        ratio = fastest["seconds"] / ar["seconds"]
        lines.append(f"target 2 (MDLM wall time at matched quality <= 5x AR's): {'MET' if ratio <= 5 else 'NOT MET'}: "
                     f"fastest matching row {fastest['generator']} {fastest.get('order', '')} "
                     f"{fastest['calls_per_window']:.0f} calls, {fastest['seconds']:.1f} s = {ratio:.1f}x AR's "
                     f"{ar['seconds']:.1f} s")
    else:
        lines.append("target 2: no MDLM row matched AR's 6-mer JS within noise")
    jb = [r for r in rows if r["kind"] in ("mdlm", "student") and r["judge_bits"] <= ar["judge_bits"] + 2 * np.hypot(
        r["judge_se"], ar["judge_se"])]
    if jb:
        best = min(jb, key=lambda r: r["calls_per_window"])
        lines.append(f"AR-judge bits/base within 2 se of AR's samples ({ar['judge_bits']:.4f}): fewest calls "
                     f"{best['generator']} {best.get('order', '')} at {best['calls_per_window']:.0f} calls "
                     f"({best['judge_bits']:.4f})")
    else:
        lines.append(f"AR-judge bits/base: no MDLM row within 2 se of AR's samples ({ar['judge_bits']:.4f})")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mdlm", type=Path, help="MDLM (teacher) model directory (default: a tiny untrained one)")
    p.add_argument("--ar", type=Path, help="AR model directory: a baseline row and the judge (default: tiny untrained)")
    p.add_argument("--markov", type=Path, help="Markov LM model directory (optional row)")
    p.add_argument("--student", type=Path, action="append", default=[], help="distilled student directory (repeatable)")
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="held-out real DNA (FASTA)")
    p.add_argument("--region", help="held-out region chr:start-end of --reference (1-based)")
    p.add_argument("--num", type=int, default=32, help="sequences per row (one batch)")
    p.add_argument("--length", type=int, help="bases per sequence (default: the MDLM's window)")
    p.add_argument("--steps", type=ints, default=[4, 8, 16, 32, 64, 128, 256], help="T for the --full-orders")
    p.add_argument("--order-steps", type=ints, default=[4, 8, 16, 32, 64], help="T for the other orders")
    p.add_argument("--orders", type=words, default=list(ORDERS))
    p.add_argument("--full-orders", type=words, default=["random", "dilated"], help="orders run at every --steps")
    p.add_argument("--neighbour-steps", type=ints, default=[8, 16], help="T at which to count same-step neighbours")
    p.add_argument("--student-orders", type=words, default=["random", "dilated"])
    p.add_argument("--gamma", type=float, default=DEFAULT_GAMMA, help="entropy-bound's bound (bits)")
    p.add_argument("--replicates", type=int, default=8, help="real sets of --num windows for the floor and its noise")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON of every number")
    p.add_argument("--png", type=Path, help="quality vs calls and vs wall time")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dna_mdlm_steps_") as tmp:
        mdlm, ar = args.mdlm, args.ar
        untrained = mdlm is None or ar is None
        if untrained:
            tiny_m, tiny_a = tiny_models(Path(tmp))
            mdlm, ar = mdlm or tiny_m, ar or tiny_a
        cfg = json.loads((mdlm / "config.json").read_text())
        args.length = args.length or int(cfg.get("train_window") or 1024)
        ref = read_sequences(args.reference, "--reference", region=args.region)
        big, pool = draw_reference_sets(ref, [args.length] * (args.num * args.replicates), seed=args.seed)
        replicates = [pool[i * args.num:(i + 1) * args.num] for i in range(args.replicates)]
        scorer = Scorer(big, replicates, load_judge(ar, num_samples=1, device=args.device))
        report = {"date": str(date.today()), "command": " ".join(sys.argv), "device": args.device,
                  "threads": torch.get_num_threads(), "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                  "load_average_before": os.getloadavg(), "mdlm": str(mdlm), "ar": str(ar), "untrained": untrained,
                  "num": args.num, "length": args.length, "reference_windows": len(big), "floor": scorer.floor,
                  "real": scorer.real, "rows": [], "costs": []}
        print(f"real vs real (6-mer JS, {args.replicates} sets of {args.num} x {args.length} bp against {len(big)} "
              f"reference windows): {scorer.floor['js6_mean']:.4f} ± {scorer.floor['js6_sd']:.4f} (sd)")
        print("| generator | order | T | calls / window | wall s | CPU s | 6-mer JS | 3-mer JS | AR-judge bits/base | "
              "GC mean / sd | CpG o/e |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        r = scorer.real
        print(f"| real held-out (one replicate) | - | - | - | - | - | {scorer.floor['js6_all'][0]:.4f} | {r['js3']:.4f} | "
              f"{r['judge_bits']:.4f} ± {r['judge_se']:.4f} | {r['gc_mean']:.3f} / {r['gc_sd']:.3f} | {r['cpg_oe']:.3f} |")
        report["costs"].append(per_call_costs(mdlm, ar, args))
        report["rows"].append(run_row("AR (recurrent stepping)", "ar", ar, args, scorer))
        if args.markov:
            report["rows"].append(run_row("Markov LM", "markov", args.markov, args, scorer))
        jobs = [(order, steps) for order in args.orders
                for steps in (args.steps if order in args.full_orders else args.order_steps)]
        for i, (order, steps) in enumerate(jobs):
            extra = {"gamma": args.gamma} if order == "entropy-bound" else {}
            report["rows"].append(run_row("MDLM", "mdlm", mdlm, args, scorer, steps=steps, order=order, **extra))
            if i == len(jobs) // 2:
                report["costs"].append(per_call_costs(mdlm, ar, args))  # the load drifts: measure again mid-run
        for student in args.student:
            scfg = json.loads((student / "config.json").read_text()).get("distillation") or {}
            for order in args.student_orders:
                report["rows"].append(run_row(f"SDTT {scfg.get('teacher_steps')}->{scfg.get('steps')} ({student.name})",
                                              "student", student, args, scorer, steps=int(scfg.get("steps") or 0) or None,
                                              order=order))
        report["rows"].append(run_row("AR (recurrent stepping), again", "ar", ar, args, scorer))
        report["costs"].append(per_call_costs(mdlm, ar, args))
        report["leaf_ops"] = leaf_ops(mdlm, ar, args)
        report["same_step_neighbours"] = {f"{o} T={t}": same_step_neighbours(mdlm, o, t, args)
                                          for t in args.neighbour_steps for o in args.orders}
    print("\nadjacent base pairs filled by the same step (drawn independently of each other), 8 sequences: " +
          ", ".join(f"{k} {v:.3f}" for k, v in report["same_step_neighbours"].items()))
    costs = report["costs"]
    call = float(np.median([c["mdlm_call_s"] for c in costs]))
    step = float(np.median([c["ar_step_s"] for c in costs]))
    report["per_call"] = {"mdlm_call_s": call, "ar_step_s": step, "call_over_step": call / step,
                          "ar_steps_per_window": args.length}
    ops = report["leaf_ops"]
    print(f"\nper-call costs (median of {len(costs)} measurements, batch {args.num}): MDLM call over a {args.length} bp "
          f"window {call:.3f} s, AR recurrent step {step * 1e3:.2f} ms: one call = {call / step:.0f} AR steps; AR needs "
          f"{args.length} steps per window, so on this CPU MDLM breaks even at T = {args.length * step / call:.1f} calls")
    print(f"operators launched (leaf aten ops): MDLM call {ops['mdlm_call']}, AR step {ops['ar_step']}; if launch-bound "
          f"(a GPU with these small models), MDLM breaks even with AR at T = "
          f"{args.length * ops['ar_step'] / ops['mdlm_call']:.0f} calls per window [estimate]")
    for line in verdict(report):
        print(line)
    report["verdict"] = verdict(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.png:
        plot(report, args.png)
    print(f"{report['date']}; {report['machine']}, torch threads {report['threads']}, load before "
          f"{report['load_average_before'][0]:.1f}" + ("; untrained tiny models: smoke run only" if untrained else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
