"""The train task, train_progress, promote (rollback) and the rebuilt bento, through real servers.

Everything here trains and promotes on its own copy of the demo data (label DB
included), so the session ``server`` and the tests sharing it keep serving the
original model. One server (with an API token) is shared by the module; one
1-epoch training runs for the whole module (``training``).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TENSORFLOW_NOISE, TrainedDemo
from tests.service.conftest import PROJECT, Deployment, copy_demo_data, running_server
from training.progress import PHASES

pytestmark = pytest.mark.slow

TOKEN = "train-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TRAIN_TIMEOUT_S = 300
RESULT_FIELDS = {
    "model_version",
    "metrics",
    "previous_metrics",
    "promoted",
    "bento_tag",
    "tag",
    "previous_version",
    "promotion_message",
    "bento_message",
    "data_version",
    "mlflow_run_id",
    "epochs_run",
}


def _post(url: str, endpoint: str, payload: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/{endpoint}", json=payload, timeout=30, **kwargs)


def _progress(url: str) -> dict[str, Any]:
    response = _post(url, "train_progress", {})
    assert response.status_code == 200, response.text
    return response.json()


def _predict(url: str, image: Path) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"image": (image.name, image.read_bytes(), "image/png")}, timeout=30)


def _serving(url: str) -> list[str]:
    return [m["version"] for m in _post(url, "models", {}).json() if m["serving"]]


@pytest.fixture(scope="module")
def deployment(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(trained_demo, tmp_path_factory.mktemp("train-server"), token=TOKEN)
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


@dataclass
class TrainingRun:
    first_submit: httpx.Response
    second_submit: httpx.Response
    running: list[dict[str, Any]]  # train_progress snapshots taken while the task was in progress
    predictions: list[tuple[int, str | None]]  # (status, model_version) of predicts fired meanwhile
    status: dict[str, Any]  # the last /train/status
    result: httpx.Response  # /train/get
    seconds: float
    log: str  # the training child's stdout/stderr (train.log)


@pytest.fixture(scope="module")
def training(deployment: Deployment) -> TrainingRun:
    """Submit one forced 1-epoch training, watch it (progress, predicts) until the task completes."""
    url, image = deployment.url, deployment.image()
    started = time.monotonic()
    first = httpx.post(f"{url}/train/submit", json={"epochs": 1, "force": True}, headers=AUTH, timeout=30)
    second = httpx.post(f"{url}/train/submit", json={"epochs": 1}, headers=AUTH, timeout=30)
    assert first.status_code == 200, first.text
    task_id = first.json()["task_id"]
    running, predictions = [], []
    while True:
        status = httpx.get(f"{url}/train/status", params={"task_id": task_id}, timeout=30).json()
        if status["status"] not in {"pending", "in_progress"}:
            break
        assert time.monotonic() - started < TRAIN_TIMEOUT_S, f"training still {status} after {TRAIN_TIMEOUT_S}s"
        running.append(_progress(url))
        answer = _predict(url, image)
        predictions.append((answer.status_code, answer.json().get("model_version") if answer.is_success else None))
        time.sleep(0.5)
    result = httpx.get(f"{url}/train/get", params={"task_id": task_id}, timeout=30)
    log = (deployment.data_dir / ".bouncer" / "train.log").read_text()
    return TrainingRun(first, second, running, predictions, status, result, time.monotonic() - started, log)


def test_token_guards_train_and_promote(deployment: Deployment) -> None:
    url = deployment.url
    before = _progress(url)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = httpx.post(f"{url}/train/submit", json={"epochs": 1}, headers=headers, timeout=30)
        assert refused.status_code == 401, refused.text
        assert "BOUNCER_API_TOKEN" in refused.text
        promote = _post(url, "promote", {"version": deployment.original_version}, headers=headers)
        assert promote.status_code == 401, promote.text
        cancel = httpx.put(f"{url}/train/cancel", params={"task_id": "x"}, headers=headers, timeout=30)
        assert cancel.status_code == 401, cancel.text  # BentoML's own cancel route needed no token
    time.sleep(1)  # a training that slipped through would have written its progress by now
    after = _progress(url)
    assert after["state"] != "running"
    assert after.get("run_id") == before.get("run_id") and after["state"] == before["state"]


def test_train_task_trains_promotes_and_serves_the_new_version(deployment: Deployment, training: TrainingRun) -> None:
    url = deployment.url
    assert set(training.first_submit.json()) >= {"task_id", "status"}
    assert training.second_submit.status_code == 409, training.second_submit.text
    assert "already running" in training.second_submit.json()["error"]

    # idle only until the task took the lock; succeeded only between the child's exit and the task's end
    states = "".join(p["state"][0] for p in training.running)
    assert re.fullmatch(r"i*r+s*", states), [p["state"] for p in training.running]
    running = [p for p in training.running if p["state"] == "running"]
    assert all(p["phase"] in {"starting", *PHASES} for p in running), [p["phase"] for p in running]
    assert len({p["run_id"] for p in running}) == 1

    assert training.status["status"] == "completed", (training.status, training.result.text)
    assert training.result.status_code == 200, training.result.text
    result = training.result.json()
    assert set(result) >= RESULT_FIELDS
    assert result["promoted"] is True and "forced" in result["promotion_message"]
    assert result["tag"] == f"bouncer:{result['model_version']}" != deployment.trained_demo.result.tag
    assert result["previous_version"] == deployment.original_version
    assert set(result["previous_metrics"]) >= {"test_accuracy", "test_loss"}
    assert "test_accuracy" in result["metrics"]
    assert result["epochs_run"] == 1 and result["mlflow_run_id"] and result["data_version"]
    low, high = result["test_accuracy_interval"]
    assert low <= result["metrics"]["test_accuracy"] <= high
    # both models on 200 test images: a 1-epoch and a 2-epoch model may or may not be told apart; if not, it says so
    assert result["promotion_warning"] is None or "cannot tell the two models apart" in result["promotion_warning"]
    assert result["bento_tag"] and result["bento_tag"] in result["bento_message"]

    deadline = time.monotonic() + 10
    while (version := _predict(url, deployment.image()).json()["model_version"]) != result["model_version"]:
        assert time.monotonic() < deadline, f"predict still answers with {version}"
        time.sleep(0.5)
    assert _serving(url) == [result["model_version"]]

    progress = _progress(url)
    assert progress["state"] == "succeeded" and progress["phase"] == "done"
    assert progress["run_id"] == running[0]["run_id"]
    assert progress["result"]["model_version"] == result["model_version"]
    assert progress["error"] is None and progress["elapsed_s"] > 0
    assert progress["epochs"] == 1 and progress["epoch"] == 1 and len(progress["history"]) == 1


def test_the_training_log_has_no_tensorflow_noise(training: TrainingRun) -> None:
    """The child's log is what a failed training shows: TensorFlow's start-up lines would bury the error."""
    assert "registered bouncer:" in training.log
    assert [line for line in training.log.splitlines() if any(n in line for n in TENSORFLOW_NOISE)] == []


def test_predict_keeps_answering_while_training(deployment: Deployment, training: TrainingRun) -> None:
    assert len(training.predictions) >= 3, training.predictions
    assert [status for status, _ in training.predictions] == [200] * len(training.predictions)
    # the new version serves only once promoted, and from then on only it
    versions = [version for _, version in training.predictions]
    assert versions[0] == deployment.original_version
    switched = [v for v in versions if v != deployment.original_version]
    assert versions == [deployment.original_version] * (len(versions) - len(switched)) + switched


def test_promote_rolls_back_at_once(deployment: Deployment, training: TrainingRun) -> None:
    url, new_version = deployment.url, training.result.json()["model_version"]
    original = deployment.original_version

    response = _post(url, "promote", {"version": original, "reason": "rollback"}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"version": original, "tag": f"bouncer:{original}", "previous_version": new_version}
    assert _predict(url, deployment.image()).json()["model_version"] == original
    assert _serving(url) == [original]

    unknown = _post(url, "promote", {"version": "nosuchversion"}, headers=AUTH)
    assert unknown.status_code == 404 and "nosuchversion" in unknown.text
    assert _serving(url) == [original]

    forward = _post(url, "promote", {"version": new_version, "reason": "roll forward"}, headers=AUTH)
    assert forward.status_code == 200, forward.text
    assert _predict(url, deployment.image()).json()["model_version"] == new_version
    assert _serving(url) == [new_version]


def test_restart_keeps_labels_and_the_promoted_version(deployment: Deployment, training: TrainingRun) -> None:
    new_version = training.result.json()["model_version"]
    promoted = _post(deployment.url, "promote", {"version": new_version, "reason": "before restart"}, headers=AUTH)
    assert promoted.status_code == 200, promoted.text
    image_id = _post(deployment.url, "images", {"split": "train", "label": "cat", "limit": 1}).json()[0]["image_id"]
    relabel = _post(deployment.url, "relabel", {"image_ids": [image_id], "label": "sheep"}, headers=AUTH)
    assert relabel.status_code == 200, relabel.text

    deployment.restart()
    url = deployment.url
    sheep = _post(url, "images", {"split": "train", "label": "sheep", "limit": 10_000}).json()
    assert image_id in {i["image_id"] for i in sheep}
    assert _post(url, "history", {"image_id": image_id}).json()[0]["event_id"] == relabel.json()["event_id"]
    assert _predict(url, deployment.image()).json()["model_version"] == new_version
    assert _serving(url) == [new_version]
    assert _progress(url)["state"] == "succeeded"  # the last run's outcome survives the restart too


def register_copy(tag: str) -> str:
    """A new version with the files of ``tag``: cheap, and it becomes ``latest`` in the store."""
    import bentoml

    source = bentoml.models.get(tag)
    with bentoml.models.create(source.tag.name, metadata=dict(source.info.metadata)) as model:
        for path in Path(source.path).iterdir():
            if path.name != "model.yaml":
                shutil.copy2(path, model.path_of(path.name))
    return str(model.tag)


def test_the_rebuilt_bento_serves_the_new_version(
    deployment: Deployment, training: TrainingRun, tmp_path: Path
) -> None:
    import bentoml

    from training.labels.migrate import head_revision

    result = training.result.json()
    revisions = "training/labels/migrations/versions"
    shipped = Path(bentoml.bentos.get(result["bento_tag"]).path_of("src")) / revisions
    assert {p.name for p in shipped.glob("*.py")} == {p.name for p in (PROJECT / revisions).glob("*.py")}
    newer = register_copy(deployment.trained_demo.result.tag)  # the bento must not serve whatever is latest
    data_dir = copy_demo_data(deployment.trained_demo, tmp_path / "data")  # no promotion recorded here
    with closing(sqlite3.connect(data_dir / "labels.db")) as database, database:
        database.execute("DROP TABLE alembic_version")  # as a database from before migrations: the bento stamps it
    env = {"BOUNCER_DATA_DIR": str(data_dir), "BOUNCER_MLFLOW_DIR": str(tmp_path / "mlruns")}
    with running_server(deployment.trained_demo, tmp_path, bento=result["bento_tag"], **env) as url:
        answer = _predict(url, deployment.image())
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == result["model_version"] != newer.split(":")[1]
        assert _serving(url) == [result["model_version"]]
        assert httpx.get(f"{url}/docs.json", timeout=10).json()["info"]["title"] == "Bouncer"  # not the bento's README
    with closing(sqlite3.connect(data_dir / "labels.db")) as database:
        assert database.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]


def test_the_bento_installs_the_pins_pip_installs(training: TrainingRun) -> None:
    """The bento's requirements.in is our pins, and the lock BentoML resolved from it satisfies each one."""
    import bentoml
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from tests.code.test_packaging import setuptools_dependencies

    def requirements(path: Path) -> list[Requirement]:
        lines = path.read_text().splitlines()
        return [Requirement(line) for line in lines if line.strip() and not line.startswith(("#", "-"))]

    python = Path(bentoml.bentos.get(training.result.json()["bento_tag"]).path) / "env" / "python"
    pins = [Requirement(line) for line in setuptools_dependencies()]
    assert {str(pin) for pin in pins} <= {str(req) for req in requirements(python / "requirements.in")}
    locked = {canonicalize_name(req.name): req for req in requirements(python / "requirements.txt")}
    for pin in pins:
        (version,) = [spec.version for spec in locked[canonicalize_name(pin.name)].specifier]
        assert pin.specifier.contains(version, prereleases=True), f"the bento locks {pin.name} {version}, not {pin}"


