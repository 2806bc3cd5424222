"""Shared fixtures: real image files, a real SQLite label store, a tiny trained model.

Every test runs with its own DATA_DIR and MLflow store under pytest's tmp_path;
the whole session shares one throw-away BentoML store. Nothing touches the user's.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# BentoML reads BENTOML_HOME once per process, so the whole test session shares one
# throw-away model store (never the user's ~/bentoml).
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="bouncer-test-bentoml-")
atexit.register(shutil.rmtree, os.environ["BENTOML_HOME"], ignore_errors=True)  # each process its own

from tests.postgres import HOW as POSTGRES_HOW  # noqa: E402
from tests.postgres import debian_has_pgvector, fresh_database, pgserver_binaries, throwaway_server  # noqa: E402
from training.settings import Settings  # noqa: E402
from training.tf_logs import quiet_tensorflow  # noqa: E402

quiet_tensorflow()  # as the entry points do: for this process and every server or child it starts

# The longest test files, longest first (seconds on 2 cores, alone): pytest-xdist hands files out in
# collection order, so these start at once, one on each worker, and the short ones fill in around them.
LONGEST_FIRST = (
    "tests/notebook/test_photos.py",  # 730: two trainings with every default (photos, 104 px, folds)
    "tests/container/test_container.py",  # ~600 cold: the image built (mostly I/O and download), containers run
    "tests/notebook/test_demonstration.py",  # 520: two trainings of the silhouette demo
    "tests/model/test_backbones.py",  # 330: keras.applications networks from scratch, ONNX export
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collection order, but the files of LONGEST_FIRST first (a stable sort)."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


# What TensorFlow 2.21 printed on a CPU-only machine (import, first op, tf.data, ONNX export).
TENSORFLOW_NOISE = (
    "absl::InitializeLog",
    "oneDNN custom operations",
    "Could not find cuda drivers",
    "failed call to cuInit",
    "NodeDef mentions attribute",
    "cpu_feature_guard",
)


def digest_tree(root: Path) -> str:
    """One hash of every file's relative path and bytes under ``root``: same tree, same digest."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def isolated_env(root: Path) -> dict[str, str]:
    return {
        "BOUNCER_DATA_DIR": str(root / "data"),
        "BOUNCER_MLFLOW_DIR": str(root / "mlruns"),
        "BOUNCER_IMAGE_SIZE": "32",
        # tests train on a few dozen images for an epoch or two: no floor of 600 steps
        "BOUNCER_MIN_TRAIN_STEPS": "0",
    }


