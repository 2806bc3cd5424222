"""Writes of the curated labels as events: relabel, confirm and undo, each one recorded and undoable.

An *event* is one relabel call (possibly many images), a confirm, an undo, or a move the
folder sync found on disk (:mod:`training.labels.sync`, which writes through
:func:`record_event` and :func:`bump_revision` too); its ``changes`` say old -> new per image.
Every write is one transaction, and raises the dataset's revision when it changes labels,
review state or images.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Select, insert, select, update
from sqlalchemy.orm import Session, aliased

from training.errors import quoted
from training.labels.csv_mirror import CsvMirror
from training.labels.database import IDS_PER_QUERY, Database, current_revision
from training.labels.errors import (
    UndoConflictError,
    UnknownEventError,
    UnknownImageError,
    UnknownLabelError,
    check_reason_and_actor,
)
from training.labels.records import ConfirmResult, LabelChange, RelabelResult
from training.labels.schema import ChangeRow, ClassRow, DatasetRow, EventRow, ImageRow

# Events that are a person's decision about an image; "undo" reverts one, "move" is the folder's doing.
DECISIONS = ("relabel", "confirm")
# Change rows written per executemany.
CHANGES_PER_WRITE = 10_000


class Events:
    """The label writes of one database; labels.csv (``csv``) follows every one that changes labels."""

    def __init__(self, database: Database, csv: CsvMirror) -> None:
        self.database = database
        self.csv = csv

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction (SQLite's write lock taken up front); labels.csv follows after the commit.

        A writer that changes labels or images calls :func:`bump_revision` in it.
        """
        with self.database.write() as session:
            yield session
        self.csv.changed()

    def relabel(
        self, image_ids: Sequence[str], label: str, *, reason: str = "", actor: str = "unknown"
    ) -> RelabelResult:
        """Give every image ``label`` in one transaction; all-or-nothing on bad input."""
        check_reason_and_actor(reason, actor)
        ids = list(dict.fromkeys(image_ids))  # de-duplicate, keep order
        if not ids:
            raise UnknownImageError("no image_ids given")
        with self.database.write() as session:
            if session.get(ClassRow, label) is None:
                known = ", ".join(sorted(session.scalars(select(ClassRow.name))))
                raise UnknownLabelError(f"unknown label {quoted(label)}; known classes: {known}")
            rows = present_rows(session, ids)
            changes = [LabelChange(i, rows[i].label, label) for i in ids if rows[i].label != label]
            unchanged = [i for i in ids if rows[i].label == label]
            for change in changes:
                rows[change.image_id].label = label
                rows[change.image_id].reviewed = True
            event_id = record_event(session, "relabel", changes, actor=actor, reason=reason) if changes else None
            if changes:
                bump_revision(session, [rows[c.image_id] for c in changes])
        if changes:
            self.csv.changed()
        return RelabelResult(event_id, changes, unchanged)

    def confirm(self, image_ids: Sequence[str], *, reason: str = "", actor: str = "unknown") -> ConfirmResult:
        """Record that a person checked these images and their current labels are right (undoable).

        A confirmed image counts as reviewed: it leaves the review queues, ``expand``
        skips it. Its event's changes keep the label (old = new), so labels.csv stays as it is.
        """
        check_reason_and_actor(reason, actor)
        ids = list(dict.fromkeys(image_ids))
        if not ids:
            raise UnknownImageError("no image_ids given")
        with self.database.write() as session:
            rows = present_rows(session, ids)
            confirmed = [LabelChange(i, rows[i].label, rows[i].label) for i in ids]
            for row in rows.values():
                row.reviewed = True
            event_id = record_event(session, "confirm", confirmed, actor=actor, reason=reason)
            bump_revision(session, rows.values())  # the reviewed set changed: suspect and trace queues with it
        return ConfirmResult(event_id, confirmed)

    def undo(self, event_id: int, *, actor: str = "unknown", reason: str = "") -> RelabelResult:
        """Revert one event by appending its inverse; refuses to clobber later changes (see :func:`check_undo`)."""
        check_reason_and_actor(reason, actor)
        with self.database.write() as session:
            undo = check_undo(session, event_id)
            result = apply_undo(session, undo, actor=actor, reason=reason or f"undo event {event_id}")
        self.csv.changed()
        return result


