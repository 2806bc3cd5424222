"""Predict under 32 concurrent clients: Bouncer against the framework's ceiling and the naive way, one run.

Starts, on this machine and in this one run, each server below on the same model and
drives it with the same closed loop of concurrent clients posting real test images
(benchmarks/loadgen.py: pre-encoded requests on keep-alive connections, light enough
to share the cores with the server):

- Bouncer as configured by default (raw predict route, in-worker batching, one ONNX
  thread per worker, a worker per core);
- Bouncer through BentoML's ``@api`` handler (BOUNCER_FAST_PREDICT=false): the design choice;
- a trivial BentoML endpoint taking the same upload and returning a constant: the framework's ceiling;
- the naive way: FastAPI calling the Keras model's ``predict`` per request;
- with ``--baseline-ref REF``: Bouncer as it was at that git commit (e.g. before issue 13).

Prints req/s, p50, p99 and non-2xx answers for each and Bouncer's ratios, then
``predict_batch`` (32 images a request) against the same decode + ONNX work done in
process, one process per core: the share of the machine's ceiling the HTTP path keeps.

The naive baseline needs FastAPI: install the ``bench`` extra first
(``.venv/bin/pip install -e ".[bench]"``). Without ``--tag`` it builds a throw-away
workspace (demo data + a short training) in a temp dir, never touching your stores:

    .venv/bin/python benchmarks/predict.py                        # ~4 min on 2 cores
    .venv/bin/python benchmarks/predict.py --baseline-ref e0342bb --seconds 30
    .venv/bin/python benchmarks/predict.py --demo photos --skip-naive   # the pretrained backbone at 160 px
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BASELINE_PACKAGES = ("fastapi", "uvicorn")  # the `bench` extra in pyproject.toml
sys.path.insert(0, str(PROJECT))

from benchmarks.loadgen import LoadResult, drive, multipart_request, run  # noqa: E402
from benchmarks.workspace import isolated_env, train_throwaway, workspace  # noqa: E402
from training.jobs.processes import bentoml_serve_command, free_port, running  # noqa: E402

BATCH = 32  # images per predict_batch request


def excerpt_errors(log: Path, lines: int = 40) -> str:
    """The first traceback in a server log, so a failed answer is explained before the temp dir goes."""
    text = log.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(text) if "Traceback" in line or "[ERROR]" in line), None)
    return "" if start is None else "\n".join(text[start : start + lines])


def in_process_images_per_s(tag: str, images: list[bytes], seconds: float, env: dict[str, str]) -> float:
    """Decode + ONNX in process, the way a worker does it, one process per core: the machine's ceiling."""
    workers = os.cpu_count() or 1
    os.environ.update(env)  # the pool's processes find the workspace's model store
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        counts = pool.starmap(_decode_and_infer, [(tag, images, seconds)] * workers)
    return sum(counts) / seconds


def _decode_and_infer(tag: str, images: list[bytes], seconds: float) -> int:
    import numpy as np

    from training.data.images import load_model_input
    from training.registry.store import load_registered

    model = load_registered(tag, threads=1)
    done, i = 0, 0
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        batch = [images[(i + j) % len(images)] for j in range(BATCH)]
        i += BATCH
        pixels = np.stack([load_model_input(b, model.image_size, max_pixels=40_000_000) for b in batch])
        model.classifier.probabilities(pixels)
        done += BATCH
    return done


