"""Fine-tuning and the frozen probe: encoder loading, padding-free pooling, RC invariance, the probe stored
exactly in the model, the default head against a standardised logistic regression, exact gradient
accumulation, early stopping that cannot stop at chance, loud chance flags, long variable-length sequences
(a planted motif in 200-3,000 bp), the finetune / predict CLI end to end, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA as SHARED  # the one definition (tests/conftest.py)
from sklearn.model_selection import StratifiedKFold

from dna_mdlm.cli import main
from dna_mdlm.data.labelled import LabelledSequences, collate_labelled, load_local_gb, micro_batches
from dna_mdlm.embedding import embed
from dna_mdlm.evaluation.classification import ValLossStopping, chance_level, classification_metrics, summarize
from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM
from dna_mdlm.prediction import encode_sequences, predict_proba
from dna_mdlm.tokenizer import rc_string
from dna_mdlm.training.finetune import (
    FinetuneConfig,
    accumulate_backward,
    build_classifier,
    fit_linear_probe,
    fit_logreg_probe,
    fit_probe,
    probe_features,
    train_classifier,
)

NONTATA = SHARED / "genomic_benchmarks" / "sequences" / "human_nontata_promoters" / "test.csv"
needs_data = pytest.mark.skipif(not NONTATA.is_file(), reason=f"shared GB data not found at {NONTATA} (set DNA_MDLM_SHARED_DATA)")
MOTIF = "GATTACAGTCCGTATGCAAC"  # 20 bp, planted on either strand


@pytest.fixture(scope="module")
def mlm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlm")
    out = {}
    for rcps in (True, False):
        torch.manual_seed(0)
        CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=2, rcps=rcps)).save_pretrained(root / f"rcps{rcps}")
        out[rcps] = root / f"rcps{rcps}"
    return out


def _random_dna(rng, n):
    return "".join(rng.choice(list("ACGT"), n))


def planted_motif_task(n: int, seed: int, lo: int = 200, hi: int = 3000) -> LabelledSequences:
    """Random sequences of lo..hi bp; every second one carries MOTIF (or its reverse complement) at a random place."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        s = _random_dna(rng, int(rng.integers(lo, hi + 1)))
        if i % 2:
            m = MOTIF if rng.random() < 0.5 else rc_string(MOTIF)
            p = int(rng.integers(0, len(s) - len(m)))
            s = s[:p] + m + s[p + len(m):]
        seqs.append(s)
        labels.append(i % 2)
    return LabelledSequences(seqs, np.array(labels), ["absent", "present"], f"planted motif (seed {seed})")


@pytest.mark.parametrize("rcps", [True, False])
def test_encoder_loads_from_mlm_and_head_is_initialised(mlm_dirs, rcps):
    mlm = CaduceusForMaskedLM.from_pretrained(str(mlm_dirs[rcps]))
    for method, head in (("finetuned", "mlp"), ("frozen", "logreg")):
        clf = build_classifier(mlm_dirs[rcps], ["neg", "pos"], FinetuneConfig(head=head), method=method)
        ref, got = mlm.caduceus.state_dict(), clf.caduceus.state_dict()
        assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
        for p in clf.score.parameters():  # from_pretrained alone leaves these uninitialised (NaN / 1e37 seen)
            assert torch.isfinite(p).all() and p.abs().max() < 1.0
    assert torch.equal(clf.feature_mean, torch.zeros(48)) and torch.equal(clf.feature_scale, torch.ones(48))


@pytest.mark.parametrize("rcps", [True, False])
@pytest.mark.parametrize("pooling", ["mean", "max", "mean+max"])
def test_probe_features_ignore_padding_and_strand(mlm_dirs, pooling, rcps):
    rng = np.random.default_rng(1)
    seqs = [_random_dna(rng, n) for n in (40, 17, 63, 5)]
    model = CaduceusForMaskedLM.from_pretrained(str(mlm_dirs[rcps]))
    cfg = FinetuneConfig(pooling=pooling, eval_batch_size=4)
    ids = encode_sequences(seqs, None, False, "test")
    batched = probe_features(model, ids, cfg)
    assert batched.shape == (4, 3 * 16 * len(pooling.split("+")))  # embeddings + 2 blocks, d_model 16 per pool
    alone = np.concatenate([probe_features(model, [a], cfg) for a in ids])
    rc = probe_features(model, encode_sequences([rc_string(s) for s in seqs], None, False, "t"), cfg)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    np.testing.assert_allclose(batched, rc, atol=1e-5)
    assert np.abs(batched[0] - batched[2]).max() > 1e-3  # the features do depend on the sequence
    # `embed --layers all` writes the same numbers
    np.testing.assert_allclose(embed(mlm_dirs[rcps], seqs, pool=pooling, layers="all"), batched, atol=1e-6)


