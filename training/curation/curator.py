"""The curation façade: every question a reviewer asks of one model version over the curated labels.

The service's endpoints, the ``bouncer`` CLI, the notebooks and the benchmarks all
call these methods, so they cannot drift apart. A :class:`Curator` is cheap: make
one per request with the model version serving at that moment. Questions and
decisions that need no model (images, relabel, undo, history) are its
:attr:`Curator.labels` (:class:`~training.curation.labels.Labels`).

Errors are the domain's: :class:`~training.labels.errors.NotFoundError` (unknown
ids), :class:`InvalidRequest` (a split, label or argument that cannot be), and
:class:`NotAvailable` (the model version cannot answer this, e.g. no out-of-fold
probabilities); callers turn them into 4xx answers or CLI errors.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import numpy as np
from cachetools import LRUCache
from sklearn.pipeline import Pipeline

from training.curation.audit import LabelAudit
from training.curation.labels import CurationError, InvalidRequest, Labels, check_split
from training.curation.neighbours import Neighbour, nearest_neighbours, nearest_to_any
from training.curation.ranking import Suspect, find_suspects
from training.curation.tracing import TracedImage, trace_to_training
from training.data.folders import load_records
from training.errors import Conflict
from training.labels.records import ImageChange, ImageRecord
from training.labels.store import LabelStore
from training.model.evaluation import EvaluationReport, Misclassified, evaluate_predictions
from training.model.inference import OnnxClassifier
from training.model.ood import OodScorer
from training.model.reference import DriftReference
from training.monitoring.drift import DriftInputError, drift_report, parse_window
from training.monitoring.importer import ImportedImage, ImportInputError, import_predictions
from training.monitoring.prediction_log import PredictionLog
from training.settings import Settings
from training.vectors.base import VectorIndex, Where
from training.vectors.updates import add_missing_vectors, scored_rows

T = TypeVar("T")


class NotAvailable(CurationError, Conflict):
    """This model version cannot answer that question (e.g. trained without out-of-fold models): a 409."""


class ModelVersion(Protocol):
    """What the façade needs of a loaded model version (``training.registry.store.RegisteredModel`` is one)."""

    tag: str
    classifier: OnnxClassifier
    embedder: Pipeline
    index: VectorIndex
    audit: LabelAudit | None
    reference: DriftReference | None
    ood: OodScorer | None

    @property
    def version(self) -> str: ...

    @property
    def class_names(self) -> list[str]: ...

    @property
    def image_size(self) -> int: ...

    def reduce(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class _Evaluated:
    revision: int  # the label revision it is right for
    records: list[ImageRecord]  # the split's images, in path order
    probabilities: np.ndarray  # the model's, row by row with ``records``
    report: EvaluationReport
    rows: list[Misclassified]  # every image: its label, the prediction and its confidence


def _relabelled(records: list[ImageRecord], changed: list[ImageChange], split: str) -> list[ImageRecord] | None:
    """``records`` (one split's) after ``changed`` rows, when those only relabelled some of them; None otherwise.

    Returns ``records`` itself when none of them changed. An image that came, went, moved or
    changed content needs a new read (and maybe inference): None.
    """
    position = {r.image_id: i for i, r in enumerate(records)}
    updated = records
    for change in changed:
        record, present = change.record, change.present
        i = position.get(record.image_id)
        if i is None:
            if present and record.split == split:
                return None
            continue  # another split's image
        old = records[i]
        if not present or (record.split, record.path, record.sha256) != (old.split, old.path, old.sha256):
            return None
        if record != old:
            updated = list(records) if updated is records else updated
            updated[i] = record
    return updated


# Evaluations and suspect rankings a cache keeps, each with the label revision it is right for: a
# server worker asks about a split or two and one ranking per version, so a few are plenty.
RESULTS_KEPT = 16
# Model versions whose per-image probabilities a cache keeps (the serving one, and the one before a swap).
VERSIONS_KEPT = 2


class CurationCache:
    """What a curator remembers between requests: results by (database, version, question), probabilities
    per version and image content, and one suspects ranking at a time.

    Its owner is whoever serves a dataset (each server worker holds one; a CLI command a fresh one) and
    tells it when a version stops serving (:meth:`forget_version`): the probabilities of every version
    ever served stayed in memory before.
    """

    def __init__(self) -> None:
        self._results: LRUCache[tuple[object, ...], Any] = LRUCache(maxsize=RESULTS_KEPT)
        # version tag -> (image id, content hash) -> probabilities: a new label revision costs evaluate only
        # the inference of images it has not seen (issue 13: 1.5 s -> metrics only)
        self._probabilities: LRUCache[str, dict[tuple[str, str], np.ndarray]] = LRUCache(maxsize=VERSIONS_KEPT)
        self._lock = threading.Lock()
        self.ranking_lock = threading.Lock()  # ranking costs seconds at scale: the warm-up and a request make one

    def get(self, key: tuple[object, ...]) -> Any:
        with self._lock:
            return self._results.get(key)

    def put(self, key: tuple[object, ...], value: T) -> T:
        with self._lock:
            self._results[key] = value
        return value

    def probabilities(self, tag: str) -> dict[tuple[str, str], np.ndarray]:
        with self._lock:
            if tag not in self._probabilities:
                self._probabilities[tag] = {}
            return self._probabilities[tag]

    def forget_version(self, tag: str) -> None:
        """Drop everything remembered of a version that no longer serves."""
        with self._lock:
            self._probabilities.pop(tag, None)
            for key in [key for key in self._results if tag in key]:
                del self._results[key]


@dataclass(frozen=True)
class _Ranking:
    revision: int  # the label revision it is right for
    ranked: list[Suspect]  # every scored train image, reviewed ones too: a function of labels and pictures alone
    basis: dict[str, tuple[str, str, str]]  # image_id -> (split, label, sha256) ``ranked`` was computed from
    ranking: list[Suspect]  # ``ranked`` less the reviewed images: the queue


@dataclass(frozen=True)
class Similar:
    query: str | None  # the image_id asked about; None for an uploaded image
    results: list[Neighbour]


@dataclass(frozen=True)
class Curator:
    """Questions over one model version; the label-only ones are :attr:`labels`' (no model needed)."""

    labels: Labels
    model: ModelVersion
    cache: CurationCache = field(default_factory=CurationCache)  # a server passes its workers' one

    @property
    def settings(self) -> Settings:
        return self.labels.settings

    @property
    def store(self) -> LabelStore:
        return self.labels.store

    # --- checks -------------------------------------------------------------------
    def check_split(self, split: str) -> None:
        check_split(self.settings, split)

    def check_label(self, label: str | None) -> None:
        self.labels.check_label(label)

    # --- the model's view -----------------------------------------------------------
    def evaluate(self, split: str) -> EvaluationReport:
        """Accuracy, per-class scores, confusion matrix and misclassified images on the current labels.

        Cached per (model version, label revision, split): any change of labels or images is a new revision.
        """
        return self._evaluated(split).report

    def confusion(self, split: str, *, label: str, predicted: str, offset: int, limit: int) -> list[Misclassified]:
        """The images of one confusion-matrix cell: true ``label`` predicted as ``predicted``, most confident first."""
        self.check_split(split)
        self.check_label(label)
        self.check_label(predicted)
        evaluated = self._evaluated(split)
        cell = [row for row in evaluated.rows if row.label == label and row.predicted == predicted]
        return sorted(cell, key=lambda row: -row.confidence)[offset : offset + limit]

    def _evaluated(self, split: str) -> _Evaluated:
        """The split's evaluation, brought up to the current revision from the last one of this process.

        A revision that relabelled none of the split's images reuses it; one that relabelled some
        recomputes the metrics from the kept probabilities; anything else reads the split again.
        Recomputing per revision cost ~250 ms of CPU while reads waited (issue 14's soak).
        """
        self.labels.check_evaluable(split)
        key = (self.store.database.url, self.model.tag, "evaluate", split)
        cached: _Evaluated | None = self.cache.get(key)
        if cached is not None:
            revision, changed = self.store.queries.changes_since(cached.revision)
            records = _relabelled(cached.records, changed, split)
            if records is cached.records:
                return (
                    cached if revision == cached.revision else self.cache.put(key, replace(cached, revision=revision))
                )
            if records is not None:
                return self.cache.put(key, self._evaluation(revision, records, cached.probabilities))
        revision = self.store.queries.revision()  # first: a change committed after it is read again next time
        records = self.store.queries.images(split=split)
        return self.cache.put(key, self._evaluation(revision, records, self._probabilities(records)))

    def _evaluation(self, revision: int, records: list[ImageRecord], probabilities: np.ndarray) -> _Evaluated:
        report = evaluate_predictions(
            probabilities,
            [r.label for r in records],
            self.model.class_names,
            image_ids=[r.image_id for r in records],
            paths=[r.path for r in records],
        )
        best = probabilities.argmax(axis=1)
        rows = [
            Misclassified(r.image_id, r.path, r.label, self.model.class_names[int(b)], float(p[b]))
            for r, b, p in zip(records, best, probabilities, strict=True)
        ]
        return _Evaluated(revision, records, probabilities, report, rows)

    def index(self) -> VectorIndex:
        """The version's index, following the current labels, with images imported since training added."""
        add_missing_vectors(self.model.index, self.store, self.settings, self.model)
        return self.model.index

    def _probabilities(self, records: Sequence[ImageRecord]) -> np.ndarray:
        """The model's probabilities for these images: inferred once per (model version, image content)."""
        cache = self.cache.probabilities(self.model.tag)
        keys = [(r.image_id, r.sha256) for r in records]
        new = [r for r, key in zip(records, keys, strict=True) if key not in cache]
        for start in range(0, len(new), 1024):  # bounded memory for a large split
            chunk = new[start : start + 1024]
            found = self.model.classifier.predict(load_records(self.settings, chunk, self.model.image_size))
            cache.update(zip([(r.image_id, r.sha256) for r in chunk], found.probabilities, strict=True))
        if not keys:
            return np.zeros((0, len(self.model.class_names)), np.float32)
        return np.stack([cache[key] for key in keys])

    def vectors(self, image_ids: Sequence[str]) -> np.ndarray:
        """Index vectors of known images; images newer than the model are embedded now (NotFoundError if unknown)."""
        found = self.store.queries.records(image_ids)
        records = [found[image_id] if image_id in found else self.store.queries.get(image_id) for image_id in image_ids]
        stored = self.model.index.vectors_of([r.image_id for r in records])
        missing = [r for r in records if r.image_id not in stored]
        if missing:
            fresh = self.model.reduce(load_records(self.settings, missing, self.model.image_size))
            stored.update(zip([r.image_id for r in missing], fresh, strict=True))
        return np.stack([stored[r.image_id] for r in records]).astype(np.float32)

    # --- search ---------------------------------------------------------------------
    def similar(self, image_id: str, *, k: int, split: str, label: str | None) -> Similar:
        """The ``k`` nearest images in ``split`` (optionally only those labelled ``label``), the query excluded."""
        query = self.vectors([image_id])[0]
        return Similar(image_id, self._nearest(query, k=k, split=split, label=label, exclude=image_id))

    def similar_to(self, pixels: np.ndarray, *, k: int, split: str, label: str | None) -> Similar:
        """Like :meth:`similar`, for an image that is not in the dataset (model-input pixels)."""
        query = self.model.reduce(pixels[None])[0]
        return Similar(None, self._nearest(query, k=k, split=split, label=label, exclude=None))

    def _nearest(
        self, query: np.ndarray, *, k: int, split: str, label: str | None, exclude: str | None
    ) -> list[Neighbour]:
        self.check_split(split)
        self.check_label(label)
        where = Where.of(split=split, label=label, exclude=[exclude] if exclude else ())
        return nearest_neighbours(self.index(), self.store, query, k, where)

    def expand(
        self,
        image_ids: Sequence[str],
        *,
        k: int,
        label: str | None,
        split: str,
        exclude: Collection[str] = (),
    ) -> list[Neighbour]:
        """The unreviewed images nearest to any of ``image_ids`` (a confirmed set), optionally only labelled ``label``.

        ``exclude``: more images not to propose (e.g. those a reviewer has already looked at).
        """
        self.check_split(split)
        self.check_label(label)
        if not image_ids:
            raise InvalidRequest("expand needs at least one image_id to grow from")
        queries = self.vectors(image_ids)
        where = Where.of(split=split, label=label, unreviewed=True, exclude=set(image_ids) | set(exclude))
        return nearest_to_any(self.index(), self.store, queries, k, where)

    # --- finding wrong labels -----------------------------------------------------------
    def trace(self, image_ids: Sequence[str] | None, *, k: int, limit: int, offset: int = 0) -> list[TracedImage]:
        """Training images that pull misclassified images to the wrong class, most votes first.

        From ``image_ids`` (any split; each is traced towards the class the model
        predicts for it), or by default from every misclassified test image. Images a
        person already decided on (relabelled or confirmed) are left out.
        """
        model = self.model
        if image_ids:
            records = [self.store.queries.get(image_id) for image_id in image_ids]
            pixels = load_records(self.settings, records, model.image_size)
            probabilities = model.classifier.predict(pixels).probabilities
            errors = [
                (r.image_id, model.class_names[int(p.argmax())], r.label)
                for r, p in zip(records, probabilities, strict=True)
            ]
        else:
            report = self.evaluate(self.settings.test_split)
            errors = [(m.image_id, m.predicted, m.label) for m in report.misclassified]
        errors = [e for e in errors if e[1] != e[2] and e[2] in model.class_names]  # a right answer pulls nothing
        if not errors:
            return []
        traced = trace_to_training(
            self.index(),
            self.store,
            self.vectors([e[0] for e in errors]),
            [e[1] for e in errors],
            [e[2] for e in errors],
            k=k,
            split=self.settings.train_split,
        )
        return traced[offset : offset + limit]

    def suspects(self, k: int, *, offset: int = 0) -> list[Suspect]:
        """The ranking's ``k`` suspects from ``offset`` (see :meth:`suspect_ranking`)."""
        return self.suspect_ranking()[offset : offset + k]

    def suspect_ranking(self) -> list[Suspect]:
        """Training images whose current label is probably wrong, best first, with a suggested label.

        The out-of-fold probabilities and feature-space neighbours stored with the version
        (:mod:`training.curation.ranking`; for train images imported after it, the version's own
        probabilities from ``bouncer score`` shards, without neighbours), plus exact/near
        duplicates that disagree. Images a person already reviewed
        (relabelled or confirmed) are left out: they are settled.
        """
        if self.model.audit is None:
            raise NotAvailable(
                f"model version {self.model.version} has no out-of-fold probabilities "
                "(trained with BOUNCER_OUT_OF_FOLD_FOLDS < 2): retrain to get suspects"
            )
        with self.cache.ranking_lock:  # the start-up warm-up and a first request wait for one ranking, not make two
            return self._suspect_ranking()

    def _suspect_ranking(self) -> list[Suspect]:
        # The ranking is cleanlab over every scored train image with its current label, the
        # reviewed ones included, and only then less the reviewed: so it is one function of the
        # labels, and each server worker (its own cache, following decisions) pages through the
        # same list as a fresh process. A confirm (or its undo) changes no label: only the filter.
        key = (self.store.database.url, self.model.tag, "suspects")
        revision = self.store.queries.revision()
        cached: _Ranking | None = self.cache.get(key)
        if cached is not None and cached.revision != revision:
            _, changed = self.store.queries.changes_since(cached.revision)
            if any(self._moves_the_ranking(change.record, change.present, cached.basis) for change in changed):
                cached = None
            else:
                reviewed = self.store.queries.reviewed_ids(self.settings.train_split)
                ranking = [s for s in cached.ranked if s.image_id not in reviewed]
                cached = self.cache.put(key, replace(cached, revision=revision, ranking=ranking))
        if cached is None:
            train = self.store.queries.images(split=self.settings.train_split)
            reviewed = self.store.queries.reviewed_ids(self.settings.train_split)
            audited = set(self.model.audit.image_ids.tolist())
            scored = scored_rows(self.settings, self.model, [r for r in train if r.image_id not in audited])
            by_id = {r.image_id: r for r in train}
            audit = self.model.audit.extended(scored.ids, scored.probabilities, [by_id[i].sha256 for i in scored.ids])
            # their labels vote too: trusted neighbours
            test = self.store.queries.images(split=self.settings.test_split)
            ranked = find_suspects(audit, train, self.model.class_names, test)
            basis = {r.image_id: (r.split, r.label, r.sha256) for r in (*(by_id[s.image_id] for s in ranked), *test)}
            ranking = [s for s in ranked if s.image_id not in reviewed]
            cached = self.cache.put(key, _Ranking(revision, ranked, basis, ranking))
        return cached.ranking

    def _moves_the_ranking(self, record: ImageRecord, present: bool, basis: dict[str, tuple[str, str, str]]) -> bool:
        """Whether a changed image changes what is ranked or what votes (its split, label or picture)."""
        counts = present and record.split in self.settings.splits and record.label in self.model.class_names
        was = basis.get(record.image_id)
        return (was != (record.split, record.label, record.sha256)) if counts else was is not None

    # --- what is served -------------------------------------------------------------------
    def drift(self, log: PredictionLog, *, window: str, windows: int) -> dict[str, Any]:
        """Recent predictions against this version's drift reference (:mod:`training.monitoring.drift`)."""
        if self.model.reference is None:
            raise NotAvailable(f"{self.model.tag} was trained before drift references existed: train a new version")
        try:
            return drift_report(
                log,
                self.model.reference,
                self.model.version,
                window=window,
                windows=windows,
                alpha=self.settings.drift_alpha,
                min_predictions=self.settings.drift_min_predictions,
            )
        except DriftInputError as exc:
            raise InvalidRequest(str(exc)) from None

    def import_predictions(
        self,
        log: PredictionLog,
        *,
        since: str,
        limit: int,
        split: str | None,
        label: str | None,
        ood_only: bool = True,
    ) -> list[ImportedImage]:
        """Logged OOD pictures into the dataset, unreviewed, for labelling (:mod:`training.monitoring.importer`)."""
        try:
            return import_predictions(
                self.settings,
                self.store,
                log,
                since_s=parse_window(since),
                limit=limit,
                split=split,
                label=label,
                ood_only=ood_only,
            )
        except (DriftInputError, ImportInputError) as exc:
            raise InvalidRequest(str(exc)) from None
