"""Sample-quality metrics for generated DNA, each read against a real-vs-real baseline.

Owns the statistics behind `dna-mdlm evaluate-samples`: k-mer spectra (JS distance, Pearson r),
GC content, CpG observed/expected, dinucleotide frequencies, homopolymer runs, low complexity (DUST),
diversity, memorisation against a training genome (`evaluation.memorisation`), judge-model likelihood and
motif occurrence; the Altschul-Erickson `dinucleotide_shuffle`; drawing two disjoint real reference sets of
the samples' lengths from a genome or sequence file; and `evaluate_samples` / `evaluate_samples_files`.
k-mer encoding and counting live in `dna_mdlm.kmers`; files are read through `dna_mdlm.io`.

Every number is reported as {"generated": samples vs reference set A, "real_vs_real": reference set B vs
set A, "ratio": generated / real_vs_real where that is meaningful}: set B has the same size and lengths
as the samples, so the baseline carries the same sampling noise and says what "indistinguishable from
real DNA" looks like at this sample size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp, pearsonr

from ..errors import InputError
from ..io.fasta import encode_record, iter_fasta, read_sequences
from ..kmers import base_codes, joined_codes, kmer_codes, kmer_counts, kmer_labels
from ..tokenizer import decode_dna
from .memorisation import DEFAULT_COPY_FRACTION, DEFAULT_COPY_MIN_BP, DEFAULT_INDEX_K, TrainIndex, memorisation

SPECTRUM_KS = tuple(range(1, 7))
DUST_WINDOW = 64
DUST_STEP = 16
# sdust (Morgulis et al. 2006) masks a window when 10 * pairs / (triplets - 1) > T = 20; this is the
# same rule written on the unscaled score.
DUST_THRESHOLD = 2.0
_VALID_CHARS = re.compile(r"[^ACGTNacgtn]")
_HAS_BASE = re.compile(r"[ACGTacgt]")


# --- encoding -------------------------------------------------------------------------------------
def validate_sequences(seqs: Sequence[str], what: str, min_length: int = 1) -> list[str]:
    """Upper-case, check ACGTN only and a minimum length; InputError naming the record otherwise."""
    out = []
    if not seqs:
        raise InputError(f"{what}: no sequences (empty input)")
    for i, s in enumerate(seqs):
        bad = _VALID_CHARS.search(s)
        if bad:
            raise InputError(f"{what}: sequence {i + 1} has invalid character {bad.group()!r} at position "
                             f"{bad.start()} (expected A, C, G, T or N)")
        if len(s) < min_length:
            raise InputError(f"{what}: sequence {i + 1} is {len(s)} bp, shorter than the minimum {min_length} bp "
                             f"(k-mer spectra need k <= length)")
        out.append(s.upper())
    return out


def drop_baseless(seqs: Sequence[str], what: str) -> tuple[list[str], dict | None]:
    """(the sequences that hold at least one A/C/G/T, a note on those left out or None). A sequence of only N
    has no k-mers, composition or runs: it is left out of every metric, visibly (the note goes to the report
    and stderr); InputError when no sequence is left."""
    keep = [s for s in seqs if _HAS_BASE.search(s)]
    if not keep:
        raise InputError(f"{what}: all {len(seqs)} sequence(s) are entirely N (no A/C/G/T base to evaluate)")
    if len(keep) == len(seqs):
        return keep, None
    dropped = [i + 1 for i, s in enumerate(seqs) if not _HAS_BASE.search(s)]
    shown = ", ".join(map(str, dropped[:10])) + (", ..." if len(dropped) > 10 else "")
    return keep, {"count": len(dropped), "of": len(seqs), "sequences": dropped,
                  "note": f"{what}: {len(dropped)} of {len(seqs)} sequence(s) entirely N (no A/C/G/T; sequence "
                          f"{shown}) left out of every metric"}


def js_distance(counts_p: np.ndarray, counts_q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two count vectors."""
    if counts_p.sum() == 0 or counts_q.sum() == 0:
        return float("nan")
    return float(jensenshannon(counts_p, counts_q, base=2))


def _pearson(x, y) -> float | None:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None  # undefined: a constant vector has no correlation
    return float(pearsonr(x, y).statistic)