@pytest.fixture(autouse=True)
def _no_shared_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point every store at tmp_path unless a test sets them itself."""
    for key, value in isolated_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BOUNCER_DATABASE_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BOUNCER_API_TOKEN", raising=False)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", mlflow_dir=tmp_path / "mlruns")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str | None]:
    """The server BOUNCER_TEST_POSTGRES_URL names, else a throw-away one (None where none is installed)."""
    if url := os.environ.get("BOUNCER_TEST_POSTGRES_URL"):
        yield url
        return
    with throwaway_server() as url:
        yield url


@pytest.fixture(scope="session")
def pgvector_server(postgres_server: str | None) -> Iterator[str | None]:
    """A server with the pgvector extension: BOUNCER_TEST_PGVECTOR_URL, Debian's if it has it, else pgserver's build."""
    if url := os.environ.get("BOUNCER_TEST_PGVECTOR_URL"):
        yield url
        return
    if postgres_server and (os.environ.get("BOUNCER_TEST_POSTGRES_URL") or debian_has_pgvector()):
        yield postgres_server
        return
    binaries = pgserver_binaries()
    if binaries is None:
        yield None
        return
    with throwaway_server(binaries) as url:
        yield url


@pytest.fixture
def pgvector_database(pgvector_server: str | None) -> Iterator[str]:
    """An empty database on a server with pgvector, for this test, dropped after it."""
    if not pgvector_server:
        pytest.skip("no PostgreSQL with pgvector: pip install -e '.[dev]' (pgserver), or set BOUNCER_TEST_PGVECTOR_URL")
    pytest.importorskip("psycopg")
    with fresh_database(pgvector_server) as url:
        yield url


@pytest.fixture
def postgres_database(postgres_server: str | None) -> Iterator[str]:
    """An empty PostgreSQL database for this test, dropped after it."""
    if not postgres_server:
        pytest.skip(f"no PostgreSQL: {POSTGRES_HOW}")
    pytest.importorskip("psycopg")
    with fresh_database(postgres_server) as url:
        yield url


def shape_image(kind: str, variant: int, size: int = 24) -> np.ndarray:
    """A small grayscale drawing whose class is obvious: a square, a cross or a ring."""
    rng = np.random.default_rng(variant)
    canvas = np.zeros((size, size), dtype=np.uint8)
    offset = int(rng.integers(0, 4))
    lo, hi = 4 + offset, size - 8 + offset
    if kind == "square":
        canvas[lo:hi, lo:hi] = 255
    elif kind == "cross":
        mid = (lo + hi) // 2
        canvas[mid - 2 : mid + 2, lo:hi] = 255
        canvas[lo:hi, mid - 2 : mid + 2] = 255
    else:
        yy, xx = np.mgrid[:size, :size]
        r = np.hypot(yy - size / 2 - offset / 2, xx - size / 2 - offset / 2)
        canvas[(r > 5) & (r < 9)] = 255
    noise = rng.integers(0, 30, size=canvas.shape)
    return np.clip(canvas.astype(int) + noise, 0, 255).astype(np.uint8)


def write_mixed_formats(folder: Path, kind: str, count: int, start: int = 0) -> list[Path]:
    """Write ``count`` images cycling through PNG-L, RGBA PNG, palette PNG, JPEG and BMP."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        gray = shape_image(kind, i)
        fmt = i % 5
        if fmt == 0:
            path = folder / f"{kind}_{i:03d}.png"
            Image.fromarray(gray).save(path)
        elif fmt == 1:
            rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
            rgba[:2, :2, 3] = 0
            path = folder / f"{kind}_{i:03d}_rgba.png"
            Image.fromarray(rgba, "RGBA").save(path)
        elif fmt == 2:
            path = folder / f"{kind}_{i:03d}_palette.png"
            Image.fromarray(gray).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(path)
        elif fmt == 3:
            path = folder / f"{kind}_{i:03d}.jpg"
            Image.fromarray(gray).convert("RGB").resize((40, 30)).save(path, quality=90)
        else:
            path = folder / f"{kind}_{i:03d}.bmp"
            Image.fromarray(gray).save(path)
        paths.append(path)
    return paths


SHAPES = ("cross", "ring", "square")


@pytest.fixture
def shapes_dataset(tmp_path: Path) -> Path:
    """data/{train,test}/{cross,ring,square}/ in mixed formats, plus two broken files."""
    data = tmp_path / "data"
    for kind in SHAPES:
        write_mixed_formats(data / "train" / kind, kind, 10)
        write_mixed_formats(data / "test" / kind, kind, 4, start=100)
    (data / "train" / "square" / "notes.jpg").write_text("this is not an image\n")
    good = (data / "train" / "ring").glob("*.png").__next__().read_bytes()
    (data / "train" / "ring" / "truncated.png").write_bytes(good[: len(good) // 2])
    return data


@dataclass(frozen=True)
class TrainedDemo:
    root: Path
    env: dict[str, str]
    settings: Settings
    result: object  # training.pipeline.TrainingResult

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedDemo]:
    """A tiny poisoned animal-mnist dataset and one registered model (2 epochs), shared by slow tests."""
    root = tmp_path_factory.mktemp("trained")
    env = isolated_env(root)
    saved = {k: os.environ.get(k) for k in (*env, "MLFLOW_TRACKING_URI")}
    os.environ.update(env)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        from training.data.demo_silhouettes import DemoSpec, write_demo_dataset
        from training.pipeline.training_run import run_training

        settings = Settings()
        write_demo_dataset(settings.data_dir, DemoSpec(per_class_limit=40, impostor_count=8, noise_fraction=0.05))
        from training.progress import JsonFileProgress

        result = run_training(settings, epochs=2, sink=JsonFileProgress(root / "progress.json"))
        yield TrainedDemo(root, env, settings, result)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def eventually(check: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Whether ``check`` comes true within ``timeout`` seconds (for work a server does off the request)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
