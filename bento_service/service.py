"""Bouncer's HTTP API: a table of endpoints, each a few lines over the three façades.

- :class:`~training.curation.labels.Labels` (held for the worker's life): images, relabel,
  confirm, undo, history; label writes one at a time in the worker's writer thread.
- :class:`~training.curation.curator.Curator`, made per request with the version serving
  at that moment: evaluate, similar, trace, expand, suspects, drift, import_predictions.
- :class:`~training.registry.serving.Registry`: models, promote; the live model
  (``live_model``) follows promotions through it.

``predict`` runs in the worker that took the request, batched with concurrent ones
(``predictor``; answered by the raw route in ``http.predict_route`` unless
BOUNCER_FAST_PREDICT=false). Schemas: ``schemas``; everything in front of BentoML and
every patch to it: the ``http`` package; the train task's process: ``training.jobs.runner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, TypeVar

import bentoml
import numpy as np
from pydantic import Field
from threadpoolctl import threadpool_limits

from bento_service import ui
from bento_service.http import install, upstream
from bento_service.http.errors import TrainingError
from bento_service.http.openapi import CLASS_NAMES
from bento_service.live_model import LiveModel
from bento_service.memory import return_large_buffers_to_the_system
from bento_service.predictor import Predictor
from bento_service.schemas import (
    DB_INT_MAX,
    ConfirmResult,
    DriftReport,
    Evaluation,
    HistoryEvent,
    ImageInfo,
    ImportedPrediction,
    MisclassifiedOut,
    ModelVersion,
    Neighbour,
    Prediction,
    PromoteResult,
    RelabelResult,
    SimilarResult,
    SuspectOut,
    TracedOut,
    TrainProgress,
    TrainResult,
)
from training.curation.curator import CurationCache, Curator
from training.curation.labels import Labels
from training.data.folders import resolve_inside
from training.data.images import ImageError, load_model_input
from training.errors import NotFound, TooLarge, quoted
from training.jobs.runner import TrainingCanceled, TrainingFailed, TrainRunner
from training.labels.errors import REASON_MAX
from training.model.ood import calibration_status
from training.monitoring.drift import DURATION_PATTERN
from training.monitoring.prediction_log import PredictionLog
from training.registry.preflight import EXIT_CODE, CannotServe, check_can_serve
from training.registry.serving import Registry
from training.settings import Settings, get_settings
from training.tf_logs import quiet_tensorflow

log = logging.getLogger("bentoml.bouncer")
T = TypeVar("T")

quiet_tensorflow()
# One BLAS thread per worker (a worker per core already): OpenBLAS threads the OOD score's small
# matrix products from 32 rows up and then busy-wait, which cost predict 25% of its throughput.
threadpool_limits(1)
return_large_buffers_to_the_system()
_STARTUP = get_settings()  # cheap: reads env vars only; decides the model and worker count
upstream.apply(header_timeout_s=_STARTUP.header_timeout_s)  # before the class: its input models keep what they find


def use_the_datasets_task_results(settings: Settings) -> Path:
    """Keep BentoML's task results (the train task's status and answer) beside this dataset's state.

    BentoML deletes its result database whenever a server starts, and by default there is one
    per machine (BENTOML_HOME/task_result.db): starting a server for another dataset wiped this
    one's train results, and its workers answered 404 for a running task (issue 22). BentoML
    reads BENTOML_RESULT_STORE after importing the service, in the server and in every worker.
    """
    path = settings.runtime_dir / "task_result.db"
    # Not where the start-up check (_preflight) will refuse to serve: a missing data folder would be
    # created (a mistyped path), an unwritable one ended the server with a traceback instead of one line.
    if settings.data_dir.is_dir():
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_RESULT_STORE"] = str(path)
    return path


use_the_datasets_task_results(_STARTUP)
# The endpoints that change something: they need the API token (see bento_service.http.guards.TokenGuard).
WRITE_ENDPOINTS = ("relabel", "confirm", "undo", "promote", "train", "import_predictions")
ACTOR = "api"
# Parameters several endpoints take, with their bounds.
Neighbours = Annotated[int, Field(ge=1, le=1000, description="How many neighbours.")]
# The OpenAPI page lists the values a split or a class name may take (the classes when it is read: CLASS_NAMES).
Split = Annotated[
    str,
    Field(
        description="train or test (BOUNCER_TRAIN_SPLIT / BOUNCER_TEST_SPLIT).",
        json_schema_extra={"enum": list(_STARTUP.splits)},
    ),
]
ClassName = Annotated[str, Field(description="A class of this dataset.", json_schema_extra=CLASS_NAMES)]
ImageIds = Annotated[
    list[str],
    Field(min_length=1, max_length=_STARTUP.max_ids, description=f"At most {_STARTUP.max_ids} (BOUNCER_MAX_IDS)."),
]
# The pattern is documented, and checked by parse_window, whose 400 says what a duration looks like.
Duration = Annotated[str, Field(max_length=16, json_schema_extra={"pattern": DURATION_PATTERN})]
LabelFilter = Annotated[ClassName | None, Field(description="Only images currently labelled so.")]
Offset = Annotated[int, Field(ge=0, le=DB_INT_MAX, description="Skip this many first (paging).")]
Reason = Annotated[str, Field(max_length=REASON_MAX, description="Why, kept in the audit history.")]


def served_at() -> str:
    """This server's own address, as BentoML tells its workers (BENTOML_RUNNER_MAP); the path alone otherwise."""
    return json.loads(os.environ.get("BENTOML_RUNNER_MAP", "{}")).get("Bouncer", "").rstrip("/")


