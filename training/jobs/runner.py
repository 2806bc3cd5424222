"""The service's side of the train task: start the child process, wait for it, cancel it, say how it is going.

State lives in files (see :mod:`training.jobs.protocol`), so every worker, and a
worker started after a crash, gives the same answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from typing import Any

import psutil

from training.errors import Conflict, quoted
from training.jobs.processes import stop_tree
from training.jobs.protocol import (
    LOCAL_BUSY,
    REPLICA_BUSY,
    JobFiles,
    ReplicaTrainingLock,
    TrainingLock,
    exclusive,
    read_json,
)
from training.pipeline.results import RetrainResult
from training.progress import TrainingProgress, write_json_atomic
from training.settings import SOURCE_ROOT, Settings

log = logging.getLogger(__name__)
# Probes (is_running) hold the lock for a moment; on a loaded machine a probe can be descheduled
# while holding it, so a start retries for up to 2 s before calling the lock busy.
ACQUIRE_ATTEMPTS = 100
# How long a start that was let through keeps others out before its task holds train.lock (a
# submitted task starts within a second; a loaded machine may take several).
CLAIM_S = 60.0
JUST_SUBMITTED = "a training was just submitted and is starting; watch it with train_progress"
CANCEL_GRACE_S = 10.0  # after SIGTERM, how long the child may take to close its MLflow run before SIGKILL


class TrainingBusy(Conflict, RuntimeError):
    pass


class TrainingFailed(RuntimeError):
    pass


class TrainingCanceled(Conflict, TrainingFailed):
    pass


class NotRunning(Conflict, LookupError):
    """No running training has the task id a cancel named."""


class TrainRunner:
    def __init__(self, settings: Settings) -> None:
        self.files = JobFiles.of(settings)
        self.settings = settings
        self.database_url = settings.label_db_url

    def is_running(self) -> bool:
        return TrainingLock(self.files.lock).is_held_elsewhere()

    def busy(self) -> str | None:
        """Why a new training cannot start now (here, or on another replica of the label database), or None."""
        if self.is_running():
            return LOCAL_BUSY
        if ReplicaTrainingLock(self.database_url).held_elsewhere():
            return REPLICA_BUSY
        return None

    def claim_start(self) -> str | None:
        """Why a new training cannot start now, or None after claiming the start for the caller.

        Atomic across this machine's workers: the check and the claim happen under one flock,
        and the claim holds until the task takes ``train.lock`` (:meth:`run`), the caller gives
        it back (:meth:`release_claim`), or CLAIM_S pass.
        """
        with exclusive(self.files.claim.with_suffix(".lock")):
            if busy := self.busy():
                return busy
            claim = read_json(self.files.claim) or {}
            if time.time() - float(claim.get("at", 0)) < CLAIM_S:
                return JUST_SUBMITTED
            write_json_atomic(self.files.claim, {"at": time.time(), "pid": os.getpid()})
        return None

    def release_claim(self) -> None:
        """Give back a claimed start whose task was not created (the submission was refused)."""
        self.files.claim.unlink(missing_ok=True)

    async def run(
        self, *, epochs: int | None, force: bool, serving_tag: str | None, actor: str, task_id: str | None = None
    ) -> RetrainResult:
        """Run one training to the end; its result, or TrainingBusy / TrainingFailed / TrainingCanceled."""
        lock = TrainingLock(self.files.lock)
        # is_running() probes by taking the lock for a moment: retry so a probe is not a "busy"
        for _ in range(ACQUIRE_ATTEMPTS):
            if lock.acquire():
                break
            await asyncio.sleep(0.02)
        else:
            raise TrainingBusy(LOCAL_BUSY)
        self.release_claim()  # the lock now keeps other starts out
        if await asyncio.to_thread(ReplicaTrainingLock(self.database_url).held_elsewhere):
            lock.release()
            raise TrainingBusy(REPLICA_BUSY)
        run_id = uuid.uuid4().hex[:12]
        started = time.time()
        command = [sys.executable, "-m", "training.jobs.child", "--run-id", run_id, "--actor", actor]
        command += ["--epochs", str(epochs)] if epochs else []
        command += ["--force"] if force else []
        command += ["--serving-tag", serving_tag] if serving_tag else []
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")])),
        }
        try:
            starting = TrainingProgress(phase="starting", message="starting the training process")
            write_json_atomic(self.files.progress, {**starting.as_dict(), "run_id": run_id})
            with self.files.log.open("w") as log:
                # The child inherits the locked fd: the lock lasts as long as either process lives.
                child = await asyncio.create_subprocess_exec(
                    *command, cwd=SOURCE_ROOT, env=env, stdout=log, stderr=log, pass_fds=(lock.fd,)
                )
                write_json_atomic(self.files.job, {"run_id": run_id, "task_id": task_id, "pid": child.pid})
                code = await child.wait()
            # Still under the lock: no next training can start and have its run taken for ours.
            outcome = await asyncio.to_thread(self._outcome, run_id, code, started)
        finally:
            lock.release()
        if outcome["state"] == "canceled":
            raise TrainingCanceled(outcome["error"])
        if outcome["state"] != "succeeded":
            raise TrainingFailed(f"{outcome['error']}\n{self._log_tail()}")
        return RetrainResult.of(outcome["result"])

    def _outcome(self, run_id: str, code: int, started: float) -> dict[str, Any]:
        """What the child reported, or what its end says if it could not (killed, canceled at start-up).

        A child that did not succeed may have been killed after the cancel's grace period
        (stuck in a TensorFlow step) and so never closed its MLflow run: it is closed here,
        before the task reads as ended.
        """
        outcome = read_json(self.files.result)
        if outcome is None or outcome.get("run_id") != run_id:
            if self._canceled(run_id):
                outcome = {"run_id": run_id, "state": "canceled", "error": "canceled by request"}
            else:
                error = f"the training process exited with code {code} without a result"
                outcome = {"run_id": run_id, "state": "failed", "error": error}
            write_json_atomic(self.files.result, outcome)
        if outcome["state"] != "succeeded":
            self._fail_orphaned_runs(started)
        return outcome

    def cancelable(self, task_id: str) -> psutil.Process:
        """The running training's process, if task ``task_id`` started it; NotRunning otherwise."""
        job = read_json(self.files.job) or {}
        if not self.is_running() or job.get("task_id") != task_id:
            raise NotRunning(f"no running training has task_id {quoted(task_id)}")
        try:
            child = psutil.Process(int(job["pid"]))
            if str(job.get("run_id")) not in child.cmdline():  # the pid was reused: not our child
                raise psutil.NoSuchProcess(child.pid)
        except psutil.NoSuchProcess:
            raise NotRunning(f"the training of task {quoted(task_id)} has already ended") from None
        return child

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Stop the running training started by task ``task_id``: SIGTERM, then SIGKILL after a grace period.

        NotRunning if no training runs, or the running one belongs to another task. The
        job file records the cancel first, so a child stopped before it could write its
        own result (SIGTERM during its start-up) still reads canceled, never failed.
        """
        child = self.cancelable(task_id)
        job = read_json(self.files.job) or {}
        write_json_atomic(self.files.job, {**job, "canceled": True})
        stop_tree(child.pid, grace=CANCEL_GRACE_S, reap=False)  # the task's own wait() collects it
        return {"task_id": task_id, "run_id": job.get("run_id"), "status": "canceled"}

    def _canceled(self, run_id: object) -> bool:
        job = read_json(self.files.job) or {}
        return job.get("run_id") == run_id and bool(job.get("canceled"))

    def status(self) -> dict[str, Any]:
        """Progress of the current or last run with ``state``: idle, running, succeeded, failed or canceled."""
        progress = read_json(self.files.progress)
        if progress is None:
            return {"state": "idle", "message": "no training has run yet"}
        outcome = read_json(self.files.result) or {}
        status: dict[str, Any] = {**progress, "result": None, "error": None}
        if self.is_running():
            status["state"] = "running"
        elif outcome.get("run_id") == progress.get("run_id"):
            status.update(state=outcome["state"], result=outcome.get("result"), error=outcome.get("error"))
        elif self._canceled(progress.get("run_id")):
            status.update(state="canceled", error="canceled by request")
        else:
            status.update(state="failed", error=self._record_death(progress))
        until = time.time() if status["state"] == "running" else float(progress.get("updated_at", time.time()))
        status["elapsed_s"] = round(until - float(progress.get("started_at", until)), 1)
        job = read_json(self.files.job) or {}
        status["task_id"] = job.get("task_id") if job.get("run_id") == progress.get("run_id") else None
        return status

    def _fail_orphaned_runs(self, started_at: float) -> bool:
        """End as FAILED the MLflow runs a dead child left RUNNING; False if MLflow could not be reached."""
        try:
            from training.pipeline.tracking import fail_orphaned_runs

            fail_orphaned_runs(self.settings, started_after=started_at - 5)
        except Exception:  # noqa: BLE001 - MLflow unreachable: the state is still right here
            log.exception("could not mark the ended training's MLflow run FAILED")
            return False
        return True

    def _record_death(self, progress: dict[str, Any]) -> str:
        """A child that died without a result (killed, out of memory): say so once, and end its MLflow run.

        Several workers may find the death at once; ending runs that are still RUNNING is
        idempotent, so each says the same.
        """
        error = "the training process died without a result (see train.log)"
        if self._fail_orphaned_runs(float(progress.get("started_at", 0))):
            error += "; its MLflow run is marked FAILED"
        write_json_atomic(self.files.result, {"run_id": progress.get("run_id"), "state": "failed", "error": error})
        return error

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.files.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
