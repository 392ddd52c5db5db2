"""Reproduce the bundled demo excerpt `chr20_demo.fa.gz` from the shared GRCh37 chr20 file.

Usage: python dna_mdlm/resources/make_chr20_demo.py [SOURCE] [OUT_DIR]
SOURCE defaults to ../shared/data/genomes/human_GRCh37_chr20.fa.gz (BGZF, record `20`); it is only read.
The excerpt is 1-based 20:32,000,001-34,500,000 (0-based [32000000, 34500000)), written as BGZF with
Biopython's BgzfWriter in 60-column lines (readers index it in their cache; nothing is shipped beside it).
"""

import sys
from pathlib import Path

import pyfaidx
from Bio import bgzf

START_1BASED, END_1BASED = 32_000_001, 34_500_000
LINE = 60

here = Path(__file__).resolve().parent
repo = here.parents[1]
source = Path(sys.argv[1]) if len(sys.argv) > 1 else repo.parent / "shared/data/genomes/human_GRCh37_chr20.fa.gz"
out_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else here
out = out_dir / "chr20_demo.fa.gz"

# The shared folder is read-only: read through the BGZF index that ships beside the file, never write there.
fasta = pyfaidx.Fasta(str(source), as_raw=True, build_index=False, rebuild=False)
seq = fasta["20"][START_1BASED - 1:END_1BASED]
assert len(seq) == END_1BASED - START_1BASED + 1 and "N" not in seq.upper()
out.unlink(missing_ok=True)
with bgzf.BgzfWriter(str(out), "wb") as handle:
    handle.write(f">20:{START_1BASED}-{END_1BASED} GRCh37 chr20 excerpt (1-based, inclusive)\n".encode())
    for i in range(0, len(seq), LINE):
        handle.write((seq[i:i + LINE] + "\n").encode())
print(out, len(seq), "bp")
