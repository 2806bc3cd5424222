"""The Ray engine: Ray Data actors score the images, the driver writes the same shards as the local engine.

Each actor (one CPU) holds one ONNX session and the fitted embedder, built once from
their bytes (sent through Ray's object store, so actors on other machines need no model
store) and scores batches with the same :class:`~training.scoring.batches.Scorer` as
the local engine. On a cluster (``RAY_ADDRESS``), every node needs Bouncer installed (the
actors import this module) and DATA_DIR mounted at the same path; the shards are written
by the driver, on its machine.

Measured on 2 cores (32 px demo model): ~2800-3100 images/s once running, as the local
engine, but each run first waits ~5 s for its actors and a local Ray takes ~3-5 s to
start: worth it for a cluster or a long job, not for 10,000 images on a laptop.

Ray is optional (``pip install -e ".[ray]"``) and imported only here, only when used.
Without ``RAY_ADDRESS`` a local Ray is started with one CPU per core and shut down after;
a Ray already initialised by the caller (a notebook, a test session) is used as it is.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from training.errors import BouncerError
from training.model.scores import ScoreManifest, write_shard
from training.scoring.batches import CHUNK_SIZE, Progress, Scorer, ScoringRun, chunked
from training.settings import Settings

log = logging.getLogger(__name__)

ENGINE = "ray"
INSTALL_HINT = 'pip install -e ".[ray]" (from the repository)'
# Ray Data's loggers, and the level each is held at while we score: its execution banners are
# INFO, and it warns that progress bars are off, which is what we want (our progress is logged).
QUIET_LOGGERS = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}


class EngineUnavailable(BouncerError, RuntimeError):
    """The engine's optional dependency is not installed; the message says how to install it."""


def import_ray() -> ModuleType:
    """``ray`` with Ray Data, or EngineUnavailable naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]: plain ray lacks pandas/pyarrow pieces)
    except ImportError as exc:
        raise EngineUnavailable(f"the Ray engine needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


@contextmanager
def ray_session(cpus: int | None = None) -> Iterator[ModuleType]:
    """Ray initialised for the block: a caller's Ray as it is, else a cluster at RAY_ADDRESS, else a local one.

    A local Ray gets ``cpus`` CPUs (default one per core), no dashboard and only its
    errors logged, and is shut down afterwards.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    if not os.environ.get("RAY_ADDRESS"):  # connecting to a cluster takes no num_cpus
        options["num_cpus"] = cpus or os.cpu_count() or 1
    ray.init(**options)
    try:
        yield ray
    finally:
        ray.shutdown()


class ScoreActor:
    """The ``map_batches`` callable: built once per actor, then called with batches of paths."""

    def __init__(
        self,
        model: bytes,
        embedder: bytes,
        class_names: list[str],
        image_size: int,
        data_dir: str,
        max_pixels: int,
    ) -> None:
        self.scorer = Scorer.from_files(
            model,
            embedder,
            class_names=class_names,
            image_size=image_size,
            data_dir=Path(data_dir),
            max_pixels=max_pixels,
            threads=1,  # one actor per CPU: more intra-op threads would only spin against each other
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows for every path: the scored ones, then the unreadable ones with their ``error`` (zeros elsewhere)."""
        scored = self.scorer.score([str(p) for p in batch["path"]])
        failed = len(scored.skipped)
        k, d_embedding, d_vector = self.scorer.widths if failed else (0, 0, 0)

        def rows(array: np.ndarray, width: int) -> np.ndarray:
            return np.concatenate([array, np.zeros((failed, width), np.float32)]) if failed else array

        return {
            "path": np.array(scored.paths + [path for path, _ in scored.skipped], dtype=str),
            "sha256": np.array(scored.sha256 + [""] * failed, dtype=str),
            "probabilities": rows(scored.probabilities, k),
            "embeddings": rows(scored.embeddings, d_embedding),
            "vectors": rows(scored.vectors, d_vector),
            "error": np.array([""] * len(scored) + [reason for _, reason in scored.skipped], dtype=str),
        }


def score_with_ray(
    settings: Settings,
    model_tag: str,
    out: Path,
    *,
    splits: Sequence[str] | None = None,
    chunk_size: int = CHUNK_SIZE,
    actors: int | None = None,
    progress: Progress | None = None,
) -> ScoreManifest:
    """Score every image of ``splits`` (default all) with ``model_tag`` on Ray into shards in ``out``; the manifest.

    ``actors``: how many score in parallel, default one per CPU Ray has (its start-up is
    part of the measured seconds when this call starts Ray). Rows are written in the
    order actors finish; :func:`training.model.scores.read_scores` sorts them.

    Long on purpose: Ray's set-up, the pipeline and its shutdown belong in one place.
    """
    started = time.perf_counter()
    import_ray()  # before any work: a missing extra is the first thing to say
    run = ScoringRun.begin(settings, model_tag, out, splits, progress, started=started)
    files, paths = run.files, run.paths
    chunks = chunked(paths, chunk_size)
    with ray_session(actors) as ray, _quiet_ray_data(ray):
        pool_size = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        dataset = ray.data.from_items([{"path": path} for path in paths], override_num_blocks=len(chunks))
        dataset = dataset.map_batches(
            ScoreActor,
            fn_constructor_kwargs={
                "model": files.model.read_bytes(),
                "embedder": files.embedder.read_bytes(),
                "class_names": files.class_names,
                "image_size": files.image_size,
                "data_dir": str(settings.data_dir),
                "max_pixels": settings.max_image_pixels,
            },
            batch_size=chunk_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(pool_size, len(chunks))),
            num_cpus=1,
        )
        # Re-batched here, so a shard is ``chunk_size`` rows whatever blocks Ray's tasks put out.
        for batch in dataset.iter_batches(batch_size=chunk_size, batch_format="numpy"):
            errors = np.asarray(batch["error"], dtype=str)
            ok = errors == ""
            batch_paths = np.asarray(batch["path"], dtype=str)
            skipped = list(zip(batch_paths[~ok].tolist(), errors[~ok].tolist(), strict=True))
            if ok.any():
                write_shard(
                    out,
                    run.shards,
                    paths=batch_paths[ok],
                    sha256=np.asarray(batch["sha256"], dtype=str)[ok],
                    probabilities=batch["probabilities"][ok],
                    embeddings=batch["embeddings"][ok],
                    vectors=batch["vectors"][ok],
                )
            run.count(int(ok.sum()), skipped, shards=int(ok.any()))
    return run.finish(ENGINE)


@contextmanager
def _quiet_ray_data(ray: ModuleType) -> Iterator[None]:
    """No progress bars or execution banners from Ray Data (our progress is logged); restored afterwards."""
    context = ray.data.DataContext.get_current()
    saved = (context.enable_progress_bars, context.print_on_execution_start)
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    context.enable_progress_bars, context.print_on_execution_start = False, False
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
