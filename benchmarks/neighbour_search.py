"""Exact against approximate neighbour search at 100k and 1M images: seconds, peak RSS, recall.

Issue 26: a training at 1M images runs two searches that are quadratic when exact, the
out-of-fold feature neighbours (``training.model.feature_neighbours.nearest``: a fold's
held-out third as queries among all train embeddings, k=10) and the near-duplicate groups
(``training.curation.duplicates.near_duplicate_groups``: 16x16 grey thumbnails within
BOUNCER_NEAR_DUPLICATE_TOLERANCE). Beyond BOUNCER_EXACT_SEARCH_MAX candidates both use a
seeded 8-bit faiss IVF index. Each measurement runs in its own process (its peak RSS is its own):

- embeddings: 128-d, clustered (1000 centres, each with a 16-d spread, plus isotropic noise), not
  uniform noise; recall@10 of the approximate neighbours against exact ones (at the largest size
  where exact runs: all its queries; beyond: 2,000 queries checked by a flat search, not timed);
- thumbnails: 16 px images in a decoded file (read with pread, as a streamed training does), from
  1000 smooth themes with per-image noise, 2% of them noisy and brighter copies of earlier images;
  whether the approximate groups equal the exact ones where both run.

Exact runs only up to ``--exact-up-to`` (exact at 1M takes over half an hour). Timings on a shared
2-core machine are noisy: compare within one run.

    .venv/bin/python benchmarks/neighbour_search.py                       # 100k and 1M
    .venv/bin/python benchmarks/neighbour_search.py --sizes 20000 --exact-up-to 20000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEED = 0
K = 10
FOLDS = 3
TOLERANCE = 0.03
CHECKED_QUERIES = 2000


def embeddings(n: int, dim: int = 128) -> np.ndarray:
    """Clustered float32 rows: a centre, a spread along the centre's own 16 directions, noise."""
    rng = np.random.default_rng(SEED)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    spreads = rng.normal(scale=0.3, size=(1000, 16, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        label = rng.integers(0, 1000, m)
        along = np.einsum("mk,mkd->md", rng.normal(size=(m, 16)).astype(np.float32), spreads[label])
        out[start : start + m] = centres[label] + along + rng.normal(scale=0.3, size=(m, dim)).astype(np.float32)
    return out


def write_images(path: Path, n: int, size: int = 16) -> None:
    """``n`` (size, size, 3) uint8 images into a .npy file, a chunk at a time (see the module for what they are)."""
    rng = np.random.default_rng(SEED)
    coarse = rng.uniform(0, 255, size=(1000, 4, 4, 3))
    themes = np.kron(coarse, np.ones((1, size // 4, size // 4, 1)))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        chunk = themes[rng.integers(0, 1000, m)] + rng.normal(scale=25, size=(m, size, size, 3))
        copies = np.flatnonzero(rng.random(m) < 0.02)
        copies = copies[copies > 0]
        sources = (rng.random(len(copies)) * copies).astype(int)  # an earlier image of the chunk
        shift = rng.choice([0.0, 10.0], size=(len(copies), 1, 1, 1))
        chunk[copies] = chunk[sources] + rng.normal(scale=2, size=(len(copies), size, size, 3)) + shift
        out[start : start + m] = np.clip(chunk, 0, 255).astype(np.uint8)
    out.flush()
    del out


def peak_mb() -> float:
    """This process's peak RSS since the last :func:`reset_peak` (Linux's VmHWM)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def reset_peak() -> float:
    """The RSS now, made the peak: what a search adds to it is then its own (the data's making excluded)."""
    Path("/proc/self/clear_refs").write_text("5")
    return peak_mb()


def child(kind: str, method: str, n: int, folder: Path) -> dict[str, object]:
    """One measurement in this process: what the parent prints."""
    exact_max = n if method == "exact" else 0
    if kind == "embeddings":
        from training.model.feature_neighbours import nearest, normalised

        x = embeddings(n)
        held = np.arange(0, n, FOLDS)  # one fold's queries
        before = reset_peak()
        started = time.perf_counter()
        rows, _ = nearest(x[held], x, K, query_rows=held, exact_max=exact_max)
        seconds = time.perf_counter() - started
        result: dict[str, object] = {"seconds": seconds, "peak_mb": peak_mb(), "data_mb": before}
        np.save(folder / f"{kind}-{method}-{n}.npy", rows)
        if method == "approximate":  # a sample checked by flat search: recall even where exact is not run
            import faiss

            checked = held[np.random.default_rng(SEED).choice(len(held), min(CHECKED_QUERIES, len(held)), False)]
            flat = faiss.IndexFlatIP(x.shape[1])
            for start in range(0, n, 100_000):
                flat.add(normalised(x[start : start + 100_000]))
            _, truth = flat.search(normalised(x[checked]), K + 1)
            truth = [[r for r in t if r != q][:K] for q, t in zip(checked.tolist(), truth.tolist(), strict=True)]
            found = rows[np.searchsorted(held, checked)].tolist()
            result["sampled_recall"] = float(
                np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)])
            )
        return result
    from training.curation.duplicates import near_duplicate_groups
    from training.data.decoded import DecodedFile

    images = DecodedFile(folder / f"images-{n}.npy")
    before = reset_peak()
    started = time.perf_counter()
    groups = near_duplicate_groups(images, tolerance=TOLERANCE, exact_max=exact_max)
    seconds = time.perf_counter() - started
    np.save(folder / f"{kind}-{method}-{n}.npy", groups)
    grouped = int((groups >= 0).sum())
    return {"seconds": seconds, "peak_mb": peak_mb(), "data_mb": before, "grouped": grouped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--exact-up-to", type=int, default=100_000)
    parser.add_argument("--kinds", nargs="+", default=["embeddings", "thumbnails"])
    parser.add_argument("--child", nargs=4, metavar=("KIND", "METHOD", "N", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, method, n, folder = args.child
        print(json.dumps(child(kind, method, int(n), Path(folder))))
        return
    with tempfile.TemporaryDirectory(prefix="neighbour-search-") as tmp:
        folder = Path(tmp)
        print(f"{'kind':<11} {'n':>9} {'method':<12} {'seconds':>8} {'peak MB':>8} {'RSS before':>10}  agreement")
        for n in args.sizes:
            if "thumbnails" in args.kinds:
                write_images(folder / f"images-{n}.npy", n)
            for kind in args.kinds:
                methods = ["exact", "approximate"] if n <= args.exact_up_to else ["approximate"]
                found = {}
                for method in methods:
                    command = [sys.executable, __file__, "--child", kind, method, str(n), str(folder)]
                    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                    found[method] = json.loads(out.strip().splitlines()[-1])
                    r = found[method]
                    note = ""
                    if "sampled_recall" in r:
                        note = f"recall@10 on {CHECKED_QUERIES} sampled queries {r['sampled_recall']:.4f}"
                    if "grouped" in r:
                        note = f"{r['grouped']:,} images in groups"
                    line = f"{kind:<11} {n:>9,} {method:<12} {r['seconds']:>8.1f} {r['peak_mb']:>8.0f}"
                    print(f"{line} {r['data_mb']:>10.0f}  {note}", flush=True)
                if len(found) == 2:
                    exact = np.load(folder / f"{kind}-exact-{n}.npy")
                    approximate = np.load(folder / f"{kind}-approximate-{n}.npy")
                    speed = found["exact"]["seconds"] / found["approximate"]["seconds"]
                    if kind == "embeddings":
                        recall = np.mean([len(set(a) & set(e)) / K for a, e in zip(approximate, exact, strict=True)])
                        print(f"  -> approximate {speed:.1f}x faster, recall@10 against exact {recall:.4f}")
                    else:
                        same = bool((exact == approximate).all())
                        print(f"  -> approximate {speed:.1f}x faster, groups identical to exact: {same}")
            (folder / f"images-{n}.npy").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
