"""The curated labels: a SQLAlchemy database with an append-only audit trail.

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

import csv
import hashlib
import io
import os
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from training.dataset import Fingerprint, ScanResult

CSV_COLUMNS = ("path", "image_id", "split", "label", "sha256")


class LabelStoreError(Exception):
    """Base for errors callers should turn into a 4xx answer."""


class NotFoundError(LabelStoreError, KeyError):
    """Something named by id does not exist (a 404)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class UnknownImageError(NotFoundError):
    pass


class UnknownEventError(NotFoundError):
    pass


class UnknownLabelError(LabelStoreError, ValueError):
    pass


class UndoConflictError(LabelStoreError):
    """Undoing would overwrite a later change, or the event was already undone."""


class Base(DeclarativeBase):
    pass


class DatasetRow(Base):
    """The identity of the dataset this database curates: a single row (``id`` 1), never changed."""

    __tablename__ = "dataset"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(36), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PromotionRow(Base):
    """Which model version serves: the newest row per model name wins (kept as an audit trail)."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(256), index=True)
    tag: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(String(2048), default="")


class ImageRow(Base):
    __tablename__ = "images"

    image_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), unique=True, index=True)
    split: Mapped[str] = mapped_column(String(64), index=True)
    folder_label: Mapped[str] = mapped_column(String(256))
    label: Mapped[str] = mapped_column(String(256), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    present: Mapped[bool] = mapped_column(Boolean, default=True, index=True)


class ClassRow(Base):
    __tablename__ = "classes"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)


class EventRow(Base):
    __tablename__ = "label_events"

    event_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # relabel | undo | move
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(String(2048), default="")
    reverts_event_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_events.event_id"), unique=True, nullable=True
    )
    changes: Mapped[list[ChangeRow]] = relationship(back_populates="event", order_by="ChangeRow.image_id")


class ChangeRow(Base):
    __tablename__ = "label_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("label_events.event_id"), index=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.image_id"), index=True)
    old_label: Mapped[str] = mapped_column(String(256))
    new_label: Mapped[str] = mapped_column(String(256))
    event: Mapped[EventRow] = relationship(back_populates="changes")


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    path: str
    split: str
    label: str
    folder_label: str
    sha256: str


@dataclass(frozen=True)
class LabelChange:
    image_id: str
    old_label: str
    new_label: str


@dataclass(frozen=True)
class LabelEvent:
    event_id: int
    kind: str
    created_at: datetime
    actor: str
    reason: str
    reverts_event_id: int | None
    reverted_by_event_id: int | None
    changes: list[LabelChange]


@dataclass(frozen=True)
class RelabelResult:
    event_id: int | None  # None when nothing changed
    changed: list[LabelChange]
    unchanged: list[str]


@dataclass(frozen=True)
class Promotion:
    tag: str
    created_at: datetime
    actor: str
    reason: str


@dataclass
class SyncReport:
    added: int = 0
    removed: int = 0
    moved: int = 0
    restored: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the scan's, about folders (see ScanResult)


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


class LabelStore:
    """All label reads and writes; every write is one transaction."""

    def __init__(self, url: str, *, labels_csv: Path | None = None) -> None:
        """``labels_csv``: if given, rewritten after every write that changes labels or images."""
        self.labels_csv_path = labels_csv
        if url.startswith("sqlite"):
            self.engine = _sqlite_engine(url, for_writes=True)
            read_engine = _sqlite_engine(url, for_writes=False)
        else:
            self.engine = read_engine = create_engine(url, pool_pre_ping=True)
        Base.metadata.create_all(self.engine)  # also adds tables new in this version to an existing database
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._session = sessionmaker(read_engine, expire_on_commit=False)
        self._read_engine = read_engine
        self._dataset_id = self._existing_dataset_id() or self._create_dataset_id()

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
            with self._writer.begin() as session:
                if session.get(DatasetRow, 1) is None:  # under the write lock: no other process made it meanwhile
                    session.add(DatasetRow(id=1, dataset_id=str(uuid.uuid4()), created_at=datetime.now(UTC)))
        except IntegrityError:  # a server database without a write lock: another process inserted it first
            pass
        dataset_id = self._existing_dataset_id()
        if dataset_id is None:  # just written, by us or by another process: cannot happen
            raise RuntimeError("the dataset identity row vanished right after it was written")
        return dataset_id

    def close(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- import -----------------------------------------------------------------
    def fingerprints(self) -> dict[str, Fingerprint]:
        with self._session() as session:
            rows = session.execute(select(ImageRow.path, ImageRow.sha256, ImageRow.size, ImageRow.mtime_ns))
            return {path: Fingerprint(sha, size, mtime) for path, sha, size, mtime in rows}

    def sync(self, scan: ScanResult, *, actor: str = "scan") -> SyncReport:
        """Make the table match the folder, keeping every curated label.

        A file that disappeared is marked absent (its label and history stay, and
        come back if it reappears). A new path whose content matches an absent or
        vanished file of the same split is that file moved: it keeps its image_id,
        and moving it into another class folder is recorded as a relabel.
        """
        report = SyncReport(skipped=list(scan.skipped), classes=list(scan.classes), warnings=list(scan.warnings))
        with self._writer.begin() as session:
            rows = {row.path: row for row in session.scalars(select(ImageRow))}
            scanned_paths = {f.path for f in scan.files}
            vanished: dict[tuple[str, str], list[ImageRow]] = {}
            for row in rows.values():
                if row.path not in scanned_paths:
                    vanished.setdefault((row.split, row.sha256), []).append(row)
            taken_ids = {row.image_id for row in rows.values()}
            moves: list[LabelChange] = []
            for scanned in scan.files:
                row = rows.get(scanned.path)
                if row is None:
                    candidates = vanished.get((scanned.split, scanned.sha256))
                    if candidates:
                        row = candidates.pop(0)
                        if row.folder_label != scanned.folder_label:
                            moves.append(LabelChange(row.image_id, row.label, scanned.folder_label))
                            row.label = scanned.folder_label
                        row.path = scanned.path
                        row.folder_label = scanned.folder_label
                        report.moved += 1
                    else:
                        image_id = _new_image_id(scanned.path, taken_ids)
                        taken_ids.add(image_id)
                        row = ImageRow(
                            image_id=image_id,
                            path=scanned.path,
                            split=scanned.split,
                            folder_label=scanned.folder_label,
                            label=scanned.folder_label,
                        )
                        session.add(row)
                        report.added += 1
                elif not row.present:
                    report.restored += 1
                else:
                    report.unchanged += 1
                row.sha256, row.size, row.mtime_ns = scanned.sha256, scanned.size, scanned.mtime_ns
                row.present = True
            for group in vanished.values():
                for row in group:
                    if row.present:
                        row.present = False
                        report.removed += 1
            session.flush()
            if moves:
                self._record(session, "move", moves, actor=actor, reason="file moved to another class folder")
            known = set(session.scalars(select(ClassRow.name)))
            for name in scan.classes:
                if name not in known:
                    session.add(ClassRow(name=name))
        self._after_write()
        return report

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
        query = select(ImageRow).where(ImageRow.present.is_(True)).order_by(ImageRow.path)
        if split is not None:
            query = query.where(ImageRow.split == split)
        if label is not None:
            query = query.where(ImageRow.label == label)
        query = query.offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return [_record(row) for row in session.scalars(query)]

    def count(self, *, split: str | None = None) -> int:
        query = select(func.count()).select_from(ImageRow).where(ImageRow.present.is_(True))
        if split is not None:
            query = query.where(ImageRow.split == split)
        with self._session() as session:
            return int(session.scalar(query) or 0)

    def get(self, image_id: str) -> ImageRecord:
        with self._session() as session:
            row = session.get(ImageRow, image_id)
            if row is None or not row.present:
                raise UnknownImageError(f"unknown image_id {image_id!r}")
            return _record(row)

    def reviewed_image_ids(self) -> set[str]:
        """Images some relabel or undo has touched: a person already looked at them."""
        query = select(ChangeRow.image_id).join(EventRow).where(EventRow.kind.in_(("relabel", "undo"))).distinct()
        with self._session() as session:
            return set(session.scalars(query))

    def history(self, *, image_id: str | None = None, limit: int = 50) -> list[LabelEvent]:
        """Events newest first, optionally only those touching one image."""
        query = select(EventRow).order_by(EventRow.event_id.desc()).limit(limit)
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
        ids = list(dict.fromkeys(image_ids))  # de-duplicate, keep order
        if not ids:
            raise UnknownImageError("no image_ids given")
        with self._writer.begin() as session:
            if session.get(ClassRow, label) is None:
                known = ", ".join(sorted(session.scalars(select(ClassRow.name))))
                raise UnknownLabelError(f"unknown label {label!r}; known classes: {known}")
            rows = {
                row.image_id: row
                for row in session.scalars(
                    select(ImageRow).where(ImageRow.image_id.in_(ids), ImageRow.present.is_(True))
                )
            }
            missing = [i for i in ids if i not in rows]
            if missing:
                raise UnknownImageError(f"unknown image_id(s): {', '.join(map(repr, missing[:10]))}")
            changes = [LabelChange(i, rows[i].label, label) for i in ids if rows[i].label != label]
            unchanged = [i for i in ids if rows[i].label == label]
            for change in changes:
                rows[change.image_id].label = label
            event_id = self._record(session, "relabel", changes, actor=actor, reason=reason) if changes else None
        if changes:
            self._after_write()
        return RelabelResult(event_id, changes, unchanged)

    def undo(self, event_id: int, *, actor: str = "unknown", reason: str = "") -> RelabelResult:
        """Revert one event by appending its inverse; refuses to clobber later changes."""
        with self._writer.begin() as session:
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
            inverse = [LabelChange(c.image_id, c.new_label, c.old_label) for c in original.changes]
            for change in inverse:
                rows[change.image_id].label = change.new_label
            new_id = self._record(
                session,
                "undo",
                inverse,
                actor=actor,
                reason=reason or f"undo event {event_id}",
                reverts_event_id=event_id,
            )
        self._after_write()
        return RelabelResult(new_id, inverse, [])

    def _after_write(self) -> None:
        # After the commit, so the file always reflects committed state; every
        # writer rewrites it whole from the database, so the last one wins correctly.
        if self.labels_csv_path is not None:
            self.export_csv(self.labels_csv_path)

    @staticmethod
    def _record(
        session: Session,
        kind: str,
        changes: Iterable[LabelChange],
        *,
        actor: str,
        reason: str,
        reverts_event_id: int | None = None,
    ) -> int:
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
        row = PromotionRow(model_name=model_name, tag=tag, created_at=datetime.now(UTC), actor=actor, reason=reason)
        with self._writer.begin() as session:
            session.add(row)
        return Promotion(row.tag, row.created_at, row.actor, row.reason)

    # --- export -----------------------------------------------------------------
    def labels_csv(self) -> str:
        """The curated labels as deterministic CSV text, one present image per line, sorted by path."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for record in self.images():
            writer.writerow([record.path, record.image_id, record.split, record.label, record.sha256])
        return buffer.getvalue()

    def data_version(self) -> str:
        """Hash of every present image's content and curated label: what a model was trained on."""
        return data_version_of(self.labels_csv())

    def export_csv(self, path: Path) -> str:
        """Write labels.csv atomically (safe with several writers); return the data version."""
        text = self.labels_csv()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".labels-", suffix=".csv")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
        return data_version_of(text)


def data_version_of(labels_csv: str) -> str:
    return hashlib.sha256(labels_csv.encode("utf-8")).hexdigest()[:16]


def _new_image_id(path: str, taken: set[str]) -> str:
    """Deterministic id from the path the file was first seen at (same on every machine)."""
    salt = 0
    while True:
        image_id = hashlib.sha256(f"{path}\0{salt}".encode()).hexdigest()[:16]
        if image_id not in taken:
            return image_id
        salt += 1


def _record(row: ImageRow) -> ImageRecord:
    return ImageRecord(row.image_id, row.path, row.split, row.label, row.folder_label, row.sha256)
