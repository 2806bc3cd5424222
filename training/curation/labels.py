"""The labels façade: every label question and decision that needs no model.

The service's label writes (relabel, confirm, undo), the page's image pages and the
``bouncer`` CLI's ``images``/``relabel``/``undo``/``history``/``export-labels`` all go
through :class:`Labels`; questions that need a model version go through
:meth:`Labels.curator` (the :class:`~training.curation.curator.Curator`). The label
store itself (:mod:`training.labels.store`) stays behind these two doors, and the
registry's serving façade (:class:`~training.registry.serving.Registry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.data.folders import MissingSplitError
from training.errors import BouncerError, Invalid, quoted
from training.labels.records import ConfirmResult, ImageRecord, LabelEvent, RelabelResult
from training.labels.store import LabelStore, open_store
from training.labels.sync import SyncReport, import_folder
from training.settings import Settings


class CurationError(BouncerError):
    """Base for the façades' own refusals."""


class InvalidRequest(CurationError, Invalid):
    """An argument that cannot be (unknown split or class, nothing to work from): a 400."""


def check_split(settings: Settings, split: str) -> None:
    if split not in settings.splits:
        raise InvalidRequest(f"unknown split {quoted(split)}; use one of {list(settings.splits)}")


@dataclass(frozen=True)
class Labels:
    """One dataset's curated labels; a server holds one for its life, a CLI command one per command."""

    settings: Settings
    store: LabelStore

    @classmethod
    def open(cls, settings: Settings, *, export_delay_s: float = 0.0) -> Labels:
        """This dataset's labels (Missing if its data folder is not there); :meth:`close` when done.

        ``export_delay_s``: a server passes ``BOUNCER_LABELS_CSV_DELAY_MS`` (labels.csv rewrites off the request).
        """
        return cls(settings, open_store(settings, export_delay_s=export_delay_s))

    def close(self) -> None:
        """Write what labels.csv still owes, then let the database go."""
        self.store.close()

    def __enter__(self) -> Labels:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- checks -------------------------------------------------------------------
    def check_split(self, split: str) -> None:
        check_split(self.settings, split)

    def check_evaluable(self, split: str) -> None:
        """A known split with images: an accuracy of 0.0 over no images would be a lie."""
        self.check_split(split)
        if self.store.queries.count(split=split) == 0:
            raise MissingSplitError(self.settings.data_dir, split, test_split=self.settings.test_split)

    def check_label(self, label: str | None) -> None:
        if label is not None and label not in (classes := self.store.queries.classes()):
            raise InvalidRequest(f"unknown label {quoted(label)}; known classes: {', '.join(classes)}")

    # --- reads --------------------------------------------------------------------
    @property
    def dataset_id(self) -> str:
        return self.store.dataset_id

    def classes(self) -> list[str]:
        return self.store.queries.classes()

    def image(self, image_id: str) -> ImageRecord:
        """One image's record (NotFoundError when no present image has that id)."""
        return self.store.queries.get(image_id)

    def image_records(self, image_ids: Sequence[str]) -> dict[str, ImageRecord]:
        """The present images among ``image_ids``, by id (unknown ones are left out)."""
        return self.store.queries.records(image_ids)

    def images(
        self, *, split: str | None = None, label: str | None = None, limit: int | None = None, offset: int = 0
    ) -> list[ImageRecord]:
        """A page of images in path order; an unknown split or class is an error, not an empty page."""
        if split is not None:
            self.check_split(split)
        self.check_label(label)
        return self.store.queries.images(split=split, label=label, limit=limit, offset=offset)

    def image_count(self, *, split: str | None = None, label: str | None = None) -> int:
        return self.store.queries.count(split=split, label=label)

    def reviewed_ids(self) -> set[str]:
        """Images a person relabelled or confirmed (and no undo took back)."""
        return self.store.queries.reviewed_ids()

    def history(self, *, image_id: str | None = None, limit: int = 50) -> list[LabelEvent]:
        return self.store.queries.history(image_id=image_id, limit=limit)

    def data_version(self) -> str:
        """Hash of every present image's content and curated label: what a model is trained on."""
        return self.store.csv.data_version()

    # --- decisions (each one transaction, recorded, undoable) -----------------------
    def relabel(self, image_ids: Sequence[str], label: str, *, reason: str, actor: str) -> RelabelResult:
        return self.store.events.relabel(image_ids, label, reason=reason, actor=actor)

    def confirm(self, image_ids: Sequence[str], *, reason: str, actor: str) -> ConfirmResult:
        return self.store.events.confirm(image_ids, reason=reason, actor=actor)

    def undo(self, event_id: int, *, actor: str, reason: str = "") -> RelabelResult:
        return self.store.events.undo(event_id, actor=actor, reason=reason)

    def import_folder(self) -> SyncReport:
        """Scan DATA_DIR into the labels (relabels kept, moves followed); labels.csv rewritten."""
        return import_folder(self.settings, self.store)

    # --- labels.csv -----------------------------------------------------------------
    def export_csv(self, path: Path | None = None) -> str:
        """Write labels.csv (default DATA_DIR/labels.csv) atomically; return the data version."""
        return self.store.csv.export(path or self.settings.labels_csv)

    def repair_labels_csv(self) -> bool:
        """Rewrite labels.csv if a crash came between a label commit and its export (at a server's start)."""
        return self.store.csv.repair()
