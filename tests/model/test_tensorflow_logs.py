"""TensorFlow's start-up noise stays out of the console of a `bouncer` command that trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TENSORFLOW_NOISE, write_mixed_formats

pytestmark = pytest.mark.slow

BOUNCER = str(Path(sys.executable).parent / "bouncer")


def test_bouncer_train_prints_no_tensorflow_noise(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for split, count in (("train", 8), ("test", 2)):
        for kind in ("cross", "ring"):
            write_mixed_formats(data / split / kind, kind, count)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as in a user's shell
    env.update(BOUNCER_OUT_OF_FOLD_FOLDS="0", BOUNCER_MLFLOW_DIR=str(tmp_path / "mlruns"))
    done = subprocess.run(
        [BOUNCER, "-q", "--data-dir", str(data), "train", "--epochs", "1", "--image-size", "16"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if any(n in line for n in TENSORFLOW_NOISE)] == []
    assert '"tag": "bouncer:' in done.stdout
