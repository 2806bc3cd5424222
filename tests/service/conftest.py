"""A real `bentoml serve` process on a free port, serving the tiny trained demo model."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import TrainedDemo
from training.jobs import processes
from training.jobs.processes import free_port

PROJECT = Path(__file__).resolve().parents[2]


SERVICE = "bento_service.service:Bouncer"
# Small caps on the shared server so the size refusals are tested without megabytes of uploads.
UPLOAD_CAP = 200_000
REQUEST_CAP = 1_000_000


def copy_demo_data(trained_demo: TrainedDemo, target: Path) -> Path:
    """The demo's images and label DB (copied with SQLite's backup API, safe next to a live server)."""
    source = trained_demo.settings.data_dir
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("labels.db*", ".bouncer"))
    with closing(sqlite3.connect(source / "labels.db")) as src, closing(sqlite3.connect(target / "labels.db")) as dst:
        src.backup(dst)
    return target


@contextmanager
def running_server(
    trained_demo: TrainedDemo, log_dir: Path, *, bento: str | None = None, **extra_env: str
) -> Iterator[str]:
    """Start `bentoml serve` with the demo's env (plus ``extra_env``); yield its URL; stop it.

    By default it serves the project's source with the demo model; with ``bento`` (a tag
    in the store) it serves that built bento and the model it carries, from outside the project.
    """
    port = free_port()
    env = {**os.environ, **trained_demo.env, "BOUNCER_MODEL_TAG": trained_demo.result.tag, **extra_env}
    if bento is not None:
        env.pop("BOUNCER_MODEL_TAG")
    url = f"http://127.0.0.1:{port}"
    with processes.running(
        processes.bentoml_serve_command(bento or SERVICE, port),
        ready_url=f"{url}/readyz",
        log=log_dir / f"serve-{port}.log",
        env=env,
        cwd=PROJECT if bento is None else log_dir,
        timeout=120,
    ):
        yield url


@pytest.fixture(scope="session")
def server(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    caps = {"BOUNCER_MAX_UPLOAD_BYTES": str(UPLOAD_CAP), "BOUNCER_MAX_REQUEST_BYTES": str(REQUEST_CAP)}
    with running_server(trained_demo, tmp_path_factory.mktemp("server"), **caps) as url:
        yield url


class Deployment:
    """A server on its own copy of the demo data; ``restart`` starts a new one on the same copy."""

    def __init__(self, trained_demo: TrainedDemo, root: Path, *, token: str, **extra_env: str) -> None:
        self.trained_demo = trained_demo
        self.root = root
        self.data_dir = copy_demo_data(trained_demo, root / "data")
        self.env = {
            "BOUNCER_DATA_DIR": str(self.data_dir),
            "BOUNCER_MLFLOW_DIR": str(root / "mlruns"),
            "BOUNCER_API_TOKEN": token,
        }
        self.env.update(extra_env)
        self.original_version = trained_demo.result.tag.split(":", 1)[1]
        self._stack = ExitStack()
        self.url = ""

    def start(self) -> None:
        self.url = self._stack.enter_context(running_server(self.trained_demo, self.root, **self.env))

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        self._stack.close()
        self._stack = ExitStack()

    def image(self, split: str = "test", label: str = "dog") -> Path:
        return sorted((self.data_dir / split / label).glob("*.png"))[0]


def multipart(
    field: str, data: bytes, *, filename: str | None = None, content_type: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """A one-part multipart body written by hand, and its headers: a file part (``filename``) or a text value.

    httpx always declares a content type for a file (it guesses one from the name); this
    can leave it out, as some clients do.
    """
    disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"Content-Disposition: {disposition}\r\n" + (f"Content-Type: {content_type}\r\n" if content_type else "")
    body = b"--bouncer-test\r\n" + head.encode() + b"\r\n" + data + b"\r\n--bouncer-test--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=bouncer-test"}


def assert_same_answer(got: object, expected: object, *, tolerance: float = 1e-6, where: str = "answer") -> None:
    """The same JSON document, floats (probabilities, scores, distances) within ``tolerance``."""
    if isinstance(expected, float) and not isinstance(got, bool):
        assert got == pytest.approx(expected, abs=tolerance), where
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key, value in expected.items():
            assert_same_answer(got[key], value, tolerance=tolerance, where=f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same_answer(a, b, tolerance=tolerance, where=f"{where}[{i}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def post(server: str, endpoint: str, payload: dict) -> httpx.Response:
    return httpx.post(f"{server}/{endpoint}", json=payload, timeout=60)


def ok(server: str, endpoint: str, payload: dict) -> list | dict:
    """The JSON answer of a call that must succeed."""
    response = post(server, endpoint, payload)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def undo_after(server: str) -> Iterator[list[int]]:
    """Events the test records; undone afterwards so the shared server's labels stay as they were."""
    events: list[int] = []
    yield events
    for event_id in reversed(events):
        assert post(server, "undo", {"event_id": event_id}).status_code == 200
