"""Evaluation numbers on hand-made predictions whose right answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from training.model.evaluation import evaluate_predictions


def test_scores_match_a_hand_computed_example() -> None:
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    labels = ["cat", "dog", "dog", "bunny"]
    report = evaluate_predictions(
        probabilities, labels, ["cat", "dog", "bunny"], image_ids=list("abcd"), paths=[f"{i}.png" for i in "abcd"]
    )
    assert report.n == 4
    assert report.accuracy == pytest.approx(0.75)
    assert report.loss == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.3, 0.8])), rel=1e-5)
    assert report.per_class["dog"].recall == pytest.approx(0.5)
    assert report.per_class["cat"].precision == pytest.approx(0.5)
    assert report.per_class["dog"].support == 2
    assert report.confusion_matrix["labels"] == ["cat", "dog", "bunny"]
    assert report.confusion_matrix["matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    [wrong] = report.misclassified
    assert (wrong.image_id, wrong.label, wrong.predicted) == ("c", "dog", "cat")
    assert wrong.confidence == pytest.approx(0.6)


def test_a_label_the_model_never_saw_counts_as_an_error() -> None:
    report = evaluate_predictions(np.array([[1.0, 0.0]]), ["zebra"], ["cat", "dog"], image_ids=["z"], paths=["z.png"])
    assert report.accuracy == 0.0
    assert np.isfinite(report.loss)
    assert "zebra" in report.confusion_matrix["labels"]


def test_a_model_no_better_than_the_majority_label_is_flagged() -> None:
    labels = ["cat"] * 8 + ["dog"] * 2
    always_cat = np.tile([0.9, 0.1], (10, 1))
    report = evaluate_predictions(always_cat, labels, ["cat", "dog"], image_ids=list("abcdefghij"), paths=["p"] * 10)
    assert report.accuracy == pytest.approx(0.8) == report.baseline_accuracy
    assert report.beats_baseline is False
    assert report.warning is not None and "most common label" in report.warning

    right = np.array([[0.9, 0.1]] * 8 + [[0.1, 0.9]] * 2)
    good = evaluate_predictions(right, labels, ["cat", "dog"], image_ids=list("abcdefghij"), paths=["p"] * 10)
    assert good.beats_baseline is True and good.warning is None
