"""Label-issue evidence: cleanlab ranking, duplicate conflicts, error tracing, growing a confirmed set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.curation.audit import LabelAudit
from training.curation.duplicates import duplicate_conflicts, near_duplicate_groups
from training.curation.neighbours import nearest_to_any
from training.curation.ranking import DUPLICATE_FLOOR, find_suspects, in_sample_ranking, label_quality_ranking
from training.curation.tracing import trace_votes
from training.labels.records import ImageRecord, ImageState
from training.labels.store import open_store
from training.labels.sync import import_folder
from training.settings import Settings
from training.vectors.base import Where
from training.vectors.faiss_index import FaissIndex

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
    assert all((issue.score > 0.5) == issue.flagged for issue in ranking)


def test_cleanlab_flagged_issues_rank_above_unflagged_ones_of_lower_quality() -> None:
    # class 0 is hard: the model gives all of it a low probability, so one global cut would
    # call every class-0 label wrong; confident learning's per-class thresholds see that
    # it is the flipped class-1 image that stands out, though its quality is not the lowest
    rng = np.random.default_rng(3)
    true = np.repeat([0, 1, 2], 60)
    given = true.copy()
    given[70] = 2
    probs = _confident_probs(true, rng)
    probs[:60] = [0.05, 0.5, 0.45]
    probs[70] = [0.02, 0.9, 0.08]
    ranking = label_quality_ranking(given, probs)
    flagged = [issue for issue in ranking if issue.flagged]
    assert [issue.index for issue in flagged] == [70]
    assert ranking[0].index == 70
    assert ranking[0].quality > min(issue.quality for issue in ranking)


def test_in_sample_ranking_misses_what_the_model_memorised() -> None:
    given = np.array([0, 1, 2, 0])
    memorised = np.eye(3)[given] * 0.97 + 0.01  # the model learned the wrong label too
    scores = [issue.score for issue in in_sample_ranking(given, memorised)]
    assert scores == pytest.approx([0.02] * 4)  # every label looks right to the model that learned them


def _pictures(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth random pictures (blocky, like downscaled photos), uint8 (n, 32, 32, 3)."""
    coarse = rng.integers(0, 255, size=(n, 8, 8, 1))
    return np.repeat(np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2), 3, axis=3).astype(np.uint8)


def test_near_duplicates_group_copies_of_a_picture_not_different_pictures() -> None:
    rng = np.random.default_rng(1)
    a, b, c = _pictures(rng, 3)
    brighter = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    noisy = np.clip(a.astype(int) + rng.integers(-3, 4, size=a.shape), 0, 255).astype(np.uint8)
    groups = near_duplicate_groups(np.stack([a, b, brighter, c, noisy, b]), tolerance=0.03)
    assert groups[0] == groups[2] == groups[4] >= 0  # a, its brighter and noisy copies
    assert groups[1] == groups[5] >= 0 and groups[1] != groups[0]  # b twice
    assert groups[3] == -1  # c alone
    assert (near_duplicate_groups(np.stack([a, brighter]), tolerance=0.0) == -1).all()