def _ratio(generated, baseline) -> float | None:
    if generated is None or baseline is None:
        return None
    if not (math.isfinite(generated) and math.isfinite(baseline)) or baseline == 0:
        return None
    return float(generated / baseline)


def _compare(generated, real_vs_real, ratio: bool = True) -> dict:
    out = {"generated": generated, "real_vs_real": real_vs_real}
    if ratio:
        out["ratio"] = _ratio(generated, real_vs_real)
    return out


# --- composition ----------------------------------------------------------------------------------
def gc_fraction(seq: str) -> float:
    """(G + C) / (A + C + G + T); N is ignored; NaN for a sequence without bases."""
    codes = base_codes(seq)
    n = int((codes >= 0).sum())
    return float(((codes == 1) | (codes == 2)).sum() / n) if n else float("nan")


def cpg_observed_expected(seqs: Sequence[str]) -> float:
    """Pooled CpG o/e = #CG * N / (#C * #G) (Gardiner-Garden & Frommer 1987), N = A/C/G/T count."""
    mono = kmer_counts(seqs, 1)
    di = kmer_counts(seqs, 2)
    c, g, n = mono[1], mono[2], mono.sum()
    return float(di[1 * 4 + 2] * n / (c * g)) if c and g else float("nan")


def dinucleotide_frequencies(seqs: Sequence[str]) -> dict[str, float]:
    di = kmer_counts(seqs, 2)
    return dict(zip(kmer_labels(2), (di / max(di.sum(), 1)).tolist()))


def homopolymer_runs(seqs: Sequence[str]) -> np.ndarray:
    """Lengths of all maximal runs of one base (N runs excluded)."""
    codes = joined_codes(seqs)
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(np.diff(codes) != 0) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [codes.size]]))
    return lengths[codes[starts] >= 0].astype(np.int64)


def dust_scores(seq: str, window: int = DUST_WINDOW, step: int = DUST_STEP) -> np.ndarray:
    """DUST score of windows: sum_t c_t (c_t - 1) / 2 / (l - 1) over the l triplets of the window.

    Windows with an N are skipped. A random window scores ~0.5; a poly-A window of 64 bp scores 31."""
    codes = base_codes(seq)
    if codes.size < window:
        window = codes.size
    if window < 4:
        return np.zeros(0)
    trip, valid = kmer_codes(codes, 3)
    n_trip = window - 2
    starts = np.arange(0, trip.size - n_trip + 1, step)
    if starts.size == 0:
        return np.zeros(0)
    win = np.lib.stride_tricks.sliding_window_view(trip.astype(np.int64), n_trip)[starts]
    ok = np.lib.stride_tricks.sliding_window_view(valid, n_trip)[starts].all(axis=1)
    win = win[ok]
    if win.size == 0:
        return np.zeros(0)
    flat = (win + 64 * np.arange(win.shape[0])[:, None]).ravel()
    c = np.bincount(flat, minlength=64 * win.shape[0]).reshape(win.shape[0], 64)
    return (c * (c - 1) / 2).sum(axis=1) / (n_trip - 1)


def low_complexity_fraction(seqs: Sequence[str], threshold: float = DUST_THRESHOLD) -> float:
    """Fraction of DUST windows (64 bp, step 16) scoring above the sdust threshold."""
    scores = np.concatenate([dust_scores(s) for s in seqs] or [np.zeros(0)])
    return float((scores > threshold).mean()) if scores.size else float("nan")


# --- diversity ------------------------------------------------------------------------------------
def unique_fraction(seqs: Sequence[str]) -> float:
    return len(set(seqs)) / len(seqs) if seqs else float("nan")


def mean_pairwise_identity(seqs: Sequence[str], rng: np.random.Generator, max_pairs: int = 2000) -> float:
    """Mean ungapped identity (matching positions / compared length, over the shorter length) of up to
    `max_pairs` random distinct pairs. Unrelated DNA gives ~0.25-0.3; near-copies give ~1."""
    n = len(seqs)
    if n < 2:
        return float("nan")
    total_pairs = n * (n - 1) // 2
    if total_pairs <= max_pairs:
        ii, jj = np.triu_indices(n, k=1)
    else:
        ii = rng.integers(0, n, size=max_pairs)
        jj = (ii + rng.integers(1, n, size=max_pairs)) % n
    codes = [base_codes(s) for s in seqs]
    ident = []
    for i, j in zip(ii.tolist(), jj.tolist()):
        m = min(codes[i].size, codes[j].size)
        if m:
            ident.append(float((codes[i][:m] == codes[j][:m]).mean()))
    return float(np.mean(ident)) if ident else float("nan")


