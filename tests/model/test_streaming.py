"""A training that streams its images from a decoded file learns what one holding them in memory learns.

Issue 26: a dataset larger than BOUNCER_INPUT_MEMORY_MB is decoded once into a file and
read a batch at a time. The seeds, the split, the batches and so the weights are the
same as in memory, so every metric of the run is too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHAPES, shape_image
from training.data.decoded import PARTIAL_SUFFIX, DecodedFile, InMemoryImages, decode_to_file, streams
from training.settings import Settings


def _images_on_disk(folder: Path, count: int) -> list[str]:
    from PIL import Image

    paths = []
    for i in range(count):
        path = folder / f"{SHAPES[i % 3]}_{i}.png"
        Image.fromarray(shape_image(SHAPES[i % 3], i)).save(path)
        paths.append(path.name)
    return paths


def test_a_decoded_file_gives_the_rows_asked_for(tmp_path: Path) -> None:
    from training.data.images import load_model_input

    paths = _images_on_disk(tmp_path, 12)
    decoded = decode_to_file(tmp_path / "decoded", tmp_path, paths, ["x"] * 12, 32, max_pixels=10**7)
    expected = np.stack([load_model_input(tmp_path / p, 32, max_pixels=10**7) for p in paths])
    assert len(decoded) == 12 and decoded.image_size == 32
    rows = np.array([7, 0, 11, 3])
    assert np.array_equal(decoded.take(rows), expected[rows])
    assert np.array_equal(decoded.take(np.arange(2, 9)), expected[2:9])  # a run: one read
    assert np.array_equal(np.load(decoded.path, mmap_mode="r"), expected)  # a plain .npy


def test_a_partial_decoded_file_of_a_dead_process_is_removed_never_read(tmp_path: Path) -> None:
    paths = _images_on_disk(tmp_path, 6)
    folder = tmp_path / "decoded"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stray = folder / f"whatever.{int(dead.stdout)}{PARTIAL_SUFFIX}"
    stray.write_bytes(b"half an array")
    alive = folder / f"other.{os.getpid()}{PARTIAL_SUFFIX}"  # another training decoding now: left alone
    alive.write_bytes(b"in progress")
    decoded = decode_to_file(folder, tmp_path, paths, ["x"] * 6, 32, max_pixels=10**7)
    assert not stray.exists() and alive.exists()
    assert len(DecodedFile(decoded.path)) == 6


def test_auto_streams_what_does_not_fit_the_memory_setting(settings: Settings) -> None:
    budget = settings.model_copy(update={"input_memory_mb": 16})
    assert not streams(budget, 5_000, 32)  # 15 MB of pixels
    assert streams(budget, 6_000, 32)  # 18 MB
    assert streams(budget.model_copy(update={"train_input": "stream"}), 10, 32)
    assert not streams(budget.model_copy(update={"train_input": "memory"}), 10**6, 160)


@pytest.mark.slow
def test_training_from_a_file_learns_the_same_weights_as_from_memory(tmp_path: Path) -> None:
    from training.model.fit import TrainConfig, train_classifier

    paths = _images_on_disk(tmp_path, 36)
    decoded = decode_to_file(tmp_path / "decoded", tmp_path, paths, ["x"] * 36, 32, max_pixels=10**7)
    labels = [SHAPES[i % 3] for i in range(36)]
    config = TrainConfig(image_size=32, epochs=2, batch_size=8, augment="light", seed=3, min_steps=0)
    in_memory = train_classifier(InMemoryImages(decoded.take(np.arange(36))), labels, list(SHAPES), config)
    streamed = train_classifier(decoded, labels, list(SHAPES), config)
    assert streamed.history == in_memory.history
    assert streamed.validation_accuracy == in_memory.validation_accuracy
    for a, b in zip(streamed.model.get_weights(), in_memory.model.get_weights(), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.slow
def test_a_streamed_run_registers_the_same_metrics_as_an_in_memory_one(
    shapes_dataset: Path, settings: Settings
) -> None:
    """The whole run: train, validate, export, evaluate, embed, OOD, out-of-fold models, neighbours."""
    import bentoml

    from training.pipeline.training_run import run_training

    results = {}
    for how in ("memory", "stream"):
        run = settings.model_copy(update={"train_input": how, "out_of_fold_folds": 2})
        results[how] = run_training(run, epochs=2)
    memory, stream = results["memory"], results["stream"]
    assert stream.metrics == memory.metrics
    assert bentoml.models.get(stream.tag).info.metadata["train_input"] == "stream"
    assert bentoml.models.get(memory.tag).info.metadata["train_input"] == "memory"
    assert list((settings.runtime_dir / "decoded").glob("*.npy"))  # the file the streamed run read
    assert not list((settings.runtime_dir / "checkpoints").glob("*/*"))  # registered: nothing left to resume


KILL_AT_THE_SECOND_FOLD = """
import os, signal
from training.pipeline.training_run import run_training
from training.settings import Settings

def sink(progress):
    if progress.message == "out-of-fold model 2/3":  # the first fold model is done: a real kill, mid-run
        os.kill(os.getpid(), signal.SIGKILL)

run_training(Settings(), epochs=1, sink=sink)
"""


@pytest.mark.slow
def test_a_training_killed_midway_leaves_no_version_and_a_rerun_resumes_from_the_finished_models(
    shapes_dataset: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import bentoml

    from training.pipeline.training_run import run_training

    def versions() -> list[str]:
        return [str(m.tag) for m in bentoml.models.list() if m.tag.name == settings.model_name]

    before = versions()
    env = {**os.environ, "BOUNCER_TRAIN_INPUT": "stream", "BOUNCER_OUT_OF_FOLD_FOLDS": "3"}
    child = subprocess.run([sys.executable, "-c", KILL_AT_THE_SECOND_FOLD], env=env, capture_output=True, text=True)
    assert child.returncode == -9, child.stderr[-2000:]

    assert versions() == before  # nothing registered, not even half
    (left,) = (settings.runtime_dir / "checkpoints").iterdir()
    assert sorted(p.name for p in left.iterdir()) == ["fold-1-of-3.npz", "main.json", "main.keras"]  # whole files only
    assert not list(settings.runtime_dir.rglob("*.partial"))

    rerun = settings.model_copy(update={"train_input": "stream", "out_of_fold_folds": 3})
    with caplog.at_level(logging.INFO, logger="training"):
        result = run_training(rerun, epochs=1)
    assert "resuming: the main model" in caplog.text and "resuming: fold 1/3" in caplog.text
    assert "resuming: fold 2/3" not in caplog.text  # unfinished: trained again
    assert "out-of-fold model 2/3: " in caplog.text and "out-of-fold model 1/3: " not in caplog.text
    assert result.tag in versions() and len(versions()) == len(before) + 1
    assert not list((settings.runtime_dir / "checkpoints").glob("*/*"))  # registered: nothing left to resume
