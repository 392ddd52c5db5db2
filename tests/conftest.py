"""Shared test fixtures: where the real data lives (defined once, here), the 1 Mb chr20 slice, a real motif matrix.

Tests that need ../shared/data skip with a reason when it is absent (set DNA_MDLM_SHARED_DATA to point elsewhere).
Tiny static fixtures live in tests/data/.
"""

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
FIXTURES = TESTS / "data"
SHARED_DATA = Path(os.environ.get("DNA_MDLM_SHARED_DATA") or ROOT.parent / "shared" / "data")
GENOMES = SHARED_DATA / "genomes"
SLICE = GENOMES / "human_GRCh37_chr20_40000001-41000000.fa"
SLICE_NAME = "20:40000001-41000000"
CHR20 = GENOMES / "human_GRCh37_chr20.fa.gz"
ECOLI = GENOMES / "ecoli_K12_MG1655.fa.gz"
GB_SEQUENCES = SHARED_DATA / "genomic_benchmarks" / "sequences"
GB_COORDINATES = SHARED_DATA / "genomic_benchmarks" / "coordinates"
VARIANTS = SHARED_DATA / "variants"
DEMO = ROOT / "dna_mdlm" / "resources" / "chr20_demo.fa.gz"

needs_genomes = pytest.mark.skipif(not SLICE.is_file(), reason=f"shared genome data not found at {GENOMES} "
                                                               f"(set DNA_MDLM_SHARED_DATA)")
needs_gb = pytest.mark.skipif(not GB_SEQUENCES.is_dir(), reason=f"shared Genomic Benchmarks data not found at "
                                                                f"{GB_SEQUENCES} (set DNA_MDLM_SHARED_DATA)")

# JASPAR MA0139.1 (CTCF), JASPAR CORE; counts as published (columns sum to 912-913 sites).
CTCF_JASPAR = (FIXTURES / "MA0139.1_CTCF.jaspar").read_text()


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