# --- dinucleotide shuffle -------------------------------------------------------------------------
def dinucleotide_shuffle(seq: str, rng: np.random.Generator) -> str:
    """Altschul-Erickson (1985) shuffle: a uniformly random sequence with exactly the same
    dinucleotide counts (and first and last letters) as `seq`.

    Via a random Eulerian walk on the letter-transition multigraph: choose each letter's last exit at
    random such that the last exits form a tree into the final letter (Kandel et al. 1996), shuffle the
    other exits, and walk from the first letter."""
    if len(seq) < 3:
        return seq
    letters = sorted(set(seq))
    index = {c: i for i, c in enumerate(letters)}
    idx = [index[c] for c in seq]
    exits: list[list[int]] = [[] for _ in letters]
    for a, b in zip(idx[:-1], idx[1:]):
        exits[a].append(b)
    last = idx[-1]
    while True:
        last_exit = {}
        for v, out in enumerate(exits):
            if v != last and out:
                last_exit[v] = int(rng.integers(len(out)))
        if _last_exits_form_tree(last_exit, exits, last):
            break
    walk_order = []
    for v, out in enumerate(exits):
        if v in last_exit:
            keep = out[last_exit[v]]
            rest = out[: last_exit[v]] + out[last_exit[v] + 1:]
            walk_order.append([rest[i] for i in rng.permutation(len(rest))] + [keep])
        else:
            walk_order.append([out[i] for i in rng.permutation(len(out))])
    pointer = [0] * len(letters)
    cur = idx[0]
    result = [cur]
    for _ in range(len(idx) - 1):
        nxt = walk_order[cur][pointer[cur]]
        pointer[cur] += 1
        result.append(nxt)
        cur = nxt
    return "".join(letters[i] for i in result)


def _last_exits_form_tree(last_exit: dict, exits, last: int) -> bool:
    for start in last_exit:
        seen, v = set(), start
        while v != last:
            if v in seen:
                return False
            seen.add(v)
            v = exits[v][last_exit[v]]
    return True


# --- the whole evaluation -------------------------------------------------------------------------
def _composition(seqs: Sequence[str]) -> dict:
    gc = np.array([gc_fraction(s) for s in seqs])
    runs = homopolymer_runs(seqs)
    return {
        "gc": gc[np.isfinite(gc)],
        "cpg_oe": cpg_observed_expected(seqs),
        "dinucleotides": dinucleotide_frequencies(seqs),
        "runs": runs,
        "low_complexity": low_complexity_fraction(seqs),
    }


