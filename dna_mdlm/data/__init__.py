"""Data: genome windows from FASTA/BED (`genome`), labelled benchmark sequences (`benchmarks`) and the Lightning
DataModules that feed training (`datamodules`).

`GenomeDataModule` is imported lazily so that reading genome windows never pulls in Lightning.
"""

from ..io.fasta import FastaFile
from ..io.regions import read_bed
from .genome import (
    EpochSampler,
    GenomeWindows,
    Interval,
    RandomWindows,
    TiledWindows,
    parse_region,
)

__all__ = [
    "EpochSampler",
    "GenomeDataModule",
    "GenomeWindows",
    "Interval",
    "RandomWindows",
    "ResumableDataLoader",
    "TiledWindows",
    "FastaFile",
    "parse_region",
    "read_bed",
]


def __getattr__(name):
    if name in ("GenomeDataModule", "ResumableDataLoader"):
        from . import datamodules

        return getattr(datamodules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
