"""Reads of the curated labels: images, reviews, what changed since a revision, the event history.

Glossary: ``image_id`` is stable for a file's whole life (it survives relabels and moves on
disk); ``folder_label`` is what the folder says; ``label`` is the curated label everything
else uses; ``present`` is False for a file gone from disk (its row and history stay).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from datetime import UTC
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import selectinload

from training.data.folders import Fingerprint
from training.errors import quoted
from training.labels.database import IDS_PER_QUERY, Database, current_revision
from training.labels.errors import UnknownImageError
from training.labels.records import ImageChange, ImageRecord, LabelChange, LabelEvent
from training.labels.schema import ChangeRow, ClassRow, EventRow, ImageRow

_RECORD_COLUMNS = (
    ImageRow.image_id,
    ImageRow.path,
    ImageRow.split,
    ImageRow.label,
    ImageRow.folder_label,
    ImageRow.sha256,
)


class Queries:
    """Every read of one label database, each in one read session."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def fingerprints(self) -> dict[str, Fingerprint]:
        """Every known path's content fingerprint: what a folder scan need not hash again."""
        with self.database.read() as session:
            rows = session.execute(select(ImageRow.path, ImageRow.sha256, ImageRow.size, ImageRow.mtime_ns))
            return {path: Fingerprint(sha, size, mtime) for path, sha, size, mtime in rows}

    def classes(self) -> list[str]:
        with self.database.read() as session:
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
        with self.database.read() as session:
            return [_record(*row) for row in session.connection().execute(query)]

    def each_image(self, *, rows_per_fetch: int = 10_000) -> Iterator[ImageRecord]:
        """Every present image in path order (as :meth:`images`), read as a stream in one read session.

        For a pass over every image that keeps none of them (labels.csv written by a process without its cache).
        """
        query = _present_in(select(*_RECORD_COLUMNS), None, None).order_by(ImageRow.path)
        with self.database.read() as session:
            for row in session.execute(query.execution_options(yield_per=rows_per_fetch)):
                yield ImageRecord(*row)

    def count(self, *, split: str | None = None, label: str | None = None) -> int:
        """How many present images :meth:`images` would list with the same filters."""
        query = _present_in(select(func.count()).select_from(ImageRow), split, label)
        with self.database.read() as session:
            return int(session.scalar(query) or 0)

    def get(self, image_id: str) -> ImageRecord:
        with self.database.read() as session:
            row = session.get(ImageRow, image_id)
            if row is None or not row.present:
                raise UnknownImageError(f"unknown image_id {quoted(image_id)}")
            return ImageRecord(row.image_id, row.path, row.split, row.label, row.folder_label, row.sha256)

    def records(self, image_ids: Sequence[str]) -> dict[str, ImageRecord]:
        """The present images among ``image_ids`` by id (one query; unknown or absent ids are left out)."""
        found: dict[str, ImageRecord] = {}
        with self.database.read() as session:
            for start in range(0, len(image_ids), IDS_PER_QUERY):
                chunk = list(image_ids[start : start + IDS_PER_QUERY])
                # by primary key only: with ``present`` in the WHERE, SQLite may scan its index instead (3 ms at 10k);
                # plain rows, not ORM objects: this is on every search's path
                query = select(*_RECORD_COLUMNS, ImageRow.present).where(ImageRow.image_id.in_(chunk))
                found.update((row[0], ImageRecord(*row[:-1])) for row in session.execute(query) if row[-1])
        return found

    def reviewed_ids(self, split: str | None = None) -> set[str]:
        """The present images (of ``split`` if given) a person relabelled or confirmed, by an event not undone since."""
        query = select(ImageRow.image_id).where(ImageRow.present.is_(True), ImageRow.reviewed.is_(True))
        if split is not None:
            query = query.where(ImageRow.split == split)
        with self.database.read() as session:
            return set(session.scalars(query))

    def revision(self) -> int:
        """A number every change of labels or images raises: equal revisions, equal labels (one row read)."""
        with self.database.read() as session:
            return current_revision(session)

    def changes_since(self, revision: int) -> tuple[int, list[ImageChange]]:
        """The current revision and every image row changed after ``revision`` (-1: all of them).

        Read in one transaction, revision first: a change committed in between is read
        now and again next time, never missed.
        """
        columns = (*_RECORD_COLUMNS, ImageRow.present, ImageRow.reviewed)
        with self.database.read() as session:
            current = current_revision(session)
            rows = session.execute(select(*columns).where(ImageRow.revision > revision))
            return current, [ImageChange(*row) for row in rows]

    def history(self, *, image_id: str | None = None, limit: int = 50) -> list[LabelEvent]:
        """Events newest first, optionally only those touching one image."""
        # the changes of all events in one more query, not one per event (history's p99 in the soak, issue 14)
        query = select(EventRow).options(selectinload(EventRow.changes)).order_by(EventRow.event_id.desc()).limit(limit)
        with self.database.read() as session:
            if image_id is not None:
                if session.get(ImageRow, image_id) is None:
                    raise UnknownImageError(f"unknown image_id {quoted(image_id)}")
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


def _present_in(query: Select[Any], split: str | None, label: str | None) -> Select[Any]:
    """``query`` over the present images, of ``split`` and ``label`` when given (what images and count list)."""
    query = query.where(ImageRow.present.is_(True))
    if split is not None:
        query = query.where(ImageRow.split == split)
    if label is not None:
        query = query.where(ImageRow.label == label)
    return query


def _record(image_id: str, path: str, split: str, label: str, folder_label: str, sha256: str) -> ImageRecord:
    """A record whose split and labels share one string per value: a training holds a million of them.

    The database driver gives each row its own strings; interned, a record is ~360 bytes, not ~560.
    """
    return ImageRecord(image_id, path, sys.intern(split), sys.intern(label), sys.intern(folder_label), sha256)