def evaluate_samples(samples: Sequence[str], reference_a: Sequence[str], reference_b: Sequence[str],
                     train_index: TrainIndex | None = None, judge: Callable | None = None, motifs=None,
                     seed: int = 0, copy_min_bp: int = DEFAULT_COPY_MIN_BP,
                     copy_fraction: float = DEFAULT_COPY_FRACTION, motif_threshold: float = 0.8) -> dict:
    """All sample-quality metrics; each is {"generated", "real_vs_real", "ratio"} (see module docstring).

    `judge(list_of_str) -> {"bits_per_base": ...}` scores samples and real sequence with the same model;
    `motifs` is a list of Bio.motifs motifs (see `motifs.load_motifs`). The key "plot_data" holds the
    arrays the report plots (not part of metrics.json)."""
    max_k = max(SPECTRUM_KS)
    samples = validate_sequences(samples, "samples", min_length=max_k)
    reference_a = validate_sequences(reference_a, "reference set A", min_length=max_k)
    reference_b = validate_sequences(reference_b, "reference set B", min_length=max_k)
    excluded = {}
    for name, seqs in (("samples", samples), ("reference set A", reference_a), ("reference set B", reference_b)):
        kept, note = drop_baseless(seqs, name)
        if note is not None:
            excluded[name] = note
        if name == "samples":
            samples = kept
        elif name == "reference set A":
            reference_a = kept
        else:
            reference_b = kept
    rng = np.random.default_rng(seed)
    result: dict = {"n_samples": len(samples), "n_reference": len(reference_a),
                    "sample_length_bp": {"min": min(map(len, samples)), "max": max(map(len, samples)),
                                         "mean": float(np.mean([len(s) for s in samples]))}}
    if excluded:
        result["excluded_sequences"] = excluded
    plot: dict = {}

    spectra = {}
    for k in SPECTRUM_KS:
        ca, cb, cg = kmer_counts(reference_a, k), kmer_counts(reference_b, k), kmer_counts(samples, k)
        spectra[str(k)] = {
            "js_distance": _compare(js_distance(cg, ca), js_distance(cb, ca)),
            "pearson_r": _compare(_pearson(cg, ca), _pearson(cb, ca)),
        }
        if k == max_k:
            plot["kmer"] = {"k": k, "reference_a": (ca / ca.sum()).tolist(), "reference_b": (cb / cb.sum()).tolist(),
                            "generated": (cg / max(cg.sum(), 1)).tolist()}
    result["kmer_spectrum"] = spectra

    comp_g, comp_a, comp_b = _composition(samples), _composition(reference_a), _composition(reference_b)
    result["gc_content"] = {
        "mean": {"generated": float(comp_g["gc"].mean()), "reference": float(comp_a["gc"].mean()),
                 "real_vs_real": float(comp_b["gc"].mean())},
        "sd": {"generated": float(comp_g["gc"].std(ddof=1)) if comp_g["gc"].size > 1 else 0.0,
               "reference": float(comp_a["gc"].std(ddof=1)) if comp_a["gc"].size > 1 else 0.0,
               "real_vs_real": float(comp_b["gc"].std(ddof=1)) if comp_b["gc"].size > 1 else 0.0},
        "ks_statistic": _compare(float(ks_2samp(comp_g["gc"], comp_a["gc"]).statistic),
                                 float(ks_2samp(comp_b["gc"], comp_a["gc"]).statistic)),
    }
    plot["gc"] = {"generated": comp_g["gc"].tolist(), "reference_a": comp_a["gc"].tolist(),
                  "reference_b": comp_b["gc"].tolist()}
    result["cpg_observed_expected"] = {"generated": comp_g["cpg_oe"], "reference": comp_a["cpg_oe"],
                                       "real_vs_real": comp_b["cpg_oe"],
                                       "ratio": _ratio(comp_g["cpg_oe"], comp_a["cpg_oe"])}
    di_g, di_a, di_b = (np.array(list(c["dinucleotides"].values())) for c in (comp_g, comp_a, comp_b))
    result["dinucleotides"] = {
        "frequencies": {"generated": comp_g["dinucleotides"], "reference": comp_a["dinucleotides"],
                        "real_vs_real": comp_b["dinucleotides"]},
        "max_abs_difference": _compare(float(np.abs(di_g - di_a).max()), float(np.abs(di_b - di_a).max())),
    }
    result["homopolymers"] = {
        "mean_run_bp": _compare(float(comp_g["runs"].mean()), float(comp_b["runs"].mean())),
        "reference_mean_run_bp": float(comp_a["runs"].mean()),
        "max_run_bp": _compare(int(comp_g["runs"].max()), int(comp_b["runs"].max())),
        "fraction_runs_ge_8": _compare(float((comp_g["runs"] >= 8).mean()), float((comp_b["runs"] >= 8).mean())),
    }
    result["low_complexity_fraction"] = _compare(comp_g["low_complexity"], comp_b["low_complexity"])
    result["low_complexity_fraction"]["rule"] = f"DUST window {DUST_WINDOW} bp step {DUST_STEP}, score > {DUST_THRESHOLD}"

    result["diversity"] = {
        "unique_fraction": _compare(unique_fraction(samples), unique_fraction(reference_b)),
        "mean_pairwise_identity": _compare(mean_pairwise_identity(samples, rng),
                                           mean_pairwise_identity(reference_b, rng)),
    }

    if train_index is not None:
        mem_g = memorisation(samples, train_index, copy_min_bp, copy_fraction)
        mem_b = memorisation(reference_b, train_index, copy_min_bp, copy_fraction)
        result["memorisation"] = {
            "index_k": train_index.k, "copy_rule": f">= {copy_min_bp} bp or >= {copy_fraction:g} x length",
            "fraction_copied": _compare(mem_g["fraction_copied"], mem_b["fraction_copied"], ratio=False),
            "n_copied": _compare(mem_g["n_copied"], mem_b["n_copied"], ratio=False),
            "max_match_bp": _compare(mem_g["max_match_bp"], mem_b["max_match_bp"], ratio=False),
            "mean_match_bp": _compare(mem_g["mean_match_bp"], mem_b["mean_match_bp"]),
            "longest_match_bp_per_sample": mem_g["longest_match_bp"],
        }
        plot["match_lengths"] = {"generated": mem_g["longest_match_bp"], "reference_b": mem_b["longest_match_bp"],
                                 "k": train_index.k}

    if judge is not None:
        bpb = {name: float(judge(list(seqs))["bits_per_base"])
               for name, seqs in (("generated", samples), ("reference", reference_a), ("real_vs_real", reference_b))}
        bpb["ratio"] = _ratio(bpb["generated"], bpb["reference"])
        result["judge_bits_per_base"] = bpb

    if motifs:
        from .motifs import count_occurrences, motif_name  # Biopython: loaded only when motifs are scanned

        names = [motif_name(m) for m in motifs]
        per_kb = {}
        for name, seqs in (("generated", samples), ("reference", reference_a), ("real_vs_real", reference_b)):
            counts = count_occurrences(seqs, motifs, rel_threshold=motif_threshold)
            per_kb[name] = (counts.sum(axis=0) / (sum(map(len, seqs)) / 1000.0)).tolist()
            if name == "generated":
                result_hits = counts.sum(axis=1)
        result["motifs"] = {
            "names": names, "relative_threshold": motif_threshold,
            "occurrences_per_kb": per_kb,
            "mean_hits_per_sample": float(result_hits.mean()),
            "correlation_with_reference": _compare(_pearson(per_kb["generated"], per_kb["reference"]),
                                                   _pearson(per_kb["real_vs_real"], per_kb["reference"]),
                                                   ratio=False),
        }
        plot["motifs"] = {"names": names, **per_kb}

    result["plot_data"] = plot
    return result


