"""``labels.csv``: the curated labels as deterministic text that git and DVC version, and its hash.

The **data version** of a dataset is the hash of this text: same images (content
hashes) with the same labels give the same version, whatever the machine.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.labels.records import ImageRecord

CSV_COLUMNS = ("path", "image_id", "split", "label", "sha256")


def labels_csv_text(records: Iterable[ImageRecord]) -> str:
    """One line per present image, in the order given (the store gives them sorted by path)."""
    return CSV_HEADER + "".join(labels_csv_line(record) for record in records)


def labels_csv_line(record: ImageRecord) -> str:
    """One image's line (CSV quoting where a path needs it): the text is the header and these, joined."""
    return _csv_row([record.path, record.image_id, record.split, record.label, record.sha256])


def _csv_row(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


CSV_HEADER = _csv_row(list(CSV_COLUMNS))


def data_version_of(labels_csv: str) -> str:
    return hashlib.sha256(labels_csv.encode("utf-8")).hexdigest()[:16]


def write_labels_csv(text: str, path: Path) -> str:
    """Write atomically (safe with several writers: the last complete file wins); return the data version.

    The file gets the permissions of any file the user makes (0666 less the umask, as git and DVC
    expect): a temporary file from ``mkstemp`` is 0600, and the rename kept that.
    """
    return write_labels_csv_lines([text], path)


def write_labels_csv_lines(parts: Iterable[str], path: Path) -> str:
    """:func:`write_labels_csv` of the text these parts join to, never held whole; the data version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".labels-{uuid.uuid4().hex}.csv"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            for part in parts:
                handle.write(part)
                digest.update(part.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest.hexdigest()[:16]
