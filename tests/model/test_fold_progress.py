"""A training's out-of-fold models report their progress: fold 1/2, its epochs, then fold 2/2, as they run."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from training.pipeline.training_run import run_training
from training.progress import PHASES, JsonFileProgress, LogProgress, TrainingProgress, fan_out
from training.settings import Settings

pytestmark = pytest.mark.slow


def test_a_training_with_two_folds_reports_each_fold_model(
    shapes_dataset: Path, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state" / "progress.json"
    seen: list[dict[str, Any]] = []

    def read_back(_: TrainingProgress) -> None:
        """What another process reading the progress file (the service's train_progress) sees after each update."""
        seen.append(json.loads(path.read_text()))

    logger = logging.getLogger("bouncer.test.progress")
    sink = fan_out(JsonFileProgress(path, extra={"task_id": "t1"}), read_back, LogProgress(logger))
    with caplog.at_level(logging.INFO, logger=logger.name):
        result = run_training(settings.model_copy(update={"out_of_fold_folds": 2}), epochs=1, sink=sink)

    phases = [s["phase"] for i, s in enumerate(seen) if i == 0 or s["phase"] != seen[i - 1]["phase"]]
    assert phases == [p for p in PHASES if p in phases] and "out-of-fold" in phases  # in order, each once
    messages = [s["message"] for s in seen if s["phase"] == "out-of-fold"]
    assert messages[0] == "2 fold models for out-of-fold probabilities"
    assert [m for m in messages if re.fullmatch(r"out-of-fold model \d+/\d+", m)] == [
        "out-of-fold model 1/2",
        "out-of-fold model 2/2",
    ]
    first, second = messages.index("out-of-fold model 1/2"), messages.index("out-of-fold model 2/2")
    # Each fold model's epochs, e.g. "out-of-fold model 1/2 epoch 1/1: accuracy 0.333, loss 1.134".
    fold_epochs = [m for m in messages if " epoch " in m]
    assert [m.split(":")[0] for m in fold_epochs] == [
        "out-of-fold model 1/2 epoch 1/1",
        "out-of-fold model 2/2 epoch 1/1",
    ]
    assert all("loss " in m for m in fold_epochs)
    assert first < messages.index(fold_epochs[0]) < second < messages.index(fold_epochs[1])  # each after its start
    # The fold models' epochs are not the run's: the epoch counter and the chart's history stay the main model's.
    during_folds = [s for s in seen if s["phase"] == "out-of-fold"]
    assert all(s["epoch"] == s["epochs"] == result.epochs_run == len(s["history"]) for s in during_folds)
    assert all(s["task_id"] == "t1" for s in seen)
    assert json.loads(path.read_text())["phase"] == "registered"
    assert "out-of-fold: out-of-fold model 2/2" in caplog.text  # the console line `bouncer train` prints