@pytest.mark.parametrize("rcps", [True, False])
@pytest.mark.parametrize("method", ["frozen", "finetuned"])
def test_classifier_is_rc_invariant_and_batch_invariant(mlm_dirs, rcps, method):
    rng = np.random.default_rng(2)
    seqs = [_random_dna(rng, n) for n in (50, 31, 77)]
    clf = build_classifier(mlm_dirs[rcps], ["a", "b", "c"], FinetuneConfig(conjoin=True), method=method)
    with torch.no_grad():  # a head far from zero, so invariance is not trivially satisfied
        for p in clf.score.parameters():
            p.normal_(0, 1.0)
    fwd = predict_proba(clf, seqs)
    np.testing.assert_allclose(fwd, predict_proba(clf, [rc_string(s) for s in seqs]), atol=1e-5)
    np.testing.assert_allclose(fwd, np.concatenate([predict_proba(clf, [s]) for s in seqs]), atol=1e-5)
    assert np.abs(fwd - fwd.mean(0)).max() > 1e-4  # the probabilities do depend on the sequence


def _gaussian_task(n, dim, informative, n_classes, signal, seed):
    """Gaussian features on very different scales and offsets; class means differ on `informative` of them."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    x = rng.normal(size=(n, dim)) * rng.uniform(0.01, 5.0, size=dim) + rng.normal(size=dim) * 3  # unscaled, offset
    centres = rng.normal(size=(n_classes, informative))
    x[:, :informative] += centres[y] * signal
    return x.astype(np.float32), y


@pytest.mark.parametrize("n_classes,features,width", [(2, "all", 48), (3, "last", 16)])
def test_stored_probe_reproduces_sklearn_exactly(mlm_dirs, n_classes, features, width):
    """The fitted StandardScaler + LogisticRegressionCV lives in the model: its forward gives sklearn's proba."""
    rng = np.random.default_rng(5)
    seqs = [_random_dna(rng, int(n)) for n in rng.integers(30, 90, 60)]
    labels = np.arange(60) % n_classes
    cfg = FinetuneConfig(features=features)
    clf = build_classifier(mlm_dirs[True], [str(i) for i in range(n_classes)], cfg, method="frozen")
    feats = probe_features(clf, encode_sequences(seqs, None, False, "t"), cfg)
    info = fit_probe(clf, feats, labels, FinetuneConfig(probe_folds=3))
    assert info["C"] > 0 and info["n_features"] == width
    ref = fit_logreg_probe(feats, labels, FinetuneConfig(probe_folds=3))
    assert ref.named_steps["lr"].C_ == pytest.approx(info["C"])
    np.testing.assert_allclose(predict_proba(clf, seqs), ref.predict_proba(feats), atol=2e-4)


@pytest.mark.parametrize("dim,informative,n_classes,signal", [(40, 3, 2, 2.0), (300, 10, 2, 1.0), (120, 5, 3, 1.5),
                                                              (20, 20, 2, 0.2)])
def test_default_head_never_loses_to_a_standardised_logistic_regression(dim, informative, n_classes, signal):
    """Any features: the default probe head (fit_logreg_probe, what fit_probe stores) scores >= StandardScaler +
    LogisticRegression (C = 1 and 0.1) on the same outer folds, within 0.01 accuracy."""
    x, y = _gaussian_task(360, dim, informative, n_classes, signal, seed=dim + n_classes)
    ours, plain = _head_vs_plain(x, y, n_classes, folds=5)
    for C, acc in plain.items():
        assert ours >= acc - 0.01, (C, ours, acc)
    assert ours > 1.0 / n_classes + 0.1  # a task with signal, not two models at chance


def _head_vs_plain(x, y, n_classes, folds):
    ours, plain = [], {1.0: [], 0.1: []}
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y):
        ours.append((fit_logreg_probe(x[tr], y[tr], FinetuneConfig()).predict(x[te]) == y[te]).mean())
        for C in plain:
            plain[C].append((fit_linear_probe(x[tr], y[tr], x[te], n_classes, C).argmax(1) == y[te]).mean())
    return float(np.mean(ours)), {C: float(np.mean(a)) for C, a in plain.items()}


