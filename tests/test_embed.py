"""Embeddings: the `embed` API (mean and per-base, batch-invariant) and the streaming `dna-mdlm embed` npz writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dna_mdlm.cli import main
from dna_mdlm.embedding import embed, embed_fasta
from dna_mdlm.errors import InputError
from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM
from dna_mdlm.tokenizer import rc_string


@pytest.fixture(scope="module")
def ps_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("emb") / "ps"
    torch.manual_seed(0)
    CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=2, rcps=True)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def seqs():
    rng = np.random.default_rng(0)
    return ["".join(rng.choice(list("ACGTN"), n, p=[0.24, 0.25, 0.25, 0.24, 0.02])) for n in (33, 8, 70, 21, 50)]


def test_embed_api_shapes_and_batch_invariance(ps_dir, seqs):
    means = embed(ps_dir, seqs, pool="mean", batch_size=2)
    per_base = embed(str(ps_dir), seqs, pool="none", batch_size=5)
    assert means.shape == (5, 16) and means.dtype == np.float32  # PS: the two strands combined, d_model wide
    assert [a.shape for a in per_base] == [(len(s), 32) for s in seqs]  # per base: both strand halves
    alone = np.stack([embed(ps_dir, [s])[0] for s in seqs])
    np.testing.assert_allclose(means, alone, atol=1e-5)
    # the RC-invariant mean is the mean over bases of the two halves, the second read in its own direction
    halves = np.stack([(a[:, :16] + a[:, 16:][:, ::-1]).mean(0) / 2 for a in per_base])
    np.testing.assert_allclose(means, halves, atol=1e-5)
    np.testing.assert_allclose(means, embed(ps_dir, [rc_string(s) for s in seqs]), atol=1e-5)
    assert np.abs(means[0] - means[2]).max() > 1e-4


def test_layers_and_pools(ps_dir, seqs):
    every = embed(ps_dir, seqs, pool="mean+max", layers="all")
    assert every.shape == (5, 3 * 2 * 16)  # (embeddings + 2 blocks) x (mean, max) x d_model
    last = embed(ps_dir, seqs, pool="mean+max", layers="last")
    np.testing.assert_allclose(every[:, -32:], last, atol=1e-6)  # the last state's block is the last layer
    np.testing.assert_allclose(last[:, :16], embed(ps_dir, seqs, pool="mean"), atol=1e-6)
    np.testing.assert_allclose(last[:, 16:], embed(ps_dir, seqs, pool="max"), atol=1e-6)
    # the embedding layer's mean is a function of base composition only
    comp = embed(ps_dir, ["ACGTTGCA", "TGCAACGT"], pool="mean", layers="all")[:, :16]
    np.testing.assert_allclose(comp[0], comp[1], atol=1e-6)
    with pytest.raises(InputError, match="--layers last"):
        embed(ps_dir, seqs, pool="none", layers="all")
    with pytest.raises(InputError, match="--layers"):
        embed(ps_dir, seqs, layers="first")


def test_embed_cli_streams_npz(ps_dir, seqs, tmp_path):
    fasta = tmp_path / "r.fa"
    fasta.write_text("".join(f">rec{i} desc\n{s[:30]}\n{s[30:]}\n" for i, s in enumerate(seqs)))
    out = tmp_path / "emb.npz"
    assert main(["embed", "--model", str(ps_dir), "--fasta", str(fasta), "--out", str(out), "--batch-size", "2"]) == 0
    with np.load(out) as z:
        assert list(z["ids"]) == [f"rec{i}" for i in range(5)]
        np.testing.assert_allclose(z["embeddings"], embed(ps_dir, seqs), atol=1e-5)
    # small chunks: the writer must stitch rows from several chunks in order
    summary = embed_fasta(ps_dir, fasta, tmp_path / "chunked.npz", chunk_records=2, batch_size=1)
    assert summary["records"] == 5
    with np.load(tmp_path / "chunked.npz") as z, np.load(out) as ref:
        np.testing.assert_allclose(z["embeddings"], ref["embeddings"], atol=1e-5)
    out_all = tmp_path / "all.npz"
    assert main(["embed", "--model", str(ps_dir), "--fasta", str(fasta), "--out", str(out_all), "--layers", "all",
                 "--pool", "mean+max"]) == 0
    with np.load(out_all) as z:
        assert z["embeddings"].shape == (5, 96)
        np.testing.assert_allclose(z["embeddings"], embed(ps_dir, seqs, pool="mean+max", layers="all"), atol=1e-5)
    out2 = tmp_path / "bases.npz"
    assert main(["embed", "--model", str(ps_dir), "--fasta", str(fasta), "--pool", "none", "--out", str(out2)]) == 0
    with np.load(out2) as z:
        assert sorted(z.files) == sorted(["ids"] + [f"bases_{i}" for i in range(5)])
        assert z["ids"].tolist() == [f"rec{i}" for i in range(5)]
        for i, s in enumerate(seqs):
            assert z[f"bases_{i}"].shape == (len(s), 32)


@pytest.mark.parametrize("content,word", [
    (">a\nACGT\n>a\nACGG\n", "both name a record"),
    (">a\n\n>b\nACGT\n", "has no sequence"),
    ("just text\n", "not fasta"),
    (">a\nACGTXQ\n", "rec"),
])
def test_embed_bad_fasta_one_line_error_no_output(ps_dir, tmp_path, capsys, content, word):
    fasta = tmp_path / "bad.fa"
    fasta.write_text(content)
    out = tmp_path / "e.npz"
    assert main(["embed", "--model", str(ps_dir), "--fasta", str(fasta), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dna-mdlm embed: error:") and word in err[0].lower()
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.fa"]
