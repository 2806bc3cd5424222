"""Folder sync: make the label database match the files on disk, keeping every curated label."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from training.data.folders import ScannedFile, ScanResult, scan_folder
from training.labels.events import bump_revision, record_event
from training.labels.records import LabelChange
from training.labels.schema import ClassRow, ImageRow
from training.labels.store import LabelStore
from training.settings import Settings

log = logging.getLogger(__name__)


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


@dataclass
class SyncPlan:
    """What a scan changes in the table, as :func:`check_sync` found it and :func:`apply_sync` writes it."""

    report: SyncReport
    kept: list[tuple[ImageRow, ScannedFile]] = field(default_factory=list)  # same path: unchanged, rewritten, restored
    moved: list[tuple[ImageRow, ScannedFile]] = field(default_factory=list)  # an absent or vanished file, found again
    added: list[tuple[str, ScannedFile]] = field(default_factory=list)  # a new file, with its new image_id
    removed: list[ImageRow] = field(default_factory=list)  # present rows whose file is gone
    new_classes: list[str] = field(default_factory=list)


def check_sync(session: Session, scan: ScanResult) -> SyncPlan:
    """Match each scanned file to its row (by path, else by content within its split: a move), reading only."""
    report = SyncReport(skipped=list(scan.skipped), classes=list(scan.classes), warnings=list(scan.warnings))
    plan = SyncPlan(report)
    rows = {row.path: row for row in session.scalars(select(ImageRow))}
    scanned_paths = {f.path for f in scan.files}
    vanished: dict[tuple[str, str], list[ImageRow]] = {}
    for row in rows.values():
        if row.path not in scanned_paths:
            vanished.setdefault((row.split, row.sha256), []).append(row)
    taken_ids = {row.image_id for row in rows.values()}
    for scanned in scan.files:
        row = rows.get(scanned.path)
        if row is not None:
            plan.kept.append((row, scanned))
            if not row.present:
                report.restored += 1
            else:
                report.unchanged += 1
                if row.sha256 != scanned.sha256:  # same path, new content
                    report.rewritten += 1
        elif candidates := vanished.get((scanned.split, scanned.sha256)):
            plan.moved.append((candidates.pop(0), scanned))
            report.moved += 1
        else:
            image_id = _new_image_id(scanned.path, taken_ids)
            taken_ids.add(image_id)
            plan.added.append((image_id, scanned))
            report.added += 1
    plan.removed = [row for group in vanished.values() for row in group if row.present]
    report.removed = len(plan.removed)
    known = set(session.scalars(select(ClassRow.name)))
    plan.new_classes = [name for name in scan.classes if name not in known]
    return plan


def apply_sync(session: Session, plan: SyncPlan, *, actor: str) -> None:
    """Write a checked plan: rows moved, added, restored, rewritten and removed, a move event, the revision."""
    touched: list[ImageRow] = []  # stamped with the new revision: what readers refresh
    for row, scanned in plan.kept:
        if not row.present or row.sha256 != scanned.sha256:  # restored, or new content at the same path
            touched.append(row)
        _found(row, scanned)
    moves: list[LabelChange] = []
    for row, scanned in plan.moved:
        if row.folder_label != scanned.folder_label:
            moves.append(LabelChange(row.image_id, row.label, scanned.folder_label))
            row.label = scanned.folder_label
        row.path = scanned.path
        row.folder_label = scanned.folder_label
        _found(row, scanned)
        touched.append(row)
    for image_id, scanned in plan.added:
        row = ImageRow(
            image_id=image_id,
            path=scanned.path,
            split=scanned.split,
            folder_label=scanned.folder_label,
            label=scanned.folder_label,
        )
        _found(row, scanned)
        session.add(row)
        touched.append(row)
    for row in plan.removed:
        row.present = False
        touched.append(row)
    session.flush()
    if moves:
        record_event(session, "move", moves, actor=actor, reason="file moved to another class folder")
    for name in plan.new_classes:
        session.add(ClassRow(name=name))
    if touched:  # nothing changed: caches keyed on the revision stay valid
        bump_revision(session, touched)


def _found(row: ImageRow, scanned: ScannedFile) -> None:
    """The row's file is on disk, as scanned."""
    row.sha256, row.size, row.mtime_ns = scanned.sha256, scanned.size, scanned.mtime_ns
    row.present = True


def _new_image_id(path: str, taken: set[str]) -> str:
    """Deterministic id from the path the file was first seen at (same on every machine)."""
    salt = 0
    while True:
        image_id = hashlib.sha256(f"{path}\0{salt}".encode()).hexdigest()[:16]
        if image_id not in taken:
            return image_id
        salt += 1