@needs_data
def test_default_head_vs_standardised_lr_on_kmer_features_of_real_promoters():
    from dna_mdlm.baselines.kmer_lr import kmer_frequencies

    data = load_local_gb("human_nontata_promoters", SHARED).shuffled(0).subset(range(400))
    x = kmer_frequencies(data.seqs, (1, 2, 3, 4))[0].toarray()
    ours, plain = _head_vs_plain(x, data.labels, 2, folds=4)
    assert all(ours >= acc - 0.01 for acc in plain.values()) and ours > 0.7, (ours, plain)


def test_gradient_accumulation_equals_the_full_batch(mlm_dirs):
    rng = np.random.default_rng(6)
    seqs = [_random_dna(rng, int(n)) for n in (12, 80, 33, 47, 5, 64)]
    batch = {k: v for k, v in collate_labelled([(s, i % 2) for i, s in enumerate(seqs)]).items() if k != "n_truncated"}
    weight = torch.tensor([0.7, 1.6])

    def grads(max_tokens):
        torch.manual_seed(0)
        clf = build_classifier(mlm_dirs[True], ["a", "b"], FinetuneConfig(head="linear"), method="finetuned").train()
        chunks = [{"input_ids": batch["input_ids"][r, :w], "attention_mask": batch["attention_mask"][r, :w],
                   "labels": batch["labels"][r]} for r, w in micro_batches(batch["attention_mask"], max_tokens)]
        loss = accumulate_backward(lambda c: clf(c["input_ids"], attention_mask=c["attention_mask"]).logits,
                                   chunks, batch["labels"], weight, lambda loss: loss.backward())
        return loss, len(chunks), {n: p.grad.clone() for n, p in clf.named_parameters() if p.grad is not None}

    full_loss, n_full, full = grads(10**6)
    acc_loss, n_acc, acc = grads(100)
    assert n_full == 1 and n_acc >= 4
    assert acc_loss == pytest.approx(full_loss, rel=1e-5)
    for name in full:
        torch.testing.assert_close(acc[name], full[name], atol=1e-6, rtol=1e-4)


def test_micro_batches_respect_the_token_budget():
    mask = torch.arange(100)[None] < torch.tensor([100, 90, 60, 60, 10, 3])[:, None]
    parts = micro_batches(mask, 150)
    assert [(p.start, p.stop, w) for p, w in parts] == [(0, 1, 100), (1, 2, 90), (2, 4, 60), (4, 6, 10)]
    assert micro_batches(mask, 10) == [(slice(i, i + 1), w) for i, w in enumerate([100, 90, 60, 60, 10, 3])]


def test_val_loss_stopping_waits_for_min_steps_and_for_the_model_to_leave_chance():
    chance = ValLossStopping.prior_loss(np.array([0, 1] * 50), 2)
    assert chance == pytest.approx(np.log(2))
    rule = ValLossStopping(patience_steps=20, min_steps=100, chance_loss=chance)
    for step in range(10, 400, 10):  # flat at chance (wobbling within the margin): never stops
        rule.update(step, chance + 0.004 * np.sin(step))
        assert not rule.should_stop(step)
    assert not rule.off_chance
    rule = ValLossStopping(patience_steps=20, min_steps=100, chance_loss=chance)
    rule.update(10, 0.5)  # off chance early, then stale: still runs to min_steps
    assert not rule.should_stop(50) and rule.should_stop(100)
    assert rule.update(110, 0.4) and not rule.should_stop(120) and rule.should_stop(130)


def test_chance_level_flags():
    y = np.array([0, 1] * 100)
    one_class = np.tile([0.6, 0.4], (200, 1))
    assert chance_level(y, one_class, ["a", "b"])["at_chance"]
    rng = np.random.default_rng(0)
    noise = rng.uniform(size=200)
    assert chance_level(y, np.stack([1 - noise, noise], 1), ["a", "b"])["at_chance"]
    signal = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 200), 0, 1)
    res = chance_level(y, np.stack([1 - signal, signal], 1), ["a", "b"])
    assert not res["at_chance"] and res["auroc"] > 0.75
    tiny = chance_level(np.array([0, 1, 0, 1]), np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), ["a", "b"])
    assert not tiny["at_chance"] and "too few" in tiny["reason"]


