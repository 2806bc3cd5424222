"""Images imported after training get vectors without a retraining.

A few are embedded during the search that finds them missing; more are embedded by
one background thread per index, in chunks, and searches see them chunk by chunk
(a million new photos should not hold a request for an hour). ``bouncer score``
shards of the same model version are read first: a cluster may have embedded them.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import numpy as np

from training.data.folders import load_records
from training.labels.records import ImageRecord
from training.labels.store import LabelStore
from training.model.scores import ScoresMismatch, default_scores_dir, read_manifest, read_scores
from training.settings import Settings
from training.vectors.base import VectorIndex

log = logging.getLogger(__name__)
CHUNK = 512
_jobs: dict[int, threading.Thread] = {}  # id(index) -> its running background embedding
_unembeddable: dict[int, set[str]] = {}  # id(index) -> images whose files could not be read
_jobs_lock = threading.Lock()


class Embeds(Protocol):
    """What this needs of a model version."""

    tag: str

    @property
    def version(self) -> str: ...

    @property
    def image_size(self) -> int: ...

    def reduce(self, images: np.ndarray) -> np.ndarray: ...


def add_missing_vectors(index: VectorIndex, store: LabelStore, settings: Settings, model: Embeds) -> None:
    """Bring ``index`` up to date with the store: labels now, vectors of new images now or in the background.

    On every search's path, so it stays cheap: while a background job embeds, only the labels
    are followed; images whose files cannot be read are remembered, not retried per search.
    """
    with _jobs_lock:
        running = _jobs.get(id(index))
        if running is not None and running.is_alive():
            index.refresh(store)
            return
        failed = _unembeddable.setdefault(id(index), set())
    missing = [image_id for image_id in index.missing(store) if image_id not in failed]
    if not missing:
        return
    scored = scored_rows(settings, model, list(store.queries.records(missing).values()))
    if scored.ids:
        index.add(scored.ids, scored.vectors)
        missing = sorted(set(missing) - set(scored.ids))
        if not missing:
            return
    if len(missing) <= settings.index_embed_inline_max:
        _embed(index, store, settings, model, missing, failed)
        return
    with _jobs_lock:
        job = threading.Thread(
            target=_embed_in_background,
            args=(index, store, settings, model, missing, failed),
            daemon=True,
            name="embed-new",
        )
        _jobs[id(index)] = job
        job.start()


def _embed(
    index: VectorIndex, store: LabelStore, settings: Settings, model: Embeds, image_ids: list[str], failed: set[str]
) -> int:
    """Embed and add these images; one whose file vanished or broke is skipped and remembered in ``failed``."""
    records = list(store.queries.records(image_ids).values())
    try:
        if records:
            index.add([r.image_id for r in records], model.reduce(load_records(settings, records, model.image_size)))
        return len(records)
    except Exception:  # noqa: BLE001 - find the culprit(s) one by one; the rest still get their vectors
        done = 0
        for record in records:
            try:
                index.add([record.image_id], model.reduce(load_records(settings, [record], model.image_size)))
                done += 1
            except Exception as exc:  # noqa: BLE001 - a file gone or unreadable since its import
                failed.add(record.image_id)
                log.warning("no vector for %s (%s): %s", record.image_id, record.path, exc)
        return done


def _embed_in_background(
    index: VectorIndex, store: LabelStore, settings: Settings, model: Embeds, image_ids: list[str], failed: set[str]
) -> None:
    log.info("embedding %d images imported after training, %d at a time", len(image_ids), CHUNK)
    done = 0
    try:
        for start in range(0, len(image_ids), CHUNK):
            done += _embed(index, store, settings, model, image_ids[start : start + CHUNK], failed)
    except Exception:  # the database went away...: the next search starts again with what is left
        log.exception("embedding new images stopped after %d of %d", done, len(image_ids))
    else:
        log.info("embedded %d new images", done)


class Scored:
    """Rows of ``bouncer score`` shards for some images: ids, probabilities and vectors, aligned."""

    def __init__(self, ids: list[str], probabilities: np.ndarray, vectors: np.ndarray) -> None:
        self.ids, self.probabilities, self.vectors = ids, probabilities, vectors


_shards: dict[str, tuple[str, dict[tuple[str, str], int], object]] = {}  # folder -> (manifest stamp, rows, scores)
_shards_lock = threading.Lock()


def scored_rows(settings: Settings, model: Embeds, records: list[ImageRecord]) -> Scored:
    """What this version's ``bouncer score`` shards hold for ``records`` (same path and content), if anything."""
    folder = default_scores_dir(settings, model.version)
    empty = Scored([], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32))
    if not records or not (folder / "manifest.json").is_file():
        return empty
    try:
        stamp = read_manifest(folder).created
        with _shards_lock:
            cached = _shards.get(str(folder))
            if cached is None or cached[0] != stamp:
                scores = read_scores(folder, model_tag=model.tag)
                rows = {
                    (p, h): i
                    for i, (p, h) in enumerate(zip(scores.paths.tolist(), scores.sha256.tolist(), strict=True))
                }
                cached = _shards[str(folder)] = (stamp, rows, scores)
    except (OSError, ValueError, ScoresMismatch) as exc:  # stale or partial scores: embed instead
        log.warning("not using the scores in %s: %s", folder, exc)
        return empty
    _, rows, scores = cached
    found = [(r.image_id, i) for r in records if (i := rows.get((r.path, r.sha256))) is not None]
    if not found:
        return empty
    positions = [i for _, i in found]
    return Scored([image_id for image_id, _ in found], scores.probabilities[positions], scores.vectors[positions])  # type: ignore[attr-defined]
