"""Bouncer's HTTP API (BentoML new-style service).

Serves the promoted model version (see ``live_model``), else ``BOUNCER_MODEL_TAG``,
else the newest version trained on this dataset (``registry.resolve_serving_tag``).
``predict`` goes through the batched ``Classifier`` dependency; everything else is a
call into ``training``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound
from pydantic import BaseModel, Field
from starlette.datastructures import Headers, QueryParams
from starlette.responses import JSONResponse

from bento_service.classifier import Classifier
from bento_service.client_error_log import install_client_error_filter
from bento_service.error_body import ErrorBodyFix
from bento_service.live_model import LiveModel
from bento_service.request_guard import RequestGuard, RouteInput
from bento_service.train_runner import NotRunning, TrainingBusy, TrainingCanceled, TrainingFailed, TrainRunner
from training.dataset import MissingSplitError, resolve_inside
from training.evaluate import weak_model_warning
from training.images import ImageError, load_model_input
from training.label_issues import find_suspects, trace_to_training
from training.label_store import NotFoundError, UndoConflictError, UnknownLabelError
from training.label_store import RelabelResult as StoreRelabelResult
from training.pipeline import evaluate_split, load_split, open_store
from training.registry import ModelResolutionError, RegisteredModel, fitting_tag, list_versions, versions_for_dataset
from training.settings import get_settings
from training.similarity import nearest_neighbours, nearest_to_any
from training.tf_logs import quiet_tensorflow

log = logging.getLogger("bentoml.bouncer")

# The service is an entry point: the train task's child and `bentoml build` inherit this
# (nothing imported above loads TensorFlow, so it is not too late).
quiet_tensorflow()
install_client_error_filter()  # a 4xx is one INFO line in the server log, not an ERROR traceback
_STARTUP = get_settings()  # cheap: reads env vars only; decides the model and worker count
# Largest integer SQLite and PostgreSQL (BIGINT) take: a larger id or offset overflowed in the driver (a 500).
DB_INT_MAX = 2**63 - 1


class Prediction(BaseModel):
    label: str
    confidence: float
    probabilities: dict[str, float]
    model_version: str


class ImageInfo(BaseModel):
    image_id: str
    path: str
    split: str
    label: str


class LabelChangeOut(BaseModel):
    image_id: str
    old_label: str
    new_label: str


class RelabelResult(BaseModel):
    event_id: int | None = Field(description="The recorded event (pass it to `undo`); null if nothing changed.")
    changed: list[LabelChangeOut]
    unchanged: list[str]

    @classmethod
    def of(cls, result: StoreRelabelResult) -> RelabelResult:
        return cls(
            event_id=result.event_id,
            changed=[LabelChangeOut(**asdict(c)) for c in result.changed],
            unchanged=result.unchanged,
        )


class Neighbour(BaseModel):
    image_id: str
    path: str
    split: str
    label: str
    distance: float


class SimilarResult(BaseModel):
    query: str | None = Field(description="The query image_id (null for an uploaded image).")
    results: list[Neighbour]


class ModelVersion(BaseModel):
    version: str
    tag: str
    created_at: str
    metrics: dict[str, float]
    data_version: str | None
    serving: bool
    beats_baseline: bool | None = Field(
        description="Test accuracy above always answering the most common label (null: no test figures recorded)."
    )
    warning: str | None = Field(description="Set when the version is no better than that baseline.")
    recipe: dict[str, Any] | None = Field(description="How it was trained: backbone, input size, batch, augmentation.")


class SuspectOut(BaseModel):
    image_id: str
    path: str
    label: str
    suggested_label: str
    score: float = Field(
        description=(
            "0..1, higher = more likely mislabelled: (flagged + 1 - label_quality) / 2, so above 0.5 exactly when "
            "flagged; at least 0.9 for a duplicate whose label disagrees with its group."
        )
    )
    flagged: bool = Field(
        description="cleanlab.find_label_issues counts it as a label issue, or it disagrees with its duplicates."
    )
    label_quality: float = Field(
        description="cleanlab self-confidence label quality on the out-of-fold probabilities (higher: likely right)."
    )
    reasons: list[str] = Field(
        description=(
            "out_of_fold (cleanlab flags it) and/or duplicate_conflict (an exact or near copy of it carries "
            "another label; the one agreeing with the group's consensus keeps its score)."
        )
    )


class TracedOut(BaseModel):
    image_id: str
    path: str
    label: str
    votes: int = Field(description="How many misclassified images it pulls to its (wrong) class.")
    suggested_label: str = Field(description="The most common true class of those images.")


class PromoteResult(BaseModel):
    version: str
    tag: str
    previous_version: str


class TrainResult(BaseModel):
    model_version: str
    metrics: dict[str, float]
    previous_metrics: dict[str, float] | None = Field(
        description="The serving model's scores on the same, current test labels (null if none served)."
    )
    promoted: bool
    bento_tag: str | None = Field(description="The rebuilt bento (null if not promoted or no build context).")
    tag: str
    previous_version: str | None
    promotion_message: str
    bento_message: str
    data_version: str
    mlflow_run_id: str
    epochs_run: int
    beats_baseline: bool | None = Field(
        description="Test accuracy above always answering the most common label (null without a test split)."
    )
    warning: str | None = Field(description="For people: the new model is no better than that, or was not tested.")


class Conflict(BentoMLException):
    error_code = HTTPStatus.CONFLICT


class Unauthorized(BentoMLException):
    error_code = HTTPStatus.UNAUTHORIZED


class PayloadTooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class TrainingError(BentoMLException):
    error_code = HTTPStatus.INTERNAL_SERVER_ERROR


def authorized(token: str | None, authorization: str) -> bool:
    """No token configured, or the header carries it (compared in constant time)."""
    return not token or hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())


@contextmanager
def client_errors() -> Iterator[None]:
    """Turn the label store's domain errors into 4xx answers that name the problem."""
    try:
        yield
    except NotFoundError as exc:
        raise NotFound(str(exc)) from exc
    except UnknownLabelError as exc:
        raise InvalidArgument(str(exc)) from exc
    except UndoConflictError as exc:
        raise Conflict(str(exc)) from exc


