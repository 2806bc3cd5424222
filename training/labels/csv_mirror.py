"""``labels.csv``, the database's curated labels as a file: kept in step after every write, off the request.

The text (and its hash, the data version) is kept per process and brought up to date by the
rows changed since; a server rewrites the file a moment after a write, sharing one rewrite
among the writes in between, and :meth:`CsvMirror.repair` mends a crash's gap at the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from training.labels.export import (
    CSV_HEADER,
    data_version_of,
    labels_csv_line,
    write_labels_csv,
    write_labels_csv_lines,
)
from training.labels.queries import Queries

log = logging.getLogger(__name__)


@dataclass
class _CsvLines:
    """labels.csv as one line per present image, kept across revisions (see :meth:`CsvMirror.text`)."""

    revision: int
    order: list[str]  # present image ids, in the database's path order
    paths: dict[str, str]  # image id -> path
    lines: dict[str, str]  # image id -> its CSV line
    text: str
    version: str


class CsvMirror:
    """The labels as CSV text, and the file ``path`` (None: no file) rewritten after every change of labels."""

    def __init__(self, queries: Queries, path: Path | None, *, export_delay_s: float = 0.0) -> None:
        """``export_delay_s`` > 0 (a server): the rewrite happens that long after a write, off the
        request, and writes in between share it (a relabel cost 0.57 s at 10k images when each
        rewrote the whole file). :meth:`flush` writes what is pending; a crash in between is what
        :meth:`repair` mends at the next start.
        """
        self.queries = queries
        self.path = path
        self._export_delay_s = export_delay_s
        self._export_pending = False
        self._export_state = threading.Lock()  # guards _export_pending and _exporter
        self._export_running = threading.Lock()  # one export at a time in this process
        self._exporter: threading.Thread | None = None
        self._csv: _CsvLines | None = None  # labels.csv as of some revision, for text() and data_version()
        self._csv_lock = threading.Lock()

    # --- the text -------------------------------------------------------------------
    def text(self) -> str:
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
                revision, changed = self.queries.changes_since(cached.revision)
                if revision == cached.revision and not changed:
                    return cached.text, cached.version
                if all(c.present and cached.paths.get(c.record.image_id) == c.record.path for c in changed):
                    cached.lines.update((c.record.image_id, labels_csv_line(c.record)) for c in changed)
                    text = CSV_HEADER + "".join(cached.lines[image_id] for image_id in cached.order)
                    cached.revision, cached.text, cached.version = revision, text, data_version_of(text)
                    return text, cached.version
            revision = self.queries.revision()  # first: a change committed after it is read again next time
            records = self.queries.images()
            lines = {r.image_id: labels_csv_line(r) for r in records}
            text = CSV_HEADER + "".join(lines[r.image_id] for r in records)
            order, paths = [r.image_id for r in records], {r.image_id: r.path for r in records}
            self._csv = _CsvLines(revision, order, paths, lines, text, data_version_of(text))
            return text, self._csv.version

    # --- the file -------------------------------------------------------------------
    def export(self, path: Path) -> str:
        """Write labels.csv atomically (safe with several writers); return the data version.

        A process that has not needed the text yet (``bouncer import``) writes it from a stream of
        the rows, holding none of them: building the per-process lines peaked at ~880 bytes an image (65
        streamed; tracemalloc, 200k images).
        """
        with self._csv_lock:
            cached = self._csv is not None
        if cached:
            return write_labels_csv(self.text(), path)
        return write_labels_csv_lines(_csv_parts(self.queries), path)

    def repair(self) -> bool:
        """Rewrite labels.csv if it disagrees with the database (a crash between a commit and its export).

        Called when a server starts; True if the file had to be rewritten.
        """
        if self.path is None:
            return False
        text = self.text()
        try:
            if self.path.read_text(encoding="utf-8") == text:
                return False
        except (OSError, UnicodeDecodeError):
            pass  # missing or unreadable: written below
        write_labels_csv(text, self.path)
        return True

    def changed(self) -> None:
        """Called after a write that changed labels or images commits: the file follows (now, or after the delay)."""
        # After the commit, so the file always reflects committed state; every
        # writer rewrites it whole from the database, so the last one wins correctly.
        if self.path is None:
            return
        if self._export_delay_s <= 0:
            self._export_now()
            return
        with self._export_state:
            self._export_pending = True
            if self._exporter is None:
                self._exporter = threading.Thread(target=self._export_later, name="labels-csv", daemon=True)
                self._exporter.start()

    def flush(self) -> None:
        """Write labels.csv now if a delayed rewrite is pending (at shutdown, or before reading the file)."""
        with self._export_state:
            pending, self._export_pending = self._export_pending, False
        if pending:
            self._export_now()

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
        if self.path is not None:
            with self._export_running:
                self.export(self.path)


def _csv_parts(queries: Queries) -> Iterator[str]:
    """labels.csv's text (as :meth:`CsvMirror.text` gives it) a line at a time, from one streamed read."""
    yield CSV_HEADER
    for record in queries.each_image():
        yield labels_csv_line(record)
