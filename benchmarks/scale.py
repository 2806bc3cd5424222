"""The whole loop at 10k, 100k, 1M images: seconds and peak memory of every stage, local and Ray.

Issue 26. In a throw-away workspace (``--workdir`` keeps it, and reuses its images):
the silhouette demo (10,000 images, 28 px) and distinct variants of its train images
(flipped, shifted, noised PNGs, as ``benchmarks/review_page.py`` writes them) up to
``--images``; then, each stage in its own child process, its peak RSS read from the
kernel (``wait4``) or, for the training's phases, sampled every 0.2 s over the child's
whole process tree (Ray's workers included):

1. ``bouncer import`` (the folder sync: hashes every file into the label store);
2. ``bouncer train`` for ``--epochs`` (one quick recipe: no augmentation, 2 fold models of
   one epoch), its phases: decoding into the streamed file, training, ONNX export,
   evaluating (inference on every image), embedding and the index, OOD, the out-of-fold
   models and their neighbours, registering;
3. ``bouncer suspects`` (the ranking, then its first page) and ``bouncer evaluate``.

Prints a table of seconds, microseconds per image and peak RSS per stage (``--json``
writes it). ``--fold-speedup`` instead times the out-of-fold stage alone on Ray with 1
CPU and with 2 (two fold tasks, each asking for one), interleaved, and prints the ratio.

    .venv/bin/python benchmarks/scale.py --images 10000
    .venv/bin/python benchmarks/scale.py --images 100000 --workdir /tmp/scale-100k
    .venv/bin/python benchmarks/scale.py --images 10000 --engine ray
    .venv/bin/python benchmarks/scale.py --images 10000 --fold-speedup --fold-epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.review_page import write_variants  # noqa: E402
from benchmarks.workspace import isolated_env, workspace  # noqa: E402

QUICK = {
    "BOUNCER_OUT_OF_FOLD_FOLDS": "2",
    "BOUNCER_OUT_OF_FOLD_EPOCHS": "1",
    "BOUNCER_AUGMENT": "none",
    "BOUNCER_MIN_TRAIN_STEPS": "0",
    "BOUNCER_TRAIN_INPUT": "stream",  # the path that scales, at every size (auto streams from ~85k at 28 px)
}
MANIFEST = "scale-workspace.json"

# The training child: phases from its progress sink, peak RSS of its process tree per phase, sampled.
TRAIN = """
import json, sys, threading, time
import psutil
from training.pipeline.training_run import run_training
from training.settings import get_settings

me = psutil.Process()
state = {"phase": "importing", "peak": {}}

def tree_rss():
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total

def sample():
    while True:
        rss, phase = tree_rss(), state["phase"]
        state["peak"][phase] = max(state["peak"].get(phase, 0), rss)
        time.sleep(0.2)

threading.Thread(target=sample, daemon=True).start()
started = time.monotonic()

def sink(progress):
    if progress.phase != state["phase"]:
        done = state["peak"].get(state["phase"], 0) / 2**30  # so a run stopped midway still says what it saw
        line = f"  {time.monotonic() - started:7.0f} s  {progress.phase}: {progress.message} (before: {done:.2f} GiB)"
        print(line, file=sys.stderr, flush=True)
    state["phase"] = progress.phase

result = run_training(get_settings(), epochs=EPOCHS, sink=sink)
print("RESULT " + json.dumps({"tag": result.tag, "seconds": result.phase_seconds, "peak": state["peak"],
                              "total": result.total_wall_time_s, "metrics": result.metrics}))
