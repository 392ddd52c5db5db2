"""Genomic Benchmarks table on the offline GB data: the pretrained encoder frozen (probe) and fine-tuned, the same
backbone from scratch, the CNN, k-mer LR, and a plain standardised logistic regression on the probe's own features.

Every method is trained and scored on identical splits by `dna_mdlm.training.finetune.run_protocol`, and the frozen
probe's features are computed once per sequence. The offline data are single labelled sets (the full nontata / cohn
*test* splits and the ocr / regulatory *train* subsamples), so the protocol here is stratified k-fold CV inside each
set — NOT the official GB protocol (train split -> test split). Published Caduceus-MDLM accuracies (GPU scale,
official protocol) are printed beside ours for orientation only. The script ends with the issue-10 targets: the
frozen probe against the standardised linear probe on the same features (every task) and against k-mer LR.

    python benchmarks/genomic_benchmarks.py --model runs/pretrain/model --out runs/gb          # ~1 h on 1 thread
    python benchmarks/genomic_benchmarks.py --model runs/pretrain/model --smoke --out runs/gb  # a few minutes
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from dna_mdlm.data.labelled import load_local_gb
from dna_mdlm.evaluation.classification import fmt_mean_spread
from dna_mdlm.training.finetune import METHOD_LABELS, FinetuneConfig, run_protocol

TASKS = ("human_nontata_promoters", "human_enhancers_cohn", "human_ocr_ensembl", "human_ensembl_regulatory")
PUBLISHED_MDLM = {"human_nontata_promoters": "0.940", "human_enhancers_cohn": "0.743"}  # mdlm.md §4.3, Table 7
ALL_METHODS = ("frozen", "linear_probe", "kmer_lr", "cnn", "finetuned", "scratch")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="pretrained model directory (the pretraining benchmark's model)")
    ap.add_argument("--out", required=True, help="folder for one run directory per task and summary.json / table.md")
    ap.add_argument("--data-dir", help="shared data folder (default ../shared/data or $DNA_MDLM_SHARED_DATA)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--max-train", type=int, default=1500, help="subsample each labelled set (stratified) to this many")
    ap.add_argument("--epochs", type=int, default=10, help="epochs for fine-tuned / scratch / CNN")
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per optimiser step")
    ap.add_argument("--time-budget-s", type=float, default=90.0, help="wall-clock cap per neural training run")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any FinetuneConfig field, e.g. --set pooling=mean+max (YAML scalars)")
    ap.add_argument("--smoke", action="store_true", help="tiny: 300 sequences, 2 folds, 2 epochs, 20 s per run")
    args = ap.parse_args(argv)
    if args.smoke:
        args.max_train, args.folds, args.epochs, args.time_budget_s = 300, 2, 2, 20.0
    import yaml

    extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cfg = FinetuneConfig.from_dict({"epochs": args.epochs, "batch_size": args.batch_size,
                                    "time_budget_s": args.time_budget_s, **extra})
    out = Path(args.out)
    rows, summary, targets = [], {}, []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        data = load_local_gb(task, args.data_dir)
        if args.max_train < len(data):
            data = data.stratified_split(test_size=len(data) - args.max_train, seed=0)[0]
        t0 = time.monotonic()
        rep = run_protocol(args.model, data, out / task, cfg, folds=args.folds, methods=methods, task=task,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
        report = rep["summary"]
        summary[task] = {"n": len(data), "folds": args.folds, "wall_s": time.monotonic() - t0, "summary": report}
        for m in methods:
            r = report[m]
            rows.append(f"| {task} | {METHOD_LABELS[m]} | {fmt_mean_spread(r.get('accuracy'))} | "
                        f"{fmt_mean_spread(r.get('auroc'))} | {r.get('cpu_s', {}).get('mean', float('nan')):.1f} | "
                        f"{r.get('runs_at_chance', 0)}/{args.folds} |")
        rows.append(f"| {task} | published Caduceus-MDLM (GPU, official train->test protocol; different protocol) | "
                    f"{PUBLISHED_MDLM.get(task, '—')} | — | — | — |")
        if "frozen" in report:
            acc = {m: report[m]["accuracy"]["mean"] for m in ("frozen", "linear_probe", "kmer_lr") if m in report}
            targets.append({"task": task, **{f"{m}_accuracy": a for m, a in acc.items()},
                            "frozen_minus_linear_probe": acc["frozen"] - acc["linear_probe"] if "linear_probe" in acc else None,
                            "frozen_minus_kmer_lr": acc["frozen"] - acc["kmer_lr"] if "kmer_lr" in acc else None})
    header = ["| task | method | accuracy (mean ±max−min) | AUROC | CPU s/run | runs at chance |", "|---|---|---|---|---|---|"]
    table = "\n".join(header + rows) + "\n"
    lines = ["| task | frozen probe | standardised LR, same features | k-mer LR | probe − LR | probe − k-mer LR |",
             "|---|---|---|---|---|---|"]
    for t in targets:
        f = lambda k, t=t: "—" if t.get(k) is None else f"{t[k]:.3f}"  # noqa: E731
        d = lambda k, t=t: "—" if t.get(k) is None else f"{t[k]:+.3f}"  # noqa: E731
        lines.append(f"| {t['task']} | {f('frozen_accuracy')} | {f('linear_probe_accuracy')} | {f('kmer_lr_accuracy')} | "
                     f"{d('frozen_minus_linear_probe')} | {d('frozen_minus_kmer_lr')} |")
    n_lp = sum(t["frozen_minus_linear_probe"] is not None and t["frozen_minus_linear_probe"] >= 0 for t in targets)
    n_km = sum(t["frozen_minus_kmer_lr"] is not None and t["frozen_minus_kmer_lr"] >= 0 for t in targets)
    verdict = (f"frozen probe >= standardised LR on the same features: {n_lp}/{len(targets)} tasks (target: all); "
               f">= k-mer LR: {n_km}/{len(targets)} (target: >= 2)")
    target_table = "\n".join(lines) + "\n\n" + verdict + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n" + target_table)
    (out / "summary.json").write_text(json.dumps({"date": datetime.date.today().isoformat(), "model": args.model,
                                                  "args": vars(args), "config": vars(cfg), "tasks": summary,
                                                  "targets": targets}, indent=1, default=str) + "\n")
    print(table)
    print(target_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
