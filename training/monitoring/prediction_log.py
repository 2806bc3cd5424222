"""Every served prediction, kept for a while: what the drift report reads and import-predictions takes from.

A row holds the time, the model version, the label, its confidence, the OOD score and
flag, the reduced embedding (the version's embedder, float32 bytes) and the upload's
SHA-256, never the image unless ``BOUNCER_LOG_IMAGES`` says so (then a file named by
its hash under ``STATE_DIR/logged-images``).

The request path only appends to a bounded in-memory queue (:meth:`PredictionLog.record`);
a daemon thread hashes, reduces and writes whole batches every
``BOUNCER_PREDICTION_LOG_FLUSH_MS`` in one transaction, and applies the retention. When
writes fall behind by ``BOUNCER_PREDICTION_LOG_BUFFER_MAX`` rows, new rows are dropped
and counted (``dropped``), never the predictions themselves.

The log's single table lives in its own SQLite file by default, so logging never waits
on the label database's write lock; on PostgreSQL it shares the label database. It is
created when missing (a log, not curated data: no migrations to keep).
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)

from training.settings import Settings

if TYPE_CHECKING:
    from training.model.inference import PredictionAnswer


class ServedVersion(Protocol):
    """What the log needs of the version that answered (``training.registry.store.RegisteredModel`` is one)."""

    embedder: Any  # a fitted sklearn transformer: embeddings -> the version's reduced vectors


log = logging.getLogger(__name__)

metadata = MetaData()
predictions = Table(
    "predictions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False, index=True),  # unix seconds
    Column("model_version", String(64), nullable=False),
    Column("label", String(255), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("ood_score", Float),  # null for versions without an OOD scorer
    Column("ood", Boolean),
    Column("vector", LargeBinary),  # float32, the version's reduced embedding
    Column("content_hash", String(64), index=True),  # sha256 of the uploaded bytes
    Column("image_file", String(255)),  # under logged_images_dir, when the image was kept
    Column("imported_image_id", String(255)),  # set once import-predictions took it into the dataset
)
RETENTION_EVERY_S = 60.0


@dataclass(frozen=True)
class LoggedPrediction:
    id: int
    created_at: float
    model_version: str
    label: str
    confidence: float
    ood_score: float | None
    ood: bool | None
    vector: np.ndarray | None
    content_hash: str | None
    image_file: str | None
    imported_image_id: str | None


@dataclass(frozen=True)
class WindowCounts:
    labels: dict[str, int]  # predictions per predicted label
    ood: int  # of them flagged OOD
    scored: int  # of them with an OOD score at all
    vectors: np.ndarray  # (m, d) a sample of reduced embeddings

    @property
    def n(self) -> int:
        return sum(self.labels.values())


@dataclass
class _Pending:
    """One ONNX run's predictions, as the request path hands them over (no copies, no work)."""

    at: float
    model: ServedVersion
    answers: list[PredictionAnswer]
    embeddings: np.ndarray
    uploads: Sequence[bytes] | None


