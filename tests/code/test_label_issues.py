"""Label-issue evidence: cleanlab ranking, duplicate conflicts, error tracing, growing a confirmed set."""

from __future__ import annotations

import numpy as np
import pytest

from training.embedder import EmbeddingIndex
from training.label_issues import (
    DUPLICATE_FLOOR,
    LabelAudit,
    average_hash,
    duplicate_conflicts,
    find_suspects,
    in_sample_ranking,
    label_quality_ranking,
    trace_to_training,
)
from training.label_store import ImageRecord
from training.similarity import nearest_to_any

CLASSES = ["cat", "dog", "fox"]


def _record(i: int, label: str, sha: str | None = None) -> ImageRecord:
    return ImageRecord(f"id{i:03d}", f"train/{label}/{i:03d}.png", "train", label, label, sha or f"sha{i:03d}")


def _confident_probs(true: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    probs = rng.uniform(0.0, 0.1, size=(len(true), len(CLASSES)))
    probs[np.arange(len(true)), true] = rng.uniform(0.8, 0.95, size=len(true))
    return probs / probs.sum(axis=1, keepdims=True)


def test_cleanlab_ranking_puts_the_flipped_labels_first() -> None:
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(3), 40)
    given = true.copy()
    flipped = [3, 50, 100]
    given[flipped] = [1, 2, 0]
    ranking = label_quality_ranking(given, _confident_probs(true, rng))
    top = ranking[:3]
    assert {issue.index for issue in top} == set(flipped)
    assert [issue.suggested for issue in top] == [int(true[issue.index]) for issue in top]
    flagged = {issue.index for issue in ranking if issue.flagged}
    assert flagged and flagged <= set(flipped)  # cleanlab's verdict: conservative, never a clean image here
    assert all(issue.reasons == (["out_of_fold"] if issue.flagged else []) for issue in ranking)
    assert [issue.score for issue in ranking] == sorted((issue.score for issue in ranking), reverse=True)


def test_in_sample_ranking_misses_what_the_model_memorised() -> None:
    given = np.array([0, 1, 2, 0])
    memorised = np.eye(3)[given] * 0.97 + 0.01  # the model learned the wrong label too
    scores = [issue.score for issue in in_sample_ranking(given, memorised)]
    assert scores == pytest.approx([0.02] * 4)  # every label looks right to the model that learned them


def test_average_hash_matches_a_resized_copy_not_a_different_picture() -> None:
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 255, size=(32, 32, 3)).astype(np.uint8)
    brighter = np.clip(picture.astype(int) + 10, 0, 255).astype(np.uint8)
    other = rng.integers(0, 255, size=(32, 32, 3)).astype(np.uint8)
    a, b, c = average_hash(np.stack([picture, brighter, other]))
    assert a == b != c


def test_duplicate_conflicts_join_any_shared_key_and_skip_agreeing_groups() -> None:
    sha = ["x", "x", "y", "z", "w", "w"]
    near = ["h1", "h2", "h3", "h3", "h4", "h5"]
    labels = [0, 1, 0, 2, 1, 1]
    groups = duplicate_conflicts([sha, near], labels)
    assert sorted(sorted(g) for g in groups) == [[0, 1], [2, 3]]  # 4 and 5 agree


def _audit(records: list[ImageRecord], oof: np.ndarray, hashes: list[str]) -> LabelAudit:
    return LabelAudit(
        image_ids=np.array([r.image_id for r in records]),
        out_of_fold=oof,
        in_sample=oof,
        average_hashes=np.array(hashes),
        sha256s=np.array([r.sha256 for r in records]),
        folds=3,
    )


def test_find_suspects_uses_current_labels_and_duplicates() -> None:
    rng = np.random.default_rng(2)
    true = np.repeat(np.arange(3), 30)
    records = [_record(i, CLASSES[t]) for i, t in enumerate(true)]
    records[5] = _record(5, "dog")  # a cat labelled dog
    records[40] = _record(40, "fox", sha="sha041")  # same bytes as 41 (a dog), other label
    hashes = [f"h{i}" for i in range(len(records))]
    audit = _audit(records, _confident_probs(true, rng), hashes)

    suspects = find_suspects(audit, records, CLASSES)
    by_id = {s.record.image_id: s for s in suspects}
    assert suspects[0].record.image_id in {"id005", "id040"}
    assert by_id["id005"].suggested_label == "cat" and by_id["id005"].score > 0.8
    assert "duplicate_conflict" in by_id["id040"].reasons and by_id["id040"].score >= DUPLICATE_FLOOR
    assert "duplicate_conflict" in by_id["id041"].reasons  # which of the two is wrong is the user's call

    fixed = [_record(5, "cat") if r.image_id == "id005" else r for r in records]
    after = {s.record.image_id: s for s in find_suspects(audit, fixed, CLASSES)}
    assert after["id005"].score < 0.5


def test_find_suspects_skips_images_newer_than_the_audit() -> None:
    records = [_record(i, "cat") for i in range(3)]
    audit = _audit(records[:2], np.full((2, 3), 1 / 3), ["a", "b"])
    assert {s.record.image_id for s in find_suspects(audit, records, CLASSES)} == {"id000", "id001"}


def test_tracing_finds_the_training_images_that_pull_errors() -> None:
    # Two clusters: real cats near 0, and dogs near 10 -- some dogs labelled cat (the impostors).
    train = [_record(i, "cat") for i in range(5)] + [_record(5 + i, "cat") for i in range(3)]
    train += [_record(8 + i, "dog") for i in range(4)]
    train_vectors = np.array([[0.0 + i * 0.1] for i in range(5)] + [[10.0], [10.1], [10.2]] + [[12.0]] * 4)
    # two test dogs near the impostors, predicted cat
    traced = trace_to_training(
        np.array([[10.05], [10.15]]), ["cat", "cat"], ["dog", "dog"], train_vectors, train, CLASSES, k=3
    )
    assert {t.record.image_id for t in traced} == {"id005", "id006", "id007"}
    assert all(t.votes == 2 and t.suggested_label == "dog" for t in traced)


def test_nearest_to_any_measures_to_the_closest_query() -> None:
    records = [_record(i, "cat") for i in range(4)]
    index = EmbeddingIndex(
        np.array([r.image_id for r in records]),
        np.array(["train"] * 4),
        np.array([[0.0], [1.0], [5.0], [9.0]], dtype=np.float32),
    )
    hits = nearest_to_any(index, np.array([[0.0], [10.0]], dtype=np.float32), records[1:], 2)
    assert [(h.record.image_id, h.distance) for h in hits] == [("id001", 1.0), ("id003", 1.0)]
