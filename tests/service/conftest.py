"""A real `bentoml serve` process on a free port, serving the tiny trained demo model."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import TrainedDemo

PROJECT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SERVICE = "bento_service.service:Bouncer"
# Small caps on the shared server so the size refusals are tested without megabytes of uploads.
UPLOAD_CAP = 200_000
REQUEST_CAP = 1_000_000


@contextmanager
def running_server(
    trained_demo: TrainedDemo, log_dir: Path, *, bento: str | None = None, **extra_env: str
) -> Iterator[str]:
    """Start `bentoml serve` with the demo's env (plus ``extra_env``); yield its URL; stop it.

    By default it serves the project's source with the demo model; with ``bento`` (a tag
    in the store) it serves that built bento and the model it carries, from outside the project.
    """
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    env = {**os.environ, **trained_demo.env, "BOUNCER_MODEL_TAG": trained_demo.result.tag, **extra_env}
    if bento is not None:
        env.pop("BOUNCER_MODEL_TAG")
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [bentoml, "serve", bento or SERVICE, "--port", str(port), "--host", "127.0.0.1"],
            cwd=PROJECT if bento is None else log_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown stops every worker it forked
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bentoml serve not ready after 120s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's group, SIGKILL whatever is left after 30 s: no orphaned workers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def server(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    caps = {"BOUNCER_MAX_UPLOAD_BYTES": str(UPLOAD_CAP), "BOUNCER_MAX_REQUEST_BYTES": str(REQUEST_CAP)}
    with running_server(trained_demo, tmp_path_factory.mktemp("server"), **caps) as url:
        yield url
