"""Two replicas, one truth: two `bentoml serve` over one PostgreSQL label database and one model store.

Each replica has its own data folder (as on two machines: the train task's file lock
is not shared), so what they agree on comes through the database alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from tests.conftest import TrainedDemo, eventually
from tests.service.conftest import PROJECT, copy_demo_data, running_server
from training.labels.store import open_store
from training.labels.sync import import_folder

TOKEN = "replica-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLL_SECONDS = 1


def _copy_version(trained_demo: TrainedDemo) -> str:
    """A second version in the shared model store (the same weights under a new tag), to promote."""
    script = textwrap.dedent(
        f"""
        import shutil, bentoml
        source = bentoml.models.get({trained_demo.result.tag!r})
        with bentoml.models.create(source.tag.name, metadata=dict(source.info.metadata)) as model:
            shutil.copytree(source.path, model.path, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("model.yaml"))
        print(model.tag)
        """
    )
    env = {**os.environ, **trained_demo.env, "PYTHONPATH": str(PROJECT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def _post(url: str, endpoint: str, body: dict, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/{endpoint}", json=body, timeout=60, **kwargs)


def test_two_replicas_on_one_postgresql_database_agree(
    trained_demo: TrainedDemo, tmp_path: Path, postgres_database: str
) -> None:
    folders = [copy_demo_data(trained_demo, tmp_path / name / "data") for name in ("a", "b")]
    settings = trained_demo.settings.model_copy(update={"data_dir": folders[0], "database_url": postgres_database})
    with open_store(settings) as store:
        import_folder(settings, store)
    new_version = _copy_version(trained_demo)

    with ExitStack() as stack:
        a, b = (
            stack.enter_context(
                running_server(
                    trained_demo,
                    folder.parent,
                    BOUNCER_DATA_DIR=str(folder),
                    BOUNCER_MLFLOW_DIR=str(folder.parent / "mlruns"),
                    BOUNCER_DATABASE_URL=postgres_database,
                    BOUNCER_API_TOKEN=TOKEN,
                    BOUNCER_MODEL_POLL_SECONDS=str(POLL_SECONDS),
                    BOUNCER_WORKERS="1",
                )
            )
            for folder in folders
        )

        # a relabel through one is seen by the other at once
        image_id = _post(a, "images", {"split": "train", "label": "horse", "limit": 1}).json()[0]["image_id"]
        relabel = _post(a, "relabel", {"image_ids": [image_id], "label": "cow", "reason": "r"}, headers=AUTH)
        assert relabel.status_code == 200, relabel.text
        assert (
            _post(b, "history", {"image_id": image_id, "limit": 1}).json()[0]["event_id"] == relabel.json()["event_id"]
        )
        assert image_id in {
            i["image_id"] for i in _post(b, "images", {"split": "train", "label": "cow", "limit": 10_000}).json()
        }

        # concurrent relabels of the same images through both: every acknowledged one recorded exactly once
        targets = [i["image_id"] for i in _post(a, "images", {"split": "train", "label": "bear", "limit": 6}).json()]
        acknowledged: list[int] = []
        failures: list[str] = []

        def hammer(url: str, labels: tuple[str, str]) -> None:
            for round_ in range(8):
                answer = _post(url, "relabel", {"image_ids": targets, "label": labels[round_ % 2]}, headers=AUTH)
                if answer.status_code != 200:
                    failures.append(answer.text)
                elif answer.json()["event_id"] is not None:
                    acknowledged.append(answer.json()["event_id"])

        threads = [
            threading.Thread(target=hammer, args=(a, ("cat", "dog"))),
            threading.Thread(target=hammer, args=(b, ("zebra", "bear"))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        history = _post(b, "history", {"limit": 10_000}).json()
        recorded = [e["event_id"] for e in history if e["event_id"] in set(acknowledged)]
        assert sorted(recorded) == sorted(acknowledged) and len(set(recorded)) == len(recorded)
        last = max(acknowledged)
        last_label = next(e for e in history if e["event_id"] == last)["changes"][0]["new_label"]
        for url in (a, b):
            labels = {
                i["image_id"]: i["label"] for i in _post(url, "images", {"split": "train", "limit": 10_000}).json()
            }
            assert {labels[t] for t in targets} == {last_label}

        # a promotion through one is served by both within the poll interval
        image = sorted((folders[1] / "test" / "dog").glob("*.png"))[0]
        promoted = _post(a, "promote", {"version": new_version.split(":", 1)[1]}, headers=AUTH)
        assert promoted.status_code == 200, promoted.text
        started = time.monotonic()

        def serves_new(url: str) -> bool:
            files = {"image": (image.name, image.read_bytes(), "image/png")}
            answer = httpx.post(f"{url}/predict", files=files, timeout=30).json()
            return answer["model_version"] == new_version.split(":", 1)[1]

        assert eventually(lambda: serves_new(a) and serves_new(b), timeout=POLL_SECONDS + 10)
        print(f"\npromotion through one replica served by both after {time.monotonic() - started:.1f} s")

        # one training across both replicas: the lock lives in the database
        submit = _post(a, "train/submit", {"epochs": 200, "force": True}, headers=AUTH)
        assert submit.status_code == 200, submit.text
        task_id = submit.json()["task_id"]

        def a_is_training() -> bool:  # its child holds the database's lock from before "importing"
            progress = _post(a, "train_progress", {}).json()
            return progress["state"] == "running" and progress["phase"] not in ("starting", None)

        try:
            assert eventually(a_is_training, timeout=60, interval=0.2)
            refused = _post(b, "train/submit", {"epochs": 1}, headers=AUTH)
            assert refused.status_code == 409 and "another replica" in refused.json()["error"], refused.text
            assert _post(b, "train_progress", {}).json()["state"] == "idle"  # nothing started there
        finally:
            httpx.put(f"{a}/train/cancel", params={"task_id": task_id}, headers=AUTH, timeout=60)
