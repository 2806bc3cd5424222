"""The baseline for benchmarks/predict.py: the same model served the naive way.

FastAPI + uvicorn, one process, and the Keras model's ``model.predict`` called once
per request (no batching, no ONNX). Decoding is the service's own, so the two
servers differ only in how they run the model. FastAPI comes with the ``bench`` extra:
``.venv/bin/pip install -e ".[bench]"``.

    BOUNCER_BENCH_TAG=bouncer:<version> uvicorn benchmarks.naive_server:app --port 3001
"""

from __future__ import annotations

import os

import keras
import numpy as np
from fastapi import FastAPI, HTTPException, UploadFile

from training.data.images import ImageError, load_model_input
from training.registry.store import keras_model_path, load_registered

TAG = os.environ["BOUNCER_BENCH_TAG"]
_registered = load_registered(TAG)
CLASS_NAMES = _registered.class_names
IMAGE_SIZE = _registered.image_size
MODEL = keras.models.load_model(keras_model_path(TAG))

app = FastAPI(title="naive Keras server (benchmark baseline)")


@app.post("/predict")
def predict(image: UploadFile) -> dict[str, object]:
    """A plain ``def``: FastAPI runs it in its thread pool, so requests overlap as much as Keras allows."""
    try:
        pixels = load_model_input(image.file.read(), IMAGE_SIZE, max_pixels=40_000_000)
    except ImageError as exc:
        raise HTTPException(400, str(exc)) from exc
    outputs = MODEL.predict(pixels[None].astype(np.float32), verbose=0)
    probabilities = np.asarray(outputs["probabilities"])[0]
    best = int(np.argmax(probabilities))
    return {"label": CLASS_NAMES[best], "confidence": float(probabilities[best])}


@app.get("/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}
