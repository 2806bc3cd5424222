"""One training across replicas: the advisory lock in a PostgreSQL label database, dropped when its holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import eventually
from training.jobs.protocol import ReplicaTrainingLock

PROJECT = Path(__file__).resolve().parents[2]


def test_one_holder_at_a_time_across_connections(postgres_database: str) -> None:
    first, second = ReplicaTrainingLock(postgres_database), ReplicaTrainingLock(postgres_database)
    assert first.shared and first.acquire()
    assert not second.acquire() and second.held_elsewhere()
    first.release()
    assert not second.held_elsewhere() and second.acquire()
    second.release()


def test_a_killed_holder_leaves_no_stale_lock(postgres_database: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from training.jobs.protocol import ReplicaTrainingLock
                lock = ReplicaTrainingLock({postgres_database!r})
                assert lock.acquire()
                print("held", flush=True)
                time.sleep(600)
                """
            ),
        ],
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        other = ReplicaTrainingLock(postgres_database)
        assert other.held_elsewhere()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        assert eventually(lambda: not other.held_elsewhere())  # the server ends the dead session
    finally:
        holder.kill()


def test_on_sqlite_the_folder_lock_is_the_only_one(tmp_path: Path) -> None:
    lock = ReplicaTrainingLock(f"sqlite:///{tmp_path / 'labels.db'}")
    assert not lock.shared and lock.acquire() and not lock.held_elsewhere()
