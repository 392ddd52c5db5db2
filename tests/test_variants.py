"""Tests for variant effect scoring (dna_mdlm.evaluation.variants, dna_mdlm.io.variants, `dna-mdlm score-variants`).

Models are tiny (d_model 16, 2 layers) and random-init: every property tested here is structural (symmetries,
bookkeeping, errors), and the embeddings are re-drawn with std 1 so that the predictions are far from uniform
and the scores far from zero.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import vcfpy

import dna_mdlm
from dna_mdlm.baselines.markov import MarkovLM
from dna_mdlm.cli import add_score_variants_arguments, main
from dna_mdlm.diffusion.mdlm import MDLM
from dna_mdlm.evaluation import variants as ev
from dna_mdlm.evaluation.variants import score_variants
from dna_mdlm.io.variants import Variant, iter_variants
from dna_mdlm.models import CaduceusForMaskedLM
from dna_mdlm.models.configuration_caduceus import CaduceusConfig
from dna_mdlm.tokenizer import A_ID, MASK_ID, T_ID, encode_dna, rc_string

REPO = Path(__file__).resolve().parents[1]
W = 33  # odd: the window is symmetric around the site, so the reverse-complement context is the same window
L = 240
COMP = {"A": "T", "C": "G", "G": "C", "T": "A"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def seq() -> str:
    return "".join(np.random.default_rng(7).choice(list("ACGT"), L))


def _caduceus(tmp_path_factory, name, seed, **cfg):
    torch.manual_seed(seed)
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=2, **cfg))
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)  # far-from-uniform predictions
    model.config.train_window = W
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ps_dir(tmp_path_factory):
    return _caduceus(tmp_path_factory, "ps", 0, rcps=True)


@pytest.fixture(scope="module")
def ph_dir(tmp_path_factory):
    return _caduceus(tmp_path_factory, "ph", 1, rcps=False)


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory):
    return _caduceus(tmp_path_factory, "ar", 2, rcps=False, bidirectional=False, objective="ar")


@pytest.fixture(scope="module")
def markov_dir(tmp_path_factory, seq):
    path = tmp_path_factory.mktemp("markov")
    MarkovLM.fit([seq + rc_string(seq)], k=3).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(ps_dir, ph_dir, ar_dir, markov_dir):
    return {"ps": ps_dir, "ph": ph_dir, "ar": ar_dir, "markov": markov_dir}


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    path.write_text("".join(f">{k}\n" + "\n".join(v[i:i + 60] for i in range(0, len(v), 60)) + "\n"
                            for k, v in records.items()))
    return path


@pytest.fixture
def fasta(tmp_path, seq):
    return write_fasta(tmp_path / "ref.fa", {"chr1": seq, "chr1rc": rc_string(seq)})


def other(base: str, k: int = 1) -> str:
    return "ACGT"[("ACGT".index(base) + k) % 4]


def write_vcf(path: Path, rows: list[str], info_header: str = "") -> Path:
    head = "##fileformat=VCFv4.2\n" + info_header + "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    path.write_text(head + "".join(r + "\n" for r in rows))
    return path


def write_tsv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("Chrom\tPos\tRef\tAlt\tEffect\n" + "".join("\t".join(map(str, r)) + "\t0.5\n" for r in rows))
    return path


def run_cli(*args) -> int:
    return main(["score-variants", *map(str, args), "--no-progress"])


def read_tsv(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, ln.split("\t"))) for ln in lines[1:]]


def llrs(summary) -> np.ndarray:
    return np.array([r["llr"] for r in summary["rows"]], dtype=float)


# --- symmetries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ps", "ph", "ar", "markov"])
def test_alt_to_ref_negates_llr(models, tmp_path, seq, kind):
    sites = [40, 41, 120, 200]
    fwd, back = [], []
    mutated = list(seq)
    for p in sites:
        b = seq[p - 1]
        fwd.append(("chr1", p, b, other(b)))
        mutated[p - 1] = other(b)
    # Each variant alone in its own genome copy, so that the other sites do not change its context.
    for p, (_, _, b, a) in zip(sites, fwd):
        alt_genome = seq[:p - 1] + a + seq[p:]
        fa = write_fasta(tmp_path / f"alt{p}.fa", {"chr1": alt_genome})
        back.append(score_variants(models[kind], fa, [("chr1", p, a, b)], window=W, scores="llr")["rows"][0]["llr"])
    ref_fa = write_fasta(tmp_path / "ref.fa", {"chr1": seq})
    forward = llrs(score_variants(models[kind], ref_fa, fwd, window=W, scores="llr"))
    assert np.abs(forward).min() > 1e-3  # not trivially zero
    np.testing.assert_allclose(np.array(back), -forward, rtol=1e-5, atol=1e-6)


def test_alt_to_ref_negates_elbo_with_common_random_numbers(ps_dir, tmp_path, seq):
    p, b = 100, seq[99]
    a = other(b)
    ref_fa = write_fasta(tmp_path / "ref.fa", {"chr1": seq})
    alt_fa = write_fasta(tmp_path / "alt.fa", {"chr1": seq[:p - 1] + a + seq[p:]})
    one = score_variants(ps_dir, ref_fa, [("chr1", p, b, a)], window=W, scores="elbo", samples=4)["rows"][0]
    two = score_variants(ps_dir, alt_fa, [("chr1", p, a, b)], window=W, scores="elbo", samples=4)["rows"][0]
    assert abs(one["elbo"]) > 1e-3
    assert two["elbo"] == pytest.approx(-one["elbo"], rel=1e-5, abs=1e-6)
    assert two["elbo_se"] == pytest.approx(one["elbo_se"], rel=1e-5)


@pytest.mark.parametrize("kind", ["ps", "ph", "ar", "markov"])
def test_reverse_complement_context_scores_the_same(models, fasta, seq, kind):
    """A variant on chr1 and the same variant on the reverse-complement contig chr1rc give the same llr:
    exactly by construction for PS (RC-equivariant), by strand averaging for the others."""
    variants, mirrored = [], []
    for p in (30, 31, 90, 150, 151):
        b, a = seq[p - 1], other(seq[p - 1], 2)
        variants.append(("chr1", p, b, a))
        mirrored.append(("chr1rc", L - p + 1, COMP[b], COMP[a]))
    got = llrs(score_variants(models[kind], fasta, variants + mirrored, window=W, scores="llr"))
    assert np.abs(got).min() > 1e-3
    np.testing.assert_allclose(got[5:], got[:5], rtol=1e-4, atol=1e-5)


def test_ps_one_pass_equals_explicit_two_strand_average(ps_dir, seq, tmp_path):
    """The PS model's single pass already equals its own reverse-complement pass at the mirrored position."""
    model = CaduceusForMaskedLM.from_pretrained(str(ps_dir)).eval()
    x = torch.from_numpy(encode_dna(seq[:W]))[None].clone()
    h = W // 2
    x[0, h] = MASK_ID
    with torch.no_grad():
        fwd = model(x).logits[0, h, A_ID:T_ID + 1].log_softmax(-1)
        rc = model(torch.from_numpy(encode_dna(rc_string(seq[:W])))[None].masked_fill(
            torch.arange(W)[None] == W - 1 - h, MASK_ID)).logits[0, W - 1 - h, A_ID:T_ID + 1].log_softmax(-1).flip(-1)
    torch.testing.assert_close(fwd, rc, rtol=1e-4, atol=1e-5)
    b, a = seq[h], other(seq[h])
    expected = float(fwd["ACGT".index(a)] - fwd["ACGT".index(b)])
    got = score_variants(model, write_fasta(tmp_path / "g.fa", {"c": seq}), [("c", h + 1, b, a)], window=W,
                         scores="llr")["rows"][0]["llr"]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_markov_llr_is_the_window_likelihood_difference(markov_dir, fasta, seq):
    model = MarkovLM.from_pretrained(markov_dir)
    p = 100
    b, a = seq[p - 1], other(seq[p - 1])
    start = p - 1 - W // 2
    ref_w = seq[start:start + W]
    alt_w = ref_w[:W // 2] + a + ref_w[W // 2 + 1:]

    def ll(s):
        return 0.5 * (np.nansum(model.log_probs(encode_dna(s))) + np.nansum(model.log_probs(encode_dna(rc_string(s)))))

    got = score_variants(markov_dir, fasta, [("chr1", p, b, a)], window=W)["rows"][0]["llr"]
    assert got == pytest.approx(ll(alt_w) - ll(ref_w), rel=1e-9)


# --- inputs: VCF vs TSV, compression, multi-allelic, order ---------------------------------------------------


def _same_variants_both_ways(tmp_path, seq):
    vcf_rows, tsv_rows = [], []
    for i, p in enumerate((50, 80, 120)):
        b = seq[p - 1]
        vcf_rows.append(f"chr1\t{p}\tv{i}\t{b}\t{other(b)},{other(b, 2)}\t.\tPASS\t.")
        tsv_rows += [("1", p, b, other(b)), ("1", p, b, other(b, 2))]
    p = 150  # a 2-bp deletion: VCF with the anchor base, TSV with '-'
    vcf_rows.append(f"chr1\t{p}\tdel\t{seq[p - 1:p + 2]}\t{seq[p - 1]}\t.\tPASS\t.")
    tsv_rows.append(("1", p + 1, seq[p:p + 2], "-"))
    return write_vcf(tmp_path / "v.vcf", vcf_rows), write_tsv(tmp_path / "v.tsv", tsv_rows)


def test_vcf_and_tsv_give_the_same_scores(ps_dir, fasta, tmp_path, seq):
    vcf, tsv = _same_variants_both_ways(tmp_path, seq)
    kw = dict(window=W, scores="llr,elbo,embedding_distance", samples=3, batch_size=5)
    a = score_variants(ps_dir, fasta, vcf, **kw)["rows"]
    b = score_variants(ps_dir, fasta, tsv, **kw)["rows"]
    assert len(a) == len(b) == 7
    for ra, rb in zip(a, b):
        for key in ("llr", "elbo", "elbo_se", "embedding_distance"):
            if rb[key] is None:
                assert ra[key] is None
            else:
                assert ra[key] == pytest.approx(rb[key], rel=1e-6)
    assert a[-1]["llr"] is None and a[-1]["elbo"] is not None  # the deletion: llr NA, elbo scores it


def test_bom_crlf_and_csv_inputs_score_like_clean_tsv_and_vcf(ps_dir, fasta, tmp_path, seq):
    """Every verb reads a byte-order mark, CRLF and CSV (io.text / io.tables): same rows, same scores."""
    vcf, tsv = _same_variants_both_ways(tmp_path, seq)
    kw = dict(window=W, scores="llr,elbo", samples=2)
    want = score_variants(ps_dir, fasta, tsv, **kw)["rows"]
    bom = b"\xef\xbb\xbf"
    variants = {
        "bom.vcf": bom + vcf.read_bytes(),
        "bom_crlf.vcf": bom + vcf.read_bytes().replace(b"\n", b"\r\n"),
        "bom.tsv": bom + tsv.read_bytes(),
        # a CSV (the multi-allelic ALT quoted), and one whose delimiter must be sniffed (.txt), with a BOM
        "v.csv": tsv.read_text().replace("\t", ",").encode(),
        "bom.txt": bom + tsv.read_text().replace("\t", ",").encode(),
    }
    for name, data in variants.items():
        path = tmp_path / name
        path.write_bytes(data)
        got = score_variants(ps_dir, fasta, path, **kw)["rows"]
        assert len(got) == len(want) == 7, name
        for ra, rb in zip(got, want):
            for key in ("llr", "elbo", "elbo_se"):
                assert (ra[key] is None) == (rb[key] is None), name
                if rb[key] is not None:
                    assert ra[key] == pytest.approx(rb[key], rel=1e-9), name


def test_gzip_and_bgzip_vcf_read_like_plain(ps_dir, fasta, tmp_path, seq):
    from Bio import bgzf

    vcf, _ = _same_variants_both_ways(tmp_path, seq)
    plain = score_variants(ps_dir, fasta, vcf, window=W, scores="llr")["rows"]
    gz = tmp_path / "v.vcf.gz"
    gz.write_bytes(gzip.compress(vcf.read_bytes()))
    bgz = tmp_path / "b.vcf.gz"
    with bgzf.BgzfWriter(str(bgz), "wb") as fh:
        fh.write(vcf.read_bytes())
    for path in (gz, bgz):
        out = tmp_path / (path.name + ".tsv")
        assert run_cli("--model", ps_dir, "--fasta", fasta, "--vcf", path, "--scores", "llr", "--window", W, "--out", out) == 0
        got = read_tsv(out)
        assert [float(r["llr"]) if r["llr"] != "NA" else None for r in got] == \
            [pytest.approx(r["llr"], rel=1e-5) if r["llr"] is not None else None for r in plain]


def test_multiallelic_records_split_in_order_and_vcf_output(ps_dir, fasta, tmp_path, seq):
    b = seq[59]
    info = ('##INFO=<ID=AF,Number=A,Type=Float,Description="allele frequency">\n'
            '##INFO=<ID=DP,Number=1,Type=Integer,Description="depth">\n')
    vcf = write_vcf(tmp_path / "m.vcf", [
        f"chr1\t100\tlate\t{seq[99]}\t{other(seq[99])}\t50\tPASS\tDP=3",
        f"chr1\t60\tmulti\t{b}\t{other(b)},{other(b, 2)},{other(b, 3)}\t.\tPASS\tAF=0.1,0.2,0.3;DP=9",
    ], info)
    out = tmp_path / "out.vcf"
    assert run_cli("--model", ps_dir, "--fasta", fasta, "--vcf", vcf, "--scores", "llr", "--out", out) == 0
    records = list(vcfpy.Reader.from_path(str(out)))
    assert [(r.POS, r.ALT[0].value) for r in records] == \
        [(100, other(seq[99])), (60, other(b)), (60, other(b, 2)), (60, other(b, 3))]
    assert [r.INFO.get("AF") for r in records] == [None, [0.1], [0.2], [0.3]]
    assert all(r.INFO["DM_STATUS"] == "ok" and "DM_LLR" in r.INFO for r in records)
    tsv_rows = score_variants(ps_dir, fasta, vcf, window=W, scores="llr")["rows"]
    assert [r.INFO["DM_LLR"] for r in records] == \
        [pytest.approx(r["llr"], rel=1e-5) for r in tsv_rows]


def test_input_order_kept_across_chunks_and_batches(ps_dir, fasta, seq, monkeypatch):
    rng = np.random.default_rng(3)
    positions = rng.permutation(np.arange(20, 220))[:40]
    variants = [("chr1", int(p), seq[p - 1], other(seq[p - 1], int(rng.integers(1, 4)))) for p in positions]
    whole = score_variants(ps_dir, fasta, variants, window=W, samples=2, batch_size=64)["rows"]
    monkeypatch.setattr(ev, "CHUNK_ALLELES", 7)
    chunked = score_variants(ps_dir, fasta, variants, window=W, samples=2, batch_size=3)["rows"]
    assert [(r["pos"], r["alt"]) for r in chunked] == [(p, a) for _, p, _, a in variants]
    for x, y in zip(whole, chunked):
        assert x["llr"] == pytest.approx(y["llr"], rel=1e-5, abs=1e-6)
        assert x["elbo"] == pytest.approx(y["elbo"], rel=1e-5, abs=1e-6)  # randomness is per site, not per batch


def test_seed_controls_elbo(ps_dir, fasta, seq):
    v = [("chr1", 70, seq[69], other(seq[69]))]
    a = score_variants(ps_dir, fasta, v, window=W, scores="elbo", samples=4, seed=1)["rows"][0]["elbo"]
    b = score_variants(ps_dir, fasta, v, window=W, scores="elbo", samples=4, seed=1)["rows"][0]["elbo"]
    c = score_variants(ps_dir, fasta, v, window=W, scores="elbo", samples=4, seed=2)["rows"][0]["elbo"]
    assert a == b and a != c


def _exact_nelbo(model, ids: np.ndarray, eps: float) -> float:
    """The MDLM NELBO of a short window by enumerating every mask set and integrating t over [eps, 1]
    (log-linear schedule: mask rate t, weight 1/t; times uniform on [eps, 1] as the estimator draws them)."""
    from itertools import product

    from scipy.integrate import quad

    W = len(ids)
    masks = [np.array(m, dtype=bool) for m in product([False, True], repeat=W) if any(m)]
    z = torch.from_numpy(np.stack([np.where(m, MASK_ID, ids) for m in masks]))
    with torch.no_grad():
        logp = MDLM(model).denoise(z).double().numpy()
    total = 0.0
    for m, lp in zip(masks, logp):
        g = -sum(lp[i, ids[i]] for i in np.flatnonzero(m))
        k = int(m.sum())
        c = quad(lambda t, k=k: t ** (k - 1) * (1 - t) ** (W - k), eps, 1.0)[0] / (1 - eps)
        total += g * c
    return total


@pytest.mark.parametrize("variant", ["snv", "deletion", "insertion"])
def test_elbo_estimator_is_unbiased_against_exact_enumeration(ps_dir, tmp_path, seq, variant):
    """The ELBO estimator (common random numbers, unpaired bases' masks integrated out) is within 4 standard
    errors of the exact NELBO difference, computed by enumerating all 2^7 masks of a 7-bp window, and its
    standard error at K=3000 is small (a drawn-mask deletion estimator gave 0.56 here, 46x more)."""
    model = CaduceusForMaskedLM.from_pretrained(str(ps_dir)).eval()
    w, p = 7, 20
    fa = write_fasta(tmp_path / "g.fa", {"c": seq[:40]})
    ref_w = encode_dna(seq[p - 1 - w // 2:p - 1 - w // 2 + w])
    if variant == "snv":
        v = ("c", p, seq[p - 1], other(seq[p - 1]))
        alt_w = ref_w.copy()
        alt_w[w // 2] = encode_dna(v[3])[0]
    elif variant == "deletion":
        v = ("c", p, seq[p - 1], "-")
        alt_w = encode_dna(seq[p - 1 - w // 2:p - 1] + seq[p:p + w // 2 + 1])
    else:  # one base inserted before the base at p
        v = ("c", p, "-", "G")
        alt_w = encode_dna(seq[p - 1 - w // 2:p - 1] + "G" + seq[p - 1:p - 1 + w // 2])
    eps = MDLM(model).sampling_eps
    exact = _exact_nelbo(model, ref_w, eps) - _exact_nelbo(model, alt_w, eps)
    row = score_variants(model, fa, [v], window=w, scores="elbo", samples=3000, batch_size=1024)["rows"][0]
    assert abs(exact) > 0.01
    assert abs(row["elbo"] - exact) < 4 * row["elbo_se"], (row, exact)
    assert row["elbo_se"] < 0.05


def test_every_spelling_of_an_indel_in_a_repeat_scores_the_same(ps_dir, markov_dir, tmp_path, seq):
    """Left-alignment: deleting any one A of a run, or inserting one anywhere in it, is one allele."""
    g = seq[:100] + "GAAAAC" + seq[100:200]  # the run is at 1-based 102-105, the G at 101
    fa = write_fasta(tmp_path / "run.fa", {"c": g})
    dels = [("c", 101, "GA", "G"), ("c", 103, "A", "-"), ("c", 105, "A", "-"), ("c", 104, "AAC", "AC")]
    ins = [("c", 101, "G", "GA"), ("c", 102, "-", "A"), ("c", 106, "-", "A"), ("c", 105, "A", "AA")]
    for model, scores in ((ps_dir, "elbo"), (markov_dir, "llr")):
        for group in (dels, ins):
            got = [r[scores] for r in score_variants(model, fa, group, window=W, scores=scores, samples=2)["rows"]]
            assert got == pytest.approx([got[0]] * len(got), rel=1e-6), (model, group, got)


def test_deletion_keeps_the_random_numbers_of_shifted_bases(seq, fasta):
    ref = ev._Reference(fasta)
    allele = ev._Allele(0, "chr1", 99, seq[99:101], "")
    site = ev._group_sites([allele])[0]
    ev._build_windows([site], ref, W)
    h = W // 2
    assert site.n_ext == 2
    np.testing.assert_array_equal(allele.alt_src, np.r_[np.arange(h), np.arange(h + 2, W + 2)])
    assert "".join("ACGTN"[i - A_ID] for i in allele.alt_ids) == seq[99 - h:99] + seq[101:101 + W - h]


def test_indels_near_a_contig_end_score_like_indels_in_the_middle(ps_dir, seq, tmp_path):
    """Under a uniform Markov LM every window of W real bases has the same likelihood, so an indel's llr is exactly
    0 in the middle; near the right end the windows must stay W real bases too (a padded pulled-in base used to
    add log 4 = 1.386 nats). The MDLM's windows there are all real bases as well (padded_bases 0)."""
    uniform = tmp_path / "uniform"
    MarkovLM.fit(["".join(p) for p in itertools.product("ACGT", repeat=2)], k=2).save_pretrained(uniform)
    fa = write_fasta(tmp_path / "ref.fa", {"chr1": seq})
    rows = []
    for p in (100, L - 8, L - 3):  # middle, near the end, 3 bp from the end
        b, nxt = seq[p - 1], seq[p]
        rows += [("chr1", p, b + nxt, b), ("chr1", p, b, b + other(nxt)), ("chr1", p, b, b + other(nxt) * 2)]
    tsv = write_tsv(tmp_path / "indels.tsv", rows)
    got = score_variants(uniform, fa, tsv, window=W)["rows"]
    assert len(got) == 9
    for r in got:
        assert r["llr"] == pytest.approx(0.0, abs=1e-9), r
        assert r["padded_bases"] == 0, r
    mdlm = score_variants(ps_dir, fa, tsv, window=W, scores="elbo", samples=2)["rows"]
    assert [r["padded_bases"] for r in mdlm] == [0] * 9
    assert all(np.isfinite(r["elbo"]) for r in mdlm)


def test_padding_near_contig_ends_is_counted(ps_dir, fasta, seq, tmp_path, capsys):
    tsv = write_tsv(tmp_path / "p.tsv", [("chr1", 3, seq[2], other(seq[2])), ("chr1", L, seq[-1], other(seq[-1])),
                                         ("chr1", 100, seq[99], other(seq[99]))])
    out = tmp_path / "p.tsv.out"
    assert run_cli("--model", ps_dir, "--fasta", fasta, "--variants", tsv, "--out", out) == 0
    rows = read_tsv(out)
    assert [int(r["padded_bases"]) for r in rows] == [W // 2 - 2, W // 2, 0]
    err = capsys.readouterr().err
    summary = json.loads(next(ln for ln in err.splitlines() if ln.startswith("{")))
    assert summary["padded"] == 2 and summary["scored"] == 3 and "padded with N" in err


def test_unscorable_alleles_get_a_row_and_a_status(ps_dir, fasta, seq, tmp_path):
    b = seq[99]
    vcf = write_vcf(tmp_path / "u.vcf", [
        f"chr1\t100\tsym\t{b}\t<DEL>\t.\tPASS\t.",
        f"chr1\t100\tstar\t{b}\t*,{other(b)}\t.\tPASS\t.",
        f"chr1\t100\tnoalt\t{b}\t.\t.\tPASS\t.",
        f"chr1\t100\tn\t{b}\tN\t.\tPASS\t.",
    ])
    s = score_variants(ps_dir, fasta, vcf, window=W, scores="llr,elbo", samples=2)
    assert [r["status"] for r in s["rows"]] == ["unsupported_allele", "unsupported_allele", "ok", "no_alt",
                                                "unsupported_allele"]
    assert all(r["llr"] is None and r["elbo"] is None for r in s["rows"] if r["status"] != "ok")
    assert s["skipped"] == {"ref_mismatch": 0, "unsupported_allele": 3, "no_alt": 1, "alt_equals_ref": 0}
    assert s["alleles"] == 5 and s["records"] == 4 and s["scored"] == 1


def test_tsv_deletion_written_as_vcf_gets_an_anchor_base(markov_dir, fasta, seq, tmp_path):
    tsv = write_tsv(tmp_path / "d.tsv", [("chr1", 101, seq[100], "-"), ("chr1", 101, "-", "GG")])
    out = tmp_path / "d.vcf"
    assert run_cli("--model", markov_dir, "--fasta", fasta, "--variants", tsv, "--out", out) == 0
    recs = list(vcfpy.Reader.from_path(str(out)))
    assert [(r.POS, r.REF, r.ALT[0].value) for r in recs] == [(100, seq[99:101], seq[99]), (100, seq[99], seq[99] + "GG")]


def test_markov_model_cli_run_and_lazy_export(markov_dir, fasta, seq, tmp_path, capsys):
    assert dna_mdlm.score_variants is score_variants
    tsv = write_tsv(tmp_path / "m.tsv", [("chr1", p, seq[p - 1], other(seq[p - 1])) for p in (40, 90, 91)])
    out = tmp_path / "markov.tsv"
    assert run_cli("--model", markov_dir, "--fasta", fasta, "--variants", tsv, "--window", 21, "--out", out) == 0
    rows = read_tsv(out)
    assert [r["status"] for r in rows] == ["ok"] * 3 and list(rows[0]) == \
        ["chrom", "pos", "id", "ref", "alt", "llr", "padded_bases", "status"]
    assert all(np.isfinite(float(r["llr"])) and float(r["llr"]) != 0 for r in rows)
    assert "3 of 3 alleles scored" in capsys.readouterr().err


# --- bad input -------------------------------------------------------------------------------------


def _bad_cases(seq):
    b = seq[99]
    ok = f"chr1\t100\tok\t{b}\t{other(b)}\t.\tPASS\t."
    return {
        "ref_mismatch": (["--vcf", [ok, f"chr1\t101\tbad\t{other(seq[100])}\tA\t.\tPASS\t."]], "v.vcf:4: REF"),
        "unknown_contig": (["--vcf", [ok, "chrZ\t10\t.\tA\tC\t.\tPASS\t."]], "v.vcf:4: contig 'chrZ' is not in the FASTA"),
        "past_end": (["--vcf", [f"chr1\t{L + 5}\t.\tA\tC\t.\tPASS\t."]], "v.vcf:3: position 245 is past the end"),
        "columns": (["--vcf", [ok, "chr1\t100\t.\tA"]], "v.vcf:4: malformed VCF record"),
        "pos_not_int": (["--vcf", [ok, ok, f"chr1\tx100\t.\t{b}\tC\t.\tPASS\t."]], "v.vcf:5: malformed VCF record"),
        "blank_line": (["--vcf", [ok, "", ok]], "v.vcf:4: blank line"),
        "bad_ref": (["--vcf", ["chr1\t100\t.\tX\tC\t.\tPASS\t."]], "v.vcf:3: REF 'X'"),
        "tsv_header": (["--variants", "Chrom\tPosition\tRef\n1\t100\tA\n"], "v.tsv:1: the header has no alt column"),
        "tsv_pos": (["--variants", f"chrom\tpos\tref\talt\n1\t100\t{b}\tC\n1\t1e3\tA\tC\n"], "v.tsv:3: pos '1e3'"),
        "tsv_allele": (["--variants", f"chrom\tpos\tref\talt\n1\t100\t{b}\tZ\n"], "v.tsv:2: allele 'Z'"),
        "tsv_short": (["--variants", "chrom\tpos\tref\talt\n1\t100\n"], "v.tsv:2: 2 fields but the header has 4"),
    }


@pytest.mark.parametrize("case", list(_bad_cases("A" * L)))
def test_bad_input_is_one_line_naming_the_line_exit_2_nothing_written(ps_dir, fasta, seq, tmp_path, capsys, case):
    (flag, content), message = _bad_cases(seq)[case]
    if flag == "--vcf":
        path = write_vcf(tmp_path / "v.vcf", content)
    else:
        path = tmp_path / "v.tsv"
        path.write_text(content)
    out = tmp_path / "out" / "scores.tsv"
    assert run_cli("--model", ps_dir, "--fasta", fasta, flag, path, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dna-mdlm score-variants: error:") and "\n" not in err
    assert message in err, err
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])


def test_iupac_code_in_the_reference_follows_the_unknown_policy(ps_dir, seq, tmp_path, capsys):
    """--unknown error (default): an R in a window (10 bases from the SNV) is a one-line error naming file/record/position, nothing
    written; --unknown N: read as N, the same scores as a FASTA with an N there."""
    b = seq[99]
    vcf = write_vcf(tmp_path / "v.vcf", [f"chr1\t100\tv\t{b}\t{other(b)}\t.\tPASS\t."])
    with_r = write_fasta(tmp_path / "r.fa", {"chr1": seq[:89] + "R" + seq[90:]})
    with_n = write_fasta(tmp_path / "n.fa", {"chr1": seq[:89] + "N" + seq[90:]})
    out = tmp_path / "out.tsv"
    assert run_cli("--model", ps_dir, "--fasta", with_r, "--vcf", vcf, "--window", W, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "r.fa" in err and "chr1" in err and "--unknown N" in err, err
    assert not out.exists()
    assert run_cli("--model", ps_dir, "--fasta", with_r, "--vcf", vcf, "--window", W, "--scores", "llr,elbo",
                   "--unknown", "N", "--out", out) == 0
    want = score_variants(ps_dir, with_n, vcf, window=W, scores="llr,elbo")["rows"][0]
    got = read_tsv(out)[0]
    assert float(got["llr"]) == pytest.approx(want["llr"], rel=1e-5)
    assert float(got["elbo"]) == pytest.approx(want["elbo"], rel=1e-5)


def test_skip_mismatched_turns_the_error_into_a_counted_warning(ps_dir, fasta, seq, tmp_path, capsys):
    b = seq[99]
    vcf = write_vcf(tmp_path / "v.vcf", [f"chr1\t100\tok\t{b}\t{other(b)}\t.\tPASS\t.",
                                         f"chr1\t101\tbad\t{other(seq[100])}\tA\t.\tPASS\t."])
    out = tmp_path / "s.tsv"
    assert run_cli("--model", ps_dir, "--fasta", fasta, "--vcf", vcf, "--skip-mismatched", "--out", out) == 0
    rows = read_tsv(out)
    assert [r["status"] for r in rows] == ["ok", "ref_mismatch"] and rows[1]["llr"] == "NA"
    err = capsys.readouterr().err
    assert "warning: " in err and "v.vcf:4: REF" in err and "1 allele(s) with a REF that does not match" in err
    summary = json.loads(next(ln for ln in err.splitlines() if ln.startswith("{")))
    assert summary["skipped"]["ref_mismatch"] == 1 and summary["scored"] == 1


@pytest.mark.parametrize("model, extra, message", [
    ("markov", ["--scores", "elbo"], "--scores elbo: not available for a markov model"),
    ("ar", ["--scores", "llr,elbo"], "--scores elbo: not available for an ar model"),
    ("ps", ["--scores", "llr,foo"], "--scores foo: unknown score"),
    ("ps", ["--mc-samples", "1"], "--mc-samples 1: the ELBO needs at least 2"),
    ("ps", ["--window", "1"], "--window 1"),
    ("ps", ["--batch-size", "0"], "--batch-size 0"),
])
def test_bad_arguments(models, fasta, seq, tmp_path, capsys, model, extra, message):
    tsv = write_tsv(tmp_path / "a.tsv", [("chr1", 100, seq[99], other(seq[99]))])
    out = tmp_path / "a.out"
    assert run_cli("--model", models[model], "--fasta", fasta, "--variants", tsv, "--out", out, *extra) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_a_classifier_is_refused(tmp_path, fasta, seq, capsys):
    from dna_mdlm.models import CaduceusForSequenceClassification

    CaduceusForSequenceClassification(CaduceusConfig(d_model=16, n_layer=1, num_labels=2)).save_pretrained(tmp_path / "cls")
    tsv = write_tsv(tmp_path / "a.tsv", [("chr1", 100, seq[99], other(seq[99]))])
    assert run_cli("--model", tmp_path / "cls", "--fasta", fasta, "--variants", tsv, "--out", tmp_path / "o.tsv") == 2
    assert "a fine-tuned classifier is not a language model; score-variants needs" in capsys.readouterr().err


def test_vcf_reader_line_numbers_and_alleles(tmp_path):
    vcf = write_vcf(tmp_path / "r.vcf", ["1\t5\ta;b\tAC\tA,ACC,<INS>\t.\tPASS\t.", "1\t9\t.\tG\tT\t.\tPASS\t."])
    got = list(iter_variants(vcf))
    assert [(v.line, v.record, v.allele, v.alt, v.id, v.problem) for v in got] == [
        (3, 0, 0, "A", "a;b", None), (3, 0, 1, "ACC", "a;b", None), (3, 0, 2, "<INS>", "a;b", "unsupported_allele"),
        (4, 1, 0, "T", ".", None)]
    assert [v.trimmed() for v in got[:2]] == [(5, "C", ""), (5, "", "C")]  # 0-based: delete base 5, insert before it
    assert Variant("1", 10, "ACGT", "AGGT").trimmed() == (10, "C", "G")


# --- the help examples run -------------------------------------------------------------------------


def test_help_examples_run_on_the_bundled_demo_files(ps_dir, markov_dir, tmp_path, monkeypatch):
    """Every --help example, with tiny models standing in for runs/demo/model (`make demo`) and runs/markov/model;
    the TSV and the VCF of the demo variants give the same scores."""
    parser = argparse.ArgumentParser()
    add_score_variants_arguments(parser)
    examples = [ln.split("#")[0].strip() for ln in parser.epilog.splitlines() if ln.strip().startswith("dna-mdlm")]
    assert len(examples) == 3
    monkeypatch.chdir(REPO)
    outputs = []
    for i, example in enumerate(examples):
        args = shlex.split(example)[1:]
        model = args[args.index("--model") + 1]
        args[args.index("--model") + 1] = str(markov_dir if "markov" in model else ps_dir)
        out = tmp_path / f"{i}_{Path(args[args.index('--out') + 1]).name}"
        args[args.index("--out") + 1] = str(out)
        assert main(args + ["--no-progress"]) == 0, example
        outputs.append(out)
    rows = read_tsv(outputs[0])
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert len(list(vcfpy.Reader.from_path(str(outputs[1])))) == 6
    vcf_markov = score_variants(markov_dir, REPO / "dna_mdlm" / "resources" / "chr20_demo.fa.gz", REPO / "dna_mdlm" / "resources" / "demo_variants.vcf",
                                window=512)["rows"]
    assert [float(r["llr"]) for r in read_tsv(outputs[2])] == [pytest.approx(r["llr"], rel=1e-5) for r in vcf_markov]