def test_a_model_that_cannot_learn_is_reported_at_chance(mlm_dirs, capsys):
    rng = np.random.default_rng(7)
    seqs = [_random_dna(rng, int(n)) for n in rng.integers(40, 120, 240)]
    data = LabelledSequences(seqs, np.arange(240) % 2, ["a", "b"], "pure noise")  # labels carry no signal
    train, val = data.stratified_split(0.5, seed=0)
    logs = []
    cfg = FinetuneConfig(unfreeze=True, batch_size=32, epochs=1, max_steps=3, min_steps=1, patience_steps=1)
    trained = train_classifier(mlm_dirs[True], train, val, cfg, seed=0, method="finetuned", log=logs.append)
    assert trained.history["val_chance"]["at_chance"] is True
    assert logs and "AT CHANCE" in logs[0]
    assert trained.history["steps"] == 3  # ran to its budget: stopping early at chance is not allowed


def _composition_task(n, seed):
    """GC-rich vs AT-rich sequences of 50-150 bp: any pooled encoder feature of composition separates them."""
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), int(rng.integers(50, 150)), p=[0.2, 0.3, 0.3, 0.2] if i % 2 else [0.3, 0.2, 0.2, 0.3]))
            for i in range(n)]
    return LabelledSequences(seqs, np.arange(n) % 2, ["at", "gc"], f"composition (seed {seed})")


def test_frozen_mlp_head_trains_on_standardised_features(mlm_dirs):
    train, val = _composition_task(160, 0).stratified_split(0.2, seed=0)
    test = _composition_task(100, 1)
    cfg = FinetuneConfig(head="mlp", batch_size=16, epochs=30, lr=3e-3, min_steps=20, patience_steps=40)
    trained = train_classifier(mlm_dirs[True], train, val, cfg, seed=0, method="frozen")
    model = trained.model
    assert model.config.feature_layers == "all" and isinstance(model.score, torch.nn.Sequential)
    feats = probe_features(model, encode_sequences(train.seqs, None, False, "t"), cfg)
    np.testing.assert_allclose(model.feature_mean.numpy(), feats.mean(0), rtol=1e-4, atol=1e-6)  # the scaler is stored
    assert trained.history["cached_features"] and trained.history["val_curve"]
    best = min(trained.history["val_curve"], key=lambda r: r["val_loss"])
    assert trained.history["best_step"] == best["step"] and best["val_loss"] < trained.history["chance_loss"]
    assert (trained.predict_proba(test).argmax(1) == test.labels).mean() >= 0.9


def test_metrics_and_summary():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = classification_metrics(y, proba, ["neg", "pos"])
    assert m["accuracy"] == 0.75 and m["auroc"] == 1.0 and m["confusion"] == [[1, 1], [0, 2]]
    s = summarize([{"accuracy": 0.7}, {"accuracy": 0.8}, {"accuracy": 0.9}])
    assert s["accuracy"]["mean"] == pytest.approx(0.8) and s["accuracy"]["spread"] == pytest.approx(0.2)


@pytest.fixture(scope="module")
def motif_pretrained(tmp_path_factory):
    """A tiny Caduceus-PS MDLM pretrained on a synthetic genome in which MOTIF recurs (on both strands) between
    random stretches: pretraining is what teaches the encoder that the motif is a unit."""
    from dna_mdlm.training.pretrain import pretrain

    root = tmp_path_factory.mktemp("motif_genome")
    rng = np.random.default_rng(1)
    parts = []
    while sum(map(len, parts)) < 150_000:
        parts.append(_random_dna(rng, int(rng.integers(20, 60))))
        parts.append(MOTIF if rng.random() < 0.5 else rc_string(MOTIF))
    genome = "".join(parts)
    fasta = root / "genome.fa"
    fasta.write_text(">syn\n" + "\n".join(genome[i:i + 80] for i in range(0, len(genome), 80)) + "\n")
    cfg = {"fasta": [str(fasta)], "val_regions": ["syn:1-10000"], "seed": 0,
           "model": {"d_model": 32, "n_layer": 2, "rcps": True},
           "data": {"window": 64, "batch_size": 16, "max_val_windows": 16, "train_samples_per_epoch": 100000},
           "optim": {"lr": 1e-2, "warmup_steps": 10, "ema_decay": 0.9},
           "trainer": {"max_steps": 500, "val_every": 500, "log_every": 50, "progress_bar": False}}
    summary = pretrain(cfg, root / "run")
    # the motif is ~1/3 of the genome: a model that learned it is far below 2 bits/base (measured 1.53)
    assert summary["val_bpd"] < 1.75, summary
    return root / "run" / "model"


