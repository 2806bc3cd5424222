"""similar / expand / trace at 10k, 100k and 1M images: the old brute-force path against the vector index, one run.

For each size, a synthetic dataset of that many images (clustered 32-d vectors, ten
labels, 90% train) is written as a real label store (SQLite) and a real model version
(the throw-away model's ONNX graph and embedder, its index replaced by these vectors).
Then, in this one run:

- **in process, old path**: the code that served before issue 13 (read every candidate
  row from the label store, match ids with ``np.isin``, brute-force the distances), a
  faithful copy below, timed for similar (with and without a label filter), expand and trace;
- **in process, index**: the same questions through the curation façade's own code
  (``training.curation.neighbours`` / ``tracing`` over ``training.vectors``);
- **through HTTP**: ``bentoml serve`` of Bouncer on that store and version, ``similar``
  (k=10, with and without a label filter) and ``expand`` from one client: p50/p99;
- **recall@10** of the index against exact search, with and without the label filter.

Files are not needed: every image in the index has its vector, so no request reads pixels.
``trace`` is timed in process only (through HTTP it first predicts the test images' files).

    .venv/bin/python benchmarks/similar.py                       # ~10 min on 2 cores
    .venv/bin/python benchmarks/similar.py --sizes 10000 100000  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.loadgen import drive, json_request, run  # noqa: E402
from benchmarks.workspace import model_to_measure, serving, workspace  # noqa: E402
from training.jobs.processes import free_port  # noqa: E402

DIM = 32
LABELS = [f"c{i}" for i in range(10)]  # replaced by the model's class names
K = 10


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered vectors (a few hundred modes, like embeddings of real classes), labels and splits."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(256, DIM)).astype(np.float32) * 3
    cluster = rng.integers(0, len(centres), n)
    vectors = centres[cluster] + rng.normal(size=(n, DIM)).astype(np.float32)
    labels = (cluster % len(LABELS) + (rng.random(n) < 0.05) * rng.integers(1, len(LABELS), n)) % len(LABELS)
    splits = np.where(rng.random(n) < 0.9, 0, 1)
    return vectors.astype(np.float32), labels, splits


def write_store(settings: object, n: int, labels: np.ndarray, splits: np.ndarray) -> list[str]:
    """A label store with ``n`` image rows (bulk insert: the rows a folder import would write)."""
    from training.curation.labels import Labels

    with Labels.open(settings) as labels:  # type: ignore[arg-type]  # creates and migrates the schema, gives the dataset its id
        dataset_id = labels.dataset_id
    ids = [f"{i:016x}" for i in range(n)]
    names = ("train", "test")
    rows = (
        (ids[i], f"{names[s]}/{LABELS[c]}/{i:07d}.png", names[s], LABELS[c], LABELS[c], f"{i:064x}", 1, 0, 1, 1, 0)
        for i, (c, s) in enumerate(zip(labels.tolist(), splits.tolist(), strict=True))
    )
    with closing(sqlite3.connect(settings.data_dir / "labels.db")) as db, db:  # type: ignore[attr-defined]
        db.executemany("INSERT INTO classes (name) VALUES (?)", [(name,) for name in LABELS])
        db.executemany(
            "INSERT INTO images (image_id, path, split, folder_label, label, sha256, size, mtime_ns, present, "
            "revision, reviewed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute("UPDATE dataset SET revision = 1")
    del dataset_id
    return ids


def write_version(source_tag: str, dataset_id: str, ids: list[str], vectors: np.ndarray, settings: object) -> str:
    """A model version: the source's ONNX graph and embedder, this dataset's identity, these vectors as its index."""
    import bentoml

    from training.vectors.open import build_index

    source = bentoml.models.get(source_tag)
    metadata = {**source.info.metadata, "dataset_id": dataset_id, "embedding_dim": DIM}
    with bentoml.models.create("bench-similar", metadata=metadata) as model:
        for name in ("model.onnx", "embedder.joblib"):
            shutil.copy(source.path_of(name), model.path_of(name))
        build_index(settings, ids, vectors).save(Path(model.path))  # type: ignore[arg-type]
    return str(model.tag)


# --- the old path, as it served before issue 13 (training/curation/index.py at e0342bb) -----------
def old_nearest(
    store: object,
    all_ids: np.ndarray,
    vectors: np.ndarray,
    query: np.ndarray,
    split: str,
    label: str | None,
    exclude: str | None,
) -> list[str]:
    candidates = store.queries.images(split=split, label=label)  # type: ignore[attr-defined]
    mask = np.isin(all_ids, [r.image_id for r in candidates])
    if exclude is not None:
        mask &= all_ids != exclude
    rows = np.flatnonzero(mask)
    distances = np.linalg.norm(vectors[rows] - query, axis=1)
    return [str(all_ids[rows[i]]) for i in np.argsort(distances, kind="stable")[:K]]


def old_expand(store: object, all_ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, split: str) -> list[str]:
    reviewed = store.queries.reviewed_ids()  # type: ignore[attr-defined]
    candidates = [r for r in store.queries.images(split=split) if r.image_id not in reviewed]  # type: ignore[attr-defined]
    rows = np.flatnonzero(np.isin(all_ids, [r.image_id for r in candidates]))
    distances = np.full(len(rows), np.inf, dtype=np.float32)
    for query in queries:
        np.minimum(distances, np.linalg.norm(vectors[rows] - query, axis=1), out=distances)
    return [str(all_ids[rows[i]]) for i in np.argsort(distances, kind="stable")[:K]]


def old_trace(store: object, all_ids: np.ndarray, vectors: np.ndarray, errors: np.ndarray, predicted: list[str]) -> int:
    reviewed = store.queries.reviewed_ids()  # type: ignore[attr-defined]
    train = [r for r in store.queries.images(split="train") if r.image_id not in reviewed]  # type: ignore[attr-defined]
    position = {image_id: i for i, image_id in enumerate(all_ids.tolist())}
    rows = np.array([position[r.image_id] for r in train])
    train_labels = np.array([r.label for r in train])
    votes = 0
    for vector, wrong in zip(errors, predicted, strict=True):
        candidates = np.flatnonzero(train_labels == wrong)
        distances = np.linalg.norm(vectors[rows[candidates]] - vector, axis=1)
        votes += len(np.argsort(distances, kind="stable")[:5])
    return votes


def timed(call: Callable[[int], object], repeat: int) -> list[float]:
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - started) * 1000)
    return times


def p(times: list[float], q: int) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[q - 1] if len(times) > 1 else times[0]


def row(name: str, old: list[float] | None, new: list[float]) -> str:
    old_text = f"{p(old, 50):10.1f} {p(old, 99):10.1f}" if old else f"{'-':>10} {'-':>10}"
    speedup = f"x{p(old, 50) / p(new, 50):,.0f}" if old else ""
    return f"  {name:<34} {old_text}   {p(new, 50):8.2f} {p(new, 99):8.2f}   {speedup}"


def recall(
    index: object, vectors: np.ndarray, labels: np.ndarray, splits: np.ndarray, ids: list[str], queries: np.ndarray
) -> tuple[float, float]:
    import faiss

    from training.vectors.base import Where

    out = []
    for where, mask in [
        (Where.of(split="train"), splits == 0),
        (Where.of(split="train", label=LABELS[3]), (splits == 0) & (labels == 3)),
    ]:
        rows = np.flatnonzero(mask)
        _, exact = faiss.knn(queries, vectors[rows], K)
        found = index.search(queries, K, where)  # type: ignore[attr-defined]
        out.append(
            float(
                np.mean(
                    [
                        len({h.image_id for h in hits} & {ids[rows[j]] for j in e}) / K
                        for hits, e in zip(found, exact, strict=True)
                    ]
                )
            )
        )
    return out[0], out[1]


def http_latencies(port: int, path: str, bodies: list[dict[str, object]], seconds: float) -> object:
    requests = [json_request("127.0.0.1", port, path, json.dumps(b).encode()) for b in bodies]
    return run(drive(path, "127.0.0.1", port, requests, clients=1, seconds=seconds, warmup=1.0))


def bench_size(n: int, source_tag: str, root: Path, base_env: dict[str, str], args: argparse.Namespace) -> None:
    from training.curation.labels import Labels
    from training.registry.store import load_registered
    from training.settings import get_settings
    from training.vectors.base import Where

    folder = root / f"n{n}"
    env = {**base_env, "BOUNCER_DATA_DIR": str(folder / "data"), "BOUNCER_MLFLOW_DIR": str(folder / "mlruns")}
    os.environ.update(env)
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    vectors, labels, splits = synthetic(n)
    ids = write_store(settings, n, labels, splits)
    with Labels.open(settings) as labels:
        dataset_id = labels.dataset_id
    tag = write_version(source_tag, dataset_id, ids, vectors, settings)
    print(f"\n{n:,} images: store + version {tag} written in {time.perf_counter() - started:.0f} s", flush=True)

    rng = np.random.default_rng(7)
    train_rows = np.flatnonzero(splits == 0)
    picks = [ids[i] for i in rng.choice(train_rows, 50, replace=False)]
    all_ids = np.asarray(ids)
    repeat_old = 20 if n <= 20_000 else (5 if n <= 200_000 else 2)
    label = LABELS[3]
    errors = vectors[rng.choice(np.flatnonzero(splits == 1), 200, replace=False)] + 0.1
    predicted = [LABELS[i] for i in rng.integers(0, len(LABELS), 200)]

    with Labels.open(settings) as labels:
        store = labels.store  # what the curation functions measured here take
        started = time.perf_counter()
        model = load_registered(tag, settings=settings)
        model.index.refresh(store)
        print(
            f"  index loaded and labels read in {time.perf_counter() - started:.1f} s "
            f"({type(model.index).__name__}, nprobe {getattr(model.index, 'nprobe', 0)})",
            flush=True,
        )
        from training.curation.neighbours import nearest_neighbours, nearest_to_any
        from training.curation.tracing import trace_votes

        def q(image_id: str) -> np.ndarray:
            return model.index.vectors_of([image_id])[image_id]

        cases: list[tuple[str, Callable[[int], object] | None, Callable[[int], object]]] = [
            (
                "similar k=10",
                lambda i: old_nearest(store, all_ids, vectors, q(picks[i % 50]), "train", None, picks[i % 50]),
                lambda i: nearest_neighbours(
                    model.index, store, q(picks[i % 50]), K, Where.of(split="train", exclude=[picks[i % 50]])
                ),
            ),
            (
                "similar k=10, label filter",
                lambda i: old_nearest(store, all_ids, vectors, q(picks[i % 50]), "train", label, picks[i % 50]),
                lambda i: nearest_neighbours(
                    model.index,
                    store,
                    q(picks[i % 50]),
                    K,
                    Where.of(split="train", label=label, exclude=[picks[i % 50]]),
                ),
            ),
            (
                "expand from 5 images, k=10",
                lambda i: old_expand(
                    store, all_ids, vectors, np.stack([q(x) for x in picks[i % 45 : i % 45 + 5]]), "train"
                ),
                lambda i: nearest_to_any(
                    model.index,
                    store,
                    np.stack([q(x) for x in picks[i % 45 : i % 45 + 5]]),
                    K,
                    Where.of(split="train", unreviewed=True, exclude=picks[i % 45 : i % 45 + 5]),
                ),
            ),
            (
                "trace 200 errors, k=5",
                lambda i: old_trace(store, all_ids, vectors, errors, predicted),
                lambda i: trace_votes(model.index, errors, predicted, [LABELS[0]] * 200, k=5, split="train"),
            ),
        ]
        print(f"  {'in process (ms)':<34} {'old p50':>10} {'old p99':>10}   {'idx p50':>8} {'idx p99':>8}   speed-up")
        for name, old, new in cases:
            new_times = timed(new, 200)
            old_times = None
            if old is not None and not args.skip_old:
                old_times = timed(old, repeat_old)
            print(row(name, old_times, new_times), flush=True)
        r_all, r_label = recall(
            model.index, vectors, labels, splits, ids, vectors[rng.choice(train_rows, 200, replace=False)] + 0.05
        )
        print(f"  recall@10 vs exact search: {r_all:.3f} without a filter, {r_label:.3f} with a label filter")

    port, log = free_port(), folder / "server.log"
    serve_env = {**os.environ, **env, "BOUNCER_MODEL_TAG": tag, "BOUNCER_WORKERS": "1", "BOUNCER_ACCESS_LOG": "false"}
    with serving(port, serve_env, log, timeout=600):
        print(f"  {'through HTTP, one client':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  non-2xx")
        for name, path, bodies in [
            ("similar k=10", "/similar", [{"image_id": x, "k": K, "split": "train"} for x in picks]),
            (
                "similar k=10, label filter",
                "/similar",
                [{"image_id": x, "k": K, "split": "train", "label": label} for x in picks],
            ),
            ("expand from 5 images, k=10", "/expand", [{"image_ids": picks[i : i + 5], "k": K} for i in range(45)]),
        ]:
            result = http_latencies(port, path, bodies, args.seconds)
            print(
                f"  {name:<34} {result.throughput:8.1f} {result.percentile(50):8.2f} "
                f"{result.percentile(99):8.2f}  {result.non_2xx}",
                flush=True,
            )  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per HTTP case")
    parser.add_argument("--tag", help="take the ONNX graph and embedder of this version (uses your env's stores)")
    parser.add_argument("--skip-old", action="store_true", help="leave out the old brute-force path (slow at 1M)")
    parser.add_argument("--workdir", type=Path, help="keep the workspace here (default: a temp dir)")
    args = parser.parse_args()
    with workspace(args.workdir, prefix="bouncer-similar-") as root:
        env, tag = model_to_measure(root, args.tag)
        os.environ.update(env)
        global LABELS
        import bentoml

        LABELS = list(bentoml.models.get(tag).info.metadata["class_names"])
        for n in args.sizes:
            bench_size(n, tag, root, env, args)
    print("\nin process: the façade's code without HTTP; the old path is the code before issue 13.")


if __name__ == "__main__":
    main()
