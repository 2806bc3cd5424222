"""`bouncer drift` and `bouncer import-predictions` over predictions the real predictor logged."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bento_service.live_model import LiveModel
from bento_service.predictor import Predictor
from tests.conftest import TrainedDemo
from tests.service.conftest import copy_demo_data
from training.cli import app
from training.curation.labels import Labels
from training.labels.store import open_store
from training.monitoring.prediction_log import PredictionLog
from training.registry.serving import Registry
from training.settings import Settings

pytestmark = pytest.mark.slow


def noise_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_drift_and_import_predictions_from_the_command_line(
    trained_demo: TrainedDemo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained_demo.apply(monkeypatch)
    data_dir = copy_demo_data(trained_demo, tmp_path / "data")
    monkeypatch.setenv("BOUNCER_DATA_DIR", str(data_dir))
    monkeypatch.setenv("BOUNCER_LOG_IMAGES", "all")
    monkeypatch.setenv("BOUNCER_MODEL_TAG", trained_demo.result.tag)
    settings = Settings()
    uploads = [("image", p.read_bytes()) for p in sorted((data_dir / "test").glob("*/*.png"))[:30]]
    uploads += [("image", noise_png(seed)) for seed in range(5)]
    with open_store(settings) as store:
        live = LiveModel(Registry(Labels(settings, store)))
        log = PredictionLog(settings)
        predictor = Predictor(live, settings, log)

        async def one_by_one() -> None:
            for upload in uploads:
                await predictor.predict_uploads([upload])

        asyncio.run(one_by_one())
        log.close()  # what a worker does at shutdown: queued predictions written
        live.close()

    shown = CliRunner().invoke(app, ["--quiet", "drift", "--window", "1h", "--windows", "2"])
    assert shown.exit_code == 0, shown.output
    assert "verdict (newest window):" in shown.stdout and "too few predictions" in shown.stdout
    assert "Kolmogorov-Smirnov" in shown.stdout  # the method is named
    report = json.loads(CliRunner().invoke(app, ["--quiet", "drift", "--window", "1h", "--json"]).stdout)
    assert report["windows"][0]["n"] == len(uploads)

    bad = CliRunner().invoke(app, ["--quiet", "drift", "--window", "soon"])
    assert bad.exit_code != 0 and "window" in bad.output

    imported_run = CliRunner().invoke(app, ["--quiet", "import-predictions", "--since", "1h", "--all-logged"])
    assert imported_run.exit_code == 0, imported_run.output
    imported = json.loads(imported_run.stdout)
    assert len(imported) == len(uploads)  # every picture was kept (BOUNCER_LOG_IMAGES=all), each once
    assert all((data_dir / i["path"]).is_file() and i["path"].startswith("train/") for i in imported)
    with open_store(settings) as store:
        records = store.queries.records([i["image_id"] for i in imported])
    assert {r.label for r in records.values()} == {i["label"] for i in imported}
    again = CliRunner().invoke(app, ["--quiet", "import-predictions", "--since", "1h", "--all-logged"])
    assert again.exit_code == 0 and json.loads(again.stdout) == []
