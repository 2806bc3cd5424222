"""Predictions in the worker that took the request: one ONNX run at a time, concurrent requests share it.

Why not BentoML's adaptive batching: it only batches calls to a separate service, and
the hop there (pickling each image, an HTTP call, a second event loop that regenerated
a JSON schema per call) cost more than the model itself (issue 13: 0.5 ms of ONNX in
7.6 CPU-ms per predict). Here each worker holds its own single-threaded ONNX session
and a greedy batcher: while one run is in flight, every request that arrives waits for
the next, which takes them all (up to ``max_batch`` images). A lone request runs at
once; under load batches grow by themselves, with no timer to wait on.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

import numpy as np

from bento_service.live_model import LiveModel
from training.data.images import ImageError, header_pixels, load_model_input
from training.errors import Invalid, Unavailable
from training.model.inference import PredictionAnswer
from training.monitoring.prediction_log import PredictionLog
from training.registry.serving import RegisteredModel
from training.settings import Settings

# A single upload this small (pixels from its header, and bytes) is decoded on the event loop:
# a thread hop costs more than decoding it. Anything bigger is decoded in a thread, within
# BOUNCER_DECODE_TIMEOUT_S (see decodes_inline).
INLINE_DECODE_PIXELS = 256 * 256
INLINE_DECODE_BYTES = 256 * 1024


class Overloaded(Unavailable):
    """A request waited longer than the latency budget for its turn: the worker is over capacity (503)."""


class BadUpload(Invalid):
    """An upload that cannot be classified: a 400 (not an image) or a 413 (too big), naming the field."""


class _ModelChanged(Exception):
    """A live swap to a version with another input size came between decoding and the run: decode again."""


@dataclass
class _Job:
    pixels: np.ndarray  # (n, s, s, 3)
    future: asyncio.Future[list[PredictionAnswer]]
    uploads: Sequence[bytes] | None = None  # the files the pixels came from, for the prediction log
    queued_at: float = field(default_factory=time.monotonic)


class Predictor:
    def __init__(self, live: LiveModel, settings: Settings, log: PredictionLog | None = None) -> None:
        """``log``: where every answer is recorded (an append; its own thread writes)."""
        self.live = live
        self.log = log
        self.score_ood = settings.ood_scoring
        self.max_batch = settings.batch_max_size
        self.max_wait_s = settings.batch_max_latency_ms / 1000
        self.max_upload_bytes = settings.max_upload_bytes
        self.max_pixels = settings.max_image_pixels
        self.decode_timeout_s = settings.decode_timeout_s
        self._pending: deque[_Job] = deque()
        self._draining = False
        self.runs = 0  # ONNX runs so far; fewer than requests means concurrent requests shared runs

    async def predict_uploads(self, uploads: Sequence[tuple[str, bytes]]) -> list[PredictionAnswer]:
        """Predictions for uploaded files, given as (field name, bytes): judged by their bytes alone.

        BadUpload names the field of the first upload that is too big or not a readable image.
        """
        for name, data in uploads:
            if len(data) > self.max_upload_bytes:
                message = f"{name}: upload is {len(data)} bytes, over the {self.max_upload_bytes} limit"
                raise BadUpload(message, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        while True:
            size = self.live.get().image_size
            if len(uploads) == 1 and decodes_inline(uploads[0][1]):
                pixels = self._decode(uploads, size)
            else:
                pixels = await self._decode_in_thread(uploads, size)
            try:
                return await self.predict(pixels, uploads=[data for _, data in uploads])
            except _ModelChanged:
                continue

    async def _decode_in_thread(self, uploads: Sequence[tuple[str, bytes]], size: int) -> np.ndarray:
        """Decoded off the event loop; 503 past the decode timeout (the thread, bounded by the pixel cap, runs out)."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._decode, uploads, size), self.decode_timeout_s)
        except TimeoutError:
            raise Overloaded(f"decoding the upload took over {self.decode_timeout_s:g} s; try again later") from None

    def _decode(self, uploads: Sequence[tuple[str, bytes]], size: int) -> np.ndarray:
        rows = []
        for name, data in uploads:
            try:
                rows.append(load_model_input(data, size, max_pixels=self.max_pixels))
            except ImageError as exc:
                raise BadUpload(f"{name}: {exc}") from None
        return np.stack(rows)

    async def predict(self, pixels: np.ndarray, *, uploads: Sequence[bytes] | None = None) -> list[PredictionAnswer]:
        """The prediction for each of ``pixels`` (n, s, s, 3): label, confidence, probabilities,
        model_version, ood_score, ood."""
        loop = asyncio.get_running_loop()
        job = _Job(pixels, loop.create_future(), uploads)
        self._pending.append(job)
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await job.future

    async def _drain(self) -> None:
        """Run batches until nothing waits; the pending requests of one round form the next batch."""
        try:
            while self._pending:
                jobs = self._next_batch()
                if jobs:
                    await self._run(jobs)
        finally:
            self._draining = False

    def _next_batch(self) -> list[_Job]:
        """Whole requests, oldest first, up to ``max_batch`` images (a bigger request runs alone).

        A request that already waited past the budget is refused now instead of
        joining a queue it cannot get through in time.
        """
        jobs: list[_Job] = []
        images = 0
        now = time.monotonic()
        while self._pending:
            job = self._pending[0]
            if job.future.done():  # the client went away
                self._pending.popleft()
                continue
            if now - job.queued_at > self.max_wait_s:
                self._pending.popleft()
                waited = int((now - job.queued_at) * 1000)
                job.future.set_exception(Overloaded(f"waited {waited} ms for the model; the server is over capacity"))
                continue
            if jobs and images + len(job.pixels) > self.max_batch:
                break
            jobs.append(self._pending.popleft())
            images += len(job.pixels)
        return jobs

    async def _run(self, jobs: list[_Job]) -> None:
        model = self.live.get()  # one version for the whole batch, even across a live swap
        if any(job.pixels.shape[1] != model.image_size for job in jobs):
            for job in jobs:
                if job.pixels.shape[1] != model.image_size and not job.future.done():
                    job.future.set_exception(_ModelChanged())
            jobs = [job for job in jobs if job.pixels.shape[1] == model.image_size]
            if not jobs:
                return
        pixels = jobs[0].pixels if len(jobs) == 1 else np.concatenate([job.pixels for job in jobs])
        self.runs += 1
        try:
            outputs = await asyncio.to_thread(infer, model, pixels, self.log is not None, self.score_ood)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure, the batcher goes on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        answers = answer_rows(outputs.probabilities, model.class_names, model.version, outputs.ood, outputs.ood_warning)
        if self.log is not None and outputs.similarity is not None:
            uploads = None if any(job.uploads is None for job in jobs) else [u for job in jobs for u in job.uploads]
            self.log.record(model, answers, outputs.similarity, uploads)
        start = 0
        for job in jobs:
            end = start + len(job.pixels)
            if not job.future.done():
                job.future.set_result(answers[start:end])
            start = end


