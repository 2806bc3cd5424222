"""Two servers of two datasets on one machine: each keeps its own train task results (issue 22).

BentoML deletes its task result database whenever a server starts, and Bouncer once shared
one for every server on the machine: a second server wiped the first one's results.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TrainedDemo
from tests.service.conftest import Deployment

pytestmark = pytest.mark.slow

TOKEN = "two-servers"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def first(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(trained_demo, tmp_path_factory.mktemp("first"), token=TOKEN, BOUNCER_WORKERS="2")
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


def _status(url: str, task_id: str) -> httpx.Response:
    return httpx.get(f"{url}/train/status", params={"task_id": task_id}, timeout=30)


def _ended_task(url: str) -> str:
    """A train task of this server that has ended (started, then canceled as soon as its child runs)."""
    task_id = httpx.post(f"{url}/train/submit", json={"epochs": 1}, headers=AUTH, timeout=30).json()["task_id"]
    deadline = time.monotonic() + 120
    while httpx.put(f"{url}/train/cancel", params={"task_id": task_id}, headers=AUTH, timeout=60).status_code != 200:
        assert time.monotonic() < deadline, "the training never started"
        time.sleep(0.2)
    while _status(url, task_id).json()["status"] in {"pending", "in_progress"}:
        assert time.monotonic() < deadline, "the canceled task never ended"
        time.sleep(0.2)
    return task_id


def test_a_second_server_keeps_the_first_servers_task_results(
    first: Deployment, trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory
) -> None:
    task_id = _ended_task(first.url)
    assert _status(first.url, task_id).json()["status"] == "canceled"
    second = Deployment(trained_demo, tmp_path_factory.mktemp("second"), token=TOKEN)
    second.start()  # BentoML deletes the result database of the server it starts
    try:
        for _ in range(10):  # every worker of the first server still knows the task
            answer = _status(first.url, task_id)
            assert answer.status_code == 200 and answer.json()["status"] == "canceled", answer.text
        assert httpx.get(f"{first.url}/train/get", params={"task_id": task_id}, timeout=30).status_code == 409
        assert _status(second.url, task_id).status_code == 404  # neither sees the other's tasks
        own = _ended_task(second.url)
        assert _status(first.url, own).status_code == 404
        assert _status(second.url, own).json()["status"] == "canceled"
    finally:
        second.stop()
    assert (first.data_dir / ".bouncer" / "task_result.db").is_file()
