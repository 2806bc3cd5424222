"""The vector index: exact and approximate faiss search under label filters that follow the label store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.labels.records import ImageState
from training.labels.store import open_store
from training.labels.sync import import_folder
from training.settings import Settings
from training.vectors.base import BACKENDS, Where
from training.vectors.faiss_index import FaissIndex

LABELS = ["cat", "dog", "fox", "owl"]


def clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim)) * 4
    return (centres[rng.integers(0, 50, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def states(n: int, seed: int = 0) -> list[ImageState]:
    rng = np.random.default_rng(seed)
    return [
        ImageState(f"i{i}", "test" if i % 5 == 0 else "train", LABELS[rng.integers(0, 4)], i % 97 != 0, i % 7 == 0)
        for i in range(n)
    ]


def exact(vectors: np.ndarray, image_states: list[ImageState], query: np.ndarray, k: int, where: Where) -> list[str]:
    """The answer by brute force over the rows ``where`` allows, the way the index was never told."""
    allowed = [
        i
        for i, s in enumerate(image_states)
        if s.present
        and (where.split is None or s.split == where.split)
        and (where.labels is None or s.label in where.labels)
        and not (where.unreviewed and s.reviewed)
        and s.image_id not in where.exclude
    ]
    distances = np.linalg.norm(vectors[allowed] - query, axis=1)
    return [image_states[allowed[i]].image_id for i in np.argsort(distances, kind="stable")[:k]]


FILTERS = [
    Where(),
    Where.of(split="train"),
    Where.of(split="train", label="dog", unreviewed=True),
    Where.of(labels=["cat", "owl"], exclude=["i3", "i8"]),
    Where.of(split="test", label="fox"),
    Where.of(label="no such label"),
]


def _filter_id(where: Where) -> str:
    """The same id in every process (a frozenset's repr follows the hash seed; pytest-xdist compares the ids)."""
    labels = None if where.labels is None else sorted(where.labels)
    return f"split={where.split} labels={labels} unreviewed={where.unreviewed} exclude={sorted(where.exclude or ())}"


@pytest.mark.parametrize("where", FILTERS, ids=_filter_id)
def test_flat_search_is_exact_under_every_filter(where: Where) -> None:
    vectors, image_states = clustered(3000), states(3000)
    index = FaissIndex.build([s.image_id for s in image_states], vectors, brute_force_max=100)
    index.set_states(image_states)
    queries = vectors[:20] + 0.01
    for query, hits in zip(queries, index.search(queries, 10, where), strict=True):
        assert [h.image_id for h in hits] == exact(vectors, image_states, query, 10, where)
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        if hits:
            np.testing.assert_allclose(
                hits[0].distance, np.linalg.norm(vectors[int(hits[0].image_id[1:])] - query), rtol=1e-4
            )


def test_a_selective_filter_is_answered_exactly_over_its_candidates() -> None:
    vectors, image_states = clustered(3000), states(3000)
    index = FaissIndex.build([s.image_id for s in image_states], vectors, brute_force_max=10_000)
    index.set_states(image_states)
    where = Where.of(split="test", label="owl", unreviewed=True)
    hits = index.search(vectors[:5], 7, where)
    assert [[h.image_id for h in row] for row in hits] == [
        exact(vectors, image_states, q, 7, where) for q in vectors[:5]
    ]


def test_ivf_above_the_exact_limit_keeps_recall_with_filters(tmp_path: Path) -> None:
    n = 30_000
    vectors, image_states = clustered(n, seed=1), states(n, seed=1)
    index = FaissIndex.build([s.image_id for s in image_states], vectors, exact_max=5_000, brute_force_max=500)
    assert index.nprobe > 0  # approximate
    index.set_states(image_states)
    queries = vectors[np.random.default_rng(2).choice(n, 100, replace=False)] + 0.05
    for where in [Where(), Where.of(split="train", label="cat"), Where.of(split="train", label="dog", unreviewed=True)]:
        found = index.search(queries, 10, where)
        recall = np.mean(
            [
                len({h.image_id for h in hits} & set(exact(vectors, image_states, q, 10, where))) / 10
                for q, hits in zip(queries, found, strict=True)
            ]
        )
        assert recall >= 0.95, (where, recall)

    index.save(tmp_path)
    loaded = FaissIndex.load(tmp_path, exact_max=5_000, brute_force_max=500)
    loaded.set_states(image_states)
    assert (loaded.nprobe, len(loaded)) == (index.nprobe, n)
    assert loaded.search(queries[:3], 5) == index.search(queries[:3], 5)


def test_add_remove_and_vectors_of() -> None:
    index = FaissIndex.build(["a", "b"], np.array([[0.0, 0.0], [1.0, 0.0]]))
    index.set_states([ImageState(i, "train", "cat", True, False) for i in "abc"])
    assert [h.image_id for h in index.search(np.zeros((1, 2)), 5)[0]] == ["a", "b"]  # c has no vector yet
    index.add(["c"], np.array([[0.5, 0.0]]))
    assert [h.image_id for h in index.search(np.zeros((1, 2)), 5)[0]] == ["a", "c", "b"]
    index.add(["a"], np.array([[3.0, 0.0]]))  # replaced
    index.remove(["b", "unknown"])
    assert [(h.image_id, h.distance) for h in index.search(np.zeros((1, 2)), 5)[0]] == [("c", 0.5), ("a", 3.0)]
    assert set(index.vectors_of(["a", "b", "c"])) == {"a", "c"}
    np.testing.assert_array_equal(index.vectors_of(["a"])["a"], [3.0, 0.0])
    assert len(index) == 2
    with pytest.raises(ValueError, match="3 dimensions"):
        index.add(["d"], np.zeros((1, 3)))


def test_a_version_saved_before_the_index_loads_from_its_index_npz(tmp_path: Path) -> None:
    np.savez_compressed(
        tmp_path / "index.npz",
        image_ids=np.array(["x", "y"]),
        splits=np.array(["train", "test"]),
        vectors=np.array([[0.0], [2.0]], dtype=np.float32),
    )
    index = FaissIndex.load(tmp_path)
    index.set_states([ImageState("x", "train", "cat", True, False), ImageState("y", "test", "cat", True, False)])
    assert [h.image_id for h in index.search(np.array([[1.9]]), 2)[0]] == ["y", "x"]


def test_filters_follow_the_label_store_and_new_images_are_missing(settings: Settings, shapes_dataset: Path) -> None:
    with open_store(settings) as store:
        import_folder(settings, store)
        records = store.queries.images()
        ids = [r.image_id for r in records]
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(len(ids), 4)).astype(np.float32)
        index = FaissIndex.build(ids[1:], vectors[1:])  # the first image came after the index: no vector
        index.refresh(store)
        assert index.missing(store) == [ids[0]]

        train = [r for r in records[1:] if r.split == "train"]
        target, other_label = train[0], next(r.label for r in train if r.label != train[0].label)
        query = index.vectors_of([target.image_id])[target.image_id][None]
        where = Where.of(split="train", label=other_label)
        assert target.image_id not in [h.image_id for h in index.search(query, 3, where)[0]]

        store.events.relabel([target.image_id], other_label, reason="test", actor="t")
        index.refresh(store)
        assert index.search(query, 1, where)[0][0].image_id == target.image_id
        unreviewed = Where.of(split="train", label=other_label, unreviewed=True)
        assert target.image_id not in [h.image_id for h in index.search(query, 3, unreviewed)[0]]

        index.add([ids[0]], vectors[:1])
        index.refresh(store)
        assert index.missing(store) == []
        assert index.search(vectors[:1], 1)[0][0].image_id == ids[0]


