"""The sample-quality report directory: metrics.json, PNG plots and one report.html with a verdict table.

Owns the verdict rules (each stated next to its verdict, so a reader can disagree with a rule without
re-deriving it), the matplotlib plots (Agg backend, no display needed) and the HTML page. The whole
directory is written to a temporary sibling and renamed into place, so a failed run leaves no
half-written report.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402

from ..io.writers import atomic_path, dumps_json  # noqa: E402
from .sample_quality import notices  # noqa: E402

JS_TOLERANCE = 1.5  # generated 6-mer JS distance may be at most this multiple of real-vs-real


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        return f"{x:.4g}"
    return str(x)


def _finite(*xs) -> bool:
    return all(x is not None and isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def verdicts(result: dict) -> list[dict]:
    """Rows of (metric, generated, real_vs_real, ratio, verdict, rule) for the metrics present."""
    rows = []

    def add(metric, gen, rr, ratio, ok, rule):
        verdict = "n/a" if ok is None else ("pass" if ok else "warn")
        rows.append({"metric": metric, "generated": gen, "real_vs_real": rr, "ratio": ratio,
                     "verdict": verdict, "rule": rule})

    for k, spec in result.get("kmer_spectrum", {}).items():
        js = spec["js_distance"]
        ok = js["generated"] <= JS_TOLERANCE * js["real_vs_real"] if _finite(js["generated"], js["real_vs_real"]) else None
        add(f"{k}-mer JS distance", js["generated"], js["real_vs_real"], js["ratio"], ok,
            f"generated <= {JS_TOLERANCE} x real-vs-real")
    gc = result.get("gc_content")
    if gc:
        ks = gc["ks_statistic"]
        ok = ks["generated"] <= max(JS_TOLERANCE * ks["real_vs_real"], 0.05) if _finite(ks["generated"], ks["real_vs_real"]) else None
        add("GC content KS statistic", ks["generated"], ks["real_vs_real"], ks["ratio"], ok,
            f"generated <= max({JS_TOLERANCE} x real-vs-real, 0.05)")
        add("GC content mean", gc["mean"]["generated"], gc["mean"]["real_vs_real"], None, None,
            f"reference set A mean {_fmt(gc['mean']['reference'])} (informational)")
    cpg = result.get("cpg_observed_expected")
    if cpg:
        ok = 0.8 <= cpg["ratio"] <= 1.25 if _finite(cpg["ratio"]) else None
        add("CpG observed/expected", cpg["generated"], cpg["real_vs_real"], cpg["ratio"], ok,
            "generated / reference within [0.8, 1.25]")
    di = result.get("dinucleotides")
    if di:
        d = di["max_abs_difference"]
        ok = d["generated"] <= max(2 * d["real_vs_real"], 0.005) if _finite(d["generated"], d["real_vs_real"]) else None
        add("dinucleotide max |freq difference|", d["generated"], d["real_vs_real"], d["ratio"], ok,
            "generated <= max(2 x real-vs-real, 0.005)")
    hp = result.get("homopolymers")
    if hp:
        f = hp["fraction_runs_ge_8"]
        ok = f["generated"] <= 2 * f["real_vs_real"] + 1e-3 if _finite(f["generated"], f["real_vs_real"]) else None
        add("homopolymer runs >= 8 bp (fraction of runs)", f["generated"], f["real_vs_real"], f["ratio"], ok,
            "generated <= 2 x real-vs-real + 0.001")
    lc = result.get("low_complexity_fraction")
    if lc:
        ok = lc["generated"] <= 2 * lc["real_vs_real"] + 0.01 if _finite(lc["generated"], lc["real_vs_real"]) else None
        add("low-complexity window fraction (DUST)", lc["generated"], lc["real_vs_real"], lc["ratio"], ok,
            "generated <= 2 x real-vs-real + 0.01")
    div = result.get("diversity")
    if div:
        u = div["unique_fraction"]
        add("unique sample fraction", u["generated"], u["real_vs_real"], u["ratio"],
            u["generated"] >= u["real_vs_real"] - 0.01, "generated >= real-vs-real - 0.01")
        pid = div["mean_pairwise_identity"]
        ok = pid["generated"] <= pid["real_vs_real"] + 0.05 if _finite(pid["generated"], pid["real_vs_real"]) else None
        add("mean pairwise identity", pid["generated"], pid["real_vs_real"], pid["ratio"], ok,
            "generated <= real-vs-real + 0.05")
    mem = result.get("memorisation")
    if mem:
        fc = mem["fraction_copied"]
        add("memorised samples (fraction)", fc["generated"], fc["real_vs_real"], None, fc["generated"] == 0,
            f"no sample copies training sequence ({mem['copy_rule']})")
        mm = mem["max_match_bp"]
        add("longest training match (bp)", mm["generated"], mm["real_vs_real"], None, None,
            f"informational; 0 means shorter than k={mem['index_k']}")
    judge = result.get("judge_bits_per_base")
    if judge:
        ok = judge["ratio"] <= 1.1 if _finite(judge["ratio"]) else None
        add("judge bits/base", judge["generated"], judge["real_vs_real"], judge["ratio"], ok,
            f"generated / real (set A: {_fmt(judge['reference'])}) <= 1.1")
    motif = result.get("motifs")
    if motif:
        c = motif["correlation_with_reference"]
        ok = c["generated"] >= c["real_vs_real"] - 0.1 if _finite(c["generated"], c["real_vs_real"]) else None
        add("motif frequency correlation (Pearson)", c["generated"], c["real_vs_real"], None, ok,
            "generated >= real-vs-real - 0.1 (needs >= 2 motifs)")
    oracle = result.get("oracle")
    if oracle and oracle.get("target_class") is not None:
        gen, ref = oracle["generated"]["target_rate"], oracle["reference"]["target_rate"]
        rr = oracle["reference_b"]["target_rate"]
        add(f"oracle rate of class {oracle['target_class']}", gen, rr, gen / ref if ref else None,
            gen >= ref - 0.05 if _finite(gen, ref) else None,
            f"generated >= real set A's rate ({_fmt(ref)}) - 0.05")
    return rows


# --- plots ----------------------------------------------------------------------------------------
def _kmer_scatter(data: dict, path: Path) -> None:
    ref = np.asarray(data["reference_a"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True, sharey=True)
    for ax, key, title in ((axes[0], "generated", "generated vs reference A"),
                           (axes[1], "reference_b", "real-vs-real: reference B vs A")):
        other = np.asarray(data[key])
        ax.scatter(ref, other, s=3, alpha=0.4, color="tab:blue" if key == "generated" else "tab:gray")
        hi = max(ref.max(), other.max()) * 1.05 or 1.0
        ax.plot([0, hi], [0, hi], color="k", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel(f"reference A {data['k']}-mer frequency")
    axes[0].set_ylabel(f"{data['k']}-mer frequency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gc_hist(data: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    for key, color in (("reference_a", "tab:gray"), ("reference_b", "tab:green"), ("generated", "tab:blue")):
        ax.hist(data[key], bins=bins, histtype="step", lw=1.5, density=True, color=color, label=key.replace("_", " "))
    ax.set_xlabel("GC fraction per sequence")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _match_hist(data: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    top = max(max(data["generated"] + [0]), max(data["reference_b"] + [0]), data["k"]) + 1
    bins = np.arange(0, top + 2)
    if top > 200:
        bins = np.linspace(0, top + 1, 80)
    ax.hist([data["generated"], data["reference_b"]], bins=bins, label=["generated", "reference B"],
            color=["tab:blue", "tab:gray"])
    ax.set_xlabel(f"longest exact match with training sequence (bp; 0 = shorter than k={data['k']})")
    ax.set_ylabel("sequences")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _motif_scatter(data: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ref = np.asarray(data["reference"])
    ax.scatter(ref, data["generated"], label="generated", color="tab:blue")
    ax.scatter(ref, data["real_vs_real"], label="reference B", color="tab:gray", marker="x")
    hi = max(ref.max(initial=0), max(data["generated"] + [0]), max(data["real_vs_real"] + [0])) * 1.1 or 1.0
    ax.plot([0, hi], [0, hi], color="k", lw=0.8)
    if len(data["names"]) <= 20:
        for x, y, name in zip(ref, data["generated"], data["names"]):
            ax.annotate(name, (x, y), fontsize=7)
    ax.set_xlabel("reference A motif hits per kb")
    ax.set_ylabel("hits per kb")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _html(result: dict, rows: list[dict], plots: dict[str, str]) -> str:
    def cell(x):
        return f"<td>{html.escape(_fmt(x))}</td>"

    table = "\n".join(
        f"<tr class='{r['verdict']}'><td>{html.escape(r['metric'])}</td>{cell(r['generated'])}{cell(r['real_vs_real'])}"
        f"{cell(r['ratio'])}<td><b>{r['verdict']}</b></td><td>{html.escape(r['rule'])}</td></tr>"
        for r in rows)
    figures = "\n".join(f"<figure><img src='{html.escape(fname)}' alt='{html.escape(title)}'>"
                        f"<figcaption>{html.escape(title)}</figcaption></figure>" for title, fname in plots.items())
    n_warn = sum(r["verdict"] == "warn" for r in rows)
    inputs = html.escape(json.dumps(result.get("inputs", {})))
    notes = "".join(f'<p class="notice"><b>Note:</b> {html.escape(n)}</p>' for n in notices(result))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dna-mdlm sample-quality report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}tr.pass td:nth-child(5){{color:#070}}tr.warn td:nth-child(5){{color:#b00}}
figure{{display:inline-block;margin:1em}}img{{max-width:520px}}</style></head><body>
<h1>Sample-quality report</h1>
<p>{result.get('n_samples')} generated sequences against two disjoint sets of real sequence (reference A and B;
{html.escape(result.get('reference', {}).get('note', ''))}). "real-vs-real" is reference B scored against reference A:
it is what the metric looks like for real DNA at this sample size. {len(rows)} checks, {n_warn} warnings.</p>
{notes}
<p>Inputs: <code>{inputs}</code></p>
<table><tr><th>metric</th><th>generated</th><th>real-vs-real</th><th>ratio</th><th>verdict</th><th>rule</th></tr>
{table}
</table>
<h2>Plots</h2>
{figures}
<p>All numbers are in <a href="metrics.json">metrics.json</a>.</p>
</body></html>
"""


def write_report(result: dict, out_dir) -> Path:
    """Write metrics.json, the PNG plots and report.html into `out_dir` (replaced atomically)."""
    out_dir = Path(out_dir)
    rows = verdicts(result)
    plot_data = result.get("plot_data", {})
    metrics = {k: v for k, v in result.items() if k != "plot_data"}
    metrics["verdicts"] = rows
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        plots = {}
        for key, fname, title, draw in (
            ("kmer", "kmer_scatter.png", "6-mer frequencies: generated and real-vs-real", _kmer_scatter),
            ("gc", "gc_histogram.png", "GC content per sequence", _gc_hist),
            ("match_lengths", "match_lengths.png", "Longest exact match with training sequence", _match_hist),
            ("motifs", "motif_scatter.png", "Motif occurrences per kb", _motif_scatter),
        ):
            if key in plot_data:
                draw(plot_data[key], tmp / fname)
                plots[title] = fname
        metrics["plots"] = plots
        # NaN / inf are not JSON: an undefined metric is written as null.
        (tmp / "metrics.json").write_text(dumps_json(metrics, indent=2) + "\n")
        (tmp / "report.html").write_text(_html(result, rows, plots))
    return out_dir