"""
# PhaseClock's phase names -> the table's stage names
PHASES = {
    "loading": "decode into the streamed file",
    "training": "train the main model",
    "exporting": "ONNX export + parity",
    "evaluating": "inference on every image",
    "embedding": "embedder + vector index",
    "ood": "OOD score + drift reference",
    "out-of-fold": "out-of-fold models",
    "neighbours": "of which: fold models' neighbours",
    "near_duplicates": "of which: near-duplicate search",
    "registering": "register the version",
}


def run_child(args: list[str], env: dict[str, str], log: Path) -> tuple[float, int, str]:
    """Seconds, peak RSS (bytes, from the kernel) and stdout of one child."""
    started = time.perf_counter()
    with log.open("a") as err:
        child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=PROJECT)
        out = child.stdout.read() if child.stdout else ""
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{args[:3]} failed (see {log}):\n{log.read_text(errors='replace')[-3000:]}")
    return seconds, usage.ru_maxrss * 1024, out


def bouncer(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("bouncer")), "-q", *args]


def build(root: Path, env: dict[str, str], images: int, dataset: str) -> dict[str, float]:
    """The workspace's images (kept between runs of the same size)."""
    from training.data.demo_photos import PHOTO_CLASSES, PhotoDemoSpec, write_photo_dataset
    from training.data.demo_silhouettes import DemoSpec, write_demo_dataset

    manifest = root / MANIFEST
    if manifest.exists() and json.loads(manifest.read_text()) == {"images": images, "dataset": dataset}:
        print(f"reusing the {images:,} images in {root}")
        return {}
    data_dir = Path(env["BOUNCER_DATA_DIR"])
    started = time.perf_counter()
    if dataset == "photos":  # JPEGs of 72-144 px, as the 2k/16k memory measurement
        pictures = sum(len(photos) for photos in PHOTO_CLASSES.values())
        spec = PhotoDemoSpec(train_copies=images * 4 // 5 // pictures, test_copies=images // 5 // pictures)
        write_photo_dataset(data_dir, spec, force=True)
        written = 0
    else:
        write_demo_dataset(data_dir, DemoSpec(), force=True)
        written = write_variants(data_dir, images)
    seconds = time.perf_counter() - started
    print(f"wrote the demo and {written:,} variants in {seconds:.0f} s", flush=True)
    manifest.write_text(json.dumps({"images": images, "dataset": dataset}))
    return {"write the images (set-up)": seconds}


def the_loop(root: Path, env: dict[str, str], args: argparse.Namespace) -> list[dict[str, Any]]:
    log = root / "stages.log"
    rows: list[dict[str, Any]] = []
    seconds, rss, _ = run_child(bouncer("import"), env, log)
    rows.append({"stage": "folder sync (bouncer import)", "seconds": seconds, "peak_rss": rss})
    print(f"import: {seconds:.0f} s, {rss / 2**30:.2f} GiB", flush=True)
    code = TRAIN.replace("EPOCHS", str(args.epochs))
    train_env = {**env, **QUICK, "BOUNCER_TRAIN_ENGINE": args.engine, "BOUNCER_TRAIN_INPUT": args.input}
    train_env["BOUNCER_OUT_OF_FOLD_FOLDS"] = str(args.folds)
    started = time.perf_counter()
    with log.open("a") as err:
        child = subprocess.run(
            [sys.executable, "-c", code], env=train_env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=PROJECT
        )
    if child.returncode:
        raise RuntimeError(f"training failed (see {log}):\n{log.read_text(errors='replace')[-3000:]}")
    (line,) = [x for x in child.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    print(f"train: {time.perf_counter() - started:.0f} s, metrics {result['metrics']}", flush=True)
    for phase, name in PHASES.items():
        if phase in result["seconds"]:
            rows.append(
                {
                    "stage": f"train: {name}",
                    "seconds": result["seconds"][phase],
                    "peak_rss": result["peak"].get(phase, 0),
                }
            )
    stages = [("evaluate (test split)", ("evaluate",))]
    if args.folds:  # suspects need the out-of-fold models
        stages.insert(0, ("suspects: ranking + first page", ("suspects", "--k", "20")))
    for stage, command in stages:
        seconds, rss, _ = run_child(bouncer(*command), env, log)
        rows.append({"stage": stage, "seconds": seconds, "peak_rss": rss})
        print(f"{stage}: {seconds:.0f} s, {rss / 2**30:.2f} GiB", flush=True)
    return rows


def fold_speedup(root: Path, env: dict[str, str], args: argparse.Namespace) -> None:
    """The out-of-fold stage on Ray with 1 CPU, then 2, interleaved ``--repeats`` times: throughput ratio."""
    code = f"""
import json, time, numpy as np
from training.data.decoded import decode_records
from training.curation.labels import Labels
from training.model.fit import TrainConfig
from training.model.out_of_fold import out_of_fold_probabilities
from training.pipeline.ray_training import RayEngine
from training.scoring.ray_engine import ray_session
from training.settings import get_settings

settings = get_settings()
with Labels.open(settings) as labels:
    records, classes = labels.images(split=settings.train_split), labels.classes()
x = decode_records(settings, records, 28, to_file=True)
config = TrainConfig(image_size=28, epochs={args.fold_epochs}, batch_size=64, augment="none", min_steps=0)
for cpus in {[c for _ in range(args.repeats) for c in (1, 2)]}:
    with ray_session(cpus) as ray:
        engine = RayEngine(ray, settings)
        started = time.perf_counter()
        found = out_of_fold_probabilities(x, [r.label for r in records], classes, config, folds=2,
                                          runner=engine.fold_runner())
        print("FOLDS", json.dumps({{"cpus": cpus, "seconds": time.perf_counter() - started, "images": len(x),
                                   "nodes": list(found.fold_nodes)}}), flush=True)
"""
    run_child(bouncer("import"), env, root / "stages.log")
    with (root / "stages.log").open("a") as err:
        child = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, **QUICK},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=PROJECT,
        )
    if child.returncode:
        raise RuntimeError(f"failed (see {root / 'stages.log'})")
    runs = [json.loads(x.removeprefix("FOLDS ")) for x in child.stdout.splitlines() if x.startswith("FOLDS ")]
    for r in runs:
        print(f"  {r['cpus']} CPU: {r['seconds']:.1f} s ({r['images'] / r['seconds']:.0f} images/s)")
    one = min(r["seconds"] for r in runs if r["cpus"] == 1)
    two = min(r["seconds"] for r in runs if r["cpus"] == 2)
    worst = max(r["seconds"] for r in runs if r["cpus"] == 2) / min(r["seconds"] for r in runs if r["cpus"] == 1)
    print(
        f"\nout-of-fold stage, 2 folds on {runs[0]['images']:,} images: 2 Ray CPUs {one / two:.2f}x the "
        f"throughput of 1 (best of each); worst pairing {1 / worst:.2f}x (goal >= 1.6x)"
    )


