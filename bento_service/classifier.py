"""The ONNX classifier behind ``predict``, as its own service so BentoML batches it.

Adaptive batching groups concurrent calls into one ONNX run, which only happens
for a batchable API called through a dependency: ``Bouncer.predict`` decodes the
upload and calls ``classify`` here with one image.
"""

from __future__ import annotations

from typing import Any

import bentoml
import numpy as np

from bento_service.live_model import LiveModel
from training.labels.store import open_store
from training.settings import get_settings

_STARTUP = get_settings()  # reads env vars only: decides the model tag and batching limits


# BentoML's client to a dependency replaces its HTTP session every `max_requests` calls
# (default 100) and closes the old one under the requests still using it; at 32
# concurrent clients that failed ~15% of predicts. Our dependency is local (a Unix
# socket), so there is nothing to gain from recycling the session: never do it.
NEVER = 1e9


@bentoml.service(workers=1, traffic={"timeout": 300}, runner_connection={"max_requests": int(NEVER), "max_age": NEVER})
class Classifier:
    bento_model = bentoml.models.BentoModel(_STARTUP.default_model_tag)

    def __init__(self) -> None:
        settings = get_settings()
        self.store = open_store(settings)
        # bento_model is what `bentoml build` packs; which version serves is this dataset's (resolve_serving_tag)
        self.live = LiveModel(self.store, settings)

    @bentoml.api(batchable=True, max_batch_size=_STARTUP.batch_max_size, max_latency_ms=_STARTUP.batch_max_latency_ms)
    def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
        """The prediction for each of (n, s, s, 3) images: label, confidence, probabilities, the version used."""
        model = self.live.get()
        answers = []
        for row in model.classifier.predict(images).probabilities:
            best = int(row.argmax())
            answers.append(
                {
                    "label": model.class_names[best],
                    "confidence": float(row[best]),
                    "probabilities": dict(zip(model.class_names, map(float, row), strict=True)),
                    "model_version": model.version,
                }
            )
        return answers

    @bentoml.api
    def swap_to(self, tag: str) -> str:
        """Serve ``tag`` now instead of on the next poll, so a promote is seen by predict at once."""
        return self.live.swap_to(tag).tag