def test_backends_are_registered_by_name() -> None:
    assert BACKENDS["faiss"] is FaissIndex and FaissIndex.backend == "faiss"


class _ScoredOnly:
    """A model version whose shards hold every new image: embedding anything is a failure of the test."""

    tag = "bouncer:scoredonly"
    version = "scoredonly"
    image_size = 8

    def reduce(self, images: np.ndarray) -> np.ndarray:
        raise AssertionError("embedded an image that bouncer score had scored")


def test_new_images_take_their_vectors_from_score_shards(settings: Settings, shapes_dataset: Path) -> None:
    from training.model.scores import default_scores_dir, new_manifest, write_manifest, write_shard
    from training.vectors.updates import add_missing_vectors, scored_rows

    with open_store(settings) as store:
        import_folder(settings, store)
        records = store.queries.images()
        index = FaissIndex.build([r.image_id for r in records[3:]], np.zeros((len(records) - 3, 2)))
        new = records[:3]
        folder = default_scores_dir(settings, _ScoredOnly.version)
        vectors = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], np.float32)
        probabilities = np.full((3, 4), 0.25, np.float32)
        write_shard(
            folder, 0, paths=[r.path for r in new], sha256=[r.sha256 for r in new],
            probabilities=probabilities, embeddings=np.zeros((3, 5)), vectors=vectors,
        )  # fmt: skip
        write_manifest(
            folder,
            new_manifest(
                model_tag=_ScoredOnly.tag, class_names=list("abcd"), image_size=8, engine="local",
                images=3, shards=1, skipped=0, splits=["train", "test"], seconds=1.0,
            ),
        )  # fmt: skip
        add_missing_vectors(index, store, settings, _ScoredOnly())
        assert index.missing(store) == []
        got = index.vectors_of([r.image_id for r in new])
        np.testing.assert_array_equal(np.stack([got[r.image_id] for r in new]), vectors)

        scored = scored_rows(settings, _ScoredOnly(), [new[1]])
        assert scored.ids == [new[1].image_id]
        np.testing.assert_array_equal(scored.probabilities, probabilities[1:2])
        moved = type(new[1])(new[1].image_id, new[1].path, new[1].split, new[1].label, new[1].folder_label, "other")
        assert scored_rows(settings, _ScoredOnly(), [moved]).ids == []  # content changed: not the scored file


