"""Tests for dna_mdlm.baselines.kmer_lr: exact k-mer counts, strand merging, and real-task accuracy."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import SHARED_DATA as SHARED  # the one definition (tests/conftest.py)

from dna_mdlm.baselines.kmer_lr import KmerFeaturizer, fit_kmer_lr, kmer_frequencies, make_kmer_lr_pipeline
from dna_mdlm.data.labelled import LabelledSequences, load_local_gb
from dna_mdlm.errors import InputError
from dna_mdlm.tokenizer import rc_string

needs_shared = pytest.mark.skipif(not (SHARED / "genomic_benchmarks" / "sequences").is_dir(),
                                  reason=f"shared Genomic Benchmarks data not found at {SHARED} (set DNA_MDLM_SHARED_DATA)")


@pytest.fixture(scope="module")
def nontata():
    return load_local_gb("human_nontata_promoters", SHARED)


def _naive_freqs(seq: str, k: int) -> dict[str, float]:
    kmers = [seq[i : i + k] for i in range(len(seq) - k + 1) if "N" not in seq[i : i + k]]
    return {w: c / len(kmers) for w, c in Counter(kmers).items()}


@needs_shared
def test_frequencies_match_naive_counts_on_real_sequences(nontata):
    with_n = next(s for s in nontata.seqs if "N" in s)  # the one nontata sequence with an N
    seqs = [with_n, nontata.seqs[0], nontata.seqs[-1][:37]]
    x, names = kmer_frequencies(seqs, (1, 3, 5), canonical=False)
    assert x.shape == (3, 4 + 64 + 1024)
    col = {n: j for j, n in enumerate(names)}
    dense = x.toarray()
    for i, s in enumerate(seqs):
        expected = np.zeros(len(names))
        for k in (1, 3, 5):
            for w, f in _naive_freqs(s, k).items():
                expected[col[w]] = f
        np.testing.assert_allclose(dense[i], expected, atol=1e-6)
        np.testing.assert_allclose([dense[i, :4].sum(), dense[i, 4:68].sum(), dense[i, 68:].sum()], 1.0, rtol=1e-5)


@needs_shared
def test_canonical_features_are_strand_symmetric(nontata):
    seqs = nontata.seqs[:5]
    fwd, names = kmer_frequencies(seqs, (1, 2, 3, 4, 5, 6), canonical=True)
    rev, _ = kmer_frequencies([rc_string(s) for s in seqs], (1, 2, 3, 4, 5, 6), canonical=True)
    assert len(names) == 2 + 10 + 32 + 136 + 512 + 2080  # canonical k-mer counts, palindromes once
    np.testing.assert_allclose(fwd.toarray(), rev.toarray(), atol=1e-6)
    plain, _ = kmer_frequencies(seqs, (3,), canonical=False)
    np.testing.assert_allclose(plain.toarray()[:, 0] + plain.toarray()[:, 63],  # AAA + TTT
                               kmer_frequencies(seqs, (3,), canonical=True)[0].toarray()[:, 0], atol=1e-6)


def test_sequences_shorter_than_k_give_zero_rows():
    x, _ = kmer_frequencies(["AC", "NNNN", "ACGTA"], (3,), canonical=False)
    assert x[0].nnz == 0 and x[1].nnz == 0 and x[2].sum() == pytest.approx(1.0)


@needs_shared
def test_kmer_lr_beats_chance_on_real_nontata_subsample(nontata):
    sub = nontata.shuffled(seed=0).subset(range(600))
    train, test = sub.stratified_split(test_size=0.3, seed=0)
    model = fit_kmer_lr(train, k_max=6)
    proba = model.predict_proba(test.seqs)
    assert proba.shape == (180, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    acc = model.accuracy(test)
    majority = max(test.class_counts().values()) / len(test)
    assert acc > 0.72 and acc > majority + 0.15, (acc, majority)  # measured 0.817 (majority 0.544)


@needs_shared
def test_inner_cv_picks_c_on_train_plus_val_and_three_classes_work():
    data = load_local_gb("human_ensembl_regulatory", SHARED).shuffled(1).subset(range(450))
    train, val = data.stratified_split(test_size=0.3, seed=0)
    model = fit_kmer_lr(train, val, k_max=4, Cs=(0.01, 1.0), folds=3)
    assert model.C in (0.01, 1.0) and model.cv_score is not None and model.cv_score > 0.45  # inner-CV accuracy; chance 1/3
    assert model.pipeline.named_steps["lr"].n_features_in_ == 2 + 10 + 32 + 136
    assert model.predict_proba(val.seqs).shape == (len(val), 3)
    # refitted on train + val: fits the validation part better than a model that never saw it
    assert model.accuracy(val) >= fit_kmer_lr(train, k_max=4, C=model.C).accuracy(val)
    fixed = fit_kmer_lr(train, k_max=4, C=0.05)
    assert fixed.C == 0.05 and fixed.cv_score is None and fixed.accuracy(val) > 0.45  # chance is 1/3


def test_pipeline_is_a_plain_sklearn_pipeline():
    rng = np.random.default_rng(0)
    # GC-rich vs AT-rich strings: separable by 1-mer frequencies alone
    gc = ["".join(rng.choice(list("GGCCAT"), 60)) for _ in range(20)]
    at = ["".join(rng.choice(list("AATTGC"), 60)) for _ in range(20)]
    pipe = make_kmer_lr_pipeline(k_max=2, C=1.0).fit(gc + at, [1] * 20 + [0] * 20)
    assert (pipe.predict(gc + at) == np.array([1] * 20 + [0] * 20)).mean() > 0.9
    assert KmerFeaturizer((1, 2), canonical=False).fit([]).get_feature_names_out()[:5].tolist() == ["A", "C", "G", "T", "AA"]


def test_errors():
    one_class = LabelledSequences(["ACGT", "ACGA"], np.array([0, 0]), ["a", "b"], "toy")
    with pytest.raises(InputError, match="only one class"):
        fit_kmer_lr(one_class)
    two = LabelledSequences(["ACGT", "ACGA"], np.array([0, 1]), ["a", "b"], "toy")
    with pytest.raises(InputError, match="k_max must lie in 1..8"):
        fit_kmer_lr(two, k_max=9)
