"""Folder sync: make the label database match the files on disk, keeping every curated label."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Connection, Executable, bindparam, insert, select, update
from sqlalchemy.orm import Session

from training.data.folders import ScannedFile, ScanResult, scan_folder
from training.labels.database import IDS_PER_QUERY
from training.labels.events import bump_revision, record_event
from training.labels.records import LabelChange
from training.labels.schema import ClassRow, ImageRow
from training.labels.store import LabelStore
from training.settings import Settings

log = logging.getLogger(__name__)

# Rows fetched from the table at a time while matching, and parameter sets per executemany when writing.
ROWS_PER_FETCH = 10_000
ROWS_PER_WRITE = 10_000


@dataclass
class SyncReport:
    added: int = 0
    removed: int = 0
    moved: int = 0
    restored: int = 0
    unchanged: int = 0
    rewritten: int = 0  # of the unchanged paths, files whose content changed
    skipped: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the scan's, about folders (see ScanResult)


def import_folder(settings: Settings, store: LabelStore) -> SyncReport:
    """Scan DATA_DIR and merge it into the label store (which rewrites labels.csv)."""
    scan = scan_folder(
        settings.data_dir, settings.splits, max_pixels=settings.max_image_pixels, known=store.queries.fingerprints()
    )
    report = sync_folder(store, scan)
    log.info(
        "import: %d added, %d removed, %d moved, %d restored, %d unchanged, %d skipped",
        report.added,
        report.removed,
        report.moved,
        report.restored,
        report.unchanged,
        len(report.skipped),
    )
    return report


def sync_folder(store: LabelStore, scan: ScanResult, *, actor: str = "scan") -> SyncReport:
    """Make the table match the folder, keeping every curated label, in one transaction (labels.csv follows).

    A file that disappeared is marked absent (its label and history stay, and
    come back if it reappears). A new path whose content matches an absent or
    vanished file of the same split is that file moved: it keeps its image_id,
    and moving it into another class folder is recorded as a relabel.
    """
    with store.events.transaction() as session:
        plan = check_sync(session, scan)
        apply_sync(session, plan, actor=actor)
    return plan.report


class SeenRow(NamedTuple):
    """A table row the sync changes or may match by content: its columns, not an ORM object (1M rows at scale)."""

    image_id: str
    path: str
    split: str
    folder_label: str
    label: str
    sha256: str
    present: bool


_SEEN_COLUMNS = (
    ImageRow.image_id,
    ImageRow.path,
    ImageRow.split,
    ImageRow.folder_label,
    ImageRow.label,
    ImageRow.sha256,
    ImageRow.present,
)
_MATCHED_COLUMNS = (*_SEEN_COLUMNS, ImageRow.size, ImageRow.mtime_ns)


@dataclass
class SyncPlan:
    """What a scan changes in the table, as :func:`check_sync` found it and :func:`apply_sync` writes it.

    Only the rows that change are held: an unchanged file (the common case) is read and dropped.
    """

    report: SyncReport
    # same path, other fingerprint: (image_id, file, stamped: restored or new content, not only a new mtime)
    kept: list[tuple[str, ScannedFile, bool]] = field(default_factory=list)
    moved: list[tuple[SeenRow, ScannedFile]] = field(default_factory=list)  # an absent or vanished file, found again
    added: list[tuple[str, ScannedFile]] = field(default_factory=list)  # a new file, with its new image_id
    removed: list[str] = field(default_factory=list)  # image ids of present rows whose file is gone
    new_classes: list[str] = field(default_factory=list)

    def stamps(self) -> bool:
        """Whether readers see a change (the revision is bumped): every write but a fingerprint's."""
        return bool(self.moved or self.added or self.removed or any(stamped for *_, stamped in self.kept))


def check_sync(session: Session, scan: ScanResult) -> SyncPlan:
    """Match each scanned file to its row (by path, else by content within its split: a move), reading only.

    The table is read as a stream of plain rows, and written by Core statements: the ORM objects of the rows
    added, changed and checked were ~3.5 KB an image (725 MB of a first import of 200k images).
    """
    report = SyncReport(skipped=list(scan.skipped), classes=list(scan.classes), warnings=list(scan.warnings))
    plan = SyncPlan(report)
    unmatched = {f.path: f for f in scan.files}  # the files no row has the path of, once the table is read
    vanished: dict[tuple[str, str], list[SeenRow]] = {}  # rows whose file is not at their path, by (split, content)
    query = select(*_MATCHED_COLUMNS).execution_options(yield_per=ROWS_PER_FETCH)
    for row in session.execute(query):
        scanned = unmatched.pop(row.path, None)
        if scanned is None:
            vanished.setdefault((row.split, row.sha256), []).append(SeenRow(*row[: len(SeenRow._fields)]))
        elif not row.present:
            report.restored += 1
            plan.kept.append((row.image_id, scanned, True))
        else:
            report.unchanged += 1
            if row.sha256 != scanned.sha256:  # same path, new content
                report.rewritten += 1
                plan.kept.append((row.image_id, scanned, True))
            elif (row.size, row.mtime_ns) != (scanned.size, scanned.mtime_ns):  # touched: the next scan skips it
                plan.kept.append((row.image_id, scanned, False))
    new: list[ScannedFile] = []
    for scanned in scan.files:  # in the scan's order: which file takes a vanished row, and new ids, as before
        if scanned.path not in unmatched:
            continue
        if candidates := vanished.get((scanned.split, scanned.sha256)):
            plan.moved.append((candidates.pop(0), scanned))
            report.moved += 1
        else:
            new.append(scanned)
    del unmatched
    plan.added = list(zip(_new_image_ids(session, [f.path for f in new]), new, strict=True))
    report.added = len(plan.added)
    plan.removed = [row.image_id for group in vanished.values() for row in group if row.present]
    report.removed = len(plan.removed)
    known = set(session.scalars(select(ClassRow.name)))
    plan.new_classes = [name for name in scan.classes if name not in known]
    return plan


