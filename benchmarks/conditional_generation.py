"""Designed promoters: class-conditional MDLM with classifier-free guidance, judged against real sequence sets.

One labelled set (default: Genomic Benchmarks human_nontata_promoters, the 9,034-sequence test split) is split three
ways, stratified and seeded: generator training (50%), oracle training (25%), held-out real (25%). Then, all in one
run on the same splits:

1. a class-conditional generator: `dna-mdlm pretrain --init MODEL --labels gen_train.csv` (continued from a
   human-pretrained MDLM; label dropout 0.1 to the null class);
2. an oracle: `dna-mdlm finetune --model MODEL --train oracle_train.csv --test heldout.csv` (the frozen probe);
   its accuracy on the held-out real sequences is reported next to the rates below;
3. --num sequences per class at each guidance weight (`sample --class C --guidance G`; G = 0 is the unconditional
   model, generated once and judged against each class), a per-class k-mer Markov LM sampler (order chosen on a
   tenth of its class's generator-training sequences) and a set of real held-out sequences of the class;
4. per row and class: the oracle's target-class rate, 6-mer Jensen-Shannon distance to held-out real sequences of
   the class against the real-vs-real floor (`evaluation.sample_quality`, equal counts), the Pearson correlation of
   JASPAR motif frequencies (pyjaspar CORE vertebrates; per kb) with the real set A, and memorisation against the
   generator's training set (longest exact match, either strand), plus wall time.

The issue's target: at some G, oracle target-class rate >= 0.9 for both classes with 6-mer JS <= 1.5x the floor
and nothing memorised, beating the per-class Markov sampler on oracle rate. The verdict is printed and written.

    python benchmarks/conditional_generation.py --init /work/bench_runs/mdlm/model --out /tmp/c14/bench \\
        --md benchmarks/figures/conditional_generation.md --png benchmarks/figures/conditional_generation.png
    python benchmarks/conditional_generation.py --smoke --out /tmp/c14/smoke   # < 1 min, synthetic AT/GC classes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from dna_mdlm.baselines.markov import MarkovLM
from dna_mdlm.data.labelled import LabelledSequences, read_labelled
from dna_mdlm.evaluation.memorisation import TrainIndex
from dna_mdlm.evaluation.motifs import count_occurrences, load_jaspar, load_motifs
from dna_mdlm.evaluation.oracle import Oracle
from dna_mdlm.evaluation.sample_quality import evaluate_samples
from dna_mdlm.generate import generate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "genomic_benchmarks" / "sequences" / "human_nontata_promoters" / "test.csv"
JS_TOLERANCE = 1.5
TARGET_RATE = 0.9


def three_way_split(data: LabelledSequences, seed: int) -> tuple[LabelledSequences, LabelledSequences, LabelledSequences]:
    """(generator training 50%, oracle training 25%, held-out real 25%), each stratified by class, disjoint."""
    gen, rest = data.stratified_split(0.5, seed)
    oracle, held = rest.stratified_split(0.5, seed + 1)
    return gen, oracle, held


def write_table(path: Path, data: LabelledSequences) -> Path:
    lines = ["seq,label"] + [f"{s},{data.classes[y]}" for s, y in data]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(args: list[str], log: list) -> float:
    """Run `dna-mdlm ARGS` as the user would (same interpreter, this checkout first); record command and seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dna_mdlm.cli", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log.append({"command": "dna-mdlm " + " ".join(args), "seconds": round(seconds, 1), "rc": proc.returncode,
                "stderr_tail": proc.stderr.strip().splitlines()[-1:] if proc.stderr else []})
    if proc.returncode != 0:
        raise SystemExit(f"failed: dna-mdlm {' '.join(args)}\n{proc.stderr[-3000:]}")
    print(f"  {seconds:6.1f} s  dna-mdlm {' '.join(args)}", file=sys.stderr)
    return seconds


