"""One training run of the train task, in its own process (``python -m training.jobs.child``).

Running apart keeps TensorFlow's memory and CPU out of the serving workers (the
child is niced), and makes a crash a failed run rather than a dead worker. It
reports through the files of :mod:`training.jobs.protocol`.

SIGTERM (a cancel) ends the child through :class:`TrainingCanceled`: the MLflow run is
closed as failed and the result reads ``canceled``; nothing is promoted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback

from training.jobs.protocol import REPLICA_BUSY, JobFiles, ReplicaTrainingLock, TrainingCanceled
from training.progress import JsonFileProgress, LogProgress, fan_out, write_json_atomic
from training.settings import get_settings
from training.tf_logs import import_tensorflow_quietly


def main(argv: list[str] | None = None) -> int:
    # First, before any slow import: a cancel during start-up must end as a cancel, not as a kill.
    canceled: list[str] = []

    def cancel(signum: int, _frame: object) -> None:
        canceled.append(f"canceled by request (signal {signum})")
        raise TrainingCanceled(canceled[0])

    signal.signal(signal.SIGTERM, cancel)
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
    from training.pipeline.retrain import retrain

    replicas = ReplicaTrainingLock(settings.label_db_url)
    if not replicas.acquire():  # another replica's child won the race since the service checked
        write_json_atomic(files.result, {"run_id": args.run_id, "state": "failed", "error": REPLICA_BUSY})
        return 1
    try:
        import_tensorflow_quietly()  # its start-up noise would bury a failure's message in train.log
        result = retrain(
            settings, serving_tag=args.serving_tag, epochs=args.epochs, force=args.force, actor=args.actor, sink=sink
        )
    except BaseException as exc:
        # Raised inside a TensorFlow step, the cancel can come back as another exception
        # (a TypeError was seen): the flag, not the exception's type, says it was a cancel.
        if not canceled and not isinstance(exc, Exception):
            raise
        if canceled:
            write_json_atomic(files.result, {"run_id": args.run_id, "state": "canceled", "error": canceled[0]})
            return 1
        traceback.print_exc()
        write_json_atomic(
            files.result, {"run_id": args.run_id, "state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        )
        return 1
    finally:
        replicas.release()
    write_json_atomic(files.result, {"run_id": args.run_id, "state": "succeeded", "result": result.as_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
