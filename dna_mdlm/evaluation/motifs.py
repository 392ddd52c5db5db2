"""Transcription-factor motifs and motif scanning for the sample-quality report.

Owns the JASPAR database through pyjaspar (the CORE collection of one taxon, offline: pyjaspar ships the JASPAR
releases; Castro-Mondragon et al., "JASPAR 2022", NAR 50:D165), reading JASPAR (`jaspar` with `>ID NAME` headers,
or a bare 4-row `pfm`) and MEME (minimal or full MEME output) files with Biopython's `Bio.motifs`, turning each
motif into a log-odds PSSM against a
uniform background, and counting occurrences on both strands above a *relative* score threshold
(score >= min + rel * (max - min), the convention of JASPAR / TFBSTools; 0.8 by default).

Pseudocounts follow Wasserman & Sandelin (2004): sqrt(N) / 4 per base, N = sites in the column, so a
zero count never gives an infinite penalty and sparse matrices are smoothed more than deep ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from Bio import motifs as bio_motifs
from Bio.Seq import Seq

from ..errors import InputError

UNIFORM_BACKGROUND = {"A": 0.25, "C": 0.25, "G": 0.25, "T": 0.25}
JASPAR_TAXA = ("vertebrates", "insects", "plants", "fungi", "nematodes", "urochordates", "trematodes", "cnidaria",
               "diatoms", "oomycota", "protozoa", "chlorophyta")


def load_jaspar(taxon: str = "vertebrates", release: str | None = None) -> tuple[list, str]:
    """(motifs, release name): the JASPAR CORE motifs of one taxonomic group from pyjaspar's bundled database
    (no network). `release` defaults to pyjaspar's newest (e.g. JASPAR2026)."""
    if taxon not in JASPAR_TAXA:
        raise InputError(f"--jaspar-taxon {taxon}: expected one of {', '.join(JASPAR_TAXA)}")
    from pyjaspar import jaspardb  # imported only when motifs are asked for: it opens a 100+ MB database

    db = jaspardb(release=release) if release else jaspardb()
    found = db.fetch_motifs(collection="CORE", tax_group=[taxon])
    dna = [m for m in found if _is_dna_motif(m)]
    if not dna:
        raise InputError(f"--jaspar-taxon {taxon}: no CORE motifs in {db.release}")
    return dna, db.release


def _detect_format(text: str) -> list[str]:
    head = text.lstrip()[:2000]
    if head.startswith("MEME version"):
        return ["minimal"]
    if "MEME - Motif discovery tool" in head or head.startswith("*****"):
        return ["meme"]
    if head.startswith(">"):
        return ["jaspar"]
    return ["pfm-four-rows", "pfm-four-columns", "pfm"]


def load_motifs(path) -> list:
    """Parse a JASPAR / PFM / MEME motif file into a list of `Bio.motifs.Motif` (DNA, non-empty)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read motif file ({exc.__class__.__name__})") from None
    if not text.strip():
        raise InputError(f"{path}: motif file is empty (expected JASPAR, PFM or MEME format)")
    last_error = None
    for fmt in _detect_format(text):
        try:
            with open(path) as handle:
                parsed = list(bio_motifs.parse(handle, fmt))
        except Exception as exc:  # Biopython raises ValueError, KeyError, IndexError on malformed files
            last_error = exc
            continue
        if parsed and all(_is_dna_motif(m) for m in parsed):
            return parsed
        last_error = ValueError("no DNA motif with A, C, G, T rows found")
    reason = str(last_error).splitlines()[0] if last_error and str(last_error) else type(last_error).__name__
    raise InputError(f"{path}: not a parseable JASPAR, PFM or MEME motif file ({reason})")


def _is_dna_motif(motif) -> bool:
    try:
        return set("ACGT") <= set(motif.counts.keys()) and motif.length > 0
    except AttributeError:
        return False


def motif_name(motif) -> str:
    matrix_id = getattr(motif, "matrix_id", None) or ""
    name = getattr(motif, "name", None) or getattr(motif, "id", None) or ""
    label = f"{matrix_id} {name}".strip()
    return label or "motif"


def motif_pssm(motif):
    """Log-odds PSSM vs a uniform background with sqrt(N)/4 pseudocounts per base."""
    column_sites = sum(float(motif.counts[b][0]) for b in "ACGT")
    motif.background = UNIFORM_BACKGROUND
    motif.pseudocounts = max(math.sqrt(max(column_sites, 1.0)) / 4.0, 1e-3)
    return motif.pssm


def count_occurrences(sequences: Sequence[str], motifs: Sequence, rel_threshold: float = 0.8) -> np.ndarray:
    """(n_sequences, n_motifs) hit counts, both strands, score >= min + rel * (max - min).

    Sequences are scanned in one pass per motif, joined by N runs as long as the motif: windows that
    touch an N score NaN in Biopython and never count, so no hit spans two sequences."""
    if not 0.0 <= rel_threshold <= 1.0:
        raise InputError(f"relative motif threshold must be in [0, 1], got {rel_threshold}")
    counts = np.zeros((len(sequences), len(motifs)), dtype=np.int64)
    if not sequences:
        return counts
    for j, motif in enumerate(motifs):
        pssm = motif_pssm(motif)
        width = motif.length
        sep = "N" * width
        joined = sep.join(s.upper() for s in sequences)
        starts = np.cumsum([0] + [len(s) + width for s in sequences[:-1]])
        threshold = pssm.min + rel_threshold * (pssm.max - pssm.min)
        for strand in (pssm, pssm.reverse_complement()):
            scores = np.asarray(strand.calculate(Seq(joined)), dtype=np.float64).reshape(-1)
            hit_pos = np.flatnonzero(scores >= threshold - 1e-6)
            which = np.searchsorted(starts, hit_pos, side="right") - 1
            counts[:, j] += np.bincount(which, minlength=len(sequences))
    return counts