@pytest.mark.slow
def test_frozen_probe_finds_a_planted_motif_in_long_sequences(motif_pretrained):
    train, test = planted_motif_task(160, seed=10), planted_motif_task(120, seed=11)
    # max pooling ("optionally max") is what finds one 20 bp site among up to 3,000 positions
    cfg = FinetuneConfig(pooling="mean+max")
    trained = train_classifier(motif_pretrained, *train.stratified_split(0.1, seed=0), cfg, method="frozen")
    acc = (trained.predict_proba(test).argmax(1) == test.labels).mean()
    assert acc >= 0.95, acc


@pytest.mark.slow
def test_full_finetuning_learns_a_planted_motif_in_long_sequences(motif_pretrained):
    train, val = planted_motif_task(160, seed=12).stratified_split(0.1, seed=0)
    test = planted_motif_task(120, seed=13)
    cfg = FinetuneConfig(unfreeze=True, batch_size=16, max_tokens=8192, epochs=6, lr=2e-3, min_steps=30, patience_steps=30)
    trained = train_classifier(motif_pretrained, train, val, cfg, seed=0, method="finetuned")
    acc = (trained.predict_proba(test).argmax(1) == test.labels).mean()
    assert acc >= 0.95, (acc, trained.history["val_curve"])


@needs_data
@pytest.mark.slow
def test_full_finetuning_updates_the_encoder(mlm_dirs):
    data = load_local_gb("human_nontata_promoters", SHARED).shuffled(0).subset(range(80))
    train, val = data.stratified_split(0.25, seed=0)
    cfg = FinetuneConfig(unfreeze=True, batch_size=16, epochs=1, max_steps=3, max_tokens=1000)
    trained = train_classifier(mlm_dirs[False], train, val, cfg, seed=0, method="finetuned")
    ref = CaduceusForMaskedLM.from_pretrained(str(mlm_dirs[False])).caduceus.state_dict()
    got = trained.model.caduceus.state_dict()
    assert any(not torch.equal(ref[k], got[k]) for k in ref)
    assert trained.history["steps"] == 3 and trained.history["rc_aug"] is True
    assert trained.best_val_accuracy is not None and trained.history["val_curve"][-1]["step"] == 3


@needs_data
@pytest.mark.slow
def test_finetune_cli_end_to_end_then_predict(mlm_dirs, tmp_path, capsys):
    data = load_local_gb("human_nontata_promoters", SHARED).shuffled(0).subset(range(160))
    table = tmp_path / "train.csv"
    table.write_text("seq,label\n" + "".join(f"{s},{y}\n" for s, y in zip(data.seqs, data.labels)))
    out = tmp_path / "ft"
    rc = main(["finetune", "--model", str(mlm_dirs[True]), "--train", str(table), "--folds", "2", "--config", "tiny",
               "--baselines", "kmer_lr,linear_probe", "--out", str(out)])
    assert rc == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model vs k-mer LR: accuracy" in last and str(out) in last
    report = json.loads((out / "metrics.json").read_text())
    assert report["cross_validation"] is True and "cross-validation" in report["protocol"]
    for method in ("frozen", "kmer_lr", "linear_probe"):
        assert len(report["runs"][method]) == 2
        assert "at_chance" in report["runs"][method][0]["test_chance"]
    assert report["comparison"]["baseline"] == "kmer_lr" and report["comparison"]["verdict"].startswith("accuracy: ")
    assert "; AUROC: " in report["comparison"]["verdict"]
    assert report["summary"]["kmer_lr"]["accuracy"]["mean"] > 0.6  # real promoter signal, not chance
    assert report["runs"]["frozen"][0]["head"] == "logreg" and report["runs"]["frozen"][0]["C"] > 0
    assert "| k-mer (1..6) LR |" in (out / "metrics.md").read_text()
    assert (out / "roc_confusion.png").stat().st_size > 1000
    from dna_mdlm.loading import load_model

    model, kind = load_model(out / "model")
    assert kind == "classifier" and model.config.id2label[1] == "1" and model.config.feature_layers == "all"
    card = (out / "model" / "README.md").read_text()  # every exported model directory has a model card
    assert "k-mer (1..6) LR: accuracy / AUROC" in card and "model vs k-mer LR" in card and str(table) in card

    fasta = tmp_path / "q.fa"
    fasta.write_text("".join(f">r{i} extra words\n{s}\n" for i, s in enumerate(data.seqs[:7])))
    probs = tmp_path / "p.tsv"
    assert main(["predict", "--model", str(out / "model"), "--fasta", str(fasta), "--out", str(probs)]) == 0
    lines = probs.read_text().splitlines()
    assert lines[0].split("\t") == ["record", "0", "1", "n_fraction"] and len(lines) == 8
    vals = np.array([[float(x) for x in line.split("\t")[1:3]] for line in lines[1:]])
    np.testing.assert_allclose(vals.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vals, predict_proba(model, data.seqs[:7]), atol=1e-5)
    # --baselines none: only the model, and the final line says nothing about k-mer LR
    assert main(["finetune", "--model", str(mlm_dirs[True]), "--train", str(table), "--folds", "2", "--config", "tiny",
                 "--baselines", "none", "--out", str(tmp_path / "ft2")]) == 0
    assert "k-mer" not in capsys.readouterr().err.strip().splitlines()[-1]
    assert list(json.loads((tmp_path / "ft2" / "metrics.json").read_text())["runs"]) == ["frozen"]


