"""The pgvector backend: vectors in the PostgreSQL label database, filters as a join on the current ``images`` rows.

For deployments whose label store is PostgreSQL: replicas share one copy of the
vectors, and a search filters on the labels committed at that moment, with no label
view to refresh. Search is exact (a scan ordered by ``<->``): approximate pgvector
indexes lose recall under selective filters, the same trade-off as faiss's (issue 13).
The vectors of a version are copied from its stored faiss index on first use.
Needs the ``vector`` extension on the server (``CREATE EXTENSION vector``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from training.errors import Unavailable
from training.labels.store import LabelStore
from training.settings import Settings
from training.vectors.base import Hit, VectorIndex, Where, register_backend
from training.vectors.faiss_index import FaissIndex

TABLE = "bouncer_vectors"
BATCH = 5_000
LOCK = 0x626F756E  # the key of this backend's advisory locks ("boun")


class PgVectorUnavailable(Unavailable, RuntimeError):
    """The configured database cannot hold vectors: not PostgreSQL, or no pgvector extension."""


def _literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{float(x):.9g}" for x in vector) + "]"


@register_backend("pgvector")
class PgVectorIndex(VectorIndex):
    def __init__(self, engine: Engine, tag: str, dim: int) -> None:
        self.engine = engine
        self.tag = tag
        self.dim = dim

    @classmethod
    def attach(cls, settings: Settings, tag: str, stored: FaissIndex) -> PgVectorIndex:
        """The version's vectors in the label database, copied there from ``stored`` if they are not yet."""
        engine = create_engine(settings.label_db_url, pool_pre_ping=True)
        if engine.dialect.name != "postgresql":
            engine.dispose()
            raise PgVectorUnavailable(
                f"BOUNCER_VECTOR_INDEX=pgvector needs a PostgreSQL label database; BOUNCER_DATABASE_URL is "
                f"{engine.dialect.name} (use BOUNCER_VECTOR_INDEX=faiss)"
            )
        index = cls(engine, tag, stored.dim)
        try:
            # a deployment's workers attach at once: unserialised, CREATE ... IF NOT EXISTS races and fails
            with engine.begin() as connection:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK})
                try:
                    connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
                except DBAPIError as exc:
                    raise PgVectorUnavailable(
                        f"the label database has no pgvector extension ({str(exc.orig).splitlines()[0]}): install "
                        "it on the server (https://github.com/pgvector/pgvector) and run CREATE EXTENSION vector as "
                        "a superuser, or use BOUNCER_VECTOR_INDEX=faiss"
                    ) from exc
                connection.execute(
                    text(
                        f"CREATE TABLE IF NOT EXISTS {TABLE} (model_tag TEXT NOT NULL, image_id TEXT NOT NULL, "
                        f"embedding vector NOT NULL, PRIMARY KEY (model_tag, image_id))"
                    )
                )
            # one copy per version, whole or not at all: the other workers wait for it, then find it done
            with engine.begin() as connection:
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key, hashtext(:tag))"), {"key": LOCK, "tag": tag}
                )
                held = set(
                    connection.scalars(text(f"SELECT image_id FROM {TABLE} WHERE model_tag = :tag"), {"tag": tag})
                )
                ids, vectors = stored.items()
                # the stored vectors the table lacks (all on first use); a vector written since stays
                gaps = [position for position, image_id in enumerate(ids) if image_id not in held]
                for start in range(0, len(gaps), BATCH):
                    chunk = gaps[start : start + BATCH]
                    index._insert(connection, [ids[p] for p in chunk], vectors[chunk], "NOTHING")
        except BaseException:
            engine.dispose()
            raise
        return index

    def add(self, image_ids: Sequence[str], vectors: np.ndarray) -> None:
        with self.engine.begin() as connection:
            self._insert(connection, image_ids, vectors, "UPDATE SET embedding = EXCLUDED.embedding")

    def _insert(self, connection: Connection, image_ids: Sequence[str], vectors: np.ndarray, on_conflict: str) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(image_ids), -1)
        if len(image_ids) and vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have {vectors.shape[1]} dimensions; this index holds {self.dim}")
        rows = [
            {"tag": self.tag, "id": image_id, "v": _literal(v)} for image_id, v in zip(image_ids, vectors, strict=True)
        ]
        if rows:
            connection.execute(
                text(
                    f"INSERT INTO {TABLE} (model_tag, image_id, embedding) VALUES (:tag, :id, CAST(:v AS vector)) "
                    f"ON CONFLICT (model_tag, image_id) DO {on_conflict}"
                ),
                rows,
            )

    def remove(self, image_ids: Sequence[str]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                text(f"DELETE FROM {TABLE} WHERE model_tag = :tag AND image_id = ANY(:ids)"),
                {"tag": self.tag, "ids": list(image_ids)},
            )

    def vectors_of(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                text(f"SELECT image_id, embedding::text FROM {TABLE} WHERE model_tag = :tag AND image_id = ANY(:ids)"),
                {"tag": self.tag, "ids": list(image_ids)},
            )
            return {image_id: np.array(vector.strip("[]").split(","), dtype=np.float32) for image_id, vector in rows}

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> list[list[Hit]]:
        where = where or Where()
        conditions = ["v.model_tag = :tag", "i.present"]
        params: dict[str, Any] = {"tag": self.tag, "k": int(k)}
        if where.split is not None:
            conditions.append("i.split = :split")
            params["split"] = where.split
        if where.labels is not None:
            conditions.append("i.label = ANY(:labels)")
            params["labels"] = sorted(where.labels)
        if where.unreviewed:
            conditions.append("NOT i.reviewed")
        if where.exclude:
            conditions.append("v.image_id <> ALL(:exclude)")
            params["exclude"] = sorted(where.exclude)
        statement = text(
            f"SELECT v.image_id, v.embedding <-> CAST(:q AS vector) AS distance FROM {TABLE} v "
            f"JOIN images i ON i.image_id = v.image_id WHERE {' AND '.join(conditions)} "
            "ORDER BY distance, v.image_id LIMIT :k"
        )
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if k <= 0:
            return [[] for _ in queries]
        with self.engine.connect() as connection:
            return [
                [Hit(image_id, float(d)) for image_id, d in connection.execute(statement, {**params, "q": _literal(q)})]
                for q in queries
            ]

    def refresh(self, store: LabelStore) -> None:
        """Nothing to follow: every search joins the rows as committed."""

    def missing(self, store: LabelStore) -> list[str]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                text(
                    f"SELECT i.image_id FROM images i WHERE i.present AND NOT EXISTS (SELECT 1 FROM {TABLE} v "
                    "WHERE v.model_tag = :tag AND v.image_id = i.image_id) ORDER BY i.image_id"
                ),
                {"tag": self.tag},
            )
            return [image_id for (image_id,) in rows]

    def __len__(self) -> int:
        with self.engine.connect() as connection:
            count = connection.scalar(text(f"SELECT count(*) FROM {TABLE} WHERE model_tag = :tag"), {"tag": self.tag})
            return int(count or 0)
