"""Measure how fast the genome loader produces random 1 kb training windows (windows/s).

Usage: python benchmarks/data_throughput.py [FASTA ...] [--window 1024] [--batch-size 32] [--batches 100]
Default FASTA: the bundled demo excerpt data/chr20_demo.fa.gz (decompressed once into the cache) and, when
present, the 1 Mb plain-FASTA slice in ../shared/data. Reports windows/s through a DataLoader with 0 and 2
workers (after one warm-up batch, so worker start-up is excluded) and through the BGZF path read in place.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from torch.utils.data import DataLoader

from dna_mdlm.data.genome import GenomeWindows

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = [REPO / "data" / "chr20_demo.fa.gz",
            REPO.parent / "shared" / "data" / "genomes" / "human_GRCh37_chr20_40000001-41000000.fa"]


def windows_per_second(genome: GenomeWindows, batch_size: int, batches: int, num_workers: int) -> float:
    dataset = genome.train_dataset(num_samples=batch_size * (batches + 1), seed=0, rc_aug=True)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start-up and first file opens are not throughput
    start = time.perf_counter()
    count = sum(len(batch["start"]) for batch in iterator)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fasta", nargs="*", type=Path, default=[p for p in DEFAULTS if p.exists()])
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=100)
    args = parser.parse_args()
    for path in args.fasta:
        modes = [("cached plain text", True)] + ([("BGZF in place", False)] if path.suffix == ".gz" else [])
        for label, decompress in modes:
            genome = GenomeWindows(path, window=args.window, decompress_bgzf=decompress)
            for workers in (0, 2):
                rate = windows_per_second(genome, args.batch_size, args.batches, workers)
                print(f"{path.name:45s} {label:18s} workers={workers}  {rate:9.0f} windows/s  (L={args.window})")


if __name__ == "__main__":
    main()
