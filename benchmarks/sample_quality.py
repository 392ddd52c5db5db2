"""Sample-quality benchmark: how real does DNA from each generator look, against the same held-out reference?

One table, every row the same number and length of sequences, every row scored by `evaluate_samples`
against the same two disjoint sets of real held-out windows (set A: the reference; set B: the
real-vs-real baseline, what a perfect generator would score at this sample size):

- MDLM samples at each of --steps (semi-autoregressive over the model's training window),
- AR samples (recurrent decoding), Markov-LM samples,
- dinucleotide-shuffled real held-out windows (Altschul-Erickson: real 2-mer composition, nothing else),
- real held-out windows (a third disjoint set: the floor, should sit at ratio ~1).

Columns: 6-mer Jensen-Shannon distance to set A and its ratio to real-vs-real (the issue's target:
MDLM <= 1.5x, and below AR and Markov; at a few tens of kb of samples the 4096-bin 6-mer spectrum is
dominated by sampling noise, so the 3-mer ratio is shown too), GC mean / sd, CpG observed/expected, memorisation against the
training sequence (the chromosome with the held-out region and any --exclude-region masked: samples with
an exact match >= --copy-min-bp or >= half their length, and the longest match), and bits/base of each
row under the AR and the Markov model as judges (exact likelihoods; a judge favours its own samples, so
read each judge column for the other generators).

    python benchmarks/sample_quality.py --mdlm runs/bench_quality/mdlm/model --ar runs/bench_quality/ar/model \
        --markov runs/bench_quality/markov/model --fasta ../shared/data/genomes/human_GRCh37_chr20.fa.gz \
        --heldout-region 20:40000001-41000000 --exclude-region 20:41000001-41500000 \
        --num 64 --length 1024 --steps 64 256 --threads 1 --out runs/sample_quality
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from dna_mdlm.evaluation.judge import load_judge
from dna_mdlm.evaluation.memorisation import TrainIndex
from dna_mdlm.evaluation.sample_quality import (
    dinucleotide_shuffle,
    draw_reference_sets,
    evaluate_samples,
)
from dna_mdlm.io.fasta import iter_fasta
from dna_mdlm.io.regions import parse_region
from dna_mdlm.io.writers import atomic_write_text

SHARED_DATA = Path(os.environ.get("DNA_MDLM_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
DEFAULT_FASTA = SHARED_DATA / "genomes" / "human_GRCh37_chr20.fa.gz"


def describe(model_dir: Path) -> str:
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") == "markov":
        return f"Markov LM order {cfg.get('order')}"
    state = model_dir / "training_state.json"
    steps = json.loads(state.read_text()).get("step") if state.is_file() else None
    return (f"{cfg.get('objective', 'mdlm')} Caduceus d_model={cfg['d_model']} n_layer={cfg['n_layer']} "
            f"rcps={cfg['rcps']} window={cfg.get('train_window', 'n/a')}" + (f" steps={steps}" if steps else ""))


def split_genome(records: dict[str, str], heldout: str, exclude: list[str]) -> tuple[str, list[str]]:
    """(held-out sequence, training pieces): the held-out and excluded regions cut out of the records."""
    lengths = {name: len(seq) for name, seq in records.items()}
    cuts: dict[str, list[tuple[int, int]]] = {}
    heldout_seq = None
    for i, region in enumerate([heldout] + exclude):
        iv = parse_region(region, "--heldout-region" if i == 0 else "--exclude-region", lengths)
        if i == 0:
            heldout_seq = records[iv.record][iv.start:iv.end]
        cuts.setdefault(iv.record, []).append((iv.start, iv.end))
    pieces = []
    for name, seq in records.items():
        pos = 0
        for start, end in sorted(cuts.get(name, [])):
            if start > pos:
                pieces.append(seq[pos:start])
            pos = max(pos, end)
        if pos < len(seq):
            pieces.append(seq[pos:])
    return heldout_seq, pieces


class CachedJudge:
    """Scores each distinct set of sequences once: reference sets A and B are judged for every row."""

    def __init__(self, judge):
        self.judge, self.cache = judge, {}

    def __call__(self, seqs):
        key = tuple(seqs)
        if key not in self.cache:
            self.cache[key] = self.judge(seqs)
        return self.cache[key]


def row_summary(name: str, seconds: float | None, metrics: dict, judge_bpb: dict[str, float]) -> dict:
    js = metrics["kmer_spectrum"]["6"]["js_distance"]
    mem = metrics.get("memorisation", {})
    return {
        "generator": name, "seconds": seconds,
        "js6": js["generated"], "js6_real_vs_real": js["real_vs_real"], "js6_ratio": js["ratio"],
        "js3_ratio": metrics["kmer_spectrum"]["3"]["js_distance"]["ratio"],
        "gc_mean": metrics["gc_content"]["mean"]["generated"], "gc_sd": metrics["gc_content"]["sd"]["generated"],
        "cpg_oe": metrics["cpg_observed_expected"]["generated"],
        "n_copied": mem.get("n_copied", {}).get("generated"), "max_match_bp": mem.get("max_match_bp", {}).get("generated"),
        **{f"judge_{j}_bpb": v for j, v in judge_bpb.items()},
    }


def fmt(x, digits=4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mdlm", type=Path, required=True, help="MDLM model directory")
    p.add_argument("--ar", type=Path, help="AR model directory (a generator row and a judge)")
    p.add_argument("--markov", type=Path, help="Markov model directory (a generator row and a judge)")
    p.add_argument("--fasta", type=Path, default=DEFAULT_FASTA, help="genome the models were trained on")
    p.add_argument("--heldout-region", required=True, help="held-out region chr:start-end (1-based): the reference")
    p.add_argument("--exclude-region", action="append", default=[],
                   help="also not training sequence (e.g. the validation region); repeatable")
    p.add_argument("--num", type=int, default=64, help="sequences per row")
    p.add_argument("--length", type=int, default=1024, help="bases per sequence")
    p.add_argument("--steps", type=int, nargs="+", default=[64, 256], help="MDLM reverse steps per window (one row each)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--index-k", type=int, default=24)
    p.add_argument("--copy-min-bp", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 avoids contention on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="directory for results.json, results.md and each row's samples FASTA")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    t0 = time.time()
    records = {rec.name: rec.sequence.upper() for rec in iter_fasta(args.fasta, "--fasta")}
    heldout, train_pieces = split_genome(records, args.heldout_region, args.exclude_region)
    del records
    log(f"read {args.fasta}: held-out {len(heldout):,} bp, training pieces {sum(map(len, train_pieces)):,} bp "
        f"({time.time() - t0:.0f} s)")
    # Four disjoint sets of held-out windows: A (reference), B (real-vs-real), C (the "real" row),
    # D (the source of the dinucleotide shuffles).
    x, y = draw_reference_sets([heldout], [args.length] * (2 * args.num), seed=args.seed)
    ref_a, ref_b, real_c, shuffle_src = x[: args.num], y[: args.num], x[args.num:], y[args.num:]
    t0 = time.time()
    index = TrainIndex(train_pieces, k=args.index_k)
    del train_pieces
    log(f"training k-mer index (k={args.index_k}, {index.n_bases:,} bases) built in {time.time() - t0:.0f} s")

    judges = {}
    if args.ar:
        judges["ar"] = CachedJudge(load_judge(args.ar, device=args.device, seed=args.seed))
    if args.markov:
        judges["markov"] = CachedJudge(load_judge(args.markov, seed=args.seed))

    from dna_mdlm.generate import generate

    rows_in: list[tuple[str, callable]] = []
    for steps in args.steps:
        rows_in.append((f"MDLM T={steps}", lambda steps=steps: generate(
            args.mdlm, args.num, args.length, steps=steps, batch_size=args.batch_size, device=args.device,
            seed=args.seed).sequences))
    if args.ar:
        rows_in.append(("AR", lambda: generate(args.ar, args.num, args.length, batch_size=args.batch_size,
                                               device=args.device, seed=args.seed).sequences))
    if args.markov:
        rows_in.append(("Markov LM", lambda: generate(args.markov, args.num, args.length, seed=args.seed).sequences))
    rng = np.random.default_rng(args.seed)
    rows_in.append(("dinucleotide-shuffled real", lambda: [dinucleotide_shuffle(s, rng) for s in shuffle_src]))
    rows_in.append(("real held-out", lambda: list(real_c)))

    if args.out:
        (args.out / "samples").mkdir(parents=True, exist_ok=True)

    def write_table(final: bool) -> None:
        # rewritten after every row, so a long run that is stopped still leaves the rows it finished
        judge_ref = {j: judges[j](ref_a)["bits_per_base"] for j in judges}
        header = ["generator", "6-mer JS", "x real-vs-real", "3-mer JS x real-vs-real", "GC mean", "GC sd", "CpG o/e", "memorised / max match bp"]
        header += [f"{j.upper() if j == 'ar' else 'Markov'}-judge bits/base" for j in judges] + ["wall s"]
        a_metrics = next(iter(full.values()))
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines.append("| " + " | ".join(
            ["reference set A (real)", "-", "-", "-", fmt(a_metrics["gc_content"]["mean"]["reference"], 3),
             fmt(a_metrics["gc_content"]["sd"]["reference"], 3), fmt(a_metrics["cpg_observed_expected"]["reference"], 3), "-"]
            + [fmt(judge_ref[j]) for j in judges] + ["-"]) + " |")
        lines.append("| " + " | ".join(
            ["real vs real (set B, floor)", fmt(rows[0]["js6_real_vs_real"]), "1.00", "1.00",
             fmt(a_metrics["gc_content"]["mean"]["real_vs_real"], 3), fmt(a_metrics["gc_content"]["sd"]["real_vs_real"], 3),
             fmt(a_metrics["cpg_observed_expected"]["real_vs_real"], 3),
             f"{a_metrics['memorisation']['n_copied']['real_vs_real']} / {a_metrics['memorisation']['max_match_bp']['real_vs_real']}"]
            + [fmt(judges[j](ref_b)["bits_per_base"]) for j in judges] + ["-"]) + " |")
        for r in sorted(rows, key=lambda r: display_order[r["generator"]]):
            lines.append("| " + " | ".join(
                [r["generator"], fmt(r["js6"]), fmt(r["js6_ratio"], 2), fmt(r["js3_ratio"], 2), fmt(r["gc_mean"], 3), fmt(r["gc_sd"], 3),
                 fmt(r["cpg_oe"], 3), f"{r['n_copied']} / {r['max_match_bp']}"]
                + [fmt(r[f"judge_{j}_bpb"]) for j in judges] + [fmt(r["seconds"], 1)]) + " |")
        table = "\n".join(lines)
        if final:
            print(table)
        if args.out:
            report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv,
                      "models": {k: describe(v) for k, v in (("mdlm", args.mdlm), ("ar", args.ar), ("markov", args.markov)) if v},
                      "judge_reference_bits_per_base": judge_ref, "rows": rows, "metrics": full}
            atomic_write_text(args.out / "results.json", json.dumps(report, indent=1, default=float) + "\n")
            atomic_write_text(args.out / "results.md", table + "\n")

    # Cheap rows first, so a run stopped during the slow MDLM sampling still has every baseline; the
    # table keeps the display order of rows_in.
    display_order = {name: i for i, (name, _) in enumerate(rows_in)}
    rows, full = [], {}
    for name, make in sorted(rows_in, key=lambda r: (r[0].startswith("MDLM"), display_order[r[0]])):
        t0 = time.time()
        samples = make()
        seconds = time.time() - t0
        log(f"{name}: {len(samples)} x {args.length} bp in {seconds:.1f} s; scoring")
        metrics = evaluate_samples(samples, ref_a, ref_b, train_index=index, seed=args.seed,
                                   copy_min_bp=args.copy_min_bp)
        metrics.pop("plot_data")
        generated = name.startswith("MDLM") or name in ("AR", "Markov LM")
        row = row_summary(name, seconds if generated else None, metrics,
                          {j: judge(samples)["bits_per_base"] for j, judge in judges.items()})
        rows.append(row)
        full[name] = metrics
        log(f"{name}: 6-mer JS {row['js6']:.4f} (x{row['js6_ratio']:.2f} real-vs-real), copied {row['n_copied']}, "
            + ", ".join(f"{j} judge {row[f'judge_{j}_bpb']:.4f}" for j in judges))
        if args.out:
            slug = name.lower().replace(" ", "_").replace("=", "").replace("-", "_")
            (args.out / "samples" / f"{slug}.fa").write_text("".join(f">{slug}_{i}\n{s}\n" for i, s in enumerate(samples)))
        write_table(final=False)
    write_table(final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
