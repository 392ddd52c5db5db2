"""Tests for dna_mdlm.baselines.cnn: any input length, padding that never reaches BatchNorm or pooling,
real training that learns, variable-length three-class data, stopping rules and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA as SHARED  # the one definition (tests/conftest.py)

from dna_mdlm.baselines.cnn import GBCNN, MaskedBatchNorm1d, train_cnn
from dna_mdlm.data.labelled import LabelledSequences, collate_labelled, load_local_gb
from dna_mdlm.errors import InputError
from dna_mdlm.tokenizer import PAD_ID, encode_dna, rc_string

needs_shared = pytest.mark.skipif(not (SHARED / "genomic_benchmarks" / "sequences").is_dir(),
                                  reason=f"shared Genomic Benchmarks data not found at {SHARED} (set DNA_MDLM_SHARED_DATA)")


def _dna(rng, n):
    return "".join(rng.choice(list("ACGT"), n))


def test_architecture_and_any_length():
    torch.manual_seed(0)
    model = GBCNN(n_classes=3, channels=(16, 8, 4)).eval()
    convs = list(model.convs)
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [(100, 16, 8), (16, 8, 8), (8, 4, 8)]
    assert model.classifier[0].in_features == 8 and model.classifier[0].out_features == 512  # mean + max of 4 channels
    for length in (1, 7, 50, 251, 5000):
        logits = model(torch.randint(7, 11, (2, length)))
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert torch.count_nonzero(model.embedding.weight[PAD_ID]) == 0


def test_padded_batch_equals_each_sequence_alone():
    rng = np.random.default_rng(0)
    seqs = [_dna(rng, n) for n in (50, 1, 333, 17, 5000, 64)]
    batch = collate_labelled([(s, 0) for s in seqs])
    torch.manual_seed(0)
    model = GBCNN(2)
    model.train()
    model(batch["input_ids"], batch["attention_mask"])  # move the running statistics off their defaults
    model.eval()
    with torch.no_grad():
        together = model(batch["input_ids"], batch["attention_mask"])
        alone = torch.cat([model(torch.as_tensor(encode_dna(s))[None]) for s in seqs])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_masked_batchnorm_uses_real_positions_only():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 10)
    mask = (torch.arange(10)[None] < torch.tensor([10, 6, 2])[:, None]).float()[:, None]
    x_padded = torch.where(mask.bool(), x, torch.full_like(x, 1e3))  # garbage where padded
    bn = MaskedBatchNorm1d(4).train()
    y = bn(x_padded, mask)
    real = torch.cat([x[0, :, :10], x[1, :, :6], x[2, :, :2]], dim=1)  # (C, 18)
    ref = torch.nn.BatchNorm1d(4).train()
    y_ref = ref(real.T[None].transpose(1, 2))[0]
    torch.testing.assert_close(torch.cat([y[0, :, :10], y[1, :, :6], y[2, :, :2]], 1), y_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)


def test_learns_a_motif_in_long_variable_length_sequences():
    """50 bp to 5 kb in one training set: global pooling over real positions, no fixed width."""
    rng = np.random.default_rng(3)
    motif = "GATTACAGTCCGTATGCAAC"
    seqs, labels = [], []
    for i in range(160):  # lengths weighted towards short ones: the 5 kb ones still share batches with 50 bp ones
        s = _dna(rng, int(rng.choice([50, 200, 800, 2500, 5000], p=[0.25, 0.25, 0.25, 0.15, 0.10])))
        if i % 2:
            m = motif if rng.random() < 0.5 else rc_string(motif)
            p = int(rng.integers(0, len(s) - len(m)))
            s = s[:p] + m + s[p + len(m):]
        seqs.append(s)
        labels.append(i % 2)
    data = LabelledSequences(seqs, np.array(labels), ["absent", "present"], "planted motif")
    train, val = data.stratified_split(0.25, seed=0)
    clf = train_cnn(train, val, epochs=15, batch_size=16, lr=3e-3, seed=0, min_steps=60, patience_steps=40)
    assert clf.history["val"][-1]["val_acc"] is not None
    assert clf.best_val_accuracy >= 0.9, clf.history["val"]
    assert not clf.history["val_chance"]["at_chance"]


@pytest.mark.slow  # ~15 s on an idle 2-core CPU
@needs_shared
def test_training_on_real_nontata_lowers_loss_and_predicts():
    data = load_local_gb("human_nontata_promoters", SHARED).shuffled(seed=0).subset(range(480))
    train, val = data.stratified_split(test_size=0.25, seed=0)
    clf = train_cnn(train, val, epochs=4, batch_size=32, seed=0, min_steps=20, patience_steps=40)
    losses = clf.history["step_loss"]
    assert len(losses) == clf.history["steps"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, (losses[:5], losses[-5:])
    best = min(clf.history["val"], key=lambda r: r["val_loss"])
    assert clf.best_val_accuracy == best["val_acc"] and clf.best_step == best["step"]
    assert clf.best_val_accuracy > 0.6  # majority class 0.56
    proba = clf.predict_proba(val.seqs)
    assert proba.shape == (len(val), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert clf.accuracy(val) == pytest.approx(clf.best_val_accuracy)  # the kept weights are the best-val ones


@needs_shared
def test_variable_length_three_class_and_stopping_rules():
    data = load_local_gb("human_ensembl_regulatory", SHARED).shuffled(seed=1).subset(range(120))
    train, val = data.stratified_split(test_size=0.25, seed=0)
    clf = train_cnn(train, val, epochs=5, batch_size=16, seed=1, max_steps=4, max_tokens=2000)
    assert clf.history["stopped_by"] == "max_steps" and clf.history["steps"] == 4
    assert clf.history["val"][-1]["step"] == 4  # the last steps are validated too
    assert clf.predict_proba(val.seqs).shape == (len(val), 3)
    longer = ["ACGT" * 2000]  # longer than anything seen in training: fine, no truncation
    assert clf.predict_proba(longer).shape == (1, 3)
    clf = train_cnn(train, None, epochs=50, batch_size=16, seed=1, time_budget_s=0.0)
    assert clf.history["stopped_by"] == "time_budget" and clf.history["steps"] == 1 and clf.best_step is None
    # labels shuffled: the model cannot leave chance, so early stopping must not fire; it runs its budget
    noise = LabelledSequences(train.seqs, np.random.default_rng(0).permutation(train.labels), train.classes, "noise")
    clf = train_cnn(noise, val, epochs=3, batch_size=16, seed=1, min_steps=1, patience_steps=1, val_every=1)
    assert clf.history["stopped_by"] == "epochs" and clf.history["val_chance"]["at_chance"]


def test_errors():
    one = LabelledSequences(["ACGT" * 20] * 3, np.array([0, 0, 0]), ["a", "b"], "toy")
    with pytest.raises(InputError, match="only one class"):
        train_cnn(one, None, epochs=1)
    two = LabelledSequences(["ACGT" * 20] * 2, np.array([0, 1]), ["a", "b"], "toy")
    other = LabelledSequences(["ACGT" * 20] * 2, np.array([0, 1]), ["x", "y"], "toy")
    with pytest.raises(InputError, match="val classes"):
        train_cnn(two, other, epochs=1)
