"""Tests for dna_mdlm.evaluation.classification: the numbers and the warnings a reader must see."""

import numpy as np
import pytest

from dna_mdlm.evaluation.classification import classification_metrics


def test_a_classifier_that_predicts_one_class_is_flagged():
    y = np.array([0, 1, 0, 1, 0, 1])
    proba = np.tile([0.6, 0.4], (6, 1))  # always class 0
    m = classification_metrics(y, proba, ["neg", "pos"])
    assert m["accuracy"] == 0.5 and m["mcc"] == 0.0
    assert len(m["warnings"]) == 1 and "predicts one class (neg) for all 6 sequences" in m["warnings"][0]


def test_absent_classes_are_left_out_of_macro_scores_and_flagged():
    y = np.array([0, 0, 1, 1])  # class 2 never occurs in this test set
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7]])
    m = classification_metrics(y, proba, ["a", "b", "c"])
    # predictions a, b, b, c: F1(a) = 2/3 (precision 1, recall 1/2), F1(b) = 1/2 (precision 1/2, recall 1/2); the
    # absent class c does not count as a zero (over all three classes it would be 0.389)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert any("no sequence of class(es) c" in w for w in m["warnings"])
    assert m["confusion"] == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]


def test_a_healthy_classifier_has_no_warning_and_non_finite_probabilities_are_refused():
    y = np.array([0, 1, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    m = classification_metrics(y, proba, ["neg", "pos"])
    assert m["warnings"] == [] and m["accuracy"] == 1.0 and m["auroc"] == 1.0
    with pytest.raises(ValueError, match="not finite"):
        classification_metrics(y, np.where(proba > 0.85, np.nan, proba), ["neg", "pos"])
