"""Shared test fixtures: where the real data lives, the 1 Mb chr20 slice as a string, a real motif matrix."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("DNA_MDLM_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SLICE = SHARED_DATA / "genomes" / "human_GRCh37_chr20_40000001-41000000.fa"

# JASPAR MA0139.1 (CTCF), JASPAR CORE; counts as published (columns sum to 912-913 sites).
CTCF_JASPAR = """>MA0139.1\tCTCF
A  [ 87 167 281  56   8 744  40 107 851   5 333  54  12  56 104 372  82 117 402 ]
C  [291 145  49 800 903  13 528 433  11   0   3  12   0   8 733  13 482 322 181 ]
G  [ 76 414 449  21   0  65 334  48  32 903 566 504 890 775   5 507 307  73 266 ]
T  [459 187 134  36   2  91  11 324  18   3   9 341   8  71  67  17  37 396  59 ]
"""


@pytest.fixture(scope="session")
def chr20() -> str:
    """The real 1 Mb GRCh37 chr20 slice (20:40,000,001-41,000,000) as one upper-case string."""
    if not SLICE.is_file():
        pytest.skip(f"shared data not found at {SLICE} (set DNA_MDLM_SHARED_DATA)")
    from Bio import SeqIO

    return str(SeqIO.read(SLICE, "fasta").seq)


@pytest.fixture(scope="session")
def ctcf_jaspar() -> str:
    return CTCF_JASPAR


def write_fasta(path: Path, seqs: list[str]) -> Path:
    path.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    return path
