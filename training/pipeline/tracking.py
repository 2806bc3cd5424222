"""MLflow: every training run with its params, per-epoch metrics, artifacts and data version."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import mlflow

from training.model.evaluation import EvaluationReport
from training.settings import Settings

# Stores MLflow reaches through SQLAlchemy: without an artifact location of their own, MLflow
# puts a new experiment's run files in ./mlruns of whatever directory the process runs in.
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def tracking_uri(settings: Settings) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a local SQLite store that needs no server."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}"


def artifact_dir(uri: str, settings: Settings) -> Path | None:
    """Where a new experiment keeps its run files, so that it is never the working directory's ``mlruns``.

    A SQLite file store: ``artifacts/`` beside the database file (the default store is
    ``BOUNCER_MLFLOW_DIR/mlflow.db``, so ``BOUNCER_MLFLOW_DIR/artifacts``). Another database
    (PostgreSQL, MySQL, in-memory SQLite): ``BOUNCER_MLFLOW_DIR/artifacts``. None where the
    store decides: a tracking server (its ``--artifacts-destination``) or a file store (MLflow
    keeps the files inside the store's own folder).
    """
    scheme = uri.partition(":")[0].split("+")[0].lower() if "://" in uri else ""
    if scheme not in DATABASE_SCHEMES:
        return None
    if scheme == "sqlite":
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
        if database and database != ":memory:" and not database.startswith("file:"):
            return Path(database).expanduser().resolve().parent / "artifacts"
    return settings.mlflow_dir / "artifacts"


@contextmanager
def mlflow_run(settings: Settings, *, run_name: str | None = None) -> Iterator[mlflow.ActiveRun]:
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        artifacts = artifact_dir(uri, settings)
        artifact_location = None
        if artifacts is not None:
            artifacts.mkdir(parents=True, exist_ok=True)
            artifact_location = artifacts.as_uri()
        experiment_id = mlflow.create_experiment(settings.mlflow_experiment, artifact_location=artifact_location)
    else:
        experiment_id = experiment.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        yield run


def fail_orphaned_runs(settings: Settings, *, started_after: float) -> list[str]:
    """Mark FAILED the runs still RUNNING that started after ``started_after`` (epoch seconds).

    For a training whose process was killed (SIGKILL, OOM, a power cut): nothing ended
    its MLflow run, which would read RUNNING forever. Only called when no training runs.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(settings))
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return []
    since = int(started_after * 1000)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.status = 'RUNNING' and attributes.start_time >= {since}"
    )
    for run in runs:
        client.set_terminated(run.info.run_id, "FAILED")
    return [run.info.run_id for run in runs]


class MlflowEpochMetrics(keras.callbacks.Callback):
    """Logs ``loss``, ``accuracy``, ``val_*`` and the learning rate after every epoch."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        if metrics:
            mlflow.log_metrics(metrics, step=epoch + 1)


def log_confusion_matrix(report: EvaluationReport, artifact_file: str) -> None:
    # A bare Figure, not pyplot: no global backend switch, so a notebook that trains in-process
    # keeps its inline plots, and nothing is left open.
    import numpy as np
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = report.confusion_matrix["labels"]
    size = max(4.0, 0.6 * len(labels) + 2)
    figure = Figure(figsize=(size, size))
    axes = figure.add_subplot()
    ConfusionMatrixDisplay(np.array(report.confusion_matrix["matrix"]), display_labels=labels).plot(
        ax=axes, xticks_rotation=45, colorbar=False
    )
    axes.set_title(f"accuracy {report.accuracy:.3f} on {report.n} images")
    figure.tight_layout()
    mlflow.log_figure(figure, artifact_file)


def log_file(path: Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=artifact_path)
