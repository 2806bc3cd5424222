"""Logged out-of-distribution images into the dataset, for a reviewer to label: new user data -> retraining.

Each picture (kept by ``BOUNCER_LOG_IMAGES=ood|all``) is copied, bytes unchanged, to
``DATA_DIR/<split>/<label>/logged-<sha256 prefix>.<ext>`` under its predicted label (or
the one given), then the folder is synced into the label store as any new file is. It is
not reviewed yet, so the review page's queue shows it; the prediction log remembers
which image it became, so it is imported once.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

from training.errors import Invalid, quoted
from training.labels.store import LabelStore
from training.labels.sync import import_folder
from training.monitoring.prediction_log import PredictionLog
from training.settings import Settings


class ImportInputError(Invalid):
    """A request that cannot be imported as asked (a 400, naming the problem)."""


@dataclass(frozen=True)
class ImportedImage:
    image_id: str
    path: str
    label: str
    ood_score: float | None
    logged_at: float


def import_predictions(
    settings: Settings,
    store: LabelStore,
    log: PredictionLog,
    *,
    since_s: float,
    limit: int,
    split: str | None = None,
    label: str | None = None,
    ood_only: bool = True,
) -> list[ImportedImage]:
    """The ``limit`` most unusual pictures logged in the last ``since_s`` seconds (those flagged OOD
    unless ``ood_only`` is false), as new dataset images."""
    split = settings.train_split if split is None else split
    if split not in settings.splits:
        raise ImportInputError(f"split {quoted(split)} is not one of {list(settings.splits)}")
    if label is not None and label not in store.queries.classes():
        classes = ", ".join(store.queries.classes())
        raise ImportInputError(f"label {quoted(label)} is not a class of this dataset ({classes})")
    candidates = log.recent(since=time.time() - since_s, limit=limit, ood_only=ood_only, with_image=True)
    copied: list[tuple[str, str, float | None, float, str]] = []  # path, label, score, logged_at, hash
    for logged in candidates:
        source = log.image_path(logged)
        if source is None or not source.is_file() or logged.content_hash is None:
            continue
        target_label = label or logged.label
        relative = f"{split}/{target_label}/logged-{logged.content_hash[:16]}{source.suffix}"
        target = settings.data_dir / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target.with_suffix(".partial"))
            target.with_suffix(".partial").replace(target)
        copied.append((relative, target_label, logged.ood_score, logged.created_at, logged.content_hash))
    if not copied:
        return []
    import_folder(settings, store)
    by_path = {r.path: r for r in store.queries.images(split=split)}
    imported = []
    for relative, _, score, logged_at, digest in copied:
        record = by_path.get(relative)
        if record is None:  # refused by the scan (e.g. over the pixel cap): it says so in the log
            continue
        log.mark_imported(digest, record.image_id)
        imported.append(ImportedImage(record.image_id, relative, record.label, score, logged_at))
    return imported
