"""Progress of a long training run, readable by another process while it runs.

The pipeline reports through a :class:`ProgressSink` (any callable taking a
:class:`TrainingProgress`). :class:`JsonFileProgress` writes each update
atomically to a JSON file, which the service (or ``watch cat``) can read.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

# run_training goes as far as "registered"; the train task then compares, promotes and builds.
PHASES = (
    "importing",
    "loading",
    "training",
    "exporting",
    "evaluating",
    "embedding",
    "ood",
    "out-of-fold",
    "registering",
    "registered",
    "comparing",
    "promoting",
    "building",
    "done",
)


@dataclass
class TrainingProgress:
    phase: str = "starting"
    epoch: int = 0
    epochs: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    message: str = ""
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressSink = Callable[[TrainingProgress], None]


def ignore_progress(_: TrainingProgress) -> None:
    return None


def describe(progress: TrainingProgress) -> str:
    """'training: epoch 3/15 ...', or the phase alone when it has no message."""
    return f"{progress.phase}: {progress.message}" if progress.message else progress.phase


def step_of(progress: TrainingProgress) -> tuple[str, str]:
    """(phase, which model): 'model epoch 3/15: ...' and 'out-of-fold model 1/2 epoch 1/5: ...' name their model."""
    return progress.phase, progress.message.split(" epoch ", 1)[0]


class LogProgress:
    """Sink for a log (a file, CI): a line for every phase and every model it trains, and within one a line
    every ``every_s`` seconds.

    An 18-image training once printed ~500 epoch lines; every epoch is still in MLflow
    and in ``train_progress``'s history.
    """

    def __init__(self, logger: logging.Logger, *, every_s: float = 30.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._step: tuple[str, str] | None = None
        self._logged_at = 0.0

    def __call__(self, progress: TrainingProgress) -> None:
        now, step = time.monotonic(), step_of(progress)
        if step != self._step or now - self._logged_at >= self.every_s:
            self.logger.info("%s", describe(progress))
            self._step, self._logged_at = step, now


class ConsoleProgress:
    """Sink for a terminal: one line that updates in place, a new line for each phase."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._phase: str | None = None
        self._width = 0

    def __call__(self, progress: TrainingProgress) -> None:
        text = describe(progress)
        if self._phase is not None and progress.phase != self._phase:
            self.stream.write("\n")
            self._width = 0
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._phase, self._width = progress.phase, len(text)


def console_progress(logger: logging.Logger) -> ProgressSink:
    """A bar-like line in a terminal, a line per phase and every 30 s in a log."""
    return ConsoleProgress() if sys.stderr.isatty() else LogProgress(logger)


def fan_out(*sinks: ProgressSink) -> ProgressSink:
    """One sink that passes every update to each of ``sinks``."""

    def sink(progress: TrainingProgress) -> None:
        for each in sinks:
            each(progress)

    return sink


class JsonFileProgress:
    """Sink that keeps ``path`` holding the latest progress as JSON."""

    def __init__(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """``extra``: fields written alongside the progress (e.g. the run id)."""
        self.path = path
        self.extra = extra or {}

    def __call__(self, progress: TrainingProgress) -> None:
        progress.updated_at = time.time()
        write_json_atomic(self.path, {**progress.as_dict(), **self.extra})


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle)
    os.replace(tmp, path)


def report_phase(progress: TrainingProgress, sink: ProgressSink, phase: str, message: str) -> None:
    """Enter ``phase`` (one of PHASES: clients switch on the names, so a new one is published first)."""
    if phase not in PHASES:
        raise ValueError(f"unknown training phase {phase!r}; add it to training.progress.PHASES")
    progress.phase, progress.message = phase, message
    sink(progress)
