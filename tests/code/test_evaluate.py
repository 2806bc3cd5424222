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
    assert good.beats_baseline is True and "most common label" not in (good.warning or "")
    assert good.warning == (  # only the uncertainty of 10 images is left to say (issue 22)
        "only 10 test images: the accuracy 1.000 could be anywhere in [0.72, 1.00] (95%), too wide to trust or to "
        "tell two models apart; add test images"
    )


def test_every_accuracy_carries_its_uncertainty() -> None:
    """9 test images all right: accuracy 1.0 once came with 'warning: null'."""
    from training.model.evaluation import accuracy_interval, indistinguishable_warning

    probabilities = np.tile([[0.9, 0.1]], (9, 1))
    report = evaluate_predictions(probabilities, ["a"] * 9, ["a", "b"], image_ids=list("123456789"), paths=["p"] * 9)
    assert report.accuracy == 1.0 and report.accuracy_interval == [0.7009, 1.0]
    assert report.warning is not None and "only 9 test images" in report.warning
    assert accuracy_interval(1900, 2000) == (0.9396, 0.9587)
    # the gate's comparison: one image apart on 9 is noise; 40 fixed against 5 broken on 2,000 is not
    assert "cannot tell the two models apart" in (indistinguishable_warning({"x"}, set(), 9) or "")
    fixed_many = indistinguishable_warning({f"n{i}" for i in range(5)}, {f"o{i}" for i in range(40)}, 2000)
    assert fixed_many is None