# Paged list answers stay lists (the API contract); how long the whole list is travels in this header.
TOTAL_HEADER = "X-Total-Count"

# Kept out of the access log and traces. Predict's per-request cost, measured (issue 13): an access-log
# line ~4%, a tracing span ~17%. The review page's thumbnails and static files too: a screenful is ~130
# requests, noise in the log.
_QUIET = [
    *([] if _STARTUP.log_predict else ["/predict", "/predict_batch"]),
    f"{ui.PATH}/thumbnail/",
    f"{ui.PATH}/static/",
]


@bentoml.service(
    traffic={"timeout": 300},
    workers=_STARTUP.worker_count,
    threads=_STARTUP.threads,
    metrics={"enabled": _STARTUP.metrics},
    logging={"access": {"enabled": _STARTUP.access_log, "skip_paths": _QUIET}},
    tracing={"excluded_urls": _QUIET},
)
class Bouncer:
    bento_model = bentoml.models.BentoModel(_STARTUP.default_model_tag)  # what `bentoml build` packs

    @bentoml.on_deployment
    def _preflight() -> None:
        """Once, in BentoML's main process, before any worker: a server that cannot serve says why and exits."""
        try:
            log.info("will serve %s", check_can_serve(get_settings()))
        except CannotServe as exc:
            log.error("Bouncer cannot start: %s", exc)
            raise SystemExit(EXIT_CODE) from None

    def __init__(self) -> None:
        self.settings = get_settings()
        Registry.use_home_model_store()  # in an image: the bento's models and later ones, in BENTOML_HOME's store
        self.labels = Labels.open(self.settings, export_delay_s=self.settings.labels_csv_delay_ms / 1000)
        if self.labels.repair_labels_csv():  # a crash came between a label commit and its export
            log.warning("labels.csv disagreed with the label database: rewritten from it")
        self.registry = Registry(self.labels)
        self.cache = CurationCache()  # this worker's evaluations, rankings and probabilities, per serving version
        self.live = LiveModel(self.registry, on_swap=self.cache.forget_version)  # following promotions
        # Every served prediction is logged (drift, import-predictions) by a thread of its own.
        self.prediction_log = PredictionLog(self.settings)
        if self.settings.prediction_log:
            self.prediction_log.start()
        logging_to = self.prediction_log if self.settings.prediction_log else None
        self.predictor = Predictor(self.live, self.settings, logging_to)
        self.trainer = TrainRunner(self.settings)
        self.trainer.status()  # a training killed with the last server now reads failed, its MLflow run ended
        # This worker's label writes, one at a time in their own thread: see _label_write.
        self._label_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="label-writes")
        ui.attach(REVIEW_PAGE, ui.PageData(curator=self.curator, settings=self.settings))
        log.info("review page: %s%s/  (the API and its OpenAPI page: %s/)", served_at(), ui.PATH, served_at())
        if self.settings.warm_suspects:
            threading.Thread(target=self._warm_suspects, name="warm-suspects", daemon=True).start()
        # What start-up built (models, sessions, imports) lives as long as the worker: keep it out
        # of every later collection, which then scans only what requests allocate.
        gc.collect()
        gc.freeze()

    def _warm_suspects(self) -> None:
        """Rank the suspects once now: the review page opens on them, and the first ranking costs seconds at scale."""
        try:
            self.curator().suspects(1)
        except Exception as exc:  # noqa: BLE001 - a version without an audit, an empty store: the request will say
            log.debug("suspects not warmed: %s", exc)

    @bentoml.on_shutdown
    def _close(self) -> None:
        """Pending label writes, a labels.csv rewrite still due and queued predictions are written first."""
        self._label_writer.shutdown(wait=True)
        self.live.close()
        self.prediction_log.close()
        self.labels.close()

    def curator(self) -> Curator:
        """The façade over the labels and the version serving now: a live swap cannot split a request."""
        return Curator(self.labels, self.live.get(), self.cache)

    async def _label_write(self, write: Callable[[Labels], T]) -> T:
        """One label write of this worker at a time, in the worker's writer thread; the request waits on the event loop.

        Sync endpoints share BOUNCER_THREADS threads per worker: writers queued for the database's
        write lock held them, and reads waited (issue 14's soak: an in-process lock made relabel
        fast and reads 3x slower). Queued writes here hold no thread, and the writer thread takes
        the next one as soon as it is done (an asyncio lock around a thread handed over through
        the busy event loop: 100 ms waits at p50). The store orders the workers' writers.
        """
        return await asyncio.get_running_loop().run_in_executor(self._label_writer, write, self.labels)

    def _pixels(self, upload: Path, field: str, image_size: int) -> np.ndarray:
        """The model's input from an upload, judged by its bytes (whatever content type the client declared)."""
        size = upload.stat().st_size
        if size > self.settings.max_upload_bytes:
            raise TooLarge(f"{field}: upload is {size} bytes, over the {self.settings.max_upload_bytes} limit")
        try:
            return load_model_input(upload.read_bytes(), image_size, max_pixels=self.settings.max_image_pixels)
        except ImageError as exc:
            raise ImageError(f"{field}: {exc}") from exc

    async def _predict(self, uploads: list[tuple[str, Path]]) -> list[Prediction]:
        """Through this worker's batcher: concurrent requests share one ONNX run."""
        answers = await self.predictor.predict_uploads([(name, path.read_bytes()) for name, path in uploads])
        return [Prediction(**answer) for answer in answers]

    @bentoml.api
    async def predict(self, image: Path) -> Prediction:
        """Classify one uploaded image (multipart field ``image``); batched with concurrent requests."""
        return (await self._predict([("image", image)]))[0]

    @bentoml.api
    async def predict_batch(
        self, images: Annotated[list[Path], Field(min_length=1, max_length=256)]
    ) -> list[Prediction]:
        """Classify several uploaded images (multipart field ``images``, repeated)."""
        return await self._predict([(f"images[{i}]", path) for i, path in enumerate(images)])

    @bentoml.api
    def evaluate(self, split: Split = "test") -> Evaluation:
        """Accuracy, loss, per-class scores, confusion matrix and misclassified images on the current labels."""
        curator = self.curator()
        report = curator.evaluate(split)
        return Evaluation.model_validate(
            {
                **report.as_dict(),
                "model_version": curator.model.version,
                "data_version": self.labels.data_version(),
                **calibration_status(curator.model.ood),
            }
        )

    @bentoml.api
    def confusion(
        self,
        label: ClassName,
        predicted: ClassName,
        split: Split = "test",
        limit: Annotated[int, Field(ge=1, le=10_000)] = 100,
        offset: Offset = 0,
    ) -> list[MisclassifiedOut]:
        """The images of one confusion-matrix cell: true ``label``, predicted ``predicted``; most confident first."""
        cell = self.curator().confusion(split, label=label, predicted=predicted, offset=offset, limit=limit)
        return [MisclassifiedOut.model_validate(m) for m in cell]

    @bentoml.api
    def similar(
        self,
        image_id: str,
        k: Neighbours = 10,
        split: Split = "train",
        label: LabelFilter = None,
    ) -> SimilarResult:
        """The k nearest images in ``split`` (optionally only those labelled ``label``), query excluded."""
        return SimilarResult.model_validate(self.curator().similar(image_id, k=k, split=split, label=label))

    @bentoml.api
    def similar_image(
        self,
        image: Path,
        k: Neighbours = 10,
        split: Split = "train",
        label: LabelFilter = None,
    ) -> SimilarResult:
        """Like ``similar``, for an uploaded image (multipart field ``image``)."""
        curator = self.curator()
        pixels = self._pixels(image, "image", curator.model.image_size)
        return SimilarResult.model_validate(curator.similar_to(pixels, k=k, split=split, label=label))

    @bentoml.api
    def trace(
        self,
        image_ids: ImageIds | None = None,
        k: Annotated[int, Field(ge=1, le=100)] = 5,
        limit: Annotated[int, Field(ge=1, le=100_000)] = 100,
        offset: Offset = 0,
    ) -> list[TracedOut]:
        """Training images that pull misclassified images to the wrong class, most votes first.

        From ``image_ids`` (any split; each is traced towards the class the model
        predicts for it), or by default from every misclassified test image. For each,
        its ``k`` nearest training images labelled with the predicted class get a vote.
        Reviewed images are left out; ``offset`` pages through the list.
        """
        traced = self.curator().trace(image_ids, k=k, limit=limit, offset=offset)
        return [TracedOut.model_validate(t) for t in traced]

    @bentoml.api
    def expand(
        self,
        image_ids: ImageIds,
        k: Annotated[int, Field(ge=1, le=10_000)] = 20,
        label: LabelFilter = None,
        split: Split = "train",
    ) -> list[Neighbour]:
        """Next candidates after a confirmed set: the unreviewed images nearest to any of ``image_ids``.

        Reviewed = relabelled or confirmed (and not undone). ``label`` keeps only images currently
        labelled so (e.g. the wrong class the confirmed images carried).
        """
        return [Neighbour.model_validate(n) for n in self.curator().expand(image_ids, k=k, label=label, split=split)]

    @bentoml.api
    def suspects(
        self, ctx: bentoml.Context, k: Annotated[int, Field(ge=1, le=100_000)] = 50, offset: Offset = 0
    ) -> list[SuspectOut]:
        """Training images whose current label is probably wrong, best first, with a suggested label.

        The stronger of two witnesses stored with the serving version: the out-of-fold probabilities
        and the labels of its nearest test images (in a fold model's embedding that never saw it),
        plus exact/near duplicates that disagree; ``reasons`` gives the evidence. Current labels, and reviewed
        (relabelled or confirmed) images are left out: a decision takes an image off the list at once.
        ``offset`` pages through the ranking; the ``X-Total-Count`` header says how long it is.
        """
        ranking = self.curator().suspect_ranking()
        ctx.response.headers[TOTAL_HEADER] = str(len(ranking))
        return [SuspectOut.model_validate(s) for s in ranking[offset : offset + k]]

    @bentoml.api
    def images(
        self,
        ctx: bentoml.Context,
        split: Split | None = None,
        label: LabelFilter = None,
        limit: Annotated[int, Field(ge=1, le=10_000)] = 100,
        offset: Offset = 0,
    ) -> list[ImageInfo]:
        """List images with their ids and curated labels, sorted by path; ``X-Total-Count`` says how many match."""
        records = self.labels.images(split=split, label=label, limit=limit, offset=offset)
        ctx.response.headers[TOTAL_HEADER] = str(self.labels.image_count(split=split, label=label))
        return [ImageInfo.model_validate(r) for r in records]

    @bentoml.api
    def image(self, image_id: str) -> Path:
        """The bytes of one image, as stored under DATA_DIR."""
        record = self.labels.image(image_id)
        try:
            return resolve_inside(self.settings.data_dir, record.path)
        except PermissionError as exc:
            raise NotFound(f"image {quoted(image_id)} is not under the data directory") from exc

    @bentoml.api
    async def relabel(self, image_ids: ImageIds, label: ClassName, reason: Reason = "") -> RelabelResult:
        """Give every image ``label`` in one recorded, undoable transaction."""
        result = await self._label_write(lambda c: c.relabel(image_ids, label, reason=reason, actor=ACTOR))
        return RelabelResult.model_validate(result)

    @bentoml.api
    async def confirm(self, image_ids: ImageIds, reason: Reason = "") -> ConfirmResult:
        """Record that these images' current labels are right: they count as reviewed (undoable like a relabel)."""
        result = await self._label_write(lambda c: c.confirm(image_ids, reason=reason, actor=ACTOR))
        return ConfirmResult.model_validate(result)

    @bentoml.api
    async def undo(self, event_id: Annotated[int, Field(ge=1, le=DB_INT_MAX)]) -> RelabelResult:
        """Revert one event (refused with 409 if a later event changed the same images)."""
        return RelabelResult.model_validate(await self._label_write(lambda c: c.undo(event_id, actor=ACTOR)))

    @bentoml.api
    def history(
        self, image_id: str | None = None, limit: Annotated[int, Field(ge=1, le=10_000)] = 50
    ) -> list[HistoryEvent]:
        """Label events newest first, each with its ``event_id``."""
        events = self.labels.history(image_id=image_id, limit=limit)
        return [HistoryEvent.model_validate(e.as_dict()) for e in events]

    @bentoml.api
    def models(self) -> list[ModelVersion]:
        """This dataset's registered versions, newest first, with their metrics and whether they serve."""
        return [ModelVersion.model_validate(v) for v in self.registry.versions(self.live.get().tag)]

    @bentoml.api
    def promote(self, version: str, reason: Reason = "") -> PromoteResult:
        """Serve ``version`` (e.g. roll back): every worker here from its next request, replicas on their poll."""
        previous = self.live.get()
        tag = self.registry.promote(version, actor=ACTOR, reason=reason)  # UnknownVersion: 404
        self.live.swap_to(tag)  # the other workers on this machine follow from their next request, others on their poll
        return PromoteResult(version=version, tag=tag, previous_version=previous.version)

    @bentoml.task
    async def train(
        self,
        ctx: bentoml.Context,
        epochs: Annotated[int | None, Field(ge=1, le=1000)] = None,
        force: bool = False,
    ) -> TrainResult:
        """Retrain on the current labels in a niced child process; promote if not worse (or ``force``).

        Watch it with ``train_progress``. Only one training runs at a time (409).
        """
        task_id = getattr(ctx.request.state, "task_id", None)
        serving = self.live.get().tag
        try:
            result = await self.trainer.run(
                epochs=epochs, force=force, serving_tag=serving, actor=ACTOR, task_id=task_id
            )
        except TrainingFailed as exc:
            if isinstance(exc, TrainingCanceled):
                raise  # a 409, as TrainingBusy (training.errors.Conflict)
            log.error("training failed: %s", exc)
            raise TrainingError(str(exc)) from exc
        if result.promoted:  # the training announced it: every worker on this machine already follows
            self.live.swap_to(result.tag)
        return TrainResult.model_validate(result.as_dict())

    @bentoml.api
    def drift(
        self,
        window: Annotated[Duration, Field(description="Each window's length: 30m, 1h, 24h, 7d, 2w.")] = "24h",
        windows: Annotated[int, Field(ge=1, le=366, description="How many windows back, newest first.")] = 7,
    ) -> DriftReport:
        """Served predictions against the training data, per window: OOD share, label mix, embedding; a verdict."""
        self.prediction_log.flush()  # this worker's newest predictions count too
        report = self.curator().drift(self.prediction_log, window=window, windows=windows)
        return DriftReport.model_validate({**report, "log": self.prediction_log.stats()})

    @bentoml.api
    def import_predictions(
        self,
        since: Annotated[Duration, Field(description="How far back: 30m, 1h, 24h, 7d, 2w.")] = "7d",
        limit: Annotated[int, Field(ge=1, le=10_000)] = 100,
        split: Split | None = None,
        label: Annotated[ClassName | None, Field(description="File under this class; default the predicted.")] = None,
        ood_only: Annotated[bool, Field(description="Only predictions flagged ood (false: any logged image).")] = True,
    ) -> list[ImportedPrediction]:
        """Logged OOD images (kept with BOUNCER_LOG_IMAGES) into the dataset, unreviewed, most unusual first."""
        self.prediction_log.flush()
        imported = self.curator().import_predictions(
            self.prediction_log, since=since, limit=limit, split=split, label=label, ood_only=ood_only
        )
        return [ImportedPrediction.model_validate(i) for i in imported]

    @bentoml.api
    def train_progress(self) -> TrainProgress:
        """The current or last training: state (idle/running/succeeded/failed/canceled), phase, epoch, metrics."""
        return TrainProgress.model_validate(self.trainer.status())


def _classes() -> list[str]:
    """The served dataset's class names (the OpenAPI page lists them as the values a class field takes)."""
    return bentoml.get_current_service().labels.classes()


REVIEW_PAGE = ui.create_app()  # its data attached by each worker's Bouncer (__init__)
Bouncer.mount_asgi_app(REVIEW_PAGE, path=ui.PATH)
install(Bouncer, settings=_STARTUP, write_endpoints=WRITE_ENDPOINTS, mounts={ui.PATH: REVIEW_PAGE}, classes=_classes)