def per_kb(counts: np.ndarray, seqs: list[str]) -> np.ndarray:
    return counts.sum(axis=0) / (sum(map(len, seqs)) / 1000.0)


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def smoke_inputs(work: Path, log: list) -> tuple[LabelledSequences, Path]:
    """Synthetic AT-rich vs GC-rich 64-bp classes and a tiny MDLM pretrained for a few steps (the smoke run)."""
    rng = np.random.default_rng(0)
    seqs, labels = [], []
    for i in range(480):
        p = [0.35, 0.15, 0.15, 0.35] if i % 2 == 0 else [0.15, 0.35, 0.35, 0.15]
        seqs.append("".join(rng.choice(list("ACGT"), 64, p=p)))
        labels.append(i % 2)
    data = LabelledSequences(seqs, np.array(labels), ["at_rich", "gc_rich"], "synthetic AT/GC")
    run_cli(["pretrain", "--config", "tiny", "--out", str(work / "init"), "--max-steps", "10", "--window", "128",
             "--set", "trainer.progress_bar=false"], log)
    return data, work / "init" / "model"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled table (CSV/TSV/labelled FASTA)")
    p.add_argument("--init", type=Path, help="human-pretrained MDLM to continue (and the oracle's backbone)")
    p.add_argument("--out", type=Path, required=True, help="work folder: splits, models, samples, results.json")
    p.add_argument("--num", type=int, default=256, help="sequences per class and row")
    p.add_argument("--guidance", default="0,1,2,4", help="guidance weights")
    p.add_argument("--steps", type=int, default=64, help="MDLM reverse steps per sequence")
    p.add_argument("--train-steps", type=int, default=400, help="optimiser steps of the conditional generator")
    p.add_argument("--batch-size", type=int, default=32, help="generator training batch")
    p.add_argument("--jaspar-taxon", default="vertebrates")
    p.add_argument("--motifs", type=Path, help="motif file instead of JASPAR")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--md", type=Path, help="Markdown table to write")
    p.add_argument("--png", type=Path, help="PNG: oracle rate and 6-mer JS ratio per guidance weight")
    p.add_argument("--smoke", action="store_true", help="synthetic data, tiny model, few sequences (< 1 min)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    work = a.out
    work.mkdir(parents=True, exist_ok=True)
    log: list = []
    if a.smoke:
        data, init = smoke_inputs(work, log)
        a.num, a.steps, a.train_steps, a.batch_size = min(a.num, 24), min(a.steps, 8), min(a.train_steps, 60), 16
        motifs, motif_source = load_motifs(ROOT / "tests" / "data" / "MA0139.1_CTCF.jaspar"), "CTCF (MA0139.1)"
    else:
        if a.init is None:
            p.error("--init MODEL is needed (or --smoke)")
        data, init = read_labelled(a.data, what="--data"), a.init
        if a.motifs:
            motifs, motif_source = load_motifs(a.motifs), str(a.motifs)
        else:
            motifs, release = load_jaspar(a.jaspar_taxon)
            motif_source = f"{release} CORE {a.jaspar_taxon} ({len(motifs)} motifs, pyjaspar)"
    guidance = [float(g) for g in a.guidance.split(",")]
    length = int(np.median(data.lengths))
    gen_train, oracle_train, held = three_way_split(data, a.seed)
    print(f"splits: generator {len(gen_train)}, oracle {len(oracle_train)}, held-out {len(held)}; classes "
          f"{data.classes}; {length} bp", file=sys.stderr)
    gen_csv = write_table(work / "generator_train.csv", gen_train)
    oracle_csv = write_table(work / "oracle_train.csv", oracle_train)
    held_csv = write_table(work / "heldout.csv", held)

    # 1-2. the conditional generator and the oracle, through the documented commands
    gen_dir = work / "generator"
    train_s = run_cli(["pretrain", "--init", str(init), "--labels", str(gen_csv), "--window", str(max(length, 8)),
                       "--max-steps", str(a.train_steps), "--batch-size", str(a.batch_size), "--seed", str(a.seed),
                       "--out", str(gen_dir), "--set", "trainer.progress_bar=false",
                       "--set", f"trainer.val_every={max(1, a.train_steps // 4)}"], log)
    gen_summary = json.loads((gen_dir / "summary.json").read_text())
    oracle_dir = work / "oracle"
    oracle_s = run_cli(["finetune", "--model", str(init), "--train", str(oracle_csv), "--test", str(held_csv),
                        "--seeds", "1", "--out", str(oracle_dir)], log)
    oracle_metrics = json.loads((oracle_dir / "metrics.json").read_text())
    model_dir = gen_dir / "model"

    # held-out real sets per class: A (reference), B (the real-vs-real floor), C (the "real" row), disjoint
    rng = np.random.default_rng(a.seed)
    sets = {}
    for c, name in enumerate(data.classes):
        seqs = [s for s, y in held if y == c]
        order = rng.permutation(len(seqs))
        n = min(a.num, len(seqs) // 3)
        sets[name] = {k: [seqs[i] for i in order[j * n:(j + 1) * n]] for j, k in enumerate("ABC")}
    n_compared = min(len(s["A"]) for s in sets.values())
    print(f"real sets per class: {n_compared} sequences each (A reference, B floor, C real row)", file=sys.stderr)
    oracle = Oracle(oracle_dir / "model")
    index = TrainIndex(gen_train.seqs)
    motif_ref = {name: {k: per_kb(count_occurrences(s[k], motifs), s[k]) for k in "AB"} for name, s in sets.items()}

    # 3. samples per row
    rows: dict[tuple[str, str], dict] = {}
    samples: dict[tuple[str, str], list[str]] = {}
    cost: dict[tuple[str, str], float] = {}
    for g in guidance:
        for name in data.classes if g != 0 else [None]:
            started = time.perf_counter()
            res = generate(str(model_dir), n_compared, length, steps=a.steps, seed=a.seed, batch_size=128,
                           class_name=name, guidance=None if name is None else g)
            seconds = time.perf_counter() - started
            for target in ([name] if name is not None else data.classes):
                key = (f"MDLM guidance {g:g}" + (" (unconditional)" if g == 0 else ""), target)
                samples[key], cost[key] = res.sequences, seconds
            print(f"  {seconds:6.1f} s  {n_compared} samples, guidance {g:g}, class {name} "
                  f"({res.stats.network_calls} network calls)", file=sys.stderr)
    for c, name in enumerate(data.classes):
        started = time.perf_counter()
        own = [s for s, y in gen_train if y == c]
        cut = max(1, len(own) // 10)
        markov = MarkovLM.fit(own[cut:], val=own[:cut])
        samples[("per-class Markov LM", name)] = markov.sample(n_compared, length, seed=a.seed + c)
        cost[("per-class Markov LM", name)] = time.perf_counter() - started
        samples[("real held-out", name)] = sets[name]["C"]
        cost[("real held-out", name)] = 0.0
        print(f"  per-class Markov LM for {name}: order {markov.order}", file=sys.stderr)

    # 4. metrics
    for (method, target), seqs in samples.items():
        s = sets[target]
        q = evaluate_samples(seqs, s["A"], s["B"], train_index=index, seed=a.seed)
        js = q["kmer_spectrum"]["6"]["js_distance"]
        gen_kb = per_kb(count_occurrences(seqs, motifs), seqs)
        mem = q["memorisation"]
        rows[(method, target)] = {
            "method": method, "class": target, "n": len(seqs),
            "oracle_target_rate": oracle.summary(seqs)["called_fraction"][target],
            "js6": js["generated"], "js6_floor": js["real_vs_real"], "js6_ratio": js["ratio"],
            "motif_r": pearson(gen_kb, motif_ref[target]["A"]),
            "motif_r_floor": pearson(motif_ref[target]["B"], motif_ref[target]["A"]),
            "memorised_fraction": mem["fraction_copied"]["generated"], "max_match_bp": mem["max_match_bp"]["generated"],
            "seconds": round(cost[(method, target)], 1),
        }
        r = rows[(method, target)]
        print(f"  {method:36s} {target:10s} oracle {r['oracle_target_rate']:.3f}  6-mer JS {r['js6']:.4f} "
              f"(floor {r['js6_floor']:.4f}, {r['js6_ratio']:.2f}x)  motif r {r['motif_r']}  memorised "
              f"{r['memorised_fraction']:.3f}", file=sys.stderr)

    # the target
    markov_rate = {c: rows[("per-class Markov LM", c)]["oracle_target_rate"] for c in data.classes}
    verdicts = {}
    for g in guidance:
        if g == 0:
            continue
        method = f"MDLM guidance {g:g}"
        rs = [rows[(method, c)] for c in data.classes]
        verdicts[method] = {
            "rate_ok": all(r["oracle_target_rate"] >= TARGET_RATE for r in rs),
            "js_ok": all(r["js6_ratio"] is not None and r["js6_ratio"] <= JS_TOLERANCE for r in rs),
            "none_memorised": all(r["memorised_fraction"] == 0 for r in rs),
            "beats_markov": all(r["oracle_target_rate"] > markov_rate[r["class"]] for r in rs),
        }
        verdicts[method]["met"] = all(verdicts[method].values())
    met = [m for m, v in verdicts.items() if v["met"]]
    report = {
        "date": str(date.today()), "command": "python benchmarks/conditional_generation.py " + " ".join(argv or sys.argv[1:]),
        "smoke": a.smoke, "data": str(a.data) if not a.smoke else "synthetic AT/GC", "init": str(init),
        "classes": data.classes, "length": length, "num_per_class": n_compared, "steps": a.steps,
        "splits": {"generator": len(gen_train), "oracle": len(oracle_train), "heldout": len(held)},
        "generator": {"train_steps": a.train_steps, "batch_size": a.batch_size, "seconds": round(train_s, 1),
                      "heldout": gen_summary.get("heldout"), "markov_yardstick": gen_summary.get("markov_yardstick"),
                      "init_val_bpd": gen_summary.get("init_val_bpd")},
        "oracle": {"seconds": round(oracle_s, 1), "metrics": oracle_metrics.get("summary", oracle_metrics)},
        "motifs": motif_source, "rows": list(rows.values()), "verdicts": verdicts,
        "target_met_at": met, "commands": log, "threads": a.threads,
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "wall_seconds": round(time.perf_counter() - t_all, 1),
    }
    (work / "results.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    table = markdown(report)
    print(table)
    if a.md:
        a.md.write_text(table)
    if a.png:
        plot(report, a.png)
    print(f"target {'met at ' + ', '.join(met) if met else 'not met'}; wall {report['wall_seconds']:.0f} s; load "
          f"{load_before[0]:.1f} -> {report['load_average_after'][0]:.1f}", file=sys.stderr)
    return 0


def _f(x, fmt=".3f"):
    return "n/a" if x is None else format(x, fmt)


def markdown(report: dict) -> str:
    lines = ["| method | class | oracle target rate | 6-mer JS (floor) | JS / floor | motif r (floor) | memorised | "
             "longest train match (bp) | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['method']} | {r['class']} | {_f(r['oracle_target_rate'])} | {_f(r['js6'], '.4f')} "
                     f"({_f(r['js6_floor'], '.4f')}) | {_f(r['js6_ratio'], '.2f')} | {_f(r['motif_r'])} "
                     f"({_f(r['motif_r_floor'])}) | {_f(r['memorised_fraction'])} | {r['max_match_bp']} | "
                     f"{r['seconds']} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for c, marker in zip(report["classes"], "os^v"):
        guided = [r for r in report["rows"] if r["class"] == c and r["method"].startswith("MDLM")]
        gs = [float(r["method"].split()[2]) for r in guided]
        axes[0].plot(gs, [r["oracle_target_rate"] for r in guided], marker=marker, label=f"MDLM, {c}")
        axes[1].plot(gs, [r["js6_ratio"] for r in guided], marker=marker, label=f"MDLM, {c}")
        for r, style in ((next(r for r in report["rows"] if r["class"] == c and r["method"] == m), s)
                         for m, s in (("per-class Markov LM", ":"), ("real held-out", "--"))):
            axes[0].axhline(r["oracle_target_rate"], ls=style, lw=0.8, c="k" if style == "--" else "grey",
                            label=f"{r['method']}, {c}")
            axes[1].axhline(r["js6_ratio"], ls=style, lw=0.8, c="k" if style == "--" else "grey")
    axes[0].axhline(TARGET_RATE, c="r", lw=0.6, label="target 0.9")
    axes[1].axhline(JS_TOLERANCE, c="r", lw=0.6, label="target 1.5x")
    axes[0].set_ylabel("oracle target-class rate")
    axes[1].set_ylabel("6-mer JS / real-vs-real floor")
    for ax in axes:
        ax.set_xlabel("guidance weight")
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=6)
    fig.suptitle(f"class-conditional MDLM, {report['num_per_class']} per class, {report['steps']} steps")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
