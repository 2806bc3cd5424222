"""What the label store answers: plain records, shared by every caller without the store itself.

Kept apart from the modules that read and write them so the service, the page and the CLI can name
these types while only the façades (:mod:`training.curation.labels`, the Curator, the
registry's serving façade) touch the store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)  # slots: a training holds one per image, 48 bytes less each
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

    def as_dict(self) -> dict[str, Any]:
        """As the API and the CLI print it: ``created_at`` in ISO 8601."""
        return {**asdict(self), "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class RelabelResult:
    event_id: int | None  # None when nothing changed
    changed: list[LabelChange]
    unchanged: list[str]


@dataclass(frozen=True)
class ConfirmResult:
    event_id: int
    confirmed: list[LabelChange]  # each image with the label a person confirmed (old = new)


@dataclass(frozen=True)
class ImageState:
    """What searches filter on, for one image (an index keeps it per vector; see :class:`ImageChange`)."""

    image_id: str
    split: str
    label: str
    present: bool
    reviewed: bool


class ImageChange(NamedTuple):
    """One image row as a change left it: see :meth:`training.labels.queries.Queries.changes_since`.

    Its record's fields (what caches of paths and contents keep), whether the file is present, and
    whether a person decided on its label: what an index's filters (the fields of :class:`ImageState`)
    and a curator's caches follow. A plain tuple: an index reads every row once (a frozen dataclass
    and its record cost 2.5-6 times as much per row, measured at 100k rows).
    """

    image_id: str
    path: str
    split: str
    label: str
    folder_label: str
    sha256: str
    present: bool
    reviewed: bool

    @property
    def record(self) -> ImageRecord:
        return ImageRecord(self.image_id, self.path, self.split, self.label, self.folder_label, self.sha256)
