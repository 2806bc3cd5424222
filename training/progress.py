"""Progress of a long training run, readable by another process while it runs.

The pipeline reports through a :class:`ProgressSink` (any callable taking a
:class:`TrainingProgress`). :class:`JsonFileProgress` writes each update
atomically to a JSON file, which the service (or ``watch cat``) can read.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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


class LogProgress:
    """Sink that logs each update as one line: every phase, epoch and out-of-fold model shows in a console."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def __call__(self, progress: TrainingProgress) -> None:
        self.logger.info("%s: %s", progress.phase, progress.message)


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