# --- files ----------------------------------------------------------------------------------------
def draw_reference_sets(reference: Sequence[str], lengths: Sequence[int], seed: int = 0,
                        max_tries_per_window: int = 200) -> tuple[list[str], list[str]]:
    """Two disjoint sets of real windows (set A, set B), each with exactly the given lengths.

    Windows never contain N, never overlap each other, and never span two records; the draw is a
    deterministic function of `seed`. InputError when the reference cannot hold them."""
    rng = np.random.default_rng(seed)
    joined = "N".join(s.upper() for s in reference)
    codes = base_codes(joined)
    bad = np.concatenate([[0], np.cumsum(codes < 0)])
    used = np.zeros(codes.size, dtype=bool)
    sets: list[list[str]] = [[], []]
    for length in lengths:
        for target in sets:
            if length > codes.size:
                raise InputError(f"--reference too small: {codes.size} bp cannot hold a {length} bp window")
            for _ in range(max_tries_per_window):
                s = int(rng.integers(0, codes.size - length + 1))
                if bad[s + length] - bad[s] == 0 and not used[s: s + length].any():
                    used[s: s + length] = True
                    target.append(joined[s: s + length])
                    break
            else:
                raise InputError(
                    f"--reference too small to draw two disjoint sets of {len(lengths)} windows "
                    f"(could not place a {length} bp N-free window after {max_tries_per_window} tries); "
                    f"use fewer or shorter samples or a larger reference")
    return sets[0], sets[1]


