"""Bouncer's HTTP API (BentoML new-style service).

The model version to serve is chosen at start-up from the BentoML model store
(``BOUNCER_MODEL_TAG``, default ``bouncer:latest``). Everything the endpoints do is
a call into ``training``.
"""

from __future__ import annotations

import logging
import os
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

from training.dataset import resolve_inside
from training.images import ImageError, load_model_input
from training.label_store import NotFoundError, UndoConflictError, UnknownLabelError
from training.label_store import RelabelResult as StoreRelabelResult
from training.pipeline import evaluate_split, load_split, open_store
from training.registry import list_versions, load_registered
from training.settings import get_settings
from training.similarity import nearest_neighbours

log = logging.getLogger("bentoml.bouncer")

_STARTUP = get_settings()  # cheap: reads env vars only; decides the model and worker count
MODEL_TAG = os.environ.get("BOUNCER_MODEL_TAG", f"{_STARTUP.model_name}:latest")


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


class Conflict(BentoMLException):
    error_code = HTTPStatus.CONFLICT


class Unauthorized(BentoMLException):
    error_code = HTTPStatus.UNAUTHORIZED


class PayloadTooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


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
    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.settings = get_settings()
        self.model = load_registered(str(self.bento_model.tag))
        self.store = open_store(self.settings)
        log.info("serving %s", self.model.tag)

    def _require_token(self, ctx: bentoml.Context) -> None:
        """Writes need the bearer token when BOUNCER_API_TOKEN is set; reads stay open."""
        token = self.settings.api_token
        if token and ctx.request.headers.get("authorization", "") != f"Bearer {token}":
            raise Unauthorized("this endpoint needs 'Authorization: Bearer <BOUNCER_API_TOKEN>'")

    def _check_split(self, split: str) -> None:
        if split not in self.settings.splits:
            raise InvalidArgument(f"unknown split {split!r}; use one of {list(self.settings.splits)}")

    def _pixels(self, upload: Path, field: str) -> np.ndarray:
        size = upload.stat().st_size
        if size > self.settings.max_upload_bytes:
            raise PayloadTooLarge(f"{field}: upload is {size} bytes, over the {self.settings.max_upload_bytes} limit")
        try:
            return load_model_input(
                upload.read_bytes(), self.model.image_size, max_pixels=self.settings.max_image_pixels
            )
        except ImageError as exc:
            raise InvalidArgument(f"{field}: {exc}") from exc

    def _similar(
        self, query: np.ndarray, k: int, split: str, label: str | None, exclude: str | None
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
            for n in nearest_neighbours(self.model.index, query, candidates, k, exclude=exclude)
        ]

    def _prediction(self, probabilities: np.ndarray) -> Prediction:
        best = int(np.argmax(probabilities))
        return Prediction(
            label=self.model.class_names[best],
            confidence=float(probabilities[best]),
            probabilities={c: float(p) for c, p in zip(self.model.class_names, probabilities, strict=True)},
            model_version=self.model.version,
        )

    @bentoml.api
    def predict(self, image: Annotated[Path, bentoml.validators.ContentType("image/*")]) -> Prediction:
        """Classify one uploaded image (multipart field ``image``)."""
        pixels = self._pixels(image, "image")
        return self._prediction(self.model.classifier.predict(pixels[None]).probabilities[0])

    @bentoml.api
    def predict_batch(self, images: Annotated[list[Path], Field(min_length=1, max_length=256)]) -> list[Prediction]:
        """Classify several uploaded images (multipart field ``images``, repeated)."""
        pixels = np.stack([self._pixels(path, f"images[{i}]") for i, path in enumerate(images)])
        return [self._prediction(p) for p in self.model.classifier.predict(pixels).probabilities]

    @bentoml.api
    def similar(
        self,
        image_id: str,
        k: Annotated[int, Field(ge=1, le=1000)] = 10,
        split: str = "train",
        label: str | None = None,
    ) -> SimilarResult:
        """The k nearest images in ``split`` (optionally only those labelled ``label``), query excluded."""
        with client_errors():
            record = self.store.get(image_id)
        query = self.model.index.vector_of(image_id)
        if query is None:  # added after this model was trained: embed it now
            pixels = load_split(self.settings, [record], self.model.image_size)
            query = self.model.reduce(pixels)[0]
        return SimilarResult(query=image_id, results=self._similar(query, k, split, label, exclude=image_id))

    @bentoml.api
    def similar_image(
        self,
        image: Annotated[Path, bentoml.validators.ContentType("image/*")],
        k: Annotated[int, Field(ge=1, le=1000)] = 10,
        split: str = "train",
        label: str | None = None,
    ) -> SimilarResult:
        """Like ``similar``, for an uploaded image (multipart field ``image``)."""
        pixels = self._pixels(image, "image")
        query = self.model.reduce(pixels[None])[0]
        return SimilarResult(query=None, results=self._similar(query, k, split, label, exclude=None))

    @bentoml.api
    def models(self) -> list[ModelVersion]:
        """Every registered version, newest first, with its metrics and whether it serves."""
        return [
            ModelVersion(
                version=m.tag.version,
                tag=str(m.tag),
                created_at=m.info.creation_time.isoformat(),
                metrics={k: float(v) for k, v in dict(m.info.metadata.get("metrics", {})).items()},
                data_version=m.info.metadata.get("data_version"),
                serving=str(m.tag) == self.model.tag,
            )
            for m in list_versions(self.settings.model_name)
        ]

    @bentoml.api
    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Accuracy, loss, per-class scores, confusion matrix and misclassified images."""
        self._check_split(split)
        if self.store.count(split=split) == 0:
            raise NotFound(f"no images in split {split!r}")
        report = evaluate_split(self.settings, self.store, self.model, split)
        return {
            **report.as_dict(),
            "model_version": self.model.version,
            "data_version": self.store.data_version(),
        }

    @bentoml.api
    def images(
        self,
        split: str | None = None,
        label: str | None = None,
        limit: Annotated[int, Field(ge=1, le=10_000)] = 100,
        offset: Annotated[int, Field(ge=0)] = 0,
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
    def undo(self, event_id: int, ctx: bentoml.Context) -> RelabelResult:
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
