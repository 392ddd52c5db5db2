"""Sampling benchmark: can masked diffusion sampling be made competitive with autoregressive decoding?

Two tables from one run, on the device given (CPU by default):

1. plain `ddpm` vs per-row cached `ddpm_cache` sampler: network calls, sequences pushed through the
   network, and wall time at T in --cache-steps (default 64, 256, 1024), L = --length, batch --cache-num
   (default 1, as the MDLM paper times caching). Both must return identical samples; the script checks it.
2. wall time to generate --num sequences of --length bases: MDLM at T in --steps vs AR recurrent decoding
   (and a Markov model if given), each with sample quality beside it: 6-mer Jensen-Shannon distance to
   held-out real windows of the same length and mean GC, next to the real-vs-real JS distance of two
   disjoint real sets (the floor a perfect generator would reach).

Without --mdlm/--ar the script builds tiny untrained models (timings only; quality is meaningless).

    python benchmarks/sampling.py --mdlm runs/demo/model --ar runs/ar/model \
        --reference ../shared/data/genomes/human_GRCh37_chr20.fa.gz --region 20:40000001-41000000
    python benchmarks/sampling.py --num 8 --steps 32,64 --cache-steps 64,256 --threads 1   # quick, tiny models
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch

from dna_mdlm.evaluation.sample_quality import draw_reference_sets, gc_fraction, js_distance
from dna_mdlm.generate import generate
from dna_mdlm.io.fasta import read_sequences
from dna_mdlm.kmers import kmer_counts

DEFAULT_REFERENCE = Path(os.environ.get("DNA_MDLM_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")) \
    / "genomes" / "human_GRCh37_chr20_40000001-41000000.fa"
K = 6


def tiny_models(root: Path) -> tuple[Path, Path]:
    """Untrained d_model 32, 2-layer MDLM (RC-PS) and AR models: for timings when no trained ones exist."""
    from transformers.utils import logging as hf_logging

    from dna_mdlm.models import CaduceusForMaskedLM
    from dna_mdlm.models.configuration_caduceus import CaduceusConfig

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    mdlm = CaduceusForMaskedLM(CaduceusConfig(d_model=32, n_layer=2, rcps=True))
    ar = CaduceusForMaskedLM(CaduceusConfig(d_model=32, n_layer=2, bidirectional=False, rcps=False, objective="ar"))
    for model, name in ((mdlm, "mdlm"), (ar, "ar")):
        model.config.train_window = 1024
        model.save_pretrained(root / name)
    return root / "mdlm", root / "ar"


def describe(model_dir: Path) -> str:
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") == "markov":
        return f"Markov order {cfg.get('order')}"
    return (f"{cfg.get('objective', 'mdlm')} d_model={cfg['d_model']} n_layer={cfg['n_layer']} rcps={cfg['rcps']} "
            f"window={cfg.get('train_window', 'n/a')}")


def quality(seqs: list[str], real: list[str]) -> dict:
    return {"js6": js_distance(kmer_counts(seqs, K), kmer_counts(real, K)),
            "gc": float(np.mean([gc_fraction(s) for s in seqs]))}


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mdlm", type=Path, help="MDLM model directory (default: a tiny untrained one)")
    p.add_argument("--ar", type=Path, help="AR model directory (default: a tiny untrained one)")
    p.add_argument("--markov", type=Path, help="optional Markov model directory")
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="held-out real DNA (FASTA)")
    p.add_argument("--region", help="held-out region chr:start-end of --reference (1-based)")
    p.add_argument("--num", type=int, default=64, help="sequences per generator for the speed/quality table")
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--steps", type=ints, default=[32, 64, 128, 256], help="MDLM steps for the speed/quality table")
    p.add_argument("--cache-steps", type=ints, default=[64, 256, 1024], help="steps for plain vs cached")
    p.add_argument("--cache-num", type=int, default=1, help="sequences (one batch) for plain vs cached")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 avoids contention on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write all numbers as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.reference.is_file():
        print(f"reference FASTA {args.reference} not found; give --reference", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="dna_mdlm_bench_") as tmp:
        mdlm_dir, ar_dir = args.mdlm, args.ar
        untrained = mdlm_dir is None or ar_dir is None
        if untrained:
            tiny_mdlm, tiny_ar = tiny_models(Path(tmp))
            mdlm_dir, ar_dir = mdlm_dir or tiny_mdlm, ar_dir or tiny_ar
        ref = read_sequences(args.reference, "--reference", region=args.region)
        real_a, real_b = draw_reference_sets(ref, [args.length] * args.num, seed=args.seed)
        report = {"date": str(date.today()), "command": " ".join(sys.argv), "device": args.device,
                  "threads": torch.get_num_threads(), "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                  "mdlm": describe(mdlm_dir), "ar": describe(ar_dir), "untrained_defaults": untrained,
                  "num": args.num, "length": args.length,
                  "real_vs_real": {"js6": js_distance(kmer_counts(real_a, K), kmer_counts(real_b, K)),
                                   "gc": float(np.mean([gc_fraction(s) for s in real_b]))},
                  "cache": [], "speed_quality": []}

        print(f"## plain vs cached sampler (L={args.length}, {args.cache_num} sequence(s) in one batch)")
        print("| T | sampler | network calls | sequences through network | wall s | identical |")
        print("|---|---|---|---|---|---|")
        for steps in args.cache_steps:
            runs = {}
            for sampler in ("ddpm", "ddpm_cache"):
                runs[sampler] = generate(mdlm_dir, args.cache_num, args.length, steps=steps, sampler=sampler,
                                         seed=args.seed, device=args.device, batch_size=args.cache_num)
            same = runs["ddpm"].sequences == runs["ddpm_cache"].sequences
            for sampler, r in runs.items():
                row = {"steps": steps, "sampler": sampler, "network_calls": r.stats.network_calls,
                       "row_evaluations": r.stats.row_evaluations, "seconds": round(r.stats.seconds, 2), "identical": same}
                report["cache"].append(row)
                print(f"| {steps} | {sampler} | {row['network_calls']} | {row['row_evaluations']} | {row['seconds']} | {same} |",
                      flush=True)

        print(f"\n## {args.num} x {args.length} bp: wall time and quality (6-mer JS to held-out real, lower is better)")
        print("| generator | steps / calls | wall s | s per sequence | 6-mer JS | GC mean |")
        print("|---|---|---|---|---|---|")
        rr = report["real_vs_real"]
        print(f"| real vs real (floor) | - | - | - | {rr['js6']:.4f} | {rr['gc']:.3f} |")
        jobs = [("mdlm ddpm_cache", mdlm_dir, {"steps": s, "sampler": "ddpm_cache"}) for s in args.steps]
        jobs.append(("ar (recurrent)", ar_dir, {}))
        if args.markov:
            jobs.append(("markov", args.markov, {}))
        for name, model_dir, kwargs in jobs:
            r = generate(model_dir, args.num, args.length, seed=args.seed, device=args.device,
                         batch_size=args.batch_size, **kwargs)
            q = quality(r.sequences, real_b)
            row = {"generator": name, **kwargs, "network_calls": r.stats.network_calls,
                   "seconds": round(r.stats.seconds, 2), **q}
            report["speed_quality"].append(row)
            label = f"T={kwargs['steps']} / {r.stats.network_calls}" if "steps" in kwargs else f"- / {r.stats.network_calls}"
            print(f"| {name} | {label} | {row['seconds']} | {row['seconds'] / args.num:.3f} | {q['js6']:.4f} | {q['gc']:.3f} |",
                  flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{report['date']}; {report['machine']}, torch threads {report['threads']}, device {args.device}; "
          f"MDLM: {report['mdlm']}; AR: {report['ar']}" + ("; untrained tiny models: timings only" if untrained else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