def read_samples(path, unknown: str = "error", min_length: int = max(SPECTRUM_KS)) -> list[str]:
    """Generated sequences from a FASTA (`io.fasta` rules), each at least `min_length` bp (the longest k-mer
    spectrum needs it); errors name `--samples`, the file and the record's line."""
    out = []
    for rec in iter_fasta(path, "--samples"):
        ids = encode_record(rec, path, unknown, "--samples")
        if len(ids) < min_length:
            raise InputError(f"--samples {path}:{rec.line}: record {rec.name!r} is {len(ids)} bp, shorter than the "
                             f"minimum {min_length} bp (k-mer spectra need k <= length)")
        out.append(decode_dna(ids) if unknown == "N" else rec.sequence.upper())
    return out


REFERENCE_MODES = ("auto", "genome", "set")


def reference_sets(reference: Sequence[str], samples: Sequence[str], mode: str = "auto", seed: int = 0,
                   reference2: Sequence[str] | None = None) -> tuple[list[str], list[str], list[str], dict]:
    """(samples, set A, set B, info): what the samples are compared with, and the real-vs-real floor.

    * `genome`: two disjoint sets of N-free windows with exactly the samples' lengths are drawn from the reference
      (long records: a genome or a region of one).
    * `set`: the reference records are real sequences of the samples' kind (promoters, enhancers, ...) used as they
      are; set B is `reference2`, else the reference is split in two halves at random (seeded). The samples and both
      sets are subsampled (seeded) to the same count, because k-mer and diversity statistics depend on it.
    * `auto`: `set` when the reference records are about as long as the samples (median within 0.5x-2x), else
      `genome`.
    `info` states the mode and the counts compared."""
    if mode not in REFERENCE_MODES:
        raise InputError(f"--reference-mode {mode}: expected one of {', '.join(REFERENCE_MODES)}")
    if mode == "auto":
        ratio = float(np.median([len(r) for r in reference])) / float(np.median([len(s) for s in samples]))
        mode = "set" if 0.5 <= ratio <= 2.0 and len(reference) >= 2 else "genome"
    if mode == "genome":
        if reference2 is not None:
            raise InputError("--reference2 is for --reference-mode set (two sets of real sequences)")
        set_a, set_b = draw_reference_sets(reference, [len(s) for s in samples], seed=seed)
        return list(samples), set_a, set_b, {"mode": "genome", "n_compared": len(samples),
                                             "note": "windows of the samples' lengths drawn from the reference"}
    rng = np.random.default_rng(seed)
    if reference2 is None:
        if len(reference) < 2:
            raise InputError("--reference: a reference set needs at least 2 sequences to split into set A and B")
        order = rng.permutation(len(reference))
        half = len(reference) // 2
        set_a, set_b = [reference[i] for i in order[:half]], [reference[i] for i in order[half:]]
        source = "a random half of --reference"
    else:
        set_a, set_b = list(reference), list(reference2)
        source = "--reference2"
    sizes = {"--samples": len(samples), "set A (--reference)": len(set_a), f"set B ({source})": len(set_b)}
    n = min(sizes.values())
    smallest = min(sizes, key=sizes.get)
    if n < 2:
        raise InputError(f"{smallest}: {n} sequence; the set comparison subsamples the samples and both reference "
                         f"sets to one count and needs at least 2 in each (sizes: "
                         f"{', '.join(f'{k} {v}' for k, v in sizes.items())})")
    pick = lambda seqs: [seqs[i] for i in sorted(rng.choice(len(seqs), n, replace=False))]  # noqa: E731
    info = {"mode": "set", "n_compared": n, "n_samples": len(samples), "n_reference": len(reference),
            "note": f"set A = --reference records, set B (the real-vs-real floor) = {source}; samples and both sets "
                    f"subsampled to {n} each (seed {seed})"}
    if n < len(samples):
        info["warning"] = (f"only {n} of {len(samples)} samples compared: {smallest} has {n} sequences and every "
                           f"set is subsampled to that count (give more real sequences to compare all samples)")
    return pick(list(samples)), pick(set_a), pick(set_b), info


def notices(result: dict) -> list[str]:
    """What the reader of a report must know about what was compared: sequences left out (all N) and samples not
    compared because a reference set was smaller (shown in report.html and printed by the CLI)."""
    out = [note["note"] for note in result.get("excluded_sequences", {}).values()]
    if result.get("reference", {}).get("warning"):
        out.append(result["reference"]["warning"])
    return out