def apply_sync(session: Session, plan: SyncPlan, *, actor: str) -> None:
    """Write a checked plan: rows moved, added, restored, rewritten and removed, a move event, the revision.

    Core statements, many rows each (executemany), in the session's transaction: no ORM object per row.
    Every row readers must refresh is stamped with the new revision (see :func:`bump_revision`).
    """
    revision = bump_revision(session) if plan.stamps() else None
    images = ImageRow.__table__
    connection = session.connection()
    by_id = update(images).where(images.c.image_id == bindparam("key"))  # SET: the other keys of each row's values

    def found(image_id: str, scanned: ScannedFile, **more: Any) -> dict[str, Any]:
        """The update of a row whose file is on disk, as scanned."""
        return {"key": image_id, **_fingerprint(scanned), **more}

    _write_many(connection, by_id, (found(i, f, revision=revision) for i, f, stamped in plan.kept if stamped))
    _write_many(connection, by_id, (found(i, f) for i, f, stamped in plan.kept if not stamped))  # a new mtime only
    moves = [
        LabelChange(row.image_id, row.label, scanned.folder_label)
        for row, scanned in plan.moved
        if row.folder_label != scanned.folder_label
    ]
    _write_many(
        connection,
        by_id,
        (
            found(
                row.image_id,
                scanned,
                path=scanned.path,
                folder_label=scanned.folder_label,
                label=row.label if row.folder_label == scanned.folder_label else scanned.folder_label,
                revision=revision,
            )
            for row, scanned in plan.moved
        ),
    )
    _write_many(
        connection,
        insert(images),
        (
            {
                "image_id": image_id,
                "path": scanned.path,
                "split": scanned.split,
                "folder_label": scanned.folder_label,
                "label": scanned.folder_label,
                "reviewed": False,
                "revision": revision,
                **_fingerprint(scanned),
            }
            for image_id, scanned in plan.added
        ),
    )
    _write_many(
        connection, by_id, ({"key": image_id, "present": False, "revision": revision} for image_id in plan.removed)
    )
    if moves:
        record_event(session, "move", moves, actor=actor, reason="file moved to another class folder")
    for name in plan.new_classes:
        session.add(ClassRow(name=name))


def _fingerprint(scanned: ScannedFile) -> dict[str, Any]:
    """A row's columns that say its file is on disk, as scanned."""
    return {"sha256": scanned.sha256, "size": scanned.size, "mtime_ns": scanned.mtime_ns, "present": True}


def _write_many(connection: Connection, statement: Executable, rows: Iterable[dict[str, Any]]) -> None:
    """Execute ``statement`` for every row, ROWS_PER_WRITE parameter sets at a time (executemany)."""
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == ROWS_PER_WRITE:
            connection.execute(statement, batch)
            batch = []
    if batch:
        connection.execute(statement, batch)


def _new_image_ids(session: Session, paths: list[str]) -> list[str]:
    """Each path's id (see :func:`_image_id`): the first salt no row and no earlier path of ``paths`` has.

    The table's ids are looked up a slice at a time, not held: a set of every id was ~100 bytes an image.
    """
    ids: list[str] = []
    given: set[str] = set()
    for start in range(0, len(paths), IDS_PER_QUERY):
        chunk = paths[start : start + IDS_PER_QUERY]
        in_table = _existing_ids(session, [_image_id(path, 0) for path in chunk])
        for path in chunk:
            salt, image_id = 0, _image_id(path, 0)
            while image_id in given or image_id in in_table:
                salt += 1
                image_id = _image_id(path, salt)
                in_table |= _existing_ids(session, [image_id])
            given.add(image_id)
            ids.append(image_id)
    return ids


def _existing_ids(session: Session, ids: list[str]) -> set[str]:
    return set(session.scalars(select(ImageRow.image_id).where(ImageRow.image_id.in_(ids))))


def _image_id(path: str, salt: int) -> str:
    """Deterministic id from the path the file was first seen at (same on every machine)."""
    return hashlib.sha256(f"{path}\0{salt}".encode()).hexdigest()[:16]
