"""The OOD scores on network outputs with a known answer: clusters of training points, held-out ones, far ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.model.ood import METHODS, MIN_CALIBRATION, Head, OodScorer, calibration_status, fit_ood, to_unit

DIM = 16
EARLY = 8  # channel means, then means of squares, of 4 channels


def clusters(rng: np.random.Generator, n: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(centres), size=n)
    # non-negative like the network's ReLU embedding
    return np.abs(centres[labels] + rng.normal(0, 0.3, size=(n, DIM))).astype(np.float32), labels


def early_features(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    """Channel means and means of squares as a photo's first layer gives them; ``scale`` > 1: a noisier picture."""
    means = np.abs(rng.normal(1.0, 0.1, size=(n, EARLY // 2))) * scale
    variances = np.abs(rng.normal(0.5, 0.05, size=(n, EARLY // 2))) * scale**2
    return np.concatenate([means, variances + means**2], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.uniform(1, 4, size=(3, DIM))
    train, labels = clusters(rng, 600, centres)
    held_out, held_out_labels = clusters(rng, 400, centres)
    fresh, _ = clusters(rng, 400, centres)
    far, _ = clusters(rng, 200, rng.uniform(3, 6, size=(2, DIM)))  # two classes the training never saw, off to one side
    # noise: an embedding like a known class's (the network maps it onto one), early features far off
    noise, _ = clusters(rng, 200, centres[:1])
    head = Head(rng.normal(0, 1, size=(DIM, 3)).astype(np.float32), np.zeros(3, np.float32))
    return {
        "train": train,
        "labels": labels,
        "held_out": held_out,
        "held_out_labels": held_out_labels,
        "fresh": fresh,
        "far": far,
        "noise": noise,
        "train_early": early_features(rng, 600),
        "held_out_early": early_features(rng, 400),
        "fresh_early": early_features(rng, 400),
        "far_early": early_features(rng, 200),
        "noise_early": early_features(rng, 200, scale=3.0),
        "head_kernel": head.kernel,
        "head_bias": head.bias,
    }


def fit(method: str, data: dict[str, np.ndarray], **options: object) -> OodScorer:
    return fit_ood(
        method,
        data["train"],
        data["labels"],
        data["held_out"],
        held_out_labels=data["held_out_labels"],
        train_early=data["train_early"],
        held_out_early=data["held_out_early"],
        head=Head(data["head_kernel"], data["head_bias"]),
        **options,  # type: ignore[arg-type]
    )


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


@pytest.mark.parametrize("method", ["fused", "rmds", "mahalanobis", "mahalanobis raw", "knn", "knn+norm"])
def test_unseen_clusters_score_high_and_about_1_percent_of_new_in_distribution_points_are_flagged(
    method: str, data: dict[str, np.ndarray]
) -> None:
    kind, _, raw = method.partition(" ")
    scorer = fit(kind, data, k=1, quantile=0.99, normalise=not raw)
    fresh_scores, fresh_flags = scorer.score(data["fresh"], data["fresh_early"])
    far_scores, far_flags = scorer.score(data["far"], data["far_early"])
    assert auroc(fresh_scores, far_scores) > 0.99
    assert far_flags.mean() > 0.9
    assert fresh_flags.mean() < 0.05  # 1% expected; a fresh draw of 400 varies
    assert ((fresh_scores > 0) & (fresh_scores < 1)).all() and ((far_scores > 0) & (far_scores < 1)).all()
    assert np.array_equal(far_flags, far_scores > scorer.threshold)  # the flag is the score against the threshold


def test_the_fused_score_flags_what_only_the_early_features_see(data: dict[str, np.ndarray]) -> None:
    """Noise the embedding maps onto a known class: the embedding's score misses it, the fusion does not."""
    fused, embedding_only = fit("fused", data), fit("rmds", data)
    fresh = fused.score(data["fresh"], data["fresh_early"])[0]
    assert fused.score(data["noise"], data["noise_early"])[1].all()
    assert auroc(fresh, fused.score(data["noise"], data["noise_early"])[0]) > 0.99
    inside = embedding_only.score(data["fresh"])[0]
    assert auroc(inside, embedding_only.score(data["noise"])[0]) < 0.7
    assert [c.kind for c in fused.components] == ["rmds", "early"]
    # and it still sees what only the embedding sees
    assert auroc(fresh, fused.score(data["far"], data["far_early"])[0]) > 0.99


def test_every_method_fits_saves_and_loads_to_the_same_scores(data: dict[str, np.ndarray], tmp_path: Path) -> None:
    for method in METHODS:
        scorer = fit(method, data, k=3)
        path = tmp_path / f"{method}.npz"
        scorer.save(path)
        loaded = OodScorer.load(path)
        assert loaded.method == method and loaded.k == scorer.k and loaded.calibrated is True
        np.testing.assert_array_equal(
            loaded.score(data["far"], data["far_early"])[0], scorer.score(data["far"], data["far_early"])[0]
        )
        assert loaded.describe() == scorer.describe()


def test_a_scorer_saved_before_issue_25_loads_and_scores_as_it_did(data: dict[str, np.ndarray], tmp_path: Path) -> None:
    """The old ood.npz layout (one knn or mahalanobis score): same raw distances, same flags, not marked checked."""
    for method in ("mahalanobis", "knn"):
        scorer = fit_ood(method, data["train"], data["labels"], data["held_out"], k=2)
        component = scorer.components[0]
        path = tmp_path / f"old-{method}.npz"
        np.savez(
            path,
            method=np.array(method),
            k=np.array(2),
            reference=component.arrays["reference"],
            whitening=component.arrays["whitening"],
            calibration=scorer.calibration,
            quantile=np.array(0.99),
            normalise=np.array(True),
        )
        loaded = OodScorer.load(path)
        assert loaded.method == method and loaded.calibrated is None and loaded.warning is None
        np.testing.assert_array_equal(loaded.raw(data["far"]), scorer.raw(data["far"]))
        np.testing.assert_array_equal(loaded.score(data["fresh"])[1], scorer.score(data["fresh"])[1])
        assert calibration_status(loaded) == {"ood_calibrated": None, "ood_warning": None}


def test_the_unit_score_is_the_rank_among_held_out_images_and_strictly_increasing(data: dict[str, np.ndarray]) -> None:
    for method in ("mahalanobis", "rmds", "energy", "fused"):  # distances, differences, negative logsumexps, fusions
        scorer = fit(method, data)
        c = scorer.calibration
        spread = c[-1] - c[0]
        raw = np.sort(np.r_[c, c[0] - 5 * spread, c[0] - spread / 3, c[-1] + spread / 7, c[-1] + 1e6 * spread])
        unit = scorer.to_unit(raw)
        assert (np.diff(unit) >= 0).all() and unit[0] > 0.0 and unit[-1] < 1.0
        assert scorer.to_unit(np.array([np.median(c)]))[0] == pytest.approx(0.5, abs=0.01)
        assert scorer.threshold == pytest.approx(0.99, abs=0.01)
    assert to_unit(np.array([1.0, 2.0, 3.0]), np.array([2.0]))[0] == pytest.approx(0.5)


def test_too_few_held_out_images_of_a_class_leave_it_uncalibrated_and_say_which(data: dict[str, np.ndarray]) -> None:
    """Three held-out images of class 2 (setting: 10 per class): the scorer ranks, but cannot answer `ood`."""
    keep = (data["held_out_labels"] != 2) | (np.cumsum(data["held_out_labels"] == 2) <= 3)
    scorer = fit_ood(
        "fused",
        data["train"],
        data["labels"],
        data["held_out"][keep],
        held_out_labels=data["held_out_labels"][keep],
        train_early=data["train_early"],
        held_out_early=data["held_out_early"][keep],
        min_held_out_per_class=10,
        class_names=["cat", "dog", "horse"],
    )
    assert scorer.calibrated is False and scorer.held_out_min_per_class == 3
    assert scorer.warning is not None and "3 of 'horse'" in scorer.warning and "need 10 per class" in scorer.warning
    assert scorer.describe()["ood_calibrated"] is False
    assert calibration_status(scorer) == {"ood_calibrated": False, "ood_warning": scorer.warning}
    enough = fit("fused", data, min_held_out_per_class=10)
    assert enough.calibrated is True and enough.warning is None and "ood_warning" not in enough.describe()


def test_without_held_out_images_a_tenth_of_the_train_split_ranks_but_is_not_calibrated(
    data: dict[str, np.ndarray],
) -> None:
    scorer = fit_ood("mahalanobis", data["train"], data["labels"], np.zeros((0, DIM), np.float32))
    assert len(scorer.calibration) == len(data["train"]) // 10
    assert scorer.calibrated is False and "fewer than" in (scorer.warning or "")
    assert scorer.score(data["fresh"])[1].mean() < 0.1
    with pytest.raises(ValueError, match="at least"):
        fit_ood("knn", data["train"][:MIN_CALIBRATION], data["labels"][:MIN_CALIBRATION], data["held_out"][:0])


def test_bad_methods_and_missing_inputs_are_clear_errors(data: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="unknown OOD method"):
        fit_ood("entropy", data["train"], data["labels"], data["held_out"])
    with pytest.raises(ValueError, match="head"):
        fit_ood("energy", data["train"], data["labels"], data["held_out"])
    with pytest.raises(ValueError, match="early_features"):
        fit_ood("early", data["train"], data["labels"], data["held_out"])
    # a graph without early features (exported before them): the fusion is its embedding half
    fused = fit_ood("fused", data["train"], data["labels"], data["held_out"])
    assert [c.kind for c in fused.components] == ["rmds"]
