"""TrainRunner's state comes from files and an flock: a dead training reads as failed, never running forever."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.jobs.protocol import JobFiles
from training.jobs.runner import TrainingBusy, TrainingFailed, TrainRunner
from training.progress import TrainingProgress, write_json_atomic
from training.settings import Settings


@pytest.fixture
def runner(settings: Settings) -> TrainRunner:
    return TrainRunner(settings)


@pytest.fixture
def files(settings: Settings) -> JobFiles:
    return JobFiles.of(settings)


def write_progress(files: JobFiles, run_id: str, phase: str = "training") -> None:
    progress = TrainingProgress(phase=phase, epoch=1, epochs=3, started_at=time.time() - 5)
    write_json_atomic(files.progress, {**progress.as_dict(), "run_id": run_id})


@pytest.fixture
def lock_holder(files: JobFiles) -> Iterator[subprocess.Popen]:
    """Another process holding the training lock (as a training child does), until the test kills it."""
    code = textwrap.dedent(
        f"""
        import fcntl, os, time
        fd = os.open({str(files.lock)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(120)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process
    finally:
        process.kill()
        process.wait()


def test_idle_before_any_training(runner: TrainRunner) -> None:
    assert runner.status()["state"] == "idle"
    assert not runner.is_running()


def test_progress_without_result_or_lock_is_failed(runner: TrainRunner, files: JobFiles) -> None:
    write_progress(files, "run-1")
    status = runner.status()
    assert status["state"] == "failed" and "died" in status["error"]
    assert status["run_id"] == "run-1" and status["phase"] == "training"
    assert status["elapsed_s"] >= 0


def test_a_result_of_an_older_run_does_not_count(runner: TrainRunner, files: JobFiles) -> None:
    write_json_atomic(files.result, {"run_id": "run-0", "state": "succeeded", "result": {"model_version": "x"}})
    write_progress(files, "run-1")
    status = runner.status()
    assert status["state"] == "failed" and status["result"] is None


def test_the_matching_result_is_reported(runner: TrainRunner, files: JobFiles) -> None:
    write_progress(files, "run-1", phase="done")
    write_json_atomic(files.result, {"run_id": "run-1", "state": "succeeded", "result": {"model_version": "v1"}})
    status = runner.status()
    assert status["state"] == "succeeded" and status["result"] == {"model_version": "v1"} and status["error"] is None


def test_running_while_another_process_holds_the_lock_failed_once_it_dies(
    runner: TrainRunner, files: JobFiles, lock_holder: subprocess.Popen
) -> None:
    write_progress(files, "run-1")
    assert runner.is_running()
    status = runner.status()
    assert status["state"] == "running" and status["error"] is None
    assert status["elapsed_s"] >= 5
    with pytest.raises(TrainingBusy):
        asyncio.run(runner.run(epochs=1, force=False, serving_tag=None, actor="test"))
    assert runner.status()["run_id"] == "run-1"  # the refused run wrote nothing

    lock_holder.kill()  # the kernel drops the flock with the process
    lock_holder.wait()
    assert not runner.is_running()
    status = runner.status()
    assert status["state"] == "failed" and "died" in status["error"]


def fake_python(tmp_path: Path, body: str) -> Path:
    """A stand-in for `python -m training.jobs.child` that dies without writing a result."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def test_a_child_that_dies_is_reported_failed(
    runner: TrainRunner, files: JobFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go = tmp_path / "go"
    child = fake_python(tmp_path, f"while [ ! -e {go} ]; do sleep 0.05; done\nexit 3")
    monkeypatch.setattr(sys, "executable", str(child))

    async def scenario() -> dict:
        task = asyncio.create_task(runner.run(epochs=1, force=False, serving_tag="bouncer:v0", actor="test"))
        while not files.progress.exists():
            await asyncio.sleep(0.02)
        during = runner.status()
        with pytest.raises(TrainingBusy):
            await runner.run(epochs=1, force=False, serving_tag=None, actor="test")
        go.touch()
        with pytest.raises(TrainingFailed, match="exited with code 3 without a result"):
            await task
        return during

    during = asyncio.run(scenario())
    assert during["state"] == "running" and during["phase"] == "starting"
    assert not runner.is_running()
    status = runner.status()
    assert status["state"] == "failed" and "code 3" in status["error"]
    assert status["run_id"] == during["run_id"]


def test_stopping_a_child_an_event_loop_awaits_lets_its_wait_return() -> None:
    """The service's loop is uvloop: when the canceling thread reaped the child (psutil's wait, as
    ``reap=True`` still does), ``wait()`` never returned and the train task hung."""
    import threading

    import uvloop

    from training.jobs.processes import stop_tree

    async def start_stop_and_wait() -> int:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
        await asyncio.sleep(0.2)
        stopper = threading.Thread(target=stop_tree, args=(child.pid,), kwargs={"grace": 2, "reap": False})
        stopper.start()  # as the cancel endpoint does, from a request thread of the same process
        code = await asyncio.wait_for(child.wait(), timeout=10)
        stopper.join()
        return code

    assert uvloop.run(start_stop_and_wait()) < 0  # ended by a signal, and seen to end


def test_of_two_starts_at_once_exactly_one_is_let_through(runner: TrainRunner, settings: Settings) -> None:
    """Each claim from its own process, all released at once: the check and the claim are one step."""
    code = textwrap.dedent(
        """
        import sys, time
        from training.jobs.runner import TrainRunner
        from training.settings import Settings
        runner = TrainRunner(Settings())
        start = float(sys.argv[1])
        while time.time() < start:
            pass
        print(runner.claim_start() or "claimed")
        """
    )
    start = time.time() + 3
    children = [
        subprocess.Popen([sys.executable, "-c", code, str(start)], stdout=subprocess.PIPE, text=True) for _ in range(4)
    ]
    answers = sorted(child.communicate(timeout=60)[0].strip() for child in children)
    assert answers.count("claimed") == 1, answers
    assert runner.claim_start() is not None  # the claim holds until its task takes the lock or it is given back
    runner.release_claim()
    assert runner.claim_start() is None