def decodes_inline(data: bytes) -> bool:
    """Whether one upload is decoded on the event loop: small in bytes and header pixels, or refused by its header.

    An upload whose header is no decoded format's is refused by the same header read, at no
    cost; sent to a thread instead, 32 concurrent 19 MB such uploads left +900 MB in the
    threads' malloc arenas after they were answered.
    """
    pixels = header_pixels(data)
    return pixels == 0 or (len(data) <= INLINE_DECODE_BYTES and pixels <= INLINE_DECODE_PIXELS)


@dataclass(frozen=True)
class Outputs:
    probabilities: np.ndarray  # (n, K)
    similarity: np.ndarray | None  # (n, D) what the embedder reduces (Predictions.similarity), for the log
    ood: tuple[list[float], list[bool | None]] | None  # (ood_score, ood) per row; None for a version without a scorer
    ood_warning: str | None = None  # why `ood` is null: the version's threshold is uncalibrated


def infer(model: RegisteredModel, pixels: np.ndarray, want_embeddings: bool, score: bool = True) -> Outputs:
    """One ONNX run and the OOD score over its outputs (in the run's thread, off the event loop).

    An uncalibrated scorer (too few held-out images per class) still ranks, but answers ``ood``
    null rather than a confident false (issue 25).
    """
    scorer = model.ood if score else None
    if scorer is None and not want_embeddings:
        return Outputs(model.classifier.probabilities(pixels), None, None)
    outputs = model.classifier.outputs(pixels)
    if scorer is None:
        return Outputs(outputs.probabilities, outputs.similarity, None)
    scores, flags = scorer.score(outputs.embeddings, outputs.early)
    if scorer.calibrated is False:
        return Outputs(
            outputs.probabilities, outputs.similarity, (scores.tolist(), [None] * len(scores)), scorer.warning
        )
    return Outputs(outputs.probabilities, outputs.similarity, (scores.tolist(), flags.tolist()))


def answer_rows(
    probabilities: np.ndarray,
    class_names: list[str],
    version: str,
    ood: tuple[list[float], list[bool | None]] | None = None,
    ood_warning: str | None = None,
) -> list[PredictionAnswer]:
    """The documented Prediction for each row of class probabilities."""
    best = probabilities.argmax(axis=1)
    rows = probabilities.tolist()  # Python floats in one call, not one float() per cell
    scores, flags = ood if ood is not None else ([None] * len(rows), [None] * len(rows))
    return [
        {
            "label": class_names[b],
            "confidence": row[b],
            "probabilities": dict(zip(class_names, row, strict=True)),
            "model_version": version,
            "ood_score": score,
            "ood": flag,
            "ood_warning": ood_warning,
        }
        for b, row, score, flag in zip(best.tolist(), rows, scores, flags, strict=True)
    ]