def checkout(ref: str, into: Path) -> Path:
    """The project's files at git ``ref`` (for --baseline-ref), without touching this working tree."""
    archive = subprocess.run(["git", "-C", str(PROJECT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@dataclass
class Server:
    name: str
    command: Callable[[int], list[str]]  # for a port
    ready: str = "/readyz"
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = PROJECT


def bento(target: str) -> Callable[[int], list[str]]:
    return lambda port: bentoml_serve_command(target, port)


def servers(args: argparse.Namespace, root: Path) -> list[Server]:
    chosen = [
        Server("bouncer", bento("bento_service.service:Bouncer")),
        Server(
            "bouncer through BentoML's @api handler",
            bento("bento_service.service:Bouncer"),
            env={"BOUNCER_FAST_PREDICT": "false"},
        ),
        Server("trivial BentoML endpoint (constant answer)", bento("benchmarks.trivial_service:Trivial")),
    ]
    if not args.skip_naive:
        naive = [str(BIN / "uvicorn"), "benchmarks.naive_server:app", "--port"]
        chosen.append(Server("naive (FastAPI + Keras predict)", lambda port: [*naive, str(port)], "/ready"))
    if args.baseline_ref:
        old = checkout(args.baseline_ref, Path(tempfile.mkdtemp(prefix="bouncer-ref-", dir=root)))
        # the settings of that time: one worker (BOUNCER_WORKERS took only numbers)
        env = {"PYTHONPATH": str(old), "BOUNCER_WORKERS": "1"}
        chosen.append(
            Server(f"bouncer at {args.baseline_ref}", bento("bento_service.service:Bouncer"), env=env, cwd=old)
        )
    return chosen


def load(
    name: str, port: int, path: str, bodies: list[list[tuple[str, str, bytes]]], clients: int, args: argparse.Namespace
) -> LoadResult:
    requests = [multipart_request("127.0.0.1", port, path, parts) for parts in bodies]
    return run(drive(name, "127.0.0.1", port, requests, clients=clients, seconds=args.seconds, warmup=args.warmup))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per server")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--tag", help="serve this existing model version (uses your env's stores)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs for the throw-away model")
    parser.add_argument(
        "--demo",
        choices=("silhouettes", "photos"),
        default="silhouettes",
        help="the throw-away model's data: 28 px drawings (the CNN) or 160 px photos (EfficientNet-Lite0 by default)",
    )
    parser.add_argument("--baseline-ref", help="also serve Bouncer as it was at this git commit")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive Keras server")
    parser.add_argument("--workdir", type=Path, help="keep the workspace and server logs here (default: a temp dir)")
    args = parser.parse_args()
    missing = [name for name in BASELINE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing and not args.skip_naive:  # say so now, not after the workspace's training
        raise SystemExit(f"the naive baseline needs {', '.join(missing)}: .venv/bin/pip install -e '.[bench]'")

    with workspace(args.workdir, prefix="bouncer-bench-") as root:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if args.tag is None:
            env.update(isolated_env(root))
            print("preparing a throw-away workspace (demo data + short training) ...", flush=True)
            tag = train_throwaway(env, args.epochs, **({"demo": "PhotoDemoSpec()"} if args.demo == "photos" else {}))
        else:
            tag = args.tag
        data_dir = Path(env.get("BOUNCER_DATA_DIR", "data"))
        images = [p.read_bytes() for p in sorted((data_dir / "test").glob("*/*.*"))[:256]]
        if not images:
            raise SystemExit(f"no test images under {data_dir / 'test'}")
        env["BOUNCER_MODEL_TAG"] = tag
        env["BOUNCER_BENCH_TAG"] = tag
        singles = [[("image", "x.png", image)] for image in images]
        batches = [
            [("images", "x.png", images[(i + j) % len(images)]) for j in range(BATCH)]
            for i in range(0, len(images), BATCH)
        ]

        results: dict[str, LoadResult] = {}
        for server in servers(args, root):
            port, log = free_port(), root / f"server-{len(results)}.log"
            ready_url = f"http://127.0.0.1:{port}{server.ready}"
            with running(server.command(port), ready_url=ready_url, log=log, env={**env, **server.env}, cwd=server.cwd):
                result = results[server.name] = load(server.name, port, "/predict", singles, args.clients, args)
                print(result.line(), flush=True)
                if server.name == "bouncer":
                    batch = load("bouncer predict_batch", port, "/predict_batch", batches, 4, args)
            if result.non_2xx:
                print(f"  first non-2xx body: {result.first_error}\n{excerpt_errors(log)}")

        print("measuring decode + ONNX in process (one process per core) ...", flush=True)
        ceiling = in_process_images_per_s(tag, images, args.seconds, env)

    report(tag, args, results, batch, ceiling)


def report(
    tag: str, args: argparse.Namespace, results: dict[str, LoadResult], batch: LoadResult, ceiling: float
) -> None:
    bouncer = results["bouncer"]
    print(f"\nmodel {tag}; {args.clients} concurrent clients, {args.seconds:.0f} s measured after {args.warmup:.0f} s")
    for result in results.values():
        print(result.line())
    print("\nbouncer's ratios (latency: lower is better):")
    for name, other in results.items():
        if name != "bouncer" and not other.ok:
            print(f"  vs {name:<42} no 2xx answer to compare with (see its first non-2xx body above)")
        elif name != "bouncer":
            print(
                f"  vs {name:<42} throughput x{bouncer.throughput / other.throughput:.2f}   "
                f"p50 x{bouncer.percentile(50) / other.percentile(50):.2f}   "
                f"p99 x{bouncer.percentile(99) / other.percentile(99):.2f}"
            )
    print(f"bouncer 503 (over capacity) answers: {bouncer.statuses.get(503, 0)}")
    images_per_s = batch.throughput * BATCH
    print(
        f"\npredict_batch ({BATCH} images a request, 4 clients): {images_per_s:.0f} images/s, "
        f"p99 {batch.percentile(99):.0f} ms, non-2xx {batch.non_2xx}; "
        f"decode + ONNX in process: {ceiling:.0f} images/s; HTTP keeps {images_per_s / ceiling:.0%} of it"
    )


if __name__ == "__main__":
    main()