def test_a_saved_index_keeps_the_layout_older_releases_read(tmp_path: Path) -> None:
    """index.npz with image_ids, splits and vectors: an older Bouncer can still load a version this one made."""
    FaissIndex.build(["a", "b"], np.array([[0.0, 1.0], [2.0, 3.0]])).save(tmp_path)
    with np.load(tmp_path / "index.npz", allow_pickle=False) as saved:
        assert set(saved.files) == {"image_ids", "splits", "vectors"}
        assert saved["image_ids"].tolist() == ["a", "b"] and saved["vectors"].shape == (2, 2)


class _Zeros:
    """A model version whose embedding is all zeros: enough to see which images get a vector."""

    tag = "bouncer:zeros"
    version = "zeros"
    image_size = 8

    def reduce(self, images: np.ndarray) -> np.ndarray:
        return np.zeros((len(images), 2), np.float32)


def test_a_new_image_whose_file_is_gone_does_not_break_search(settings: Settings, shapes_dataset: Path) -> None:
    from training.vectors.updates import add_missing_vectors

    with open_store(settings) as store:
        import_folder(settings, store)
        records = store.queries.images()
        index = FaissIndex.build([r.image_id for r in records[3:]], np.ones((len(records) - 3, 2)))
        (settings.data_dir / records[1].path).unlink()  # deleted after its import, before any rescan
        add_missing_vectors(index, store, settings, _Zeros())
        assert set(index.vectors_of([r.image_id for r in records[:3]])) == {records[0].image_id, records[2].image_id}
        assert index.missing(store) == [records[1].image_id]
        add_missing_vectors(index, store, settings, _Zeros())  # remembered: not decoded again on every search
        hits = index.search(np.zeros((1, 2)), 2)[0]  # the two new images, at distance 0
        assert {h.image_id for h in hits} == {records[0].image_id, records[2].image_id}
        assert [h.distance for h in hits] == [0.0, 0.0]
