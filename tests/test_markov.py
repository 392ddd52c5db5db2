"""Tests for the k-mer Markov baseline LM: exact hand-computed likelihoods, smoothing, N handling,
save/load, sampling, and order selection on real human DNA vs i.i.d. random sequence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from Bio import SeqIO
from conftest import SHARED_DATA

from dna_mdlm.baselines.markov import MarkovLM, fit_markov_from_windows
from dna_mdlm.errors import InputError
from dna_mdlm.loading import model_kind
from dna_mdlm.tokenizer import encode_dna

SLICE = SHARED_DATA / "genomes" / "human_GRCh37_chr20_40000001-41000000.fa"


@pytest.fixture(scope="module")
def chr20_slice() -> str:
    if not SLICE.is_file():
        pytest.skip(f"shared data not found at {SLICE} (set DNA_MDLM_SHARED_DATA)")
    return str(SeqIO.read(SLICE, "fasta").seq)


def test_order0_matches_hand_computed_witten_bell():
    model = MarkovLM.fit(["AAAC"], k=0)
    # counts A=3, C=1, total 4, 2 distinct bases: P(b) = (C(b) + 2 * 1/4) / (4 + 2)
    p = {"A": 3.5 / 6, "C": 1.5 / 6, "G": 0.5 / 6, "T": 0.5 / 6}
    nats, n = model.score(encode_dna("ACGT"))
    assert n == 4
    assert nats == pytest.approx(-sum(math.log(p[b]) for b in "ACGT"), rel=1e-12)


def test_order0_on_known_composition_gives_its_entropy():
    seq = "A" * 4000 + "C" * 2000 + "G" * 1000 + "T" * 1000
    entropy_bits = -(0.5 * math.log2(0.5) + 0.25 * math.log2(0.25) + 2 * 0.125 * math.log2(0.125))
    assert entropy_bits == pytest.approx(1.75)
    assert MarkovLM.fit([seq], k=0).bits_per_base([seq]) == pytest.approx(1.75, abs=2e-3)


def test_periodic_sequence_approaches_zero_bits_with_enough_order():
    unit = "ACGTTGCA"  # every base is determined by the 3 before it
    train, test = unit * 300, unit * 100
    assert MarkovLM.fit([train], k=3).bits_per_base([test]) < 0.03
    assert MarkovLM.fit([train], k=0).bits_per_base([test]) == pytest.approx(2.0, abs=1e-3)


def test_unseen_contexts_and_bases_get_finite_likelihood():
    model = MarkovLM.fit(["AC" * 200], k=4)
    nats, n = model.score(encode_dna("GGTTGTGT"))
    assert n == 8 and math.isfinite(nats) and nats > 8 * math.log(4)


def test_probabilities_sum_to_one_in_every_context():
    model = MarkovLM.fit(["ACGGTCAAGTTTACGA" * 20, "GGGCCCAT"], k=3)
    contexts = np.arange(64, dtype=np.int64)
    for length in range(4):
        probs = model.next_base_probs(contexts, np.full(64, length))
        assert np.allclose(probs.sum(axis=1), 1.0) and (probs > 0).all()


def test_n_is_never_scored_and_breaks_context():
    model = MarkovLM.fit(["ACGTTGCAGGATCCAT" * 30], k=4)
    left, right = "ACGTTGCAGGA", "TCCATACGTTG"
    joined = encode_dna(left + "NN" + right)
    lp = model.log_probs(joined)
    assert np.isnan(lp[len(left): len(left) + 2]).all()
    nats, n = model.score(joined)
    nats_l, n_l = model.score(encode_dna(left))
    nats_r, n_r = model.score(encode_dna(right))
    assert n == n_l + n_r == len(left) + len(right)
    assert nats == pytest.approx(nats_l + nats_r, rel=1e-12)
    # the same bases without the N are scored with context across the junction: a different number
    assert model.score(encode_dna(left + right))[0] != pytest.approx(nats)


def test_nats_per_window_matches_per_record_scores_and_respects_the_mask():
    model = MarkovLM.fit(["ACGTTGCAGGATCCAT" * 30], k=2)
    windows = np.stack([encode_dna("ACGTAC"), encode_dna("GGNTTA")])
    nats = model.nats_per_window(windows).numpy()[:, 0]
    for row, expected in zip(windows, nats):
        assert model.score(row)[0] == pytest.approx(expected)
    mask = np.ones_like(windows, dtype=bool)
    mask[:, :3] = False  # positions already scored elsewhere count zero, their context still counts
    masked = model.nats_per_window(windows, mask).numpy()[:, 0]
    lp = model.log_probs(windows[0])
    assert masked[0] == pytest.approx(-lp[3:].sum())


def test_save_load_round_trip_is_identical(tmp_path):
    model = MarkovLM.fit(["ACGGTCAAGTTTACGATTGA" * 50], val=["ACGGTCAAGTTTAC" * 5], k_range=range(0, 5))
    out = tmp_path / "markov_model"
    model.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "markov" and config["order"] == model.order
    assert model_kind(out) == "markov"
    assert not list(tmp_path.glob(".*tmp"))  # nothing left over from the atomic write
    loaded = MarkovLM.from_pretrained(out)
    probe = encode_dna("ACGTNACGGTCAATTTGCA")
    np.testing.assert_array_equal(model.log_probs(probe), loaded.log_probs(probe))
    assert loaded.validation_bits_per_base == model.validation_bits_per_base
    assert loaded.sample(3, 50, seed=7) == model.sample(3, 50, seed=7)


def test_from_pretrained_rejects_other_directories(tmp_path):
    with pytest.raises(InputError, match="config.json"):
        MarkovLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "caduceus"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="expected 'markov'"):
        MarkovLM.from_pretrained(tmp_path)


def test_sampling_is_seeded_respects_prefix_and_reproduces_the_source():
    unit = "ACGTTGCA"
    model = MarkovLM.fit([unit * 2000], k=3)
    samples = model.sample(4, 40, seed=3, prefix="TTGC")
    assert samples == model.sample(4, 40, seed=3, prefix="TTGC")
    assert all(len(s) == 40 and s.startswith("TTGC") for s in samples)
    # the model is near-deterministic (P(next) > 0.999), so samples continue the period
    assert sum(s in unit * 12 for s in samples) >= 3
    assert model.sample(2, 30, seed=1) != model.sample(2, 30, seed=2)
    with pytest.raises(InputError):
        model.sample(1, 3, prefix="ACGTA")


def test_temperature_sharpens_the_order0_distribution():
    model = MarkovLM.fit(["A" * 700 + "C" * 300], k=0)
    cold = "".join(model.sample(20, 100, seed=0, temperature=0.3))
    hot = "".join(model.sample(20, 100, seed=0, temperature=1.0))
    assert cold.count("A") / len(cold) > hot.count("A") / len(hot) > 0.6


def test_order_selection_requires_validation_data():
    with pytest.raises(InputError, match="val"):
        MarkovLM.fit(["ACGT" * 10])


def test_order_selection_picks_context_on_real_dna_and_none_on_iid(chr20_slice):
    ids = encode_dna(chr20_slice)
    train, val, test = ids[:400_000], ids[400_000:500_000], ids[900_000:]
    real = fit_markov_from_windows([train], val=[val], k_range=range(0, 9))
    curve = real.validation_bits_per_base
    assert real.order >= 3
    assert curve[real.order] < curve[0] - 0.03
    assert 1.85 < real.bits_per_base([test]) < 1.97  # measured 1.91 at k=5 on this split

    rng = np.random.default_rng(0)
    iid = rng.integers(7, 11, size=300_000)
    random_model = MarkovLM.fit([iid[:200_000]], val=[iid[200_000:]], k_range=range(0, 9))
    assert random_model.order == 0
    assert random_model.validation_bits_per_base[0] == pytest.approx(2.0, abs=2e-3)