@dataclass(frozen=True)
class Undo:
    """An event :func:`check_undo` found safe to revert, and the rows of its images (in the same transaction)."""

    event_id: int
    changes: list[LabelChange]  # the event's own, old -> new
    rows: dict[str, ImageRow]  # image_id -> its row


def check_undo(session: Session, event_id: int) -> Undo:
    """What undoing ``event_id`` would revert, or the reason it must not (reads only).

    UnknownEventError for no such event; UndoConflictError when it was undone already, or
    when a later event touched one of its images: a later relabel that changed one, or a later
    confirm of one (it vouched for the label this undo would change). Undo those first.
    """
    original = session.get(EventRow, event_id)
    if original is None:
        raise UnknownEventError(f"unknown event_id {event_id}")
    undone_by = session.scalar(select(EventRow.event_id).where(EventRow.reverts_event_id == event_id))
    if undone_by is not None:
        raise UndoConflictError(f"event {event_id} was already undone by event {undone_by}")
    changes = [LabelChange(c.image_id, c.old_label, c.new_label) for c in original.changes]
    rows = {
        row.image_id: row
        for row in session.scalars(select(ImageRow).where(ImageRow.image_id.in_([c.image_id for c in changes])))
    }
    conflicts = [c.image_id for c in changes if rows[c.image_id].label != c.new_label]
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
            EventRow.event_id.not_in(reverted_events()),
        )
    ).first()
    if confirmed_later is not None:
        image_id, later = confirmed_later
        raise UndoConflictError(
            f"cannot undo event {event_id}: image {image_id} was confirmed by the later event {later}; "
            "undo that one first"
        )
    return Undo(event_id, changes, rows)


def apply_undo(session: Session, undo: Undo, *, actor: str, reason: str) -> RelabelResult:
    """Append the inverse of a checked event; its images stay reviewed only where another decision still stands."""
    inverse = [LabelChange(c.image_id, c.new_label, c.old_label) for c in undo.changes]
    for change in inverse:
        undo.rows[change.image_id].label = change.new_label
    new_id = record_event(session, "undo", inverse, actor=actor, reason=reason, reverts_event_id=undo.event_id)
    session.flush()
    still_decided = set(
        session.scalars(
            select(ChangeRow.image_id)
            .join(EventRow)
            .where(
                ChangeRow.image_id.in_(list(undo.rows)),
                EventRow.kind.in_(DECISIONS),
                EventRow.event_id.not_in(reverted_events()),
            )
        )
    )
    for row in undo.rows.values():
        row.reviewed = row.image_id in still_decided
    bump_revision(session, undo.rows.values())
    return RelabelResult(new_id, inverse, [])


def reverted_events() -> Select[tuple[int | None]]:
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
    revision = current_revision(session)
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
    # executemany, not an ORM object per change: a folder renamed moves every image in it
    batch: list[dict[str, object]] = []
    for c in changes:
        batch.append(
            {"event_id": row.event_id, "image_id": c.image_id, "old_label": c.old_label, "new_label": c.new_label}
        )
        if len(batch) == CHANGES_PER_WRITE:
            session.execute(insert(ChangeRow), batch)
            batch = []
    if batch:
        session.execute(insert(ChangeRow), batch)
    return row.event_id


def present_rows(session: Session, ids: list[str]) -> dict[str, ImageRow]:
    """The rows of ``ids`` to write to, all of them or UnknownImageError naming the missing (nothing written)."""
    rows: dict[str, ImageRow] = {}
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[start : start + IDS_PER_QUERY]
        query = select(ImageRow).where(ImageRow.image_id.in_(chunk), ImageRow.present.is_(True))
        rows.update((row.image_id, row) for row in session.scalars(query))
    if missing := [i for i in ids if i not in rows]:
        raise UnknownImageError(f"unknown image_id(s): {', '.join(map(quoted, missing[:10]))}")
    return rows