@bentoml.service(traffic={"timeout": 300}, workers=_STARTUP.workers)
class Bouncer:
    bento_model = bentoml.models.BentoModel(_STARTUP.default_model_tag)
    classifier = bentoml.depends(Classifier)

    def __init__(self) -> None:
        self.settings = get_settings()
        self.store = open_store(self.settings)
        # bento_model is what `bentoml build` packs; which version serves is this dataset's (resolve_serving_tag)
        self.live = LiveModel(self.store, self.settings)
        self.trainer = TrainRunner(self.settings)

    @property
    def model(self) -> RegisteredModel:
        """The serving version now; an endpoint reads it once so a live swap cannot split a request."""
        return self.live.get()

    def _require_token(self, ctx: bentoml.Context) -> None:
        """Writes need the bearer token when BOUNCER_API_TOKEN is set; reads stay open."""
        if not authorized(self.settings.api_token, ctx.request.headers.get("authorization", "")):
            raise Unauthorized("this endpoint needs 'Authorization: Bearer <BOUNCER_API_TOKEN>'")

    def _check_split(self, split: str) -> None:
        if split not in self.settings.splits:
            raise InvalidArgument(f"unknown split {split!r}; use one of {list(self.settings.splits)}")

    def _pixels(self, upload: Path, field: str, image_size: int) -> np.ndarray:
        size = upload.stat().st_size
        if size > self.settings.max_upload_bytes:
            raise PayloadTooLarge(f"{field}: upload is {size} bytes, over the {self.settings.max_upload_bytes} limit")
        try:
            return load_model_input(upload.read_bytes(), image_size, max_pixels=self.settings.max_image_pixels)
        except ImageError as exc:
            raise InvalidArgument(f"{field}: {exc}") from exc

    def _similar(
        self, model: RegisteredModel, query: np.ndarray, k: int, split: str, label: str | None, exclude: str | None
    ) -> list[Neighbour]:
        self._check_split(split)
        if label is not None and label not in (classes := self.store.classes()):
            raise InvalidArgument(f"unknown label {label!r}; known classes: {', '.join(classes)}")
        candidates = self.store.images(split=split, label=label)
        return [
            Neighbour(
                image_id=n.record.image_id,
                path=n.record.path,
                split=n.record.split,
                label=n.record.label,
                distance=n.distance,
            )
            for n in nearest_neighbours(model.index, query, candidates, k, exclude=exclude)
        ]

    async def _classify(self, pixels: np.ndarray) -> list[Prediction]:
        """Through the batched Classifier service: concurrent requests share one ONNX run."""
        scores = await self.classifier.to_async.classify(pixels)
        predictions = []
        for score in scores:
            probabilities: dict[str, float] = score["probabilities"]
            label = max(probabilities, key=probabilities.__getitem__)
            predictions.append(
                Prediction(
                    label=label,
                    confidence=probabilities[label],
                    probabilities=probabilities,
                    model_version=score["model_version"],
                )
            )
        return predictions

    @bentoml.api
    async def predict(self, image: Annotated[Path, bentoml.validators.ContentType("image/*")]) -> Prediction:
        """Classify one uploaded image (multipart field ``image``); batched with concurrent requests."""
        pixels = await asyncio.to_thread(self._pixels, image, "image", self.model.image_size)
        return (await self._classify(pixels[None]))[0]

    @bentoml.api
    async def predict_batch(
        self, images: Annotated[list[Path], Field(min_length=1, max_length=256)]
    ) -> list[Prediction]:
        """Classify several uploaded images (multipart field ``images``, repeated)."""
        size = self.model.image_size

        def decode() -> np.ndarray:
            return np.stack([self._pixels(path, f"images[{i}]", size) for i, path in enumerate(images)])

        return await self._classify(await asyncio.to_thread(decode))

    @bentoml.api
    def similar(
        self,
        image_id: str,
        k: Annotated[int, Field(ge=1, le=1000)] = 10,
        split: str = "train",
        label: str | None = None,
    ) -> SimilarResult:
        """The k nearest images in ``split`` (optionally only those labelled ``label``), query excluded."""
        model = self.model
        with client_errors():
            record = self.store.get(image_id)
        query = model.index.vector_of(image_id)
        if query is None:  # added after this model was trained: embed it now
            query = model.reduce(load_split(self.settings, [record], model.image_size))[0]
        return SimilarResult(query=image_id, results=self._similar(model, query, k, split, label, exclude=image_id))

    @bentoml.api
    def similar_image(
        self,
        image: Annotated[Path, bentoml.validators.ContentType("image/*")],
        k: Annotated[int, Field(ge=1, le=1000)] = 10,
        split: str = "train",
        label: str | None = None,
    ) -> SimilarResult:
        """Like ``similar``, for an uploaded image (multipart field ``image``)."""
        model = self.model
        query = model.reduce(self._pixels(image, "image", model.image_size)[None])[0]
        return SimilarResult(query=None, results=self._similar(model, query, k, split, label, exclude=None))

    @bentoml.api
    def models(self) -> list[ModelVersion]:
        """This dataset's registered versions, newest first, with their metrics and whether they serve."""
        serving = self.model.tag
        versions = []
        for m in versions_for_dataset(self.settings.model_name, self.store):
            metrics = {k: float(v) for k, v in dict(m.info.metadata.get("metrics", {})).items()}
            baseline, accuracy = metrics.get("baseline_accuracy"), metrics.get("test_accuracy")
            known = baseline is not None and accuracy is not None
            versions.append(
                ModelVersion(
                    version=m.tag.version,
                    tag=str(m.tag),
                    created_at=m.info.creation_time.isoformat(),
                    metrics=metrics,
                    data_version=m.info.metadata.get("data_version"),
                    serving=str(m.tag) == serving,
                    beats_baseline=accuracy > baseline if known else None,
                    warning=weak_model_warning(accuracy, baseline) if known else None,
                    recipe=dict(m.info.metadata["recipe"]) if "recipe" in m.info.metadata else None,
                )
            )
        return versions

    @bentoml.api
    def promote(self, version: str, ctx: bentoml.Context, reason: str = "") -> PromoteResult:
        """Serve ``version`` (e.g. roll back); every worker follows within BOUNCER_MODEL_POLL_SECONDS."""
        self._require_token(ctx)
        tag = f"{self.settings.model_name}:{version}"
        known = {m.tag.version for m in list_versions(self.settings.model_name)}
        if version not in known:
            raise NotFound(f"unknown model version {version!r}; see `models` for the registered ones")
        try:
            fitting_tag(tag, self.store)
        except ModelResolutionError as exc:  # another dataset's model: its answers would name other classes
            raise InvalidArgument(str(exc)) from exc
        previous = self.model
        self.store.promote(self.settings.model_name, tag, actor="api", reason=reason or "promote")
        self.live.swap_to(tag)
        self.classifier.swap_to(tag)  # other Bouncer workers follow on their next poll
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
        self._require_token(ctx)
        task_id = getattr(ctx.request.state, "task_id", None)
        try:
            result = await self.trainer.run(
                epochs=epochs, force=force, serving_tag=self.model.tag, actor="api", task_id=task_id
            )
        except (TrainingBusy, TrainingCanceled) as exc:
            raise Conflict(str(exc)) from exc
        except TrainingFailed as exc:
            log.error("training failed: %s", exc)
            raise TrainingError(str(exc)) from exc
        if result["promoted"]:  # this worker and the classifier now; other workers on their next poll
            self.live.swap_to(result["tag"])
            await self.classifier.to_async.swap_to(result["tag"])
        return TrainResult(**result)

    @bentoml.api
    def train_progress(self) -> dict[str, Any]:
        """The current or last training: state (idle/running/succeeded/failed), phase, epoch, metrics so far."""
        return self.trainer.status()

    @bentoml.api
    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Accuracy, loss, per-class scores, confusion matrix and misclassified images."""
        self._check_split(split)
        if self.store.count(split=split) == 0:  # an accuracy of 0.0 over no images would be a lie
            raise NotFound(str(MissingSplitError(self.settings.data_dir, split, test_split=self.settings.test_split)))
        model = self.model
        report = evaluate_split(self.settings, self.store, model, split)
        return {**report.as_dict(), "model_version": model.version, "data_version": self.store.data_version()}

    def _vectors(self, model: RegisteredModel, image_ids: list[str]) -> np.ndarray:
        """Index vectors of known images (404 for unknown ids); images newer than the model are embedded now."""
        with client_errors():
            records = [self.store.get(image_id) for image_id in image_ids]
        vectors = [model.index.vector_of(r.image_id) for r in records]
        missing = [r for r, v in zip(records, vectors, strict=True) if v is None]
        if missing:
            fresh = iter(model.reduce(load_split(self.settings, missing, model.image_size)))
            vectors = [next(fresh) if v is None else v for v in vectors]
        return np.stack(vectors).astype(np.float32)

    @bentoml.api
    def suspects(self, k: Annotated[int, Field(ge=1, le=100_000)] = 50) -> list[SuspectOut]:
        """Training images whose current label is probably wrong, best first, with a suggested label.

        cleanlab label quality on the out-of-fold probabilities stored with the serving
        version, plus exact/near duplicates that disagree. Current labels: a relabel
        takes an image off the list at once.
        """
        model = self.model
        if model.audit is None:
            raise Conflict(
                f"model version {model.version} has no out-of-fold probabilities "
                "(trained with BOUNCER_OUT_OF_FOLD_FOLDS < 2): retrain to get suspects"
            )
        found = find_suspects(model.audit, self.store.images(split=self.settings.train_split), model.class_names)
        return [
            SuspectOut(
                image_id=s.record.image_id,
                path=s.record.path,
                label=s.record.label,
                suggested_label=s.suggested_label,
                score=s.score,
                flagged=s.flagged,
                label_quality=s.label_quality,
                reasons=s.reasons,
            )
            for s in found[:k]
        ]

    @bentoml.api
    def trace(
        self,
        image_ids: list[str] | None = None,
        k: Annotated[int, Field(ge=1, le=100)] = 5,
        limit: Annotated[int, Field(ge=1, le=100_000)] = 100,
    ) -> list[TracedOut]:
        """Training images that pull misclassified images to the wrong class, most votes first.

        From ``image_ids`` (any split; each is traced towards the class the model
        predicts for it), or by default from every misclassified test image. For each,
        its ``k`` nearest training images labelled with the predicted class get a vote.
        """
        model = self.model
        if image_ids:
            with client_errors():
                records = [self.store.get(image_id) for image_id in image_ids]
            probabilities = model.classifier.predict(load_split(self.settings, records, model.image_size)).probabilities
            errors = [
                (r.image_id, model.class_names[int(p.argmax())], r.label)
                for r, p in zip(records, probabilities, strict=True)
            ]
        else:
            report = evaluate_split(self.settings, self.store, model, self.settings.test_split)
            errors = [(m.image_id, m.predicted, m.label) for m in report.misclassified]
        errors = [e for e in errors if e[1] != e[2]]  # an image the model gets right pulls nothing
        if not errors:
            return []
        train = self.store.images(split=self.settings.train_split)
        rows = model.index.rows_of([r.image_id for r in train])
        train = [r for r, row in zip(train, rows, strict=True) if row >= 0]  # newer than the model: no vector
        traced = trace_to_training(
            self._vectors(model, [e[0] for e in errors]),
            [e[1] for e in errors],
            [e[2] for e in errors],
            model.index.vectors[rows[rows >= 0]],
            train,
            model.class_names,
            k=k,
        )
        return [
            TracedOut(
                image_id=t.record.image_id,
                path=t.record.path,
                label=t.record.label,
                votes=t.votes,
                suggested_label=t.suggested_label,
            )
            for t in traced[:limit]
        ]

    @bentoml.api
    def expand(
        self,
        image_ids: Annotated[list[str], Field(min_length=1)],
        k: Annotated[int, Field(ge=1, le=10_000)] = 20,
        label: str | None = None,
        split: str = "train",
    ) -> list[Neighbour]:
        """Next candidates after a confirmed set: the unreviewed images nearest to any of ``image_ids``.

        Reviewed = touched by a relabel or undo. ``label`` keeps only images currently
        labelled so (e.g. the wrong class the confirmed images carried).
        """
        model = self.model
        self._check_split(split)
        if label is not None and label not in (classes := self.store.classes()):
            raise InvalidArgument(f"unknown label {label!r}; known classes: {', '.join(classes)}")
        queries = self._vectors(model, image_ids)
        skip = set(image_ids) | self.store.reviewed_image_ids()
        candidates = [r for r in self.store.images(split=split, label=label) if r.image_id not in skip]
        return [
            Neighbour(
                image_id=n.record.image_id,
                path=n.record.path,
                split=n.record.split,
                label=n.record.label,
                distance=n.distance,
            )
            for n in nearest_to_any(model.index, queries, candidates, k)
        ]

    @bentoml.api
    def images(
        self,
        split: str | None = None,
        label: str | None = None,
        limit: Annotated[int, Field(ge=1, le=10_000)] = 100,
        offset: Annotated[int, Field(ge=0, le=DB_INT_MAX)] = 0,
    ) -> list[ImageInfo]:
        """List images with their ids and curated labels, sorted by path."""
        records = self.store.images(split=split, label=label, limit=limit, offset=offset)
        return [ImageInfo(image_id=r.image_id, path=r.path, split=r.split, label=r.label) for r in records]

    @bentoml.api
    def image(self, image_id: str) -> Path:
        """The bytes of one image, as stored under DATA_DIR."""
        with client_errors():
            record = self.store.get(image_id)
        try:
            return resolve_inside(self.settings.data_dir, record.path)
        except PermissionError as exc:
            raise NotFound(f"image {image_id!r} is not under the data directory") from exc

    @bentoml.api
    def relabel(
        self,
        image_ids: Annotated[list[str], Field(min_length=1)],
        label: str,
        ctx: bentoml.Context,
        reason: str = "",
    ) -> RelabelResult:
        """Give every image ``label`` in one recorded, undoable transaction."""
        self._require_token(ctx)
        with client_errors():
            result = self.store.relabel(image_ids, label, reason=reason, actor="api")
        return RelabelResult.of(result)

    @bentoml.api
    def undo(self, event_id: Annotated[int, Field(ge=1, le=DB_INT_MAX)], ctx: bentoml.Context) -> RelabelResult:
        """Revert one event (refused with 409 if a later event changed the same images)."""
        self._require_token(ctx)
        with client_errors():
            result = self.store.undo(event_id, actor="api")
        return RelabelResult.of(result)

    @bentoml.api
    def history(
        self, image_id: str | None = None, limit: Annotated[int, Field(ge=1, le=10_000)] = 50
    ) -> list[dict[str, Any]]:
        """Label events newest first, each with its ``event_id``."""
        with client_errors():
            return [asdict(e) for e in self.store.history(image_id=image_id, limit=limit)]


class WriteGate:
    """Answer a write without a valid token (401) or a second training (409) before BentoML does.

    Every method on a write path is gated: BentoML's own ``PUT /train/cancel`` needed no
    token and only flipped the task's status while the training went on. Here a cancel
    stops the training child. Errors raised inside a task only show in /train/get, and
    BentoML replaces every 401 message with "Authorization error"; here the answer says
    what is missing. The endpoints keep their own token check as well.
    """

    TRAIN_PATHS = frozenset({"/train", "/train/submit", "/train/retry"})
    CANCEL_PATH = "/train/cancel"
    WRITE_PATHS = TRAIN_PATHS | {CANCEL_PATH, "/relabel", "/undo", "/promote"}

    def __init__(self, app: Any) -> None:
        self.app = app
        self.settings = get_settings()
        self.runner = TrainRunner(self.settings)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in self.WRITE_PATHS:
            answer = self._refusal(scope["path"], Headers(scope=scope))
            if answer is None and scope["path"] == self.CANCEL_PATH:
                answer = await self._cancel(scope)
            if answer is not None:
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, path: str, headers: Headers) -> JSONResponse | None:
        if not authorized(self.settings.api_token, headers.get("authorization", "")):
            return JSONResponse(
                {"error": f"{path} needs 'Authorization: Bearer <BOUNCER_API_TOKEN>'"},
                status_code=HTTPStatus.UNAUTHORIZED,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if path in self.TRAIN_PATHS and self.runner.is_running():
            return JSONResponse(
                {"error": "a training is already running; watch it with train_progress"},
                status_code=HTTPStatus.CONFLICT,
            )
        return None

    async def _cancel(self, scope: dict[str, Any]) -> JSONResponse:
        """Stop the training of ``?task_id=``: 200 once its process is gone, 409 if it is not running."""
        if scope["method"] != "PUT":
            return JSONResponse({"error": f"{self.CANCEL_PATH} takes PUT"}, status_code=HTTPStatus.METHOD_NOT_ALLOWED)
        task_id = QueryParams(scope.get("query_string", b"")).get("task_id")
        if not task_id:
            return JSONResponse({"error": "task_id is required"}, status_code=HTTPStatus.BAD_REQUEST)
        try:
            return JSONResponse(await asyncio.to_thread(self.runner.cancel, task_id))
        except NotRunning as exc:
            return JSONResponse({"error": str(exc)}, status_code=HTTPStatus.CONFLICT)


def _api_routes() -> dict[str, RouteInput]:
    """Each POST route and what its endpoint takes (a task also at its /submit route)."""
    routes: dict[str, RouteInput] = {}
    for api in Bouncer.apis.values():
        spec = RouteInput(frozenset(api.input_spec.model_fields), frozenset(api.input_spec.multipart_fields))
        routes[api.route] = spec
        if api.is_task:
            routes[f"{api.route}/submit"] = spec
    return routes


Bouncer.add_asgi_middleware(WriteGate)
Bouncer.add_asgi_middleware(ErrorBodyFix)
Bouncer.add_asgi_middleware(RequestGuard, routes=_api_routes(), max_body_bytes=_STARTUP.max_request_bytes)
