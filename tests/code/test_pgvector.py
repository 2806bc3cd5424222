"""The pgvector backend on a real PostgreSQL with the vector extension: the same answers as exact faiss search.

Runs on a server with the ``vector`` extension (``tests/postgres.py``): Debian's apt has no
pgvector package, so by default a throw-away server from the ``pgserver`` wheel's PostgreSQL +
pgvector build (a dev extra); BOUNCER_TEST_PGVECTOR_URL names another.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from training.labels.store import open_store
from training.labels.sync import import_folder
from training.settings import Settings
from training.vectors.base import Where
from training.vectors.faiss_index import FaissIndex


@pytest.fixture
def postgres_settings(settings: Settings, pgvector_database: str) -> Settings:
    """A fresh PostgreSQL database with the vector extension created, for this test."""
    check = create_engine(pgvector_database)
    try:
        with check.begin() as connection:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except Exception as exc:  # noqa: BLE001 - a server the user named for plain PostgreSQL may lack it
        if os.environ.get("BOUNCER_TEST_POSTGRES_URL") and not os.environ.get("BOUNCER_TEST_PGVECTOR_URL"):
            pytest.skip(f"BOUNCER_TEST_POSTGRES_URL's server has no pgvector: {str(exc).splitlines()[0]}")
        raise
    finally:
        check.dispose()
    return settings.model_copy(update={"database_url": pgvector_database, "vector_index": "pgvector"})


def test_pgvector_answers_like_exact_faiss_and_follows_labels(
    postgres_settings: Settings, shapes_dataset: Path
) -> None:
    from training.vectors.pgvector_index import PgVectorIndex

    with open_store(postgres_settings) as store:
        import_folder(postgres_settings, store)
        records = store.queries.images()
        ids = [r.image_id for r in records]
        vectors = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
        stored = FaissIndex.build(ids[1:], vectors[1:])
        stored.refresh(store)
        index = PgVectorIndex.attach(postgres_settings, "bouncer:test", stored)
        assert len(index) == len(ids) - 1
        assert index.missing(store) == [ids[0]]
        np.testing.assert_allclose(index.vectors_of([ids[1]])[ids[1]], vectors[1], rtol=1e-6)

        label = records[1].label
        for where in [Where(), Where.of(split="train", label=label), Where.of(split="test", exclude=[ids[2]])]:
            got = index.search(vectors[:3], 5, where)
            want = stored.search(vectors[:3], 5, where)
            assert [[h.image_id for h in row] for row in got] == [[h.image_id for h in row] for row in want]
            for g, w in zip(got, want, strict=True):
                # Euclidean like faiss's, not squared; atol for the self-matches at 0
                np.testing.assert_allclose([h.distance for h in g], [h.distance for h in w], rtol=1e-4, atol=1e-5)
        assert index.search(vectors[1:2], 1)[0][0].distance == pytest.approx(0.0, abs=1e-6)
        far = index.search(vectors[1:2] + np.float32(3.0), 1, Where.of(exclude=ids))  # every candidate excluded
        assert far == [[]]

        # the filter reads the committed labels: no refresh needed
        other = next(r for r in records[1:] if r.label != label and r.split == "train")
        query = vectors[ids.index(other.image_id)][None]
        assert index.search(query, 1, Where.of(split="train", label=label))[0][0].image_id != other.image_id
        store.events.relabel([other.image_id], label, reason="test", actor="t")
        hits = index.search(query, 1, Where.of(split="train", label=label))[0]
        assert hits[0].image_id == other.image_id
        assert other.image_id in [h.image_id for h in index.search(vectors[:1], 50, Where.of(label=label))[0]]
        unreviewed = Where.of(split="train", label=label, unreviewed=True)
        assert other.image_id not in [h.image_id for h in index.search(vectors[:1], 50, unreviewed)[0]]
        stored.refresh(store)
        for where in [unreviewed, Where.of(labels=[label, other.label], unreviewed=True)]:
            got = index.search(vectors[:3], 50, where)
            want = stored.search(vectors[:3], 50, where)
            assert [[h.image_id for h in row] for row in got] == [[h.image_id for h in row] for row in want]

        index.add([ids[0]], vectors[:1])
        index.remove([ids[1]])
        assert index.missing(store) == [ids[1]]
        replaced = vectors[2] + np.float32(1.0)
        index.add([ids[2]], replaced[None])
        index.engine.dispose()

        # attaching again fills the gap and keeps the vectors written since
        again = PgVectorIndex.attach(postgres_settings, "bouncer:test", stored)
        assert len(again) == len(ids) and again.missing(store) == []
        np.testing.assert_allclose(again.vectors_of([ids[2]])[ids[2]], replaced, rtol=1e-6)
        again.engine.dispose()


def test_pgvector_workers_attaching_at_once_all_succeed(postgres_settings: Settings) -> None:
    """A deployment's workers all attach at start: unserialised, creating the extension and table raced and failed."""
    from training.vectors.pgvector_index import TABLE, PgVectorIndex

    ids = [f"image-{i}" for i in range(500)]
    stored = FaissIndex.build(ids, np.random.default_rng(1).normal(size=(len(ids), 16)).astype(np.float32))
    errors: list[BaseException] = []

    def attach(start: threading.Barrier) -> None:
        start.wait()
        try:
            PgVectorIndex.attach(postgres_settings, "bouncer:race", stored).engine.dispose()
        except BaseException as exc:  # noqa: BLE001  (asserted in the test's thread)
            errors.append(exc)

    engine = create_engine(postgres_settings.label_db_url)
    try:
        for _ in range(3):  # the race is likely, not certain: a few fresh starts
            with engine.begin() as connection:
                connection.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
                connection.execute(text("DROP EXTENSION IF EXISTS vector"))
            start = threading.Barrier(6)
            workers = [threading.Thread(target=attach, args=(start,)) for _ in range(6)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            assert errors == []
            with engine.connect() as connection:
                assert connection.scalar(text(f"SELECT count(*) FROM {TABLE}")) == len(ids)
    finally:
        engine.dispose()


def test_pgvector_on_sqlite_is_a_clear_error(settings: Settings) -> None:
    from training.vectors.pgvector_index import PgVectorIndex, PgVectorUnavailable

    with pytest.raises(PgVectorUnavailable, match="needs a PostgreSQL label database"):
        PgVectorIndex.attach(settings, "bouncer:test", FaissIndex.build(["a"], np.zeros((1, 2))))
