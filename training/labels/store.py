"""One dataset's label store: the database and its jobs, held together for the façades.

Each job has its module: :mod:`~training.labels.database` (connections, the write turn,
the dataset's identity), :mod:`~training.labels.queries` (reads),
:mod:`~training.labels.events` (relabel, confirm, undo), :mod:`~training.labels.csv_mirror`
(labels.csv) and :mod:`~training.labels.sync` (the folder scan's merge); promotions are the
registry's (:mod:`training.registry.promotions`). Callers outside ``training`` go through
the façades (:class:`training.curation.labels.Labels`, the Curator, the Registry).
"""

from __future__ import annotations

from pathlib import Path

from training.errors import Missing
from training.labels.csv_mirror import CsvMirror
from training.labels.database import Database
from training.labels.events import Events
from training.labels.queries import Queries
from training.settings import Settings


class LabelStore:
    """A label database with its reads (``queries``), writes (``events``) and labels.csv mirror (``csv``)."""

    def __init__(self, url: str, *, labels_csv: Path | None = None, export_delay_s: float = 0.0) -> None:
        """``labels_csv``: if given, rewritten after every write that changes labels or images.

        ``export_delay_s`` > 0 (a server): the rewrite happens that long after a write, off the
        request (see :class:`~training.labels.csv_mirror.CsvMirror`).
        """
        self.database = Database(url)
        self.queries = Queries(self.database)
        self.csv = CsvMirror(self.queries, labels_csv, export_delay_s=export_delay_s)
        self.events = Events(self.database, self.csv)

    @property
    def dataset_id(self) -> str:
        """This dataset's identity (a UUID), recorded in the metadata of every model trained on it."""
        return self.database.dataset_id

    def close(self) -> None:
        """Write what labels.csv still owes, then let the database go."""
        self.csv.flush()
        self.database.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


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