def report(rows: list[dict[str, Any]], images: int, engine: str) -> None:
    print(f"\n{images:,} images, engine {engine}, {' '.join(sys.argv[1:])}")
    print(f"| {'stage':<36} | {'seconds':>8} | {'µs / image':>10} | {'peak RSS GiB':>12} |")
    print(f"|{'-' * 38}|{'-' * 10}:|{'-' * 12}:|{'-' * 14}:|")
    for r in rows:
        peak = f"{r['peak_rss'] / 2**30:.2f}" if r["peak_rss"] else "-"  # parts of a phase have no peak of their own
        print(f"| {r['stage']:<36} | {r['seconds']:>8.1f} | {r['seconds'] / images * 1e6:>10.0f} | {peak:>12} |")
    total = sum(r["seconds"] for r in rows if not r["stage"].startswith("train: of which"))
    print(
        f"| {'total':<36} | {total:>8.1f} | {total / images * 1e6:>10.0f} | "
        f"{max(r['peak_rss'] for r in rows) / 2**30:>12.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--workdir", type=Path, help="keep the workspace here (and reuse its images)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--fold-speedup", action="store_true", help="time the fold stage on Ray at 1 and 2 CPUs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fold-epochs", type=int, default=1, help="--fold-speedup: epochs per fold model")
    parser.add_argument("--dataset", choices=("silhouettes", "photos"), default="silhouettes")
    parser.add_argument("--image-size", type=int, help="default: auto (28 px silhouettes)")
    parser.add_argument("--folds", type=int, default=2, help="out-of-fold models (0: none)")
    parser.add_argument("--input", choices=("stream", "memory", "auto"), default="stream")
    args = parser.parse_args()
    with workspace(args.workdir, prefix="bouncer-scale-") as root:
        env = {**os.environ, **isolated_env(root), "BOUNCER_STATE_DIR": str(root / "state")}
        env |= {"BOUNCER_OUT_OF_FOLD_FOLDS": str(args.folds)} | (
            {"BOUNCER_IMAGE_SIZE": str(args.image_size)} if args.image_size else {}
        )
        setup = build(root, env, args.images, args.dataset)
        if args.fold_speedup:
            fold_speedup(root, env, args)
            return
        rows = the_loop(root, env, args)
        report(rows, args.images, args.engine)
        if args.json:
            args.json.write_text(
                json.dumps({"images": args.images, "engine": args.engine, "setup": setup, "rows": rows}, indent=1)
            )


if __name__ == "__main__":
    main()
