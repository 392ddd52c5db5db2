"""Same seed, same numbers: a window's MDLM Monte-Carlo draws are a function of (seed, record, window start)
alone, so likelihood figures do not depend on --batch-size, on other records in the file or on their order;
and `sample --seed` gives the same sequence i whatever the batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dna_mdlm.baselines.markov import MarkovLM
from dna_mdlm.evaluation.likelihood import likelihood
from dna_mdlm.generate import sample
from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM


@pytest.fixture(scope="module")
def tiny_mdlm(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeding")
    torch.manual_seed(0)
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1))
    model.config.train_window = 64
    model.save_pretrained(d / "mdlm")
    return d / "mdlm"


def write_fasta(path, seqs, names):
    path.write_text("".join(f">{n}\n{s}\n" for n, s in zip(names, seqs)))
    return path


def _records():
    rng = np.random.default_rng(0)
    return {f"r{i}": "".join(rng.choice(list("ACGT"), n)) for i, n in enumerate([150, 64, 97, 200], 1)}


def _per_record(model, path, **kw):
    rep = likelihood(model, str(path), window=64, num_samples=3, seed=5, **kw)
    return {k: v["nats_per_base"] for k, v in rep["per_record"].items()}


def test_likelihood_per_record_figures_do_not_depend_on_batch_size_neighbours_or_order(tiny_mdlm, tmp_path):
    recs = _records()
    clean = write_fasta(tmp_path / "clean.fa", list(recs.values()), names=list(recs))
    base = _per_record(tiny_mdlm, clean, batch_size=1)
    assert _per_record(tiny_mdlm, clean, batch_size=7) == pytest.approx(base, rel=1e-6, abs=0)
    assert _per_record(tiny_mdlm, clean, batch_size=64) == pytest.approx(base, rel=1e-6, abs=0)
    with_n = write_fasta(tmp_path / "n.fa", list(recs.values()) + ["N" * 150], names=list(recs) + ["allN"])
    got = _per_record(tiny_mdlm, with_n, batch_size=16)
    assert got.pop("allN") is None
    assert got == pytest.approx(base, rel=1e-6, abs=0)
    rev = write_fasta(tmp_path / "rev.fa", list(recs.values())[::-1], names=list(recs)[::-1])
    assert _per_record(tiny_mdlm, rev, batch_size=16) == pytest.approx(base, rel=1e-6, abs=0)
    # the seed does matter: another seed gives other Monte-Carlo draws
    other = likelihood(tiny_mdlm, str(clean), window=64, num_samples=3, seed=6)["per_record"]["r1"]["nats_per_base"]
    assert other != pytest.approx(base["r1"], rel=1e-9, abs=0)


def test_sample_same_seed_same_samples_whatever_the_batch_size(tiny_mdlm, tmp_path):
    markov = tmp_path / "markov"
    MarkovLM.fit(list(_records().values()), k=2).save_pretrained(markov)
    for model, kw in ((tiny_mdlm, {"steps": 8}), (markov, {})):
        default = sample(model, 5, 40, seed=3, device="cpu", **kw)
        assert sample(model, 5, 40, seed=3, batch_size=1, device="cpu", **kw) == default
        assert sample(model, 5, 40, seed=3, batch_size=2, device="cpu", **kw) == default
        # the first samples do not depend on how many are asked for; another seed gives other samples
        assert sample(model, 2, 40, seed=3, device="cpu", **kw) == default[:2]
        assert sample(model, 5, 40, seed=4, device="cpu", **kw) != default
        assert len(set(default)) == 5
