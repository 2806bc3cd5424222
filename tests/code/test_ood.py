"""The OOD score on embeddings with a known answer: clusters of training points, held-out ones, far ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.model.ood import MIN_CALIBRATION, OodScorer, fit_ood

DIM = 16


def clusters(rng: np.random.Generator, n: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(centres), size=n)
    # non-negative like the network's ReLU embedding
    return np.abs(centres[labels] + rng.normal(0, 0.3, size=(n, DIM))).astype(np.float32), labels


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.uniform(1, 4, size=(3, DIM))
    train, labels = clusters(rng, 600, centres)
    held_out, _ = clusters(rng, 400, centres)
    fresh, _ = clusters(rng, 400, centres)
    far, _ = clusters(rng, 200, rng.uniform(1, 4, size=(2, DIM)))  # two classes the training never saw
    return {"train": train, "labels": labels, "held_out": held_out, "fresh": fresh, "far": far}


@pytest.mark.parametrize("method", ["mahalanobis", "mahalanobis raw", "knn"])
def test_unseen_clusters_score_high_and_about_1_percent_of_new_in_distribution_points_are_flagged(
    method: str, data: dict[str, np.ndarray]
) -> None:
    kind, _, raw = method.partition(" ")
    scorer = fit_ood(kind, data["train"], data["labels"], data["held_out"], k=1, quantile=0.99, normalise=not raw)  # type: ignore[arg-type]
    assert scorer.normalise is not bool(raw)
    fresh_scores, fresh_flags = scorer.score(data["fresh"])
    far_scores, far_flags = scorer.score(data["far"])
    auroc = roc_auc_score(np.r_[np.zeros(len(fresh_scores)), np.ones(len(far_scores))], np.r_[fresh_scores, far_scores])
    assert auroc > 0.99
    assert far_flags.mean() > 0.9
    assert fresh_flags.mean() < 0.05  # 1% expected; a fresh draw of 400 varies
    assert ((fresh_scores >= 0) & (fresh_scores <= 1)).all() and ((far_scores >= 0) & (far_scores <= 1)).all()
    assert np.array_equal(far_flags, far_scores > scorer.threshold)  # the flag is the score against the threshold


def test_the_unit_score_is_the_rank_among_held_out_images_and_strictly_increasing(data: dict[str, np.ndarray]) -> None:
    scorer = fit_ood("mahalanobis", data["train"], data["labels"], data["held_out"])
    raw = np.sort(np.r_[scorer.calibration, scorer.calibration * 0.5, scorer.calibration * 3, [0.0, 1e6]])
    unit = scorer.to_unit(raw)
    assert (np.diff(unit) >= 0).all() and unit[0] == 0.0 and unit[-1] < 1.0
    assert scorer.to_unit(np.array([np.median(scorer.calibration)]))[0] == pytest.approx(0.5, abs=0.01)
    assert scorer.threshold == pytest.approx(0.99, abs=0.01)


def test_saved_and_loaded_it_scores_the_same(data: dict[str, np.ndarray], tmp_path: Path) -> None:
    for method in ("mahalanobis", "knn"):
        scorer = fit_ood(method, data["train"], data["labels"], data["held_out"], k=3)  # type: ignore[arg-type]
        scorer.save(tmp_path / "ood.npz")
        loaded = OodScorer.load(tmp_path / "ood.npz")
        assert loaded.method == method and loaded.k == 3
        np.testing.assert_array_equal(loaded.score(data["far"])[0], scorer.score(data["far"])[0])
        assert loaded.describe() == scorer.describe()


def test_without_held_out_images_a_tenth_of_the_train_split_calibrates(data: dict[str, np.ndarray]) -> None:
    scorer = fit_ood("mahalanobis", data["train"], data["labels"], np.zeros((0, DIM), np.float32))
    assert len(scorer.calibration) == len(data["train"]) // 10
    assert scorer.score(data["fresh"])[1].mean() < 0.1
    with pytest.raises(ValueError, match="at least"):
        fit_ood("knn", data["train"][:MIN_CALIBRATION], data["labels"][:MIN_CALIBRATION], data["held_out"][:0])
    with pytest.raises(ValueError, match="unknown OOD method"):
        fit_ood("energy", data["train"], data["labels"], data["held_out"])  # type: ignore[arg-type]