def _cli_error(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@needs_data
def test_bad_inputs_give_one_line_errors_and_no_output(mlm_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    model = str(mlm_dirs[True])
    cases = []
    cases.append((["--task", "no_such_task"], "benchmarks task"))
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("seq,foo\nACGT,1\nACGA,0\n")
    cases.append((["--train", str(nolabel)], "label"))
    one = tmp_path / "one.csv"
    one.write_text("seq,label\n" + "ACGTACGT,1\n" * 10)
    cases.append((["--train", str(one)], "class"))
    empty = tmp_path / "empty.csv"
    empty.write_text("seq,label\nACGTAC,1\n,0\nACGTTT,0\n")
    cases.append((["--train", str(empty)], "empty"))
    cases.append((["--train", str(tmp_path / "missing.csv")], "no such file"))
    ok = tmp_path / "ok.csv"
    ok.write_text("seq,label\n" + "".join(f"{'ACGT' * (3 + i % 4)},{i % 2}\n" for i in range(20)))
    cases.append((["--train", str(ok), "--baselines", "kmer_lr,svm"], "svm"))
    cases.append((["--train", str(ok), "--pooling", "first"], "frozen probe"))
    cases.append((["--train", str(ok), "--unfreeze", "--head", "logreg"], "logreg"))
    for extra, word in cases:
        rc, err = _cli_error(["finetune", "--model", model, *extra, "--out", str(out)], capsys)
        assert rc == 2, extra
        assert len(err) == 1 and err[0].startswith("dna-mdlm finetune: error:") and word in err[0].lower(), (extra, err)
        assert not out.exists()
        assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())
    rc, err = _cli_error(["predict", "--model", model, "--fasta", str(nolabel), "--out", str(tmp_path / "p.tsv")], capsys)
    assert rc == 2 and len(err) == 1 and "not a fine-tuned classifier" in err[0]
    assert not (tmp_path / "p.tsv").exists()


def test_compare_to_baseline_calls_a_tie_within_the_spread_and_reports_auroc():
    from dna_mdlm.training.finetune import compare_to_baseline

    def summ(acc, acc_spread, auroc, auroc_spread):
        return {"accuracy": {"mean": acc, "spread": acc_spread}, "auroc": {"mean": auroc, "spread": auroc_spread}}

    # one sequence in 100 better on accuracy, runs spread by 0.03, AUROC clearly worse: not "model better"
    cmp = compare_to_baseline({"frozen": summ(0.81, 0.03, 0.80, 0.01), "kmer_lr": summ(0.80, 0.02, 0.88, 0.01)},
                              "frozen", "kmer_lr")
    assert cmp["verdict"] == "accuracy: tie (within the spread); AUROC: baseline better"
    assert cmp["accuracy"]["spread"] == 0.03
    cmp = compare_to_baseline({"frozen": summ(0.90, 0.01, 0.95, 0.01), "kmer_lr": summ(0.80, 0.02, 0.94, 0.02)},
                              "frozen", "kmer_lr")
    assert cmp["verdict"] == "accuracy: model better; AUROC: tie (within the spread)"
    one_class = {"frozen": {"accuracy": {"mean": 0.5, "spread": 0.0}}, "kmer_lr": {"accuracy": {"mean": 0.4, "spread": 0.0}}}
    assert compare_to_baseline(one_class, "frozen", "kmer_lr")["verdict"] == \
        "accuracy: model better; AUROC: n/a (one class in the test set)"


def test_fmt_number_never_prints_a_non_finite_number():
    from dna_mdlm.units import fmt_number

    assert fmt_number(0.12345) == "0.1235"
    assert [fmt_number(v, ".3f", "n/a") for v in (float("nan"), float("inf"), None, "x")] == ["n/a"] * 4