def log_engine(url: str) -> Engine:
    """An engine for the log's database; SQLite in WAL mode so readers never block the writer."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def create_table(engine: Engine, wait_s: float = 30.0) -> None:
    """Create the log's table if missing; every worker of a starting server may try at once.

    SQLite refuses a read transaction's upgrade to a write at once, without waiting
    ("database is locked"), when another connection is writing: that is how a
    ``CREATE TABLE`` after ``checkfirst``'s look loses to another worker's. So try
    again until the table is there (the other worker committed it) or ours succeeds.
    PostgreSQL's loser gets a duplicate-table or unique violation instead: any database error.
    """
    from sqlalchemy import inspect
    from sqlalchemy.exc import DBAPIError

    deadline = time.monotonic() + wait_s
    while True:
        try:
            metadata.create_all(engine, checkfirst=True)
            return
        except DBAPIError:
            try:
                if inspect(engine).has_table(predictions.name):
                    return
            except DBAPIError:
                pass
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class PredictionLog:
    """Reads and writes of the prediction log; :meth:`start` runs the background writer (a serving worker)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = log_engine(settings.prediction_log_db_url)
        create_table(self.engine)
        self.images_dir = settings.logged_images_dir
        self._queue: deque[_Pending] = deque()
        self._count_lock = threading.Lock()  # the event loop adds, the writer subtracts
        self._queued_rows = 0
        self.dropped = 0
        self.written = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()
        self._retained_at = 0.0

    # --- the request path ------------------------------------------------------------
    def record(
        self,
        model: ServedVersion,
        answers: list[PredictionAnswer],
        embeddings: np.ndarray,
        uploads: Sequence[bytes] | None = None,
    ) -> None:
        """Queue one run's predictions: an append, nothing else (called on the event loop)."""
        with self._count_lock:
            if self._queued_rows + len(answers) > self.settings.prediction_log_buffer_max:
                self.dropped += len(answers)
                return
            self._queued_rows += len(answers)
        self._queue.append(_Pending(time.time(), model, answers, embeddings, uploads))

    # --- the writer --------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued and stop the writer (a worker's shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()
        self.engine.dispose()

    def _run(self) -> None:
        interval = self.settings.prediction_log_flush_ms / 1000
        while not self._stop.is_set():
            self._wake.wait(interval)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - a failed write must not stop logging; the rows are counted
                log.exception("writing the prediction log failed")

    def flush(self) -> int:
        """Write every queued prediction in one transaction; returns how many."""
        with self._flush_lock:
            batch: list[_Pending] = []
            while self._queue:
                batch.append(self._queue.popleft())
            with self._count_lock:
                self._queued_rows -= sum(len(p.answers) for p in batch)
            rows = self._rows(batch)
            if rows:
                try:
                    with self.engine.begin() as connection:
                        connection.execute(predictions.insert(), rows)
                except Exception:
                    self.dropped += len(rows)
                    raise
                self.written += len(rows)
            if time.monotonic() - self._retained_at > RETENTION_EVERY_S:
                self._retained_at = time.monotonic()
                self.apply_retention()
            return len(rows)

    def _rows(self, batch: list[_Pending]) -> list[dict[str, Any]]:
        """One embedder call per served version for the whole flush (a call per run cost ~0.5 ms)."""
        by_version: dict[int, list[_Pending]] = {}
        for pending in batch:
            by_version.setdefault(id(pending.model), []).append(pending)
        policy = self.settings.log_images
        rows = []
        for group in by_version.values():
            vectors = group[0].model.embedder.transform(np.concatenate([p.embeddings for p in group]))
            vectors = vectors.astype(np.float32)
            i = 0
            for pending in group:
                for j, answer in enumerate(pending.answers):
                    data = pending.uploads[j] if pending.uploads is not None else None
                    digest = hashlib.sha256(data).hexdigest() if data is not None else None
                    keep = data is not None and (policy == "all" or (policy == "ood" and bool(answer.get("ood"))))
                    rows.append(
                        {
                            "created_at": pending.at,
                            "model_version": answer["model_version"],
                            "label": answer["label"],
                            "confidence": answer["confidence"],
                            "ood_score": answer.get("ood_score"),
                            "ood": answer.get("ood"),
                            "vector": vectors[i].tobytes(),
                            "content_hash": digest,
                            "image_file": self._keep_image(data, digest) if keep and data and digest else None,
                        }
                    )
                    i += 1
        return rows

    def _keep_image(self, data: bytes, digest: str) -> str | None:
        """The upload as ``<sha256>.<ext>`` (its format from its bytes); the same picture is kept once."""
        from PIL import Image

        from training.data.images import DECODED_FORMATS

        try:
            with Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as image:
                extension = (image.format or "bin").lower().replace("jpeg", "jpg")
        except Exception:  # noqa: BLE001 - it was classified, so decodable; keep it whatever it is
            extension = "bin"
        name = f"{digest}.{extension}"
        path = self.images_dir / name
        if not path.exists():
            self.images_dir.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_bytes(data)
            partial.replace(path)
        return name

    def apply_retention(self, now: float | None = None) -> int:
        """Delete rows older than the retention, and the kept images no remaining row names."""
        cutoff = (now or time.time()) - self.settings.prediction_log_retention_days * 86400
        with self.engine.begin() as connection:
            old_files = {
                f
                for (f,) in connection.execute(
                    select(predictions.c.image_file).where(
                        predictions.c.created_at < cutoff, predictions.c.image_file.is_not(None)
                    )
                )
            }
            deleted = connection.execute(delete(predictions).where(predictions.c.created_at < cutoff)).rowcount
            still_named = (
                {
                    f
                    for (f,) in connection.execute(
                        select(predictions.c.image_file).where(predictions.c.image_file.in_(old_files))
                    )
                }
                if old_files
                else set()
            )
        for name in old_files - still_named:
            (self.images_dir / name).unlink(missing_ok=True)
        if deleted:
            log.info("prediction log: deleted %d predictions older than the retention", deleted)
        return int(deleted or 0)

    # --- reads -------------------------------------------------------------------------
    def between(self, start: float, end: float, *, limit: int | None = None) -> list[LoggedPrediction]:
        """Predictions logged in [start, end), oldest first."""
        query = (
            select(predictions)
            .where(predictions.c.created_at >= start, predictions.c.created_at < end)
            .order_by(predictions.c.created_at, predictions.c.id)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [_logged(row) for row in connection.execute(query).mappings()]

    def window(self, start: float, end: float, *, vector_version: str, vector_sample: int) -> WindowCounts:
        """Counts per label and OOD flag in [start, end), plus up to ``vector_sample`` of the newest
        reduced vectors logged by ``vector_version`` (vectors of other versions live in other spaces)."""
        in_window = (predictions.c.created_at >= start, predictions.c.created_at < end)
        counts = (
            select(predictions.c.label, func.count(), func.count().filter(predictions.c.ood.is_(True)))
            .where(*in_window)
            .group_by(predictions.c.label)
        )
        vectors = (
            select(predictions.c.vector)
            .where(*in_window, predictions.c.model_version == vector_version, predictions.c.vector.is_not(None))
            .order_by(predictions.c.id.desc())
            .limit(vector_sample)
        )
        scored = select(func.count()).where(*in_window, predictions.c.ood.is_not(None))
        with self.engine.connect() as connection:
            rows = connection.execute(counts).all()
            blobs = [b for (b,) in connection.execute(vectors)]
            n_scored = int(connection.execute(scored).scalar_one())
        return WindowCounts(
            labels={label: int(n) for label, n, _ in rows},
            ood=sum(int(o) for _, _, o in rows),
            scored=n_scored,
            vectors=np.stack([np.frombuffer(b, dtype=np.float32) for b in blobs]) if blobs else np.zeros((0, 0)),
        )

    def recent(
        self, *, since: float, limit: int, ood_only: bool = True, with_image: bool = False
    ) -> list[LoggedPrediction]:
        """Predictions since ``since`` (flagged OOD only, by default), most unusual first; one per picture;
        not imported yet."""
        query = (
            select(predictions)
            .where(predictions.c.created_at >= since, predictions.c.imported_image_id.is_(None))
            .order_by(predictions.c.ood_score.desc().nulls_last(), predictions.c.id)
        )
        if ood_only:
            query = query.where(predictions.c.ood.is_(True))
        if with_image:
            query = query.where(predictions.c.image_file.is_not(None))
        seen: set[str] = set()
        found: list[LoggedPrediction] = []
        with self.engine.connect() as connection:
            for row in connection.execute(query).mappings():
                logged = _logged(row)
                key = logged.content_hash or str(logged.id)
                if key not in seen:
                    seen.add(key)
                    found.append(logged)
                    if len(found) >= limit:
                        break
        return found

    def mark_imported(self, content_hash: str, image_id: str) -> None:
        """Every logged prediction of this picture now points at the dataset image it became."""
        with self.engine.begin() as connection:
            connection.execute(
                update(predictions).where(predictions.c.content_hash == content_hash).values(imported_image_id=image_id)
            )

    def stats(self) -> dict[str, int]:
        """This process's side of the log: rows written, waiting, dropped (buffer full or a failed write)."""
        return {"written": self.written, "queued": self._queued_rows, "dropped": self.dropped}

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(predictions)).scalar_one())

    def image_path(self, logged: LoggedPrediction) -> Path | None:
        return None if logged.image_file is None else self.images_dir / logged.image_file


def _logged(row: Any) -> LoggedPrediction:
    vector = np.frombuffer(row["vector"], dtype=np.float32) if row["vector"] is not None else None
    return LoggedPrediction(
        id=int(row["id"]),
        created_at=float(row["created_at"]),
        model_version=row["model_version"],
        label=row["label"],
        confidence=float(row["confidence"]),
        ood_score=None if row["ood_score"] is None else float(row["ood_score"]),
        ood=None if row["ood"] is None else bool(row["ood"]),
        vector=vector,
        content_hash=row["content_hash"],
        image_file=row["image_file"],
        imported_image_id=row["imported_image_id"],
    )
