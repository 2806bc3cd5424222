"""The curated labels: reads, relabel, undo, history and promotions, each write one transaction.

SQLite (WAL mode, ``BEGIN IMMEDIATE`` writes) by default so several worker
processes can share one file; any SQLAlchemy URL (e.g. PostgreSQL) works too.

Glossary: ``image_id`` is stable for a file's whole life (it survives relabels and
moves on disk); ``folder_label`` is what the folder says; ``label`` is the curated
label everything else uses. An *event* is one relabel call (possibly many images),
an undo, or a move detected on disk; its ``changes`` say old -> new per image.
``dataset_id`` names the dataset this database curates: a UUID made when the
database is created, recorded with every model trained on it (model metadata), so
a model store shared by several datasets never serves one dataset's model for another.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, create_engine, event, func, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, selectinload, sessionmaker

from training.data.folders import Fingerprint
from training.errors import Missing
from training.labels.errors import (
    ACTOR_MAX,
    REASON_MAX,
    UndoConflictError,
    UnknownEventError,
    UnknownImageError,
    UnknownLabelError,
    checked_text,
)
from training.labels.export import CSV_HEADER, data_version_of, labels_csv_line, write_labels_csv
from training.labels.migrate import upgrade_to_head
from training.labels.records import (
    ConfirmResult,
    ImageRecord,
    ImageState,
    LabelChange,
    LabelEvent,
    Promotion,
    RelabelResult,
)
from training.labels.schema import ChangeRow, ClassRow, DatasetRow, EventRow, ImageRow, PromotionRow
from training.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _CsvLines:
    """labels.csv as one line per present image, kept across revisions (see :meth:`LabelStore.labels_csv`)."""

    revision: int
    order: list[str]  # present image ids, in the database's path order
    paths: dict[str, str]  # image id -> path
    lines: dict[str, str]  # image id -> its CSV line
    text: str
    version: str


def _sqlite_engine(url: str, *, for_writes: bool) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        if for_writes:
            dbapi_connection.isolation_level = None  # let us issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    if for_writes:

        @event.listens_for(engine, "begin")
        def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
            # Take the write lock up front: a deferred transaction that reads and then
            # writes can fail with SQLITE_BUSY when another worker wrote in between.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class WriterTurn:
    """One writer at a time across threads and processes, for a SQLite file: waiters wake at once.

    SQLite alone makes a second writer poll (its busy handler sleeps in growing steps of up
    to 100 ms, so a waiter wakes late): with 16 clients relabelling over 2 workers, relabel's
    p99 was 0.5-1 s (benchmarks/soak.py, issue 14). An flock on a file beside the database is
    handed on by the kernel the moment it is released, and dropped if its holder dies.
    Re-entrant within a thread. ``path`` None (an in-memory database): the thread lock alone.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._thread_turn = threading.RLock()
        self._depth = 0  # how deep the holding thread is nested
        self._fd: int | None = None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._thread_turn:
            if self._depth == 0 and self.path is not None:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._thread_turn:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _writer_turn_file(url: str) -> Path | None:
    """``labels.db-writer`` beside a SQLite file (like its ``-wal`` and ``-shm``); None for an in-memory one."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(f"{database}-writer")


class LabelStore:
    """All label reads and writes; every write is one transaction."""

    def __init__(self, url: str, *, labels_csv: Path | None = None, export_delay_s: float = 0.0) -> None:
        """``labels_csv``: if given, rewritten after every write that changes labels or images.

        ``export_delay_s`` > 0 (a server): the rewrite happens that long after a write, off the
        request, and writes in between share it (a relabel cost 0.57 s at 10k images when each
        rewrote the whole file). :meth:`close` writes what is pending; a crash in between is what
        :meth:`repair_labels_csv` mends at the next start.
        """
        self.labels_csv_path = labels_csv
        self._export_delay_s = export_delay_s
        self._export_pending = False
        self._export_state = threading.Lock()  # guards _export_pending and _exporter
        self._export_running = threading.Lock()  # one export at a time in this process
        self._exporter: threading.Thread | None = None
        self._writer_turn: WriterTurn | None = None  # PostgreSQL: its row locks order writers, no polling
        if url.startswith("sqlite"):
            self.engine = _sqlite_engine(url, for_writes=True)
            read_engine = _sqlite_engine(url, for_writes=False)
            self._writer_turn = WriterTurn(_writer_turn_file(url))
        else:
            self.engine = read_engine = create_engine(url, pool_pre_ping=True)
        try:  # every opener upgrades (one query when at head): `bouncer` and each worker start on the newest schema
            upgrade_to_head(self.engine, reads=read_engine)
        except BaseException:
            self.engine.dispose()
            read_engine.dispose()
            raise
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._session = sessionmaker(read_engine, expire_on_commit=False)
        self._read_engine = read_engine
        self._dataset_id = self._existing_dataset_id() or self._create_dataset_id()
        self._csv: _CsvLines | None = None  # labels.csv as of some revision, for labels_csv() and data_version()
        self._csv_lock = threading.Lock()

    @property
    def dataset_id(self) -> str:
        """This dataset's identity (a UUID), recorded in the metadata of every model trained on it."""
        return self._dataset_id

    def _existing_dataset_id(self) -> str | None:
        with self._session() as session:
            return session.scalar(select(DatasetRow.dataset_id).where(DatasetRow.id == 1))

    def _create_dataset_id(self) -> str:
        """Made once, by whichever process opens the database first (a database from before gets one now)."""
        try:
            with self._write() as session:
                if session.get(DatasetRow, 1) is None:  # under the write lock: no other process made it meanwhile
                    session.add(DatasetRow(id=1, dataset_id=str(uuid.uuid4()), created_at=datetime.now(UTC)))
        except IntegrityError:  # a server database without a write lock: another process inserted it first
            pass
        dataset_id = self._existing_dataset_id()
        if dataset_id is None:  # just written, by us or by another process: cannot happen
            raise RuntimeError("the dataset identity row vanished right after it was written")
        return dataset_id

    def close(self) -> None:
        self.flush_labels_csv()
        self.engine.dispose()
        self._read_engine.dispose()
        if self._writer_turn is not None:
            self._writer_turn.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- import -----------------------------------------------------------------
    def fingerprints(self) -> dict[str, Fingerprint]:
        with self._session() as session:
            rows = session.execute(select(ImageRow.path, ImageRow.sha256, ImageRow.size, ImageRow.mtime_ns))
            return {path: Fingerprint(sha, size, mtime) for path, sha, size, mtime in rows}

    # --- reads ------------------------------------------------------------------
    def classes(self) -> list[str]:
        with self._session() as session:
            return sorted(session.scalars(select(ClassRow.name)))

    def images(
        self,
        *,
        split: str | None = None,
        label: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ImageRecord]:
        """Present images in path order (``count`` says how many match the same filters)."""
        # plain rows, not ORM objects: 98k rows took 5.1 s as objects, most of a suspects ranking's time
        query = _present_in(select(*_RECORD_COLUMNS), split, label).order_by(ImageRow.path).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return [ImageRecord(*row) for row in session.connection().execute(query)]

    def reviewed_ids(self, split: str) -> set[str]:
        """The present images of ``split`` a person relabelled or confirmed (one column read)."""
        query = select(ImageRow.image_id).where(
            ImageRow.present.is_(True), ImageRow.reviewed.is_(True), ImageRow.split == split
        )
        with self._session() as session:
            return set(session.scalars(query))

    def records(self, image_ids: Sequence[str]) -> dict[str, ImageRecord]:
        """The present images among ``image_ids`` by id (one query; unknown or absent ids are left out)."""
        found: dict[str, ImageRecord] = {}
        with self._session() as session:
            for start in range(0, len(image_ids), IDS_PER_QUERY):
                chunk = list(image_ids[start : start + IDS_PER_QUERY])
                # by primary key only: with ``present`` in the WHERE, SQLite may scan its index instead (3 ms at 10k);
                # plain rows, not ORM objects: this is on every search's path
                query = select(*_RECORD_COLUMNS, ImageRow.present).where(ImageRow.image_id.in_(chunk))
                found.update((row[0], ImageRecord(*row[:-1])) for row in session.execute(query) if row[-1])
        return found

    def changed_since(self, revision: int) -> tuple[int, list[ImageState]]:
        """The current revision and every image row changed after ``revision`` (-1: all of them).

        Read in one transaction, revision first: a change committed in between is read
        now and again next time, never missed.
        """
        with self._session() as session:
            current = int(session.scalar(select(DatasetRow.revision).where(DatasetRow.id == 1)) or 0)
            rows = session.execute(
                select(ImageRow.image_id, ImageRow.split, ImageRow.label, ImageRow.present, ImageRow.reviewed).where(
                    ImageRow.revision > revision
                )
            )
            return current, [ImageState(*row) for row in rows]

    def records_since(self, revision: int) -> tuple[int, list[tuple[ImageRecord, bool]]]:
        """The current revision and every image row changed after ``revision`` (-1: all), with whether it is present.

        Like :meth:`changed_since` (revision read first, so nothing is missed), with whole records:
        for caches that keep paths and content hashes.
        """
        with self._session() as session:
            current = int(session.scalar(select(DatasetRow.revision).where(DatasetRow.id == 1)) or 0)
            rows = session.execute(select(*_RECORD_COLUMNS, ImageRow.present).where(ImageRow.revision > revision))
            return current, [(ImageRecord(*row[:-1]), bool(row[-1])) for row in rows]

    def revision(self) -> int:
        """A number every change of labels or images raises: equal revisions, equal labels (one row read)."""
        with self._session() as session:
            return int(session.scalar(select(DatasetRow.revision).where(DatasetRow.id == 1)) or 0)

    def count(self, *, split: str | None = None, label: str | None = None) -> int:
        """How many present images :meth:`images` would list with the same filters."""
        query = _present_in(select(func.count()).select_from(ImageRow), split, label)
        with self._session() as session:
            return int(session.scalar(query) or 0)

    def get(self, image_id: str) -> ImageRecord:
        with self._session() as session:
            row = session.get(ImageRow, image_id)
            if row is None or not row.present:
                raise UnknownImageError(f"unknown image_id {image_id!r}")
            return _image_record(row)

    def reviewed_image_ids(self) -> set[str]:
        """Images a person decided on: relabelled or confirmed as correct, by an event not undone since."""
        with self._session() as session:
            return set(session.scalars(select(ImageRow.image_id).where(ImageRow.reviewed.is_(True))))

    def history(self, *, image_id: str | None = None, limit: int = 50) -> list[LabelEvent]:
        """Events newest first, optionally only those touching one image."""
        # the changes of all events in one more query, not one per event (history's p99 in the soak, issue 14)
        query = select(EventRow).options(selectinload(EventRow.changes)).order_by(EventRow.event_id.desc()).limit(limit)
        with self._session() as session:
            if image_id is not None:
                if session.get(ImageRow, image_id) is None:
                    raise UnknownImageError(f"unknown image_id {image_id!r}")
                query = query.where(
                    EventRow.event_id.in_(select(ChangeRow.event_id).where(ChangeRow.image_id == image_id))
                )
            events = list(session.scalars(query))
            reverted_by = dict(
                session.execute(
                    select(EventRow.reverts_event_id, EventRow.event_id).where(
                        EventRow.reverts_event_id.in_([e.event_id for e in events])
                    )
                ).all()
            )
            return [
                LabelEvent(
                    event_id=e.event_id,
                    kind=e.kind,
                    created_at=e.created_at.replace(tzinfo=e.created_at.tzinfo or UTC),
                    actor=e.actor,
                    reason=e.reason,
                    reverts_event_id=e.reverts_event_id,
                    reverted_by_event_id=reverted_by.get(e.event_id),
                    changes=[
                        LabelChange(c.image_id, c.old_label, c.new_label)
                        for c in e.changes
                        if image_id is None or c.image_id == image_id
                    ],
                )
                for e in events
            ]

    # --- writes -----------------------------------------------------------------
    def relabel(
        self, image_ids: Sequence[str], label: str, *, reason: str = "", actor: str = "unknown"
    ) -> RelabelResult:
        """Give every image ``label`` in one transaction; all-or-nothing on bad input."""
        _check_reason_and_actor(reason, actor)
        ids = list(dict.fromkeys(image_ids))  # de-duplicate, keep order
        if not ids:
            raise UnknownImageError("no image_ids given")
        with self._write() as session:
            if session.get(ClassRow, label) is None:
                known = ", ".join(sorted(session.scalars(select(ClassRow.name))))
                raise UnknownLabelError(f"unknown label {label!r}; known classes: {known}")
            rows = _present_rows(session, ids)
            changes = [LabelChange(i, rows[i].label, label) for i in ids if rows[i].label != label]
            unchanged = [i for i in ids if rows[i].label == label]
            for change in changes:
                rows[change.image_id].label = label
                rows[change.image_id].reviewed = True
            event_id = record_event(session, "relabel", changes, actor=actor, reason=reason) if changes else None
            if changes:
                bump_revision(session, [rows[c.image_id] for c in changes])
        if changes:
            self._after_write()
        return RelabelResult(event_id, changes, unchanged)

    def confirm(self, image_ids: Sequence[str], *, reason: str = "", actor: str = "unknown") -> ConfirmResult:
        """Record that a person checked these images and their current labels are right (undoable).

        A confirmed image counts as reviewed: it leaves the review queues, ``expand``
        skips it. Its event's changes keep the label (old = new).
        """
        _check_reason_and_actor(reason, actor)
        ids = list(dict.fromkeys(image_ids))
        if not ids:
            raise UnknownImageError("no image_ids given")
        with self._write() as session:
            rows = _present_rows(session, ids)
            confirmed = [LabelChange(i, rows[i].label, rows[i].label) for i in ids]
            for row in rows.values():
                row.reviewed = True
            event_id = record_event(session, "confirm", confirmed, actor=actor, reason=reason)
            bump_revision(session, rows.values())  # the reviewed set changed: suspect and trace queues with it
        return ConfirmResult(event_id, confirmed)

    def undo(self, event_id: int, *, actor: str = "unknown", reason: str = "") -> RelabelResult:
        """Revert one event by appending its inverse; refuses to clobber later changes.

        Later means a later relabel that changed one of the images, or a later confirm
        of one of them (it vouched for the label this undo would change); undo those first.

        Long on purpose: the checks that keep undo from clobbering later decisions, and the inverse, in one transaction.
        """
        _check_reason_and_actor(reason, actor)
        with self._write() as session:
            original = session.get(EventRow, event_id)
            if original is None:
                raise UnknownEventError(f"unknown event_id {event_id}")
            undone_by = session.scalar(select(EventRow.event_id).where(EventRow.reverts_event_id == event_id))
            if undone_by is not None:
                raise UndoConflictError(f"event {event_id} was already undone by event {undone_by}")
            rows = {
                row.image_id: row
                for row in session.scalars(
                    select(ImageRow).where(ImageRow.image_id.in_([c.image_id for c in original.changes]))
                )
            }
            conflicts = [c.image_id for c in original.changes if rows[c.image_id].label != c.new_label]
            if conflicts:
                raise UndoConflictError(
                    f"cannot undo event {event_id}: image(s) {', '.join(conflicts[:10])} were relabelled "
                    "by a later event; undo that one first"
                )
            confirmed_later = session.execute(
                select(ChangeRow.image_id, EventRow.event_id)
                .join(EventRow)
                .where(
                    ChangeRow.image_id.in_(list(rows)),
                    EventRow.event_id > event_id,
                    EventRow.kind == "confirm",
                    EventRow.event_id.not_in(_reverted_events()),
                )
            ).first()
            if confirmed_later is not None:
                image_id, later = confirmed_later
                raise UndoConflictError(
                    f"cannot undo event {event_id}: image {image_id} was confirmed by the later event {later}; "
                    "undo that one first"
                )
            inverse = [LabelChange(c.image_id, c.new_label, c.old_label) for c in original.changes]
            for change in inverse:
                rows[change.image_id].label = change.new_label
            new_id = record_event(
                session,
                "undo",
                inverse,
                actor=actor,
                reason=reason or f"undo event {event_id}",
                reverts_event_id=event_id,
            )
            session.flush()
            still_decided = set(
                session.scalars(
                    select(ChangeRow.image_id)
                    .join(EventRow)
                    .where(
                        ChangeRow.image_id.in_(list(rows)),
                        EventRow.kind.in_(DECISIONS),
                        EventRow.event_id.not_in(_reverted_events()),
                    )
                )
            )
            for row in rows.values():
                row.reviewed = row.image_id in still_decided
            bump_revision(session, rows.values())
        self._after_write()
        return RelabelResult(new_id, inverse, [])

    def _after_write(self) -> None:
        # After the commit, so the file always reflects committed state; every
        # writer rewrites it whole from the database, so the last one wins correctly.
        if self.labels_csv_path is None:
            return
        if self._export_delay_s <= 0:
            self._export_now()
            return
        with self._export_state:
            self._export_pending = True
            if self._exporter is None:
                self._exporter = threading.Thread(target=self._export_later, name="labels-csv", daemon=True)
                self._exporter.start()

    def _export_later(self) -> None:
        while True:
            time.sleep(self._export_delay_s)
            with self._export_state:
                if not self._export_pending:
                    self._exporter = None
                    return
                self._export_pending = False
            try:
                self._export_now()
            except Exception:  # the next write, flush or start retries; the database has the labels
                log.exception("rewriting labels.csv failed")

    def _export_now(self) -> None:
        if self.labels_csv_path is not None:
            with self._export_running:
                self.export_csv(self.labels_csv_path)

    def flush_labels_csv(self) -> None:
        """Write labels.csv now if a delayed rewrite is pending (at shutdown, or before reading the file)."""
        with self._export_state:
            pending, self._export_pending = self._export_pending, False
        if pending:
            self._export_now()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction; on SQLite, after this writer's turn (:class:`WriterTurn`)."""
        if self._writer_turn is None:
            with self._writer.begin() as session:
                yield session
            return
        with self._writer_turn(), self._writer.begin() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction (SQLite's write lock taken up front); labels.csv follows after the commit.

        A writer that changes labels or images calls :func:`bump_revision` in it.
        """
        with self._write() as session:
            yield session
        self._after_write()

    # --- serving version ----------------------------------------------------------
    # Kept here because it is the one database every worker (and replica) already shares.
    def serving(self, model_name: str) -> Promotion | None:
        """The latest promotion of ``model_name``, or None if none was ever recorded."""
        query = (
            select(PromotionRow).where(PromotionRow.model_name == model_name).order_by(PromotionRow.id.desc()).limit(1)
        )
        with self._session() as session:
            row = session.scalar(query)
            return None if row is None else Promotion(row.tag, row.created_at, row.actor, row.reason)

    def promote(self, model_name: str, tag: str, *, actor: str = "unknown", reason: str = "") -> Promotion:
        """Record that ``tag`` serves from now on; every worker polls this and swaps to it."""
        _check_reason_and_actor(reason, actor)
        row = PromotionRow(model_name=model_name, tag=tag, created_at=datetime.now(UTC), actor=actor, reason=reason)
        with self._write() as session:
            session.add(row)
        return Promotion(row.tag, row.created_at, row.actor, row.reason)

    # --- export -----------------------------------------------------------------
    def labels_csv(self) -> str:
        """The curated labels as deterministic CSV text (see :mod:`training.labels.export`)."""
        return self._labels_csv()[0]

    def data_version(self) -> str:
        """Hash of every present image's content and curated label: what a model was trained on."""
        return self._labels_csv()[1]

    def _labels_csv(self) -> tuple[str, str]:
        """The text and its hash, kept per process and brought up to date by the rows changed since.

        Built in full on first use, and when images came, went or moved (the database orders the
        paths: its collation, not Python's). A relabel, undo or confirm only replaces its images'
        lines: the service asks this for every ``evaluate`` and every labels.csv rewrite, and rebuilding
        it from every row per revision was a third of a worker's CPU in the soak (issue 14).
        Returns the text and its hash.
        """
        with self._csv_lock:
            cached = self._csv
            if cached is not None:
                revision, changed = self.records_since(cached.revision)
                if revision == cached.revision and not changed:
                    return cached.text, cached.version
                if all(present and cached.paths.get(r.image_id) == r.path for r, present in changed):
                    cached.lines.update((r.image_id, labels_csv_line(r)) for r, _ in changed)
                    text = CSV_HEADER + "".join(cached.lines[image_id] for image_id in cached.order)
                    cached.revision, cached.text, cached.version = revision, text, data_version_of(text)
                    return text, cached.version
            revision = self.revision()  # first: a change committed after it is read again next time
            records = self.images()
            lines = {r.image_id: labels_csv_line(r) for r in records}
            text = CSV_HEADER + "".join(lines[r.image_id] for r in records)
            order, paths = [r.image_id for r in records], {r.image_id: r.path for r in records}
            self._csv = _CsvLines(revision, order, paths, lines, text, data_version_of(text))
            return text, self._csv.version

    def export_csv(self, path: Path) -> str:
        """Write labels.csv atomically (safe with several writers); return the data version."""
        return write_labels_csv(self.labels_csv(), path)

    def repair_labels_csv(self) -> bool:
        """Rewrite labels.csv if it disagrees with the database (a crash between a commit and its export).

        Called when a server starts; True if the file had to be rewritten.
        """
        if self.labels_csv_path is None:
            return False
        text = self.labels_csv()
        try:
            if self.labels_csv_path.read_text(encoding="utf-8") == text:
                return False
        except (OSError, UnicodeDecodeError):
            pass  # missing or unreadable: written below
        write_labels_csv(text, self.labels_csv_path)
        return True


def open_store(settings: Settings, *, export_delay_s: float = 0.0) -> LabelStore:
    """The label store of ``settings``' dataset (labels.csv kept up to date unless switched off).

    ``export_delay_s``: a server passes ``BOUNCER_LABELS_CSV_DELAY_MS`` (rewrites off the request).
    """
    if settings.database_url is None and not settings.data_dir.is_dir():
        raise Missing(f"data directory {settings.data_dir} does not exist (set BOUNCER_DATA_DIR)")
    return LabelStore(
        settings.label_db_url,
        labels_csv=settings.labels_csv if settings.export_labels_on_change else None,
        export_delay_s=export_delay_s,
    )


# Events that are a person's decision about an image; "undo" reverts one, "move" is the folder's doing.
DECISIONS = ("relabel", "confirm")
# Ids bound in one IN (...): SQLite refuses over 250,000 variables (a 500 once), PostgreSQL over 65,535.
IDS_PER_QUERY = 10_000


def _reverted_events() -> Select[tuple[int | None]]:
    """The ids of events some undo reverted."""
    undo = aliased(EventRow)
    return select(undo.reverts_event_id).where(undo.reverts_event_id.is_not(None))


def bump_revision(session: Session, changed: Iterable[ImageRow] = ()) -> int:
    """Raise the dataset's revision and stamp the ``changed`` image rows with it; the new revision.

    Every writer that changes labels, review state or images calls it in its
    transaction: the dataset row's lock orders concurrent writers, so a reader that
    saw revision r has seen every row stamped r or lower.
    """
    session.execute(update(DatasetRow).where(DatasetRow.id == 1).values(revision=DatasetRow.revision + 1))
    revision = int(session.scalar(select(DatasetRow.revision).where(DatasetRow.id == 1)) or 0)
    for row in changed:
        row.revision = revision
    return revision


def record_event(
    session: Session,
    kind: str,
    changes: Iterable[LabelChange],
    *,
    actor: str,
    reason: str,
    reverts_event_id: int | None = None,
) -> int:
    """Append one event and its per-image changes to the audit trail; its event_id."""
    row = EventRow(
        kind=kind,
        created_at=datetime.now(UTC),
        actor=actor,
        reason=reason,
        reverts_event_id=reverts_event_id,
    )
    session.add(row)
    session.flush()
    session.add_all(
        ChangeRow(event_id=row.event_id, image_id=c.image_id, old_label=c.old_label, new_label=c.new_label)
        for c in changes
    )
    return row.event_id


_RECORD_COLUMNS = (
    ImageRow.image_id,
    ImageRow.path,
    ImageRow.split,
    ImageRow.label,
    ImageRow.folder_label,
    ImageRow.sha256,
)


def _present_in(query: Select[Any], split: str | None, label: str | None) -> Select[Any]:
    """``query`` over the present images, of ``split`` and ``label`` when given (what images and count list)."""
    query = query.where(ImageRow.present.is_(True))
    if split is not None:
        query = query.where(ImageRow.split == split)
    if label is not None:
        query = query.where(ImageRow.label == label)
    return query


def _image_record(row: ImageRow) -> ImageRecord:
    return ImageRecord(row.image_id, row.path, row.split, row.label, row.folder_label, row.sha256)


def _present_rows(session: Session, ids: list[str]) -> dict[str, ImageRow]:
    """The rows of ``ids`` to write to, all of them or UnknownImageError naming the missing (nothing written)."""
    rows: dict[str, ImageRow] = {}
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[start : start + IDS_PER_QUERY]
        query = select(ImageRow).where(ImageRow.image_id.in_(chunk), ImageRow.present.is_(True))
        rows.update((row.image_id, row) for row in session.scalars(query))
    if missing := [i for i in ids if i not in rows]:
        raise UnknownImageError(f"unknown image_id(s): {', '.join(map(repr, missing[:10]))}")
    return rows


def _check_reason_and_actor(reason: str, actor: str) -> None:
    """Refused before any write: a 1 MB reason or a NUL character (PostgreSQL rejects it) is a 400, not a 500."""
    checked_text(reason, "reason", REASON_MAX)
    checked_text(actor, "actor", ACTOR_MAX)
