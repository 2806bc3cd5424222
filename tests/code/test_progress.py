"""Progress in a console or a log: a few lines for a long run, not one per epoch (issue 22)."""

from __future__ import annotations

import io
import logging

import pytest

from training.progress import ConsoleProgress, LogProgress, TrainingProgress


def _epochs(sink: object, epochs: int, label: str = "model") -> None:
    progress = TrainingProgress(phase="training", epochs=epochs, message="training on 18 images")
    sink(progress)  # type: ignore[operator]
    for epoch in range(1, epochs + 1):
        progress.message = f"{label} epoch {epoch}/{epochs}: loss 0.500"
        sink(progress)  # type: ignore[operator]


def test_a_log_gets_a_line_per_phase_and_model_not_per_epoch(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("bouncer.test.log-progress")
    sink = LogProgress(logger, every_s=60)
    with caplog.at_level(logging.INFO, logger=logger.name):
        _epochs(sink, 500)
        sink(TrainingProgress(phase="out-of-fold", message="out-of-fold model 1/2"))
        sink(TrainingProgress(phase="out-of-fold", message="out-of-fold model 1/2 epoch 1/3: loss 0.4"))
        sink(TrainingProgress(phase="out-of-fold", message="out-of-fold model 2/2"))
        sink(TrainingProgress(phase="exporting", message=""))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "training: training on 18 images",
        "training: model epoch 1/500: loss 0.500",
        "out-of-fold: out-of-fold model 1/2",
        "out-of-fold: out-of-fold model 2/2",
        "exporting",
    ]


def test_a_log_still_hears_from_a_long_phase(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("bouncer.test.log-progress-timed")
    with caplog.at_level(logging.INFO, logger=logger.name):
        _epochs(LogProgress(logger, every_s=0), 5)
    assert len(caplog.records) == 6  # with no interval, every update


def test_a_terminal_gets_one_line_that_updates() -> None:
    stream = io.StringIO()
    sink = ConsoleProgress(stream)
    _epochs(sink, 200)
    sink(TrainingProgress(phase="exporting", message="converting to ONNX"))
    text = stream.getvalue()
    assert text.count("\n") == 1  # one line for the training phase, then the next phase's
    assert text.split("\n")[0].rsplit("\r", 1)[1].strip() == "training: model epoch 200/200: loss 0.500"
    assert text.endswith("\rexporting: converting to ONNX")
