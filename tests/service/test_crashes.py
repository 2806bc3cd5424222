"""SIGKILL of the whole server tree: during a burst of relabels, and during a training. Nothing acknowledged is lost.

Each test runs its own `bentoml serve` (2 workers) on a copy of the demo, with the label
store on SQLite and on PostgreSQL, kills every process of it at once (as the OOM killer or
a power cut would), starts it again on the same data and checks what the first one left.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import TrainedDemo, eventually
from tests.service.conftest import PROJECT, SERVICE, copy_demo_data
from training.jobs import processes
from training.jobs.processes import free_port
from training.labels.store import LabelStore, open_store
from training.labels.sync import import_folder

TOKEN = "crash-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str | None:
    """Where the label store lives: the data folder's SQLite file, or a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_database")


def prepared(trained_demo: TrainedDemo, root: Path, database: str | None) -> Path:
    """A copy of the demo; on PostgreSQL its labels imported into the database first."""
    data = copy_demo_data(trained_demo, root / "data")
    if database is not None:
        settings = trained_demo.settings.model_copy(update={"data_dir": data, "database_url": database})
        with open_store(settings) as store:
            import_folder(settings, store)
    return data


@contextmanager
def serving(
    trained_demo: TrainedDemo, data: Path, log: Path, database: str | None
) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    env = {
        **os.environ,
        **trained_demo.env,
        "BOUNCER_MODEL_TAG": trained_demo.result.tag,
        "BOUNCER_DATA_DIR": str(data),
        "BOUNCER_MLFLOW_DIR": str(data.parent / "mlruns"),
        "BOUNCER_API_TOKEN": TOKEN,
        "BOUNCER_WORKERS": "2",
        **({"BOUNCER_DATABASE_URL": database} if database else {}),
    }
    url = f"http://127.0.0.1:{port}"
    command = processes.bentoml_serve_command(SERVICE, port)
    with processes.running(command, ready_url=f"{url}/readyz", log=log, env=env, cwd=PROJECT, timeout=120) as process:
        yield url, psutil.Process(process.pid)


def kill_tree(root: psutil.Process) -> None:
    """SIGKILL every process of the server at once, children first listed, none given a chance to clean up."""
    tree = [root, *root.children(recursive=True)]
    for process in tree:
        with suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(tree, timeout=10)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_sigkill_during_a_burst_of_relabels_loses_nothing_acknowledged(
    trained_demo: TrainedDemo, tmp_path: Path, database: str | None
) -> None:
    data = prepared(trained_demo, tmp_path, database)
    acknowledged: dict[int, tuple[list[str], str]] = {}  # event_id -> (image_ids, label) the answer confirmed
    lock = threading.Lock()
    with serving(trained_demo, data, tmp_path / "first.log", database) as (url, root):
        listed = httpx.post(f"{url}/images", json={"split": "train", "limit": 400}, timeout=30).json()
        ids = [row["image_id"] for row in listed]
        labels = sorted({row["label"] for row in listed})
        stop = threading.Event()

        def client(seed: int) -> None:
            with httpx.Client(timeout=30) as http:
                n = 0
                while not stop.is_set():
                    n += 1
                    chosen = [ids[(seed * 50 + n * 7 + k) % len(ids)] for k in range(3)]
                    label = labels[(seed + n) % len(labels)]
                    try:
                        answer = http.post(f"{url}/relabel", json={"image_ids": chosen, "label": label}, headers=AUTH)
                    except httpx.HTTPError:
                        return  # the server is gone: this request was never acknowledged
                    if answer.status_code == 200 and answer.json()["event_id"] is not None:
                        with lock:
                            acknowledged[answer.json()["event_id"]] = (chosen, label)

        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        assert eventually(lambda: len(acknowledged) >= 40, timeout=60)
        kill_tree(root)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    with serving(trained_demo, data, tmp_path / "second.log", database) as (url, _):
        history = httpx.post(f"{url}/history", json={"limit": 10_000}, timeout=30).json()
        by_id = {event["event_id"]: event for event in history}
        assert len(by_id) == len(history)  # every event once
        for event_id, (chosen, label) in acknowledged.items():
            event = by_id[event_id]  # acknowledged: recorded
            assert event["kind"] == "relabel"
            changes = {change["image_id"]: change["new_label"] for change in event["changes"]}
            assert set(changes) <= set(chosen) and set(changes.values()) <= {label}  # exactly what was asked
        store = LabelStore(database or f"sqlite:///{data / 'labels.db'}")
        try:
            assert eventually(lambda: (data / "labels.csv").read_text() == store.csv.text(), timeout=10)
        finally:
            store.close()
    print(f"\n{len(acknowledged)} acknowledged relabels, all recorded once; {len(history)} events in all")


def test_sigkill_during_a_training_leaves_the_old_model_serving_and_a_failed_run(
    trained_demo: TrainedDemo, tmp_path: Path, database: str | None
) -> None:
    data = prepared(trained_demo, tmp_path, database)
    image = sorted((data / "test" / "dog").glob("*.png"))[0]
    with serving(trained_demo, data, tmp_path / "first.log", database) as (url, root):
        versions_before = {m["version"] for m in httpx.post(f"{url}/models", json={}, timeout=30).json()}
        submit = httpx.post(f"{url}/train/submit", json={"epochs": 200, "force": True}, headers=AUTH, timeout=30)
        assert submit.status_code == 200, submit.text

        def training() -> bool:
            progress = httpx.post(f"{url}/train_progress", json={}, timeout=30).json()
            return progress["phase"] == "training" and (progress.get("epoch") or 0) >= 1

        assert eventually(training, timeout=180, interval=0.5)
        kill_tree(root)

    with serving(trained_demo, data, tmp_path / "second.log", database) as (url, _):
        progress = httpx.post(f"{url}/train_progress", json={}, timeout=30).json()
        assert progress["state"] == "failed" and "died" in progress["error"], progress
        assert "marked FAILED" in progress["error"]
        versions_after = {m["version"] for m in httpx.post(f"{url}/models", json={}, timeout=30).json()}
        assert versions_after == versions_before  # no half-registered version
        files = {"image": (image.name, image.read_bytes(), "image/png")}
        answer = httpx.post(f"{url}/predict", files=files, timeout=30).json()
        assert answer["model_version"] == trained_demo.result.tag.split(":", 1)[1]  # the old model serves

        from mlflow.tracking import MlflowClient

        from training.pipeline.tracking import tracking_uri

        settings = trained_demo.settings.model_copy(update={"data_dir": data, "mlflow_dir": data.parent / "mlruns"})
        client = MlflowClient(tracking_uri(settings))
        experiment = client.get_experiment_by_name(settings.mlflow_experiment)
        statuses = [run.info.status for run in client.search_runs([experiment.experiment_id])]
        assert statuses and "RUNNING" not in statuses and "FAILED" in statuses

        again = httpx.post(f"{url}/train/submit", json={"epochs": 1}, headers=AUTH, timeout=30)
        assert again.status_code == 200, again.text  # nothing stale holds the lock (the file's nor the database's)
        task_id = again.json()["task_id"]
        time.sleep(1)
        httpx.put(f"{url}/train/cancel", params={"task_id": task_id}, headers=AUTH, timeout=60)
