"""The local engine: every core of this machine, no cluster, nothing to install.

One thread per core takes a chunk of images at a time, reads and decodes it (Pillow
and hashlib release the GIL), runs it through the shared ONNX session with one
intra-op thread (the session's ``run`` releases the GIL too, so the cores work in
parallel) and writes it as one shard. At most one chunk per thread is in memory,
whatever the dataset's size.

Why not one session using every core on each chunk, with decoding in a pool ahead of it:
on 2 cores and the 32 px demo model the two are level on an idle machine (3100-3700 images/s
against 3300-3500, 30,000 images), but with other work on the cores ORT's intra-op threads,
which wait for each other, fell to 1300-1600 where a chunk per core kept 1800-2500. And this
is one pool and no hand-off between threads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

from training.model.scores import ScoreManifest, write_shard
from training.scoring.batches import CHUNK_SIZE, Progress, ScoringRun, chunked
from training.settings import Settings

log = logging.getLogger(__name__)

ENGINE = "local"


def score_local(
    settings: Settings,
    model_tag: str,
    out: Path,
    *,
    splits: Sequence[str] | None = None,
    chunk_size: int = CHUNK_SIZE,
    threads: int | None = None,
    progress: Progress | None = None,
) -> ScoreManifest:
    """Score every image of ``splits`` (default all) with ``model_tag`` into shards in ``out``; the manifest.

    ``threads``: chunks scored at once, default one per core. A previous run's shards
    in ``out`` are removed first; shard numbers are chunk numbers (a chunk without one
    readable image writes none).

    Long on purpose: the engine end to end (list, chunk, score in parallel, write, report) in order.
    """
    run = ScoringRun.begin(settings, model_tag, out, splits, progress)
    scorer = run.scorer(settings)

    def score_chunk(number: int, chunk: Sequence[str]) -> tuple[int, list[tuple[str, str]]]:
        """Score one chunk into shard ``number`` (none if no file of it is readable); (rows, skipped)."""
        batch = scorer.score(chunk)
        if len(batch):
            write_shard(
                out,
                number,
                paths=batch.paths,
                sha256=batch.sha256,
                probabilities=batch.probabilities,
                embeddings=batch.embeddings,
                vectors=batch.vectors,
            )
        return len(batch), batch.skipped

    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        futures: list[Future[tuple[int, list[tuple[str, str]]]]] = [
            pool.submit(score_chunk, number, chunk) for number, chunk in enumerate(chunked(run.paths, chunk_size))
        ]
        try:
            for future in as_completed(futures):
                rows, unreadable = future.result()
                run.count(rows, unreadable, shards=int(rows > 0))
        except BaseException:
            for future in futures:  # an error (or Ctrl-C) stops the queued chunks, not only this loop
                future.cancel()
            raise
    return run.finish(ENGINE)