def _wait_for(condition: Any, what: str, timeout: float = TRAIN_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.5)
    return value


def test_cancel_stops_the_training_and_changes_nothing(deployment: Deployment, training: TrainingRun) -> None:
    from mlflow.tracking import MlflowClient

    url = deployment.url
    serving, versions = _serving(url), {m["version"] for m in _post(url, "models", {}).json()}
    submit = httpx.post(f"{url}/train/submit", json={"epochs": 200, "force": True}, headers=AUTH, timeout=30)
    assert submit.status_code == 200, submit.text
    task_id = submit.json()["task_id"]
    _wait_for(lambda: (p := _progress(url))["state"] == "running" and p["phase"] == "training", "the training phase")

    assert httpx.put(f"{url}/train/cancel", params={"task_id": task_id}, timeout=30).status_code == 401
    other = httpx.put(f"{url}/train/cancel", params={"task_id": "not-this-one"}, headers=AUTH, timeout=30)
    assert other.status_code == 409 and _progress(url)["state"] == "running"
    canceled = httpx.put(f"{url}/train/cancel", params={"task_id": task_id}, headers=AUTH, timeout=60)
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"

    status = _wait_for(
        lambda: (
            (s := httpx.get(f"{url}/train/status", params={"task_id": task_id}, timeout=30).json())["status"]
            not in {"pending", "in_progress"}
            and s
        ),
        "the task to end",
        timeout=60,
    )
    assert status["status"] == "canceled"  # BentoML's store said "failed"
    answer = httpx.get(f"{url}/train/get", params={"task_id": task_id}, timeout=30)
    assert answer.status_code == 409 and "canceled" in answer.json()["error"]
    progress = _progress(url)
    assert progress["state"] == "canceled" and "canceled" in progress["error"]
    assert _serving(url) == serving
    assert {m["version"] for m in _post(url, "models", {}).json()} == versions  # nothing half-registered
    client = MlflowClient(f"sqlite:///{deployment.root / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("bouncer").experiment_id, order_by=["start_time DESC"])
    assert runs[0].info.status == "FAILED" and all(r.info.status != "RUNNING" for r in runs)

    again = httpx.post(f"{url}/train/submit", json={"epochs": 1}, headers=AUTH, timeout=30)
    assert again.status_code == 200, again.text  # the lock went with the canceled child
    _wait_for(lambda: _progress(url)["phase"] in PHASES, "the next training's child to start", timeout=60)
    # at once, while the child is still importing: it used to die of the signal and read "failed" (a 500)
    stop = httpx.put(f"{url}/train/cancel", params={"task_id": again.json()["task_id"]}, headers=AUTH, timeout=60)
    assert stop.status_code == 200, stop.text
    ended = _wait_for(
        lambda: (
            (s := httpx.get(f"{url}/train/status", params={"task_id": again.json()["task_id"]}).json())["status"]
            not in {"pending", "in_progress"}
            and s
        ),
        "the second task to end",
        timeout=60,
    )
    assert ended["status"] == "canceled", ended
    early = httpx.get(f"{url}/train/get", params={"task_id": again.json()["task_id"]}, timeout=30)
    assert early.status_code == 409 and "canceled" in early.json()["error"], early.text
    assert _progress(url)["state"] == "canceled"


def test_the_synchronous_train_route_trains_nothing(deployment: Deployment) -> None:
    """POST /train ran a whole training inside the request: no task id, no cancel, a 504 after 300 s."""

    def progress() -> dict[str, object]:  # elapsed_s grows while an earlier test's training runs
        return {k: v for k, v in _progress(deployment.url).items() if k != "elapsed_s"}

    before = progress()
    response = httpx.post(f"{deployment.url}/train", json={"epochs": 1}, headers=AUTH, timeout=30)
    assert response.status_code == 404 and "/train/submit" in response.json()["error"]
    assert progress() == before
    assert "/train" not in httpx.get(f"{deployment.url}/docs.json", timeout=30).json()["paths"]
