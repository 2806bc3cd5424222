"""`bouncer score`: the shard format, and both engines scoring a folder exactly as serving would.

The shard and CLI-error tests are fast; the engine tests use the session's trained demo
model and start Ray once for the module (its start-up is most of their time).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import TrainedDemo
from training.cli import app
from training.data.folders import load_images
from training.labels.store import open_store
from training.model.scores import (
    MANIFEST_FILE,
    ScoreManifest,
    Scores,
    ScoresMismatch,
    check_manifest,
    clear_scores,
    default_scores_dir,
    iter_shards,
    new_manifest,
    read_scores,
    shard_name,
    write_manifest,
    write_shard,
)
from training.registry.serving import resolve_serving_tag
from training.registry.store import load_registered
from training.scoring.batches import list_images
from training.scoring.local import score_local
from training.settings import Settings

# The engines run the same graph on batches of other sizes and thread counts: float32 rounding only.
PROBABILITY_TOLERANCE = 1e-5
# Vectors (PCA of standardised embeddings) reach the hundreds, where one float32 step is ~1e-5..1e-4.
VECTOR_TOLERANCE = {"atol": 1e-4, "rtol": 1e-5}


def _shard(folder: Path, number: int, paths: list[str], *, tag: float) -> None:
    """A shard whose every value says which row it belongs to, to check rows stay together when sorted."""
    n = len(paths)
    ids = np.array([float(p.rsplit("/", 1)[1].split(".")[0]) for p in paths], np.float32)[:, None]
    write_shard(
        folder,
        number,
        paths=paths,
        sha256=[hashlib.sha256(p.encode()).hexdigest() for p in paths],
        probabilities=np.hstack([ids, np.full((n, 2), tag, np.float32)]),
        embeddings=np.repeat(ids, 5, axis=1),
        vectors=np.repeat(ids, 3, axis=1).astype(np.float64),  # stored as float32 whatever comes in
    )


def _manifest(tag: str, images: int, shards: int) -> ScoreManifest:
    return new_manifest(
        model_tag=tag,
        class_names=["cat", "dog", "owl"],
        image_size=32,
        engine="local",
        images=images,
        shards=shards,
        skipped=0,
        splits=["train", "test"],
        seconds=0.5,
    )


def test_shards_round_trip_sorted_by_path(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    _shard(folder, 1, ["train/dog/3.png", "test/cat/1.png"], tag=1.0)
    _shard(folder, 0, ["train/cat/2.png", "test/owl/0.jpg", "train/dog/4.png"], tag=0.0)
    write_manifest(folder, _manifest("bouncer:v1", images=5, shards=2))

    scores = read_scores(folder, model_tag="bouncer:v1")
    assert isinstance(scores, Scores) and len(scores) == 5
    assert scores.paths.tolist() == sorted(scores.paths.tolist())
    ids = [float(p.rsplit("/", 1)[1].split(".")[0]) for p in scores.paths]
    assert scores.probabilities[:, 0].tolist() == ids  # rows moved together
    assert scores.embeddings.shape == (5, 5) and scores.vectors.shape == (5, 3)
    assert {scores.probabilities.dtype, scores.embeddings.dtype, scores.vectors.dtype} == {np.dtype(np.float32)}
    assert scores.sha256[0] == hashlib.sha256(scores.paths[0].encode()).hexdigest()
    assert scores.manifest.images_per_second == 10.0 and scores.manifest.version == "v1"
    assert json.loads((folder / MANIFEST_FILE).read_text())["model_tag"] == "bouncer:v1"
    streamed = list(iter_shards(folder, model_tag="bouncer:v1"))  # shard by shard, as written
    assert [len(shard) for shard in streamed] == [3, 2] and streamed[1].paths[1] == "test/cat/1.png"
    with np.load(folder / shard_name(0), allow_pickle=False) as shard:  # plain arrays, no pickles
        assert set(shard.files) == {"paths", "sha256", "probabilities", "embeddings", "vectors"}


def test_scores_of_another_model_or_a_partial_folder_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        read_scores(folder)
    _shard(folder, 0, ["train/cat/1.png"], tag=0.0)
    write_manifest(folder, _manifest("bouncer:v1", images=1, shards=1))
    assert check_manifest(folder, "bouncer:v1").model_tag == "bouncer:v1"
    with pytest.raises(ScoresMismatch, match="made by bouncer:v1, not bouncer:v2"):
        check_manifest(folder, "bouncer:v2")
    with pytest.raises(ScoresMismatch, match="made by bouncer:v1"):
        read_scores(folder, model_tag="bouncer:v2")

    _shard(folder, 1, ["train/cat/2.png"], tag=0.0)  # a stale shard the manifest does not count
    with pytest.raises(ScoresMismatch, match="2 shards, its manifest says 1"):
        read_scores(folder)
    clear_scores(folder)
    assert not list(folder.iterdir())


def test_a_shard_needs_one_row_per_image(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one row per image"):
        write_shard(
            tmp_path,
            0,
            paths=["a", "b"],
            sha256=["x", "y"],
            probabilities=np.zeros((2, 3)),
            embeddings=np.zeros((1, 4)),
            vectors=np.zeros((2, 2)),
        )


def test_listing_follows_the_image_folder_layout(shapes_dataset: Path, settings: Settings) -> None:
    (shapes_dataset / "train" / "ring" / ".hidden.png").write_bytes(b"")
    (shapes_dataset / "train" / "stray.png").write_bytes(b"")  # beside the class folders: not an image of a class
    paths = list_images(settings, settings.splits)
    assert len(paths) == 3 * (10 + 4) + 2  # the two broken files are listed; scoring skips them
    assert all(p.split("/")[0] in {"train", "test"} and p.count("/") == 2 for p in paths)
    assert list_images(settings, ["test"]) == [p for p in paths if p.startswith("test/")]
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        list_images(settings, ["holdout"])


def test_the_ray_engine_without_ray_says_what_to_install(shapes_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = CliRunner().invoke(app, ["-q", "score", "--engine", "ray"])
    assert result.exit_code == 2
    assert 'pip install -e ".[ray]"' in result.output
    assert "Traceback" not in result.output


# --- the engines, on the trained demo model ------------------------------------------------------


@pytest.fixture(scope="module")
def ray_started() -> Iterator[None]:
    """One local Ray for the module: the engine uses a Ray it finds initialised and leaves it running."""
    from training.scoring.ray_engine import ray_session

    with ray_session(2):
        yield


@dataclass(frozen=True)
class Scored:
    settings: Settings  # the demo's, over a copy of its folder with two broken files added
    local: Scores
    ray: Scores


# A text file named like an image and half a PNG: counted and skipped, never fatal.
BROKEN = ("train/cat/notes.jpg", "test/dog/truncated.png")


@pytest.fixture(scope="module")
def scored(trained_demo: TrainedDemo, ray_started: None, tmp_path_factory: pytest.TempPathFactory) -> Scored:
    """Both engines over the demo images plus :data:`BROKEN` (one Ray run: its actors take seconds to start)."""
    from training.scoring.ray_engine import score_with_ray

    root = tmp_path_factory.mktemp("scores")
    for split in ("train", "test"):
        shutil.copytree(trained_demo.settings.data_dir / split, root / "data" / split)
    (root / "data" / BROKEN[0]).write_text("this is not an image\n")
    whole = next((root / "data" / "test" / "dog").glob("*.png")).read_bytes()
    (root / "data" / BROKEN[1]).write_bytes(whole[: len(whole) // 2])
    settings = trained_demo.settings.model_copy(update={"data_dir": root / "data"})
    tag = trained_demo.result.tag
    score_local(settings, tag, root / "local", chunk_size=100)
    score_with_ray(settings, tag, root / "ray", chunk_size=64)  # several actors, shards in any order
    return Scored(settings, read_scores(root / "local", model_tag=tag), read_scores(root / "ray", model_tag=tag))


@pytest.mark.slow
def test_local_and_ray_engines_agree(scored: Scored, trained_demo: TrainedDemo) -> None:
    local, ray = scored.local, scored.ray
    assert local.manifest.engine == "local" and ray.manifest.engine == "ray"
    assert ray.manifest.shards > 2
    assert local.paths.tolist() == ray.paths.tolist()
    assert local.sha256.tolist() == ray.sha256.tolist()
    np.testing.assert_allclose(local.probabilities, ray.probabilities, atol=PROBABILITY_TOLERANCE)
    np.testing.assert_allclose(local.embeddings, ray.embeddings, **VECTOR_TOLERANCE)
    np.testing.assert_allclose(local.vectors, ray.vectors, **VECTOR_TOLERANCE)


@pytest.mark.slow
def test_every_readable_image_is_scored_and_broken_files_are_counted(scored: Scored, trained_demo: TrainedDemo) -> None:
    assert scored.local.manifest.skipped == scored.ray.manifest.skipped == len(BROKEN)
    assert not set(BROKEN) & set(scored.ray.paths.tolist())
    with open_store(trained_demo.settings) as store:  # every image the label store knows, under its path
        assert scored.local.paths.tolist() == [r.path for r in store.queries.images()]


@pytest.mark.slow
def test_scores_are_what_serving_answers(scored: Scored, trained_demo: TrainedDemo) -> None:
    local, settings = scored.local, scored.settings
    model = load_registered(trained_demo.result.tag)
    assert local.manifest.class_names == model.class_names and local.manifest.image_size == model.image_size
    rows = np.linspace(0, len(local) - 1, 7).astype(int)
    paths = local.paths[rows].tolist()
    images = load_images(settings.data_dir, paths, model.image_size, max_pixels=settings.max_image_pixels)
    served = model.classifier.predict(images)
    np.testing.assert_allclose(local.probabilities[rows], served.probabilities, atol=PROBABILITY_TOLERANCE)
    np.testing.assert_allclose(local.embeddings[rows], served.embeddings, **VECTOR_TOLERANCE)
    np.testing.assert_allclose(local.vectors[rows], model.embedder.transform(served.embeddings), **VECTOR_TOLERANCE)
    for row, path in zip(rows, paths, strict=True):
        assert local.sha256[row] == hashlib.sha256((settings.data_dir / path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_score_cli_uses_the_serving_version_and_prints_where_the_shards_are(
    trained_demo: TrainedDemo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trained_demo.apply(monkeypatch)
    settings = trained_demo.settings
    with open_store(settings) as store:
        serving = resolve_serving_tag(settings, store)
    result = CliRunner().invoke(app, ["-q", "score", "--split", "test"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    folder = default_scores_dir(settings, serving.split(":", 1)[1])
    try:
        assert printed["model"] == serving and printed["folder"] == str(folder) and printed["engine"] == "local"
        assert printed["images"] > 0 and printed["images_per_second"] > 0 and printed["skipped"] == 0
        scores = read_scores(folder, model_tag=serving)
        assert len(scores) == printed["images"] and all(p.startswith("test/") for p in scores.paths)
    finally:
        shutil.rmtree(folder)

    pinned = CliRunner().invoke(app, ["-q", "score", "--model", trained_demo.result.tag, "--out", str(tmp_path)])
    assert pinned.exit_code == 0, pinned.output
    assert read_scores(tmp_path, model_tag=trained_demo.result.tag).manifest.splits == ["train", "test"]
