"""Bouncer's HTTP API (BentoML new-style service).

The model version to serve is chosen at start-up from the BentoML model store
(``BOUNCER_MODEL_TAG``, default ``bouncer:latest``). Everything the endpoints do is
a call into ``training``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument, NotFound
from pydantic import BaseModel, Field

from training.evaluate import evaluate_predictions
from training.images import ImageError, load_model_input
from training.pipeline import load_split, open_store
from training.registry import load_registered
from training.settings import get_settings

log = logging.getLogger("bentoml.bouncer")

MODEL_TAG = os.environ.get("BOUNCER_MODEL_TAG", f"{get_settings().model_name}:latest")


class Prediction(BaseModel):
    label: str
    confidence: float
    probabilities: dict[str, float]
    model_version: str


class EvaluateRequest(BaseModel):
    split: str = Field("test", description="Which split to evaluate on its current labels.")


@bentoml.service(traffic={"timeout": 300})
class Bouncer:
    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.settings = get_settings()
        self.model = load_registered(str(self.bento_model.tag))
        self.store = open_store(self.settings)
        log.info("serving %s", self.model.tag)

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
        try:
            pixels = load_model_input(
                image.read_bytes(), self.model.image_size, max_pixels=self.settings.max_image_pixels
            )
        except ImageError as exc:
            raise InvalidArgument(f"image: {exc}") from exc
        return self._prediction(self.model.classifier.predict(pixels[None]).probabilities[0])

    @bentoml.api
    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Accuracy, loss, per-class scores, confusion matrix and misclassified images."""
        if split not in self.settings.splits:
            raise InvalidArgument(f"unknown split {split!r}; use one of {list(self.settings.splits)}")
        records = self.store.images(split=split)
        if not records:
            raise NotFound(f"no images in split {split!r}")
        images = load_split(self.settings, records, self.model.image_size)
        predictions = self.model.classifier.predict(images)
        report = evaluate_predictions(
            predictions.probabilities,
            [r.label for r in records],
            self.model.class_names,
            image_ids=[r.image_id for r in records],
            paths=[r.path for r in records],
        )
        return {
            **report.as_dict(),
            "model_version": self.model.version,
            "data_version": self.store.data_version(),
        }