def evaluate_samples_files(samples_fa, reference_fa, out_dir, region: str | None = None, train_fa=None,
                           judge: Callable | None = None, motifs_path=None, seed: int = 0,
                           index_k: int = DEFAULT_INDEX_K, copy_min_bp: int = DEFAULT_COPY_MIN_BP,
                           copy_fraction: float = DEFAULT_COPY_FRACTION, motif_threshold: float = 0.8,
                           unknown: str = "error", reference_mode: str = "auto", reference2_fa=None,
                           jaspar_taxon: str | None = "vertebrates", oracle=None) -> dict:
    """Read samples / reference(s) / train / motif inputs, validate everything before computing, run
    `evaluate_samples` and write the report directory (metrics.json, PNGs, report.html) atomically.

    Motifs: `motifs_path` (a JASPAR/PFM/MEME file) if given, else the JASPAR CORE motifs of `jaspar_taxon`
    (None: no motif scan). `oracle`: an `Oracle` (a fine-tuned classifier) whose class calls on the samples and on
    the real sets are reported."""
    from .report import write_report  # matplotlib: loaded only when a report is written

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a directory (expected a report directory)")
    if not 8 <= index_k <= 32:
        raise InputError(f"--index-k {index_k}: expected 8..32")
    if copy_min_bp < 1:
        raise InputError(f"--copy-min-bp {copy_min_bp}: expected a positive number of bases")
    if not 0 < copy_fraction <= 1:
        raise InputError(f"--copy-fraction {copy_fraction}: expected a fraction in (0, 1]")
    if not 0 <= motif_threshold <= 1:
        raise InputError(f"--motif-threshold {motif_threshold}: expected a relative score in [0, 1]")
    if reference_mode not in REFERENCE_MODES:
        raise InputError(f"--reference-mode {reference_mode}: expected one of {', '.join(REFERENCE_MODES)}")
    samples = read_samples(samples_fa, unknown)
    motifs, motif_source = None, None
    if motifs_path is not None:
        from .motifs import load_motifs  # Biopython: loaded only when motifs are scanned

        motifs, motif_source = load_motifs(motifs_path), str(motifs_path)
    elif jaspar_taxon is not None:
        from .motifs import load_jaspar  # Biopython + the JASPAR database: only when motifs are scanned

        motifs, release = load_jaspar(jaspar_taxon)
        motif_source = f"{release} CORE {jaspar_taxon} ({len(motifs)} motifs, pyjaspar)"
    reference = read_sequences(reference_fa, "--reference", region=region, unknown=unknown)
    reference2 = None if reference2_fa is None else read_sequences(reference2_fa, "--reference2", unknown=unknown)
    # All-N sequences are left out before the sets are matched in size, so the counts compared stay equal.
    excluded = {}
    samples, excluded["samples"] = drop_baseless(samples, "--samples")
    reference, excluded["reference"] = drop_baseless(reference, "--reference")
    if reference2 is not None:
        reference2, excluded["reference2"] = drop_baseless(reference2, "--reference2")
    samples, reference_a, reference_b, ref_info = reference_sets(reference, samples, reference_mode, seed, reference2)
    train_index = None
    if train_fa is not None:
        train_index = TrainIndex.from_fasta(train_fa, k=index_k, unknown=unknown)
    result = evaluate_samples(samples, reference_a, reference_b, train_index=train_index, judge=judge,
                              motifs=motifs, seed=seed, copy_min_bp=copy_min_bp, copy_fraction=copy_fraction,
                              motif_threshold=motif_threshold)
    result["reference"] = ref_info
    excluded = {k: v for k, v in excluded.items() if v is not None}
    if excluded:
        result["excluded_sequences"] = excluded
    if motif_source:
        result.setdefault("motifs", {})["source"] = motif_source
    if oracle is not None:
        result["oracle"] = oracle.report(samples, reference_a, reference_b)
    result["inputs"] = {"samples": str(samples_fa), "reference": str(reference_fa), "region": region,
                        "reference2": None if reference2_fa is None else str(reference2_fa),
                        "train": None if train_fa is None else str(train_fa), "motifs": motif_source, "seed": seed}
    write_report(result, out_dir)
    return result
