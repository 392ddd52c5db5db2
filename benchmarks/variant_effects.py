"""Zero-shot variant effects on a measured saturation-mutagenesis set: every score kind of every model, side by side.

Data: the HNF4A P2 promoter MPRA of Kircher et al., Nat. Commun. 10, 3583 (2019), GRCh37 chr20:42,984,160-42,984,444:
855 SNVs (all three alternatives at each of 285 positions) and 122 one-base deletions, each with a measured log2
expression effect (Coefficient) and a p-value. Each model scores every variant with `dna_mdlm.score_variants` on
windows of the same length centred on the variant, and each score is compared with the measurement:

* Spearman(score, effect): does the signed score order the effects (negative score = alt less likely)?
* Spearman(|score|, |effect|): does the score's magnitude track the effect's magnitude, whatever the sign?
* AUROC for "significant" (pValue < 1e-5) against the rest, ranking by -score (low = significant, the LLR reading)
  and by |score| (either direction), with 95% bootstrap intervals (1,000 resamples of the variants); and, as a
  composition control, the -score AUROC among SNVs whose reference base is G or C only (the element is GC-rich
  and the significant SNVs sit at A/T bases more often: the reference base alone gives an AUROC, printed).

Metrics are given for the SNVs (855; every score) and for all variants (977; scores that handle deletions).
The Markov LM and the AR model are the simple baselines the MDLM scores sit next to.

    python benchmarks/variant_effects.py --model mdlm=/path/mdlm/model --model ar=/path/ar/model \\
        --model markov=/path/markov/model --model demo=runs/demo/model:256 --out runs/variant_effects

A model is NAME=DIR or NAME=DIR:WINDOW (default window: --window). The models should have the region held out of
pretraining (the HNF4A element is in chr20:42,884,001-43,084,000).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from dna_mdlm.evaluation.variants import SUPPORTED, score_variants
from dna_mdlm.loading import load_model, model_kind

SHARED = Path(os.environ.get("DNA_MDLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FASTA = SHARED / "genomes" / "human_GRCh37_chr20.fa.gz"
VARIANTS = SHARED / "variants" / "HNF4A_GRCh37_chr20.tsv"
SIGNIFICANT_P = 1e-5
SCORE_COLUMNS = {"llr": "llr", "elbo": "elbo", "embedding_distance": "embedding_distance"}


def read_measurements(path: Path) -> dict:
    with open(path) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {"alt": [r["Alt"] for r in rows], "ref": [r["Ref"] for r in rows],
            "effect": np.array([float(r["Coefficient"]) for r in rows]),
            "pvalue": np.array([float(r["pValue"]) for r in rows])}


def _auroc(labels: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(labels, score)) if 0 < labels.sum() < len(labels) else float("nan")


def metrics(score: np.ndarray, effect: np.ndarray, significant: np.ndarray, rng: np.random.Generator,
            n_boot: int = 1000) -> dict:
    out = {"n": int(len(score)), "n_significant": int(significant.sum()),
           "rho_effect": float(spearmanr(score, effect)[0]),
           "rho_abs": float(spearmanr(np.abs(score), np.abs(effect))[0]),
           "auroc_low": _auroc(significant, -score), "auroc_abs": _auroc(significant, np.abs(score))}
    boots = {"rho_effect": [], "auroc_abs": []}
    for _ in range(n_boot):
        i = rng.integers(0, len(score), len(score))
        boots["rho_effect"].append(spearmanr(score[i], effect[i])[0])
        boots["auroc_abs"].append(_auroc(significant[i], np.abs(score[i])))
    for key, vals in boots.items():
        vals = np.asarray(vals, dtype=float)
        vals = vals[np.isfinite(vals)]
        out[f"{key}_ci95"] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]
    return out


def parameters(model_dir: str) -> int | None:
    model, kind = load_model(model_dir)
    return None if kind == "markov" else int(sum(p.numel() for p in model.parameters()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR or NAME=DIR:WINDOW (repeatable)")
    ap.add_argument("--out", required=True, help="folder: <name>.tsv scores, summary.json, table.md")
    ap.add_argument("--fasta", default=str(FASTA), help="GRCh37 chr20 (contig 20 or chr20)")
    ap.add_argument("--variants", default=str(VARIANTS), help="the HNF4A saturation-mutagenesis TSV")
    ap.add_argument("--window", type=int, default=512, help="window for models given without :WINDOW")
    ap.add_argument("--samples", type=int, default=8, help="ELBO Monte-Carlo samples per window")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scores", help="only these score kinds (comma-separated; default: every kind each model has)")
    ap.add_argument("--reuse", action="store_true", help="reuse OUT/<name>.tsv and .json from an earlier run (metrics only)")
    args = ap.parse_args(argv)
    wanted = None if args.scores is None else {x.strip() for x in args.scores.split(",") if x.strip()}
    for path in (args.fasta, args.variants):
        if not Path(path).is_file():
            print(f"variant_effects: {path} not found (set DNA_MDLM_SHARED_DATA)", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meas = read_measurements(Path(args.variants))
    snv = np.array([a != "-" for a in meas["alt"]])
    significant = meas["pvalue"] < SIGNIFICANT_P
    # Composition control: in this GC-rich promoter, is significance predicted by the reference base alone?
    ref_at = np.array([r in ("A", "T") for r in meas["ref"]])
    control = {"auroc_significant_by_ref_is_AT_snv": _auroc(significant[snv], ref_at[snv].astype(float)),
               "snv_ref_gc_fraction": float(1 - ref_at[snv].mean())}
    print(f"variant_effects: composition control: AUROC(significant ~ ref base is A/T) over the SNVs = "
          f"{control['auroc_significant_by_ref_is_AT_snv']:.3f}", file=sys.stderr)
    results, lines = [], []
    started = datetime.datetime.now(datetime.timezone.utc)
    for spec in args.model:
        name, _, rest = spec.partition("=")
        model_dir, window = rest, args.window
        if ":" in rest and rest.rsplit(":", 1)[1].isdigit():
            model_dir, w = rest.rsplit(":", 1)
            window = int(w)
        kind = model_kind(model_dir)
        scores = [x for x in SUPPORTED[kind] if wanted is None or x in wanted]
        t0 = time.perf_counter()
        if args.reuse and (out / f"{name}.json").is_file() and (out / f"{name}.tsv").is_file():
            summary = json.loads((out / f"{name}.json").read_text())
            seconds = summary["benchmark_seconds"]
        else:
            summary = score_variants(model_dir, args.fasta, args.variants, out / f"{name}.tsv", scores=scores,
                                     window=window, samples=args.samples, batch_size=args.batch_size,
                                     seed=args.seed, progress=sys.stderr.isatty())
            seconds = summary["benchmark_seconds"] = round(time.perf_counter() - t0, 1)
            (out / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(f"variant_effects: {name} ({kind}) scored {summary['scored']} alleles in {seconds:.0f} s "
              f"({summary['network_calls']} forward batches)", file=sys.stderr, flush=True)
        with open(out / f"{name}.tsv") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        n_params = parameters(model_dir)
        for score in scores:
            values = np.array([float(r[score]) if r[score] != "NA" else math.nan for r in rows])
            for subset, keep in (("SNV", snv), ("all", np.ones_like(snv))):
                keep = keep & np.isfinite(values)
                if subset == "all" and keep.sum() == snv.sum():
                    continue  # the score has no deletions: "all" would repeat the SNV row
                rng = np.random.default_rng(args.seed)
                m = metrics(values[keep], meas["effect"][keep], significant[keep], rng)
                gc = keep & ~ref_at
                m["auroc_low_ref_gc"] = _auroc(significant[gc], -values[gc]) if subset == "SNV" else None
                if score == "elbo":
                    se = np.array([float(r["elbo_se"]) for r in rows])[keep]
                    m["median_elbo_se"] = float(np.median(se))
                    m["median_abs_elbo"] = float(np.median(np.abs(values[keep])))
                results.append({"model": name, "kind": kind, "dir": model_dir, "parameters": n_params,
                                "window": window, "score": score, "subset": subset, "seconds": round(seconds, 1), **m})
    header = ("| model | kind | params | window | score | variants | n (signif.) | Spearman(score, effect) [95% CI] "
              "| Spearman(abs) | AUROC low=signif. | AUROC low, G/C ref only | AUROC abs [95% CI] |")
    lines = [header, "|" + "---|" * 12]
    for r in results:
        ci_r, ci_a = r["rho_effect_ci95"], r["auroc_abs_ci95"]
        lines.append(f"| {r['model']} | {r['kind']} | {r['parameters'] or '-'} | {r['window']} | {r['score']} | "
                     f"{r['subset']} | {r['n']} ({r['n_significant']}) | {r['rho_effect']:+.3f} [{ci_r[0]:+.3f}, {ci_r[1]:+.3f}] "
                     f"| {r['rho_abs']:+.3f} | {r['auroc_low']:.3f} | "
                     + (f"{r['auroc_low_ref_gc']:.3f}" if r["auroc_low_ref_gc"] is not None else "-")
                     + f" | {r['auroc_abs']:.3f} [{ci_a[0]:.3f}, {ci_a[1]:.3f}] |")
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps({"started_utc": started.isoformat(timespec="seconds"),
                                                  "command": " ".join(sys.argv), "fasta": args.fasta,
                                                  "variants": args.variants, "samples": args.samples,
                                                  "composition_control": control,
                                                  "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