def _planted_copies(rng: np.random.Generator, distinct: int, copies: int, size: int = 32) -> np.ndarray:
    """Distinct pictures of four kinds (noise, smooth gradients, blocks, near-flat with a small square: the last
    two crowd each other within the tolerance), and noisy copies of some, a third of them also brighter, shuffled."""
    pictures = []
    x = np.linspace(0.0, 1.0, size)
    for i in range(distinct):
        kind = i % 4
        if kind == 0:
            picture = rng.integers(0, 256, (size, size, 3)).astype(float)
        elif kind == 1:
            a, b = rng.uniform(-1, 1, 2)
            picture = np.repeat(((a * x[:, None] + b * x[None, :] + 2) / 4 * 255)[..., None], 3, axis=2)
        elif kind == 2:
            picture = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((size // 4, size // 4, 1)))
        else:
            picture = np.full((size, size, 3), float(rng.integers(0, 256)))
            top, left = rng.integers(0, size - 6, 2)
            picture[top : top + 6, left : left + 6] = rng.integers(0, 256)
        pictures.append(picture)
    sources = rng.choice(distinct, copies, replace=False)
    for j, i in enumerate(sources):
        pictures.append(pictures[i] + rng.normal(0, 3, pictures[i].shape) + (15 if j % 3 == 0 else 0))
    images = np.clip(np.stack(pictures), 0, 255).astype(np.uint8)
    return images[rng.permutation(len(images))]


@pytest.mark.parametrize("tolerance", [0.03, 0.0])
def test_near_duplicates_beyond_the_exact_threshold_are_the_exact_groups(tolerance: float) -> None:
    images = _planted_copies(np.random.default_rng(0), distinct=1600, copies=250)
    exact = near_duplicate_groups(images, tolerance=tolerance)
    approximate = near_duplicate_groups(images, tolerance=tolerance, exact_max=500)  # the IVF path
    assert (exact >= 0).sum() >= 500 if tolerance else (exact >= 0).sum() < 10  # many groups, chains among them
    assert approximate.tolist() == exact.tolist()


def test_duplicate_conflicts_join_any_shared_key_and_skip_agreeing_groups() -> None:
    sha = ["x", "x", "y", "z", "w", "w", "", ""]
    near = ["h1", "h2", "h3", "h3", "h4", "h5", "", ""]
    labels = [0, 1, 0, 2, 1, 1, 0, 1]
    groups = duplicate_conflicts([sha, near], labels)
    assert sorted(sorted(g) for g in groups) == [[0, 1], [2, 3]]  # 4 and 5 agree; 6 and 7 have no key


def _audit(records: list[ImageRecord], oof: np.ndarray, groups: list[int]) -> LabelAudit:
    return LabelAudit(
        image_ids=np.array([r.image_id for r in records]),
        out_of_fold=oof,
        in_sample=oof,
        duplicate_groups=np.array(groups),
        sha256s=np.array([r.sha256 for r in records]),
        folds=3,
    )


def test_find_suspects_uses_current_labels_and_duplicates() -> None:
    rng = np.random.default_rng(2)
    true = np.repeat(np.arange(3), 30)
    records = [_record(i, CLASSES[t]) for i, t in enumerate(true)]
    records[5] = _record(5, "dog")  # a cat labelled dog
    records[40] = _record(40, "fox", sha="sha041")  # same bytes as 41 (a dog), other label
    groups = [-1] * len(records)
    groups[70], groups[71], groups[72] = 7, 7, 7  # near copies of one fox picture ...
    records[72] = _record(72, "cat")  # ... one of them labelled cat
    audit = _audit(records, _confident_probs(true, rng), groups)

    suspects = find_suspects(audit, records, CLASSES)
    by_id = {s.image_id: s for s in suspects}
    assert {s.image_id for s in suspects[:3]} == {"id005", "id040", "id072"}
    assert by_id["id005"].suggested_label == "cat" and by_id["id005"].label_quality < 0.2
    for wrong, should_be in [("id040", "dog"), ("id072", "fox")]:
        assert "duplicate_conflict" in by_id[wrong].reasons and by_id[wrong].score >= DUPLICATE_FLOOR
        assert by_id[wrong].suggested_label == should_be and by_id[wrong].flagged
    for right in ["id041", "id070", "id071"]:  # in the group, agreeing with what the pictures show
        assert "duplicate_conflict" in by_id[right].reasons
        assert by_id[right].score < 0.5 and not by_id[right].flagged

    fixed = [_record(5, "cat") if r.image_id == "id005" else r for r in records]
    after = {s.image_id: s for s in find_suspects(audit, fixed, CLASSES)}
    assert after["id005"].score < 0.5


def test_find_suspects_skips_images_newer_than_the_audit() -> None:
    records = [_record(i, "cat") for i in range(3)]
    audit = _audit(records[:2], np.full((2, 3), 1 / 3), [-1, -1])
    assert {s.image_id for s in find_suspects(audit, records, CLASSES)} == {"id000", "id001"}


def test_tracing_finds_the_training_images_that_pull_errors() -> None:
    # Two clusters: real cats near 0, and dogs near 10 -- some dogs labelled cat (the impostors).
    train = [_record(i, "cat") for i in range(5)] + [_record(5 + i, "cat") for i in range(3)]
    train += [_record(8 + i, "dog") for i in range(4)]
    train_vectors = np.array([[0.0 + i * 0.1] for i in range(5)] + [[10.0], [10.1], [10.2]] + [[12.0]] * 4)
    index = FaissIndex.build([r.image_id for r in train], train_vectors)
    index.set_states([ImageState(r.image_id, "train", r.label, True, r.image_id == "id004") for r in train])
    # two test dogs near the impostors, predicted cat
    votes = trace_votes(index, np.array([[10.05], [10.15]]), ["cat", "cat"], ["dog", "dog"], k=3, split="train")
    assert set(votes) == {"id005", "id006", "id007"}
    assert all(v == {"dog": 2} for v in votes.values())
    # a reviewed image is settled: it pulls no votes, the next nearest unreviewed cat does
    far = trace_votes(index, np.array([[3.0]]), ["cat"], ["dog"], k=1, split="train")
    assert set(far) == {"id003"}


def test_nearest_to_any_measures_to_the_closest_query(settings: Settings, shapes_dataset: Path) -> None:
    with open_store(settings) as store:
        import_folder(settings, store)
        ids = [r.image_id for r in store.queries.images(split="train")[:4]]
        index = FaissIndex.build(ids, np.array([[0.0], [1.0], [5.0], [9.0]]))
        index.refresh(store)
        hits = nearest_to_any(index, store, np.array([[0.0], [10.0]]), 2, Where.of(exclude=[ids[0]]))
    assert [(h.image_id, h.distance) for h in hits] == sorted([(ids[1], 1.0), (ids[3], 1.0)])  # ties by id


def test_nearest_finds_the_most_similar_other_rows_never_itself() -> None:
    from training.model.feature_neighbours import nearest

    points = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.05]])
    rows, similarities = nearest(points, points, 2)
    assert rows[0].tolist() == [4, 1] and rows[2].tolist() == [3, 1] or rows[2].tolist() == [3, 4]
    assert all(i not in row for i, row in enumerate(rows.tolist()))
    assert (np.diff(similarities, axis=1) <= 0).all() and similarities.max() <= 1.0 + 1e-6
    few, _ = nearest(points[:1], points[1:2], 3, query_rows=np.array([-1]))  # fewer candidates than k
    assert few.tolist() == [[0, -1, -1]]


