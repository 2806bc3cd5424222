"""One training run of the train task, in its own process (``python -m training.train_job``).

Running apart keeps TensorFlow's memory and CPU out of the serving workers (the
child is niced), and makes a crash a failed run rather than a dead worker.
Files in ``Settings.runtime_dir``:

- ``train.lock``: an ``flock`` held for the whole run; the kernel drops it when the
  holder dies, so "is a training running?" never goes stale.
- ``train_progress.json``: the latest :class:`TrainingProgress`, plus ``run_id``.
- ``train_result.json``: ``{run_id, state: succeeded|failed, result|error}``.
- ``train_job.json``: ``{run_id, task_id, pid}`` of the running child, so any worker can cancel it.
- ``train.log``: the child's stdout/stderr.

SIGTERM (a cancel) ends the child through :class:`TrainingCanceled`: the MLflow run is
closed as failed and the result reads ``canceled``; nothing is promoted.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.progress import JsonFileProgress, LogProgress, fan_out, write_json_atomic
from training.settings import Settings, get_settings
from training.tf_logs import import_tensorflow_quietly


class TrainingCanceled(BaseException):
    """Raised in the child by SIGTERM; a BaseException so no ``except Exception`` swallows it."""


@dataclass(frozen=True)
class JobFiles:
    lock: Path
    progress: Path
    result: Path
    log: Path
    job: Path

    @classmethod
    def of(cls, settings: Settings) -> JobFiles:
        root = settings.runtime_dir
        root.mkdir(parents=True, exist_ok=True)
        return cls(
            root / "train.lock",
            root / "train_progress.json",
            root / "train_result.json",
            root / "train.log",
            root / "train_job.json",
        )


class TrainingLock:
    """An exclusive, non-blocking flock: at most one training per runtime directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing our copy; a child that inherited the fd keeps the lock
            self.fd = None

    def is_held_elsewhere(self) -> bool:
        if self.fd is not None:
            return True
        if not self.acquire():
            return True
        self.release()
        return False


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--serving-tag", default=None)
    parser.add_argument("--actor", default="train-task")
    args = parser.parse_args(argv)

    settings = get_settings()
    os.nice(settings.train_niceness)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    files = JobFiles.of(settings)
    sink = fan_out(
        JsonFileProgress(files.progress, extra={"run_id": args.run_id}), LogProgress(logging.getLogger("bouncer"))
    )
    from training.retrain import retrain

    def cancel(signum: int, _frame: object) -> None:
        raise TrainingCanceled(f"canceled by request (signal {signum})")

    signal.signal(signal.SIGTERM, cancel)
    try:
        import_tensorflow_quietly()  # its start-up noise would bury a failure's message in train.log
        result = retrain(
            settings, serving_tag=args.serving_tag, epochs=args.epochs, force=args.force, actor=args.actor, sink=sink
        )
    except TrainingCanceled as exc:
        write_json_atomic(files.result, {"run_id": args.run_id, "state": "canceled", "error": str(exc)})
        return 1
    except Exception as exc:
        traceback.print_exc()
        write_json_atomic(
            files.result, {"run_id": args.run_id, "state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        )
        return 1
    write_json_atomic(files.result, {"run_id": args.run_id, "state": "succeeded", "result": result.as_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
