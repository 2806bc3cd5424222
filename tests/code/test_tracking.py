"""Where MLflow keeps a run's files: never the working directory's ./mlruns (the training is in tests/model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.pipeline.tracking import artifact_dir, tracking_uri
from training.settings import Settings


def test_artifact_dir_is_explicit_for_every_database_store(settings: Settings, tmp_path: Path) -> None:
    assert artifact_dir(f"sqlite:///{tmp_path / 'a' / 'x.db'}", settings) == tmp_path / "a" / "artifacts"
    assert artifact_dir(tracking_uri(settings), settings) == settings.mlflow_dir / "artifacts"
    for uri in ("postgresql+psycopg://u:p@db/mlflow", "mysql://u@db/mlflow", "sqlite:///:memory:", "sqlite://"):
        assert artifact_dir(uri, settings) == settings.mlflow_dir / "artifacts", uri
    for uri in ("http://mlflow.example:5000", "https://mlflow.example", "databricks", f"file://{tmp_path}", "./mlruns"):
        assert artifact_dir(uri, settings) is None, uri  # the server or the file store decides


def test_a_relative_sqlite_store_keeps_its_artifacts_beside_it(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the database is where SQLite opens it: relative to the working directory
    assert artifact_dir("sqlite:///runs/x.db", settings) == tmp_path.resolve() / "runs" / "artifacts"