def test_nearest_beyond_the_exact_threshold_recalls_the_exact_neighbours() -> None:
    from training.model.feature_neighbours import nearest

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 128))
    points = (centres[rng.integers(0, 40, 6000)] + rng.normal(scale=0.6, size=(6000, 128))).astype(np.float32)
    held = np.arange(0, 6000, 3)  # a fold's queries, numbered among all the candidates
    exact_rows, exact_similarities = nearest(points[held], points, 10, query_rows=held)
    rows, similarities = nearest(points[held], points, 10, query_rows=held, exact_max=500)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), exact_rows.tolist(), strict=True)])
    assert recall >= 0.95
    assert not (rows == held[:, None]).any() and (rows >= 0).all()
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    assert np.allclose(similarities, np.einsum("qd,qkd->qk", unit[held], unit[rows]), atol=1e-5)  # exact cosines
    assert (np.diff(similarities, axis=1) <= 1e-6).all() and (similarities <= exact_similarities + 1e-5).all()


def _neighbour_audit(
    records: list[ImageRecord], oof: np.ndarray, near: np.ndarray, test_ids: list[str], near_test: np.ndarray
) -> LabelAudit:
    return LabelAudit(
        image_ids=np.array([r.image_id for r in records]),
        out_of_fold=oof,
        in_sample=oof,
        duplicate_groups=np.full(len(records), -1),
        sha256s=np.array([r.sha256 for r in records]),
        folds=3,
        neighbours=near,
        similarities=np.where(near >= 0, 0.9, 0.0).astype(np.float32),
        test_ids=np.array(test_ids),
        test_neighbours=near_test,
        test_similarities=np.where(near_test >= 0, 0.9, 0.0).astype(np.float32),
    )


def test_a_group_the_models_learnt_is_found_by_its_nearest_test_images() -> None:
    """Four dogs labelled cat look alike: the fold models learnt them as cats and they are each other's
    neighbours, but the test images most like them are dogs, whose labels are trusted."""
    cats = [_record(i, "cat") for i in range(8)]
    impostors = [_record(8 + i, "cat") for i in range(4)]
    dogs = [_record(12 + i, "dog") for i in range(8)]
    records = cats + impostors + dogs
    oof = np.tile([0.9, 0.05, 0.05], (len(records), 1))  # cats and impostors: "cat", as the models learnt
    oof[12:] = [0.05, 0.9, 0.05]
    groups = [list(range(8)), list(range(8, 12)), list(range(12, 20))]
    near = np.array([[j for j in group if j != i][:3] for group in groups for i in group])
    tests = [_record(100 + i, label) for i, label in enumerate(["cat", "cat", "cat", "dog", "dog", "dog"])]
    tests = [
        ImageRecord(r.image_id, r.path.replace("train", "test"), "test", r.label, r.label, r.sha256) for r in tests
    ]
    near_test = np.array([[0, 1, 2]] * 8 + [[3, 4, 5]] * 12)  # the impostors look like the test dogs
    audit = _neighbour_audit(records, oof, near, [r.image_id for r in tests], near_test)

    suspects = find_suspects(audit, records, CLASSES, tests)
    assert {s.image_id for s in suspects[:4]} == {r.image_id for r in impostors}
    top = suspects[0]
    assert top.suggested_label == "dog" and top.test_neighbour_agreement == 0.0 and top.neighbour_agreement == 1.0
    assert "3 of its 3 nearest neighbours are labelled cat" in top.reasons
    assert "0 of its 3 nearest test images are labelled cat, 3 dog" in top.reasons
    assert top.out_of_fold_probability == pytest.approx(0.9)
    # the ranking follows the labels now: were those test images cats, the impostors would be no suspects
    as_cats = [ImageRecord(r.image_id, r.path, "test", "cat", "cat", r.sha256) for r in tests]
    again = {s.image_id: s for s in find_suspects(audit, records, CLASSES, as_cats)}
    assert all(again[r.image_id].score < 0.5 and again[r.image_id].test_neighbour_agreement == 1.0 for r in impostors)


def test_an_image_without_neighbours_is_ranked_on_its_probabilities_alone() -> None:
    records = [_record(i, "cat") for i in range(3)]
    oof = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.8, 0.1, 0.1]])
    audit = _audit(records, oof, [-1, -1, -1])  # an audit from before neighbours
    suspects = find_suspects(audit, records, CLASSES)
    assert [s.image_id for s in suspects] == ["id001", "id002", "id000"]
    assert suspects[0].score == pytest.approx(0.8) and suspects[0].neighbour_agreement is None
    assert suspects[0].reasons[-1] == "out-of-fold models: 0.20 for cat, most likely dog"
