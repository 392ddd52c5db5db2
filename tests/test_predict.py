"""`predict` on records with few or no real bases: an `n_fraction` column, empty probabilities (not a confident
call) for a record with no A/C/G/T, and a warning naming the records that are mostly N."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dna_mdlm.cli import main
from dna_mdlm.models import CaduceusConfig, CaduceusForSequenceClassification
from dna_mdlm.prediction import load_classifier, predict_proba


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict") / "clf"
    torch.manual_seed(0)
    model = CaduceusForSequenceClassification(CaduceusConfig(d_model=8, n_layer=1, num_labels=2,
                                                              id2label={0: "neg", 1: "pos"},
                                                              label2id={"neg": 0, "pos": 1}))
    model.config.architectures = ["CaduceusForSequenceClassification"]
    model.save_pretrained(d)
    return d


def test_predict_reports_n_fraction_and_leaves_all_n_records_empty(clf, tmp_path, capsys):
    rng = np.random.default_rng(0)
    clean = "".join(rng.choice(list("ACGT"), 80))
    recs = {"clean": clean, "allN": "N" * 80, "mostlyN": "N" * 60 + clean[:20], "someN": clean[:70] + "N" * 10}
    fa = tmp_path / "q.fa"
    fa.write_text("".join(f">{k}\n{v}\n" for k, v in recs.items()))
    out = tmp_path / "p.tsv"
    assert main(["predict", "--model", str(clf), "--fasta", str(fa), "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 record(s) with no A/C/G/T base (probabilities left empty) and 1 more than half N" in err
    assert "allN, mostlyN" in err
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    assert lines[0] == ["record", "neg", "pos", "n_fraction"]
    rows = {r[0]: r[1:] for r in lines[1:]}
    assert list(rows) == list(recs)
    assert rows["allN"] == ["", "", "1"]
    assert [float(rows[k][2]) for k in ("clean", "mostlyN", "someN")] == [0.0, 0.75, 0.125]
    want = predict_proba(load_classifier(clf), [recs["clean"], recs["mostlyN"], recs["someN"]])
    got = np.array([[float(x) for x in rows[k][:2]] for k in ("clean", "mostlyN", "someN")])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a clean file: no warning
    fa.write_text(f">clean\n{clean}\n")
    assert main(["predict", "--model", str(clf), "--fasta", str(fa), "--out", str(out), "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err
