"""The prediction log on real SQLite and PostgreSQL: batched writes, kept images, retention, drift reports."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.pipeline import Pipeline

from training.model.embedder import fit_embedder
from training.model.reference import DriftReference, fit_reference
from training.monitoring.drift import DriftInputError, drift_report, parse_window
from training.monitoring.prediction_log import PredictionLog
from training.settings import Settings

CLASSES = ["bunny", "dog"]
WIDTH = 12  # the network's embedding width in these tests


@dataclass
class Version:
    """The one thing the log needs of a served version: its fitted embedder."""

    embedder: Pipeline


@pytest.fixture(scope="module")
def version() -> Version:
    rng = np.random.default_rng(0)
    return Version(fit_embedder("pca", rng.normal(size=(200, WIDTH)).astype(np.float32), 4, seed=0))


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    extra: dict[str, Any] = {}
    if request.param == "postgresql":
        extra["prediction_log_url"] = request.getfixturevalue("postgres_database")
    return Settings(data_dir=tmp_path / "data", log_images="ood", **extra)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def answers(labels: list[str], ood: list[bool]) -> list[dict[str, Any]]:
    return [
        {"label": label, "confidence": 0.9, "model_version": "v1", "ood_score": 0.999 if o else 0.3, "ood": o}
        for label, o in zip(labels, ood, strict=True)
    ]


def test_queued_predictions_are_written_in_one_flush_and_only_ood_images_are_kept(
    settings: Settings, version: Version
) -> None:
    log = PredictionLog(settings)
    uploads = [png(1), png(2), png(1)]  # the same picture twice
    embeddings = np.random.default_rng(1).normal(size=(3, WIDTH)).astype(np.float32)
    log.record(version, answers(["dog", "bunny", "dog"], [True, False, True]), embeddings, uploads)
    assert log.count() == 0  # the request path only queued them
    assert log.flush() == 3 and log.count() == 3
    rows = log.between(0, time.time() + 1)
    assert [r.label for r in rows] == ["dog", "bunny", "dog"]
    assert rows[0].vector is not None and rows[0].vector.shape == (4,)
    np.testing.assert_allclose(rows[1].vector, version.embedder.transform(embeddings[1:2])[0], rtol=1e-5)
    assert rows[1].image_file is None  # not OOD: its image is not kept
    assert rows[0].image_file == rows[2].image_file and (settings.logged_images_dir / rows[0].image_file).is_file()
    assert (settings.logged_images_dir / rows[0].image_file).read_bytes() == uploads[0]
    assert rows[0].image_file.endswith(".png")
    ood = log.recent(since=0, limit=10, with_image=True)
    assert len(ood) == 1  # one per picture
    assert [r.label for r in log.recent(since=0, limit=10, ood_only=False)] == ["dog", "bunny"]  # most unusual first
    log.mark_imported(ood[0].content_hash or "", "img-1")
    assert log.recent(since=0, limit=10) == []
    log.close()


def test_retention_deletes_old_rows_and_the_images_only_they_named(settings: Settings, version: Version) -> None:
    log = PredictionLog(settings)
    embeddings = np.zeros((1, WIDTH), np.float32)
    log.record(version, answers(["dog"], [True]), embeddings, [png(3)])
    log.flush()
    time.sleep(0.2)
    log.record(version, answers(["bunny"], [True]), embeddings, [png(4)])
    log.flush()
    old, new = log.between(0, time.time() + 1)
    retention_s = settings.prediction_log_retention_days * 86400
    assert log.apply_retention(now=time.time()) == 0
    assert log.apply_retention(now=old.created_at + 0.1 + retention_s) == 1  # the first only
    assert [r.id for r in log.between(0, time.time() + 1)] == [new.id]
    assert not (settings.logged_images_dir / str(old.image_file)).exists()
    assert (settings.logged_images_dir / str(new.image_file)).exists()
    log.close()


def test_a_full_buffer_drops_and_counts_instead_of_growing(tmp_path: Path, version: Version) -> None:
    log = PredictionLog(Settings(data_dir=tmp_path, prediction_log_buffer_max=100))
    for _ in range(3):
        log.record(version, answers(["dog"] * 40, [False] * 40), np.zeros((40, WIDTH), np.float32))
    assert log.stats() == {"written": 0, "queued": 80, "dropped": 40}
    log.close()  # flushes what was queued
    assert PredictionLog(Settings(data_dir=tmp_path)).count() == 80


def test_the_writer_thread_flushes_by_itself(tmp_path: Path, version: Version) -> None:
    from tests.conftest import eventually

    log = PredictionLog(Settings(data_dir=tmp_path, prediction_log_flush_ms=20))
    log.start()
    log.record(version, answers(["dog"], [False]), np.zeros((1, WIDTH), np.float32))
    assert eventually(lambda: log.count() == 1, timeout=5)
    log.close()


def fill(
    log: PredictionLog, version: Version, rng: np.random.Generator, n: int, *, dog: float, ood: float, shift: float
) -> None:
    labels = ["dog" if rng.random() < dog else "bunny" for _ in range(n)]
    flags = [bool(rng.random() < ood) for _ in range(n)]
    embeddings = rng.normal(size=(n, WIDTH)).astype(np.float32) + shift
    log.record(version, answers(labels, flags), embeddings)
    log.flush()


def test_drift_report_names_what_moved(tmp_path: Path, version: Version) -> None:
    rng = np.random.default_rng(7)
    log = PredictionLog(Settings(data_dir=tmp_path))
    reference_embeddings = rng.normal(size=(1000, WIDTH)).astype(np.float32)
    probabilities = np.eye(2)[(rng.random(1000) < 0.5).astype(int)]
    reference = fit_reference(
        CLASSES, probabilities, version.embedder.transform(reference_embeddings), ood_share=0.01, source="test split"
    )

    fill(log, version, rng, 600, dog=0.5, ood=0.01, shift=0.0)
    calm = drift_report(log, reference, "v1", window="1h", windows=2)
    assert calm["verdict"] == "no drift", calm["reasons"]
    assert calm["windows"][0]["n"] == 600 and calm["windows"][1]["verdict"] == "too few predictions"
    assert set(calm["methods"]) == {"ood_share", "label_shift", "embedding_shift"}

    fill(log, version, rng, 600, dog=0.9, ood=0.2, shift=1.5)
    moved = drift_report(log, reference, "v1", window="1h", windows=1)
    assert moved["verdict"] == "drift"
    window = moved["windows"][0]
    assert window["ood"]["drift"] and window["ood"]["share"] > 0.05
    assert window["labels"]["drift"] and window["labels"]["shares"]["dog"] > 0.6
    assert window["embedding"]["drift"] and window["embedding"]["ks_max"] > 0.1
    assert len(moved["reasons"]) == 3
    other_version = drift_report(log, reference, "v2", window="1h", windows=1)  # vectors of v1 are not v2's space
    assert other_version["windows"][0]["embedding"]["n_compared"] == 0
    log.close()


def test_an_uncalibrated_version_answers_no_ood_share_rather_than_no_drift(tmp_path: Path, version: Version) -> None:
    """Its predictions carry `ood: null` (too few held-out images to calibrate): the OOD share is unknown, not 0%."""
    rng = np.random.default_rng(3)
    log = PredictionLog(Settings(data_dir=tmp_path))
    reference = fit_reference(
        CLASSES, np.eye(2)[rng.integers(0, 2, 200)], rng.normal(size=(200, 4)), ood_share=0.01, source="test split"
    )
    uncalibrated = [{**a, "ood": None} for a in answers(["dog", "bunny"] * 50, [False] * 100)]
    log.record(version, uncalibrated, rng.normal(size=(100, WIDTH)).astype(np.float32))
    log.flush()
    window = drift_report(log, reference, "v1", window="1h", windows=1)["windows"][0]
    assert window["n"] == 100 and window["ood"]["share"] is None and not window["ood"]["drift"]
    assert "uncalibrated" in window["ood"]["note"]
    log.close()


def test_windows_are_durations() -> None:
    """Exactly what the API's schema documents (1 to 999 of a unit): no valid-looking window is refused."""
    assert parse_window("90m") == 5400 and parse_window("7d") == 7 * 86400 and parse_window("400d") == 400 * 86400
    for bad in ("", "week", "0s", "-1h", "1.5h", "1000d", " 1h", "01h", "1h; drop table"):
        with pytest.raises(DriftInputError, match="window"):
            parse_window(bad)


def test_windows_reaching_before_1970_are_empty(settings: Settings) -> None:
    log = PredictionLog(settings)
    reference = DriftReference(["cat", "dog"], np.array([0.5, 0.5]), np.zeros((10, 2), np.float32), 0.01, 100, "test")
    report = drift_report(log, reference, "v1", window="999w", windows=366)
    assert len(report["windows"]) == 366 and report["windows"][-1]["n"] == 0
    log.close()


def test_workers_starting_at_once_all_open_the_log(settings: Settings) -> None:
    """Every worker of a starting server creates the table if missing, at the same moment.

    SQLite's loser gets "database is locked", PostgreSQL's a unique violation: neither may stop a worker.
    """
    import threading

    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_log() -> None:
        start.wait()
        try:
            PredictionLog(settings).engine.dispose()
        except BaseException as exc:  # noqa: BLE001 - collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_log) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert PredictionLog(settings).count() == 0
