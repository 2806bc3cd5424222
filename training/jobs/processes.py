"""Child processes: start a server, wait until it answers, stop it and everything it started.

Tests, benchmarks and notebooks start `bentoml serve` (or a baseline server) this
way, and the train task's cancel stops its training the same way. Stopping kills the
whole process *tree*, found with psutil: BentoML's workers and dependency services
each start their own session, so killing the process group of `bentoml serve` left
them running and holding the port (issue 14). The tree is also noted once the server
is ready, so workers orphaned by a crashed parent are stopped too.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bentoml_serve_command(target: str, port: int) -> list[str]:
    """`bentoml serve TARGET` on loopback, with this interpreter's bentoml (no venv on PATH needed)."""
    return [sys.executable, "-m", "bentoml", "serve", target, "--port", str(port), "--host", "127.0.0.1"]


@contextmanager
def running(
    command: Sequence[str],
    *,
    ready_url: str,
    log: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = READY_TIMEOUT_S,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command``, wait until ``ready_url`` answers 200, yield the process; stop its whole tree after."""
    with log.open("w") as out:
        process = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    started: list[psutil.Process] = []
    try:
        wait_ready(process, ready_url, log, timeout=timeout)
        started = descendants(process.pid)
        yield process
    finally:
        stop_tree(process.pid, also=started)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_GRACE_S)


def wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(process.args)} exited:\n{log.read_text(errors='replace')[-4000:]}")  # type: ignore[arg-type]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.5)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_tree(pid: int, *, grace: float = STOP_GRACE_S, also: Sequence[psutil.Process] = (), reap: bool = True) -> None:
    """SIGTERM ``pid``, its descendants and ``also``; SIGKILL whatever is left after ``grace`` seconds.

    ``reap=False``: wait without collecting our own children's exit status, for a child
    an event loop awaits (``asyncio.create_subprocess_exec``). psutil's wait reaps a child
    of this process, and uvloop's ``child.wait()`` then never returns: a train task whose
    cancel reached the worker that started it hung for good.
    """
    processes = list({p.pid: p for p in [*also, *descendants(pid)]}.values())
    with contextlib.suppress(psutil.NoSuchProcess):
        processes.insert(0, psutil.Process(pid))
    wait = psutil.wait_procs if reap else _wait_without_reaping
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = wait(processes, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    wait(alive, timeout=grace)


def _wait_without_reaping(
    processes: Sequence[psutil.Process], *, timeout: float
) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(gone, alive) after at most ``timeout`` s; a zombie counts as gone and is left to its parent to reap."""
    deadline = time.monotonic() + timeout
    alive = list(processes)
    while True:
        alive = [p for p in alive if not _gone(p)]
        if not alive or time.monotonic() >= deadline:
            return [p for p in processes if p not in alive], alive
        time.sleep(0.05)


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
