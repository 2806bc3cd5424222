"""A throw-away workspace for a benchmark: its own data folder, model store and MLflow store, never the user's."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SERVICE = "bento_service.service:Bouncer"
SMALL_DEMO = "DemoSpec(per_class_limit=200, impostor_count=20)"


@contextmanager
def workspace(keep_in: Path | None, *, prefix: str) -> Iterator[Path]:
    """A temporary folder, or ``keep_in`` (created, kept afterwards) when the user wants to look at it later."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp) if keep_in is None else keep_in.resolve()
        root.mkdir(parents=True, exist_ok=True)
        yield root


@contextmanager
def serving(port: int, env: Mapping[str, str], log: Path, *, timeout: float = 120) -> Iterator[subprocess.Popen[bytes]]:
    """A real `bentoml serve` of the project's service on ``port``, ready; its process (stopped with its tree after)."""
    from training.jobs.processes import bentoml_serve_command, running

    with running(
        bentoml_serve_command(SERVICE, port),
        ready_url=f"http://127.0.0.1:{port}/readyz",
        log=log,
        env=env,
        cwd=PROJECT,
        timeout=timeout,
    ) as process:
        yield process


def isolated_env(root: Path) -> dict[str, str]:
    """The settings that point every store into ``root``."""
    return {
        "BENTOML_HOME": str(root / "bentoml"),
        "BOUNCER_DATA_DIR": str(root / "data"),
        "BOUNCER_MLFLOW_DIR": str(root / "mlruns"),
    }


def train_throwaway(
    env: Mapping[str, str],
    epochs: int | None,
    *,
    demo: str = SMALL_DEMO,
    extra_env: Mapping[str, str] | None = None,
    without_class: str | None = None,
) -> str:
    """Write a demo (``demo``: a DemoSpec expression for the silhouettes, a PhotoDemoSpec one for the
    photos; ``without_class``: minus that class's folders) and train once, in a child process (TensorFlow
    stays out of the benchmark's own process); ``epochs`` None is the settings' recipe. Returns the model tag."""
    write = "write_photo_dataset" if demo.startswith("PhotoDemoSpec") else "write_demo_dataset"
    code = (
        "import shutil\n"
        "from training.data.demo_photos import PhotoDemoSpec, write_photo_dataset\n"
        "from training.data.demo_silhouettes import DemoSpec, write_demo_dataset\n"
        "from training.pipeline.training_run import run_training\n"
        "from training.settings import get_settings\n"
        "s = get_settings()\n"
        f"{write}(s.data_dir, {demo})\n"
        f"for split in s.splits if {without_class!r} else ():\n"
        f"    shutil.rmtree(s.data_dir / split / {without_class!r})\n"
        f"print(run_training(s, epochs={epochs}).tag)\n"
    )
    child_env = {**os.environ, **env, **(extra_env or {})}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, env=child_env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return done.stdout.strip().splitlines()[-1]


def model_to_measure(root: Path, tag: str | None, *, epochs: int = 1) -> tuple[dict[str, str], str]:
    """The environment and model a benchmark uses: ``tag`` in the user's stores, else a throw-away one in ``root``."""
    if tag is not None:
        return dict(os.environ), tag
    env = {**os.environ, **isolated_env(root)}
    print("writing the demo data and training a throw-away model ...", flush=True)
    return env, train_throwaway(env, epochs)
