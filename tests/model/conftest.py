"""Fixtures of the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TrainedDemo
from tests.service.conftest import copy_demo_data
from training.settings import Settings


@pytest.fixture
def demo_copy(trained_demo: TrainedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The demo's images and label DB in tmp_path, the demo's version pinned (as the service tests serve it)."""
    trained_demo.apply(monkeypatch)
    monkeypatch.setenv("BOUNCER_DATA_DIR", str(copy_demo_data(trained_demo, tmp_path / "data")))
    monkeypatch.setenv("BOUNCER_MLFLOW_DIR", str(tmp_path / "mlruns"))
    monkeypatch.setenv("BOUNCER_MODEL_TAG", trained_demo.result.tag)
    return Settings()
