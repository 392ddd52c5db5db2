"""Tests for dna_mdlm.baselines.cnn: shapes, padding, long-input policy, and real training that learns."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dna_mdlm.baselines.cnn import GBCNN, encode_fixed, train_cnn
from dna_mdlm.data.labelled import LabelledSequences, load_local_gb
from dna_mdlm.errors import InputError
from dna_mdlm.tokenizer import PAD_ID

SHARED = Path(os.environ.get("DNA_MDLM_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
needs_shared = pytest.mark.skipif(not (SHARED / "genomic_benchmarks" / "sequences").is_dir(),
                                  reason=f"shared Genomic Benchmarks data not found at {SHARED} (set DNA_MDLM_SHARED_DATA)")


def test_architecture_shapes_and_sizes():
    torch.manual_seed(0)
    model = GBCNN(n_classes=3, input_len=251)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [(100, 16, 8), (16, 8, 8), (8, 4, 8)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.features) == 3
    # 251 -> 244 -> 122 -> 115 -> 57 -> 50 -> 25 positions, 4 channels: flatten width 100
    assert model.classifier[0].in_features == 100 and model.classifier[0].out_features == 512
    model.eval()
    logits = model(torch.randint(7, 11, (5, 251)))
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()
    with pytest.raises(InputError, match="input_len=50 is too short .* need at least 57"):
        GBCNN(2, 50)
    assert GBCNN(2, GBCNN.min_input_len())(torch.randint(7, 11, (2, 57))).shape == (2, 2)


def test_padding_embedding_is_zero_and_long_inputs_need_opt_in():
    model = GBCNN(2, 64)
    assert torch.count_nonzero(model.embedding.weight[PAD_ID]) == 0
    ids, n = encode_fixed(["ACGT", "A" * 64], 64)
    assert n == 0 and ids.shape == (2, 64) and (ids[0, 4:] == PAD_ID).all() and (ids[1] != PAD_ID).all()
    with pytest.raises(InputError, match="sequence 1 has length 70 > the model's input_len 64"):
        encode_fixed(["ACGT", "C" * 70], 64)
    ids, n = encode_fixed(["ACGT", "C" * 70], 64, truncate=True)
    assert n == 1 and ids.shape == (2, 64)


@pytest.mark.slow  # ~8 s on an idle 2-core CPU
@needs_shared
def test_training_on_real_nontata_lowers_loss_and_predicts():
    data = load_local_gb("human_nontata_promoters", SHARED).shuffled(seed=0).subset(range(480))
    train, val = data.stratified_split(test_size=0.25, seed=0)
    clf = train_cnn(train, val, epochs=3, batch_size=32, seed=0)
    losses = clf.history["step_loss"]
    assert len(losses) == clf.history["steps"] == 3 * (len(train) // 32 + (len(train) % 32 >= 2))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, (losses[:5], losses[-5:])
    assert clf.best_val_accuracy == max(clf.history["val_accuracy"])
    assert clf.best_val_accuracy > 0.6  # majority class 0.56; measured 0.76 at these settings
    proba = clf.predict_proba(val.seqs)
    assert proba.shape == (len(val), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    # the returned weights are the best-val epoch's
    assert clf.accuracy(val) == pytest.approx(clf.best_val_accuracy)
    assert clf.input_len == 251


@needs_shared
def test_variable_length_three_class_and_stopping_rules():
    data = load_local_gb("human_ensembl_regulatory", SHARED).shuffled(seed=1).subset(range(120))
    train, val = data.stratified_split(test_size=0.25, seed=0)
    clf = train_cnn(train, val, epochs=5, batch_size=16, seed=1, max_steps=4)
    assert clf.history["stopped_by"] == "max_steps" and clf.history["steps"] == 4
    assert clf.input_len == max(train.lengths.max(), val.lengths.max())
    assert clf.predict_proba(val.seqs).shape == (len(val), 3)
    longer = ["ACGT" * ((clf.input_len // 4) + 2)]
    with pytest.raises(InputError, match="pass truncate=True"):
        clf.predict_proba(longer)
    assert clf.predict_proba(longer, truncate=True).shape == (1, 3) and clf.last_n_truncated == 1
    clf = train_cnn(train, None, epochs=50, batch_size=16, seed=1, time_budget_s=0.0)
    assert clf.history["stopped_by"] == "time_budget" and clf.history["steps"] == 1 and clf.best_epoch is None
    clf = train_cnn(train, val, epochs=50, batch_size=45, seed=1, patience=1, lr=1e-6)
    assert clf.history["stopped_by"] == "early_stopping" and len(clf.history["val_accuracy"]) < 50


def test_errors():
    one = LabelledSequences(["ACGT" * 20] * 3, np.array([0, 0, 0]), ["a", "b"], "toy")
    with pytest.raises(InputError, match="only one class"):
        train_cnn(one, None, epochs=1)
    two = LabelledSequences(["ACGT" * 20] * 2, np.array([0, 1]), ["a", "b"], "toy")
    other = LabelledSequences(["ACGT" * 20] * 2, np.array([0, 1]), ["x", "y"], "toy")
    with pytest.raises(InputError, match="val classes"):
        train_cnn(two, other, epochs=1)
