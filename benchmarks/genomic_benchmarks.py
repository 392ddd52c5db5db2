"""Genomic Benchmarks table on the offline GB data: pretrained frozen / fine-tuned Caduceus vs from-scratch, CNN, k-mer LR.

Every method is trained and scored on identical splits by `dna_mdlm.training.finetune.run_protocol`. The offline
data are single labelled sets (the full nontata / cohn *test* splits and subsamples of the ocr / regulatory
*train* splits), so the protocol here is stratified k-fold CV inside each set — NOT the official GB protocol
(train split -> test split). The published Caduceus-MDLM accuracies (GPU scale, official protocol) are printed
beside ours for orientation only.

    python benchmarks/genomic_benchmarks.py --model runs/pretrain/model --out runs/gb          # full (~30-40 min, 2 cores)
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
ALL_METHODS = ("frozen", "finetuned", "scratch", "cnn", "kmer_lr")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="pretrained model directory (the pretraining benchmark's model)")
    ap.add_argument("--out", required=True, help="folder for one run directory per task and summary.json / table.md")
    ap.add_argument("--data-dir", help="shared data folder (default ../shared/data or $DNA_MDLM_SHARED_DATA)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--max-train", type=int, default=2000, help="subsample each labelled set (stratified) to this many")
    ap.add_argument("--epochs", type=int, default=10, help="epochs for fine-tuned / scratch / CNN (frozen heads get 3x)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--time-budget-s", type=float, default=60.0, help="wall-clock cap per training run")
    ap.add_argument("--smoke", action="store_true", help="tiny: 300 sequences, 2 folds, 2 epochs, 20 s per run")
    args = ap.parse_args(argv)
    if args.smoke:
        args.max_train, args.folds, args.epochs, args.time_budget_s = 300, 2, 2, 20.0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = Path(args.out)
    rows, summary = [], {}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        data = load_local_gb(task, args.data_dir)
        if args.max_train < len(data):
            data = data.stratified_split(test_size=len(data) - args.max_train, seed=0)[0]
        t0 = time.monotonic()
        report = {}
        for group in (["frozen"], [m for m in methods if m != "frozen"]):
            group = [m for m in group if m in methods]
            if not group:
                continue
            caduceus = [m for m in group if m in ("frozen", "finetuned", "scratch")]
            if not caduceus:  # run_protocol needs a Caduceus method to export; baselines ride with the first one
                continue
            frozen = group == ["frozen"]
            cfg = FinetuneConfig(unfreeze=not frozen, epochs=3 * args.epochs if frozen else args.epochs,
                                 batch_size=args.batch_size, time_budget_s=args.time_budget_s,
                                 weight_decay=0.01 if frozen else 0.1, patience=5 if frozen else 3)
            rep = run_protocol(args.model, data, out / task / ("frozen" if frozen else "trained"), cfg,
                               folds=args.folds, methods=group, task=task, log=lambda m: print(m, file=sys.stderr))
            report.update(rep["summary"])
        summary[task] = {"n": len(data), "folds": args.folds, "wall_s": time.monotonic() - t0, "summary": report}
        for m in methods:
            if m in report:
                rows.append(f"| {task} | {METHOD_LABELS[m]} | {fmt_mean_spread(report[m].get('accuracy'))} | "
                            f"{fmt_mean_spread(report[m].get('auroc'))} | {report[m].get('cpu_s', {}).get('mean', float('nan')):.1f} |")
        rows.append(f"| {task} | published Caduceus-MDLM (GPU, official train->test protocol; different protocol) | "
                    f"{PUBLISHED_MDLM.get(task, '—')} | — | — |")
    header = ["| task | method | accuracy (mean ±max−min) | AUROC | CPU s/run |", "|---|---|---|---|---|"]
    table = "\n".join(header + rows) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "summary.json").write_text(json.dumps({"date": datetime.date.today().isoformat(), "model": args.model,
                                                  "args": vars(args), "tasks": summary}, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
