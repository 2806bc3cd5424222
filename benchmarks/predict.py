"""Single-image predict under 32 concurrent clients: Bouncer vs the same model served naively.

Starts, in this one run and on this machine: (1) `bentoml serve` of Bouncer (ONNX,
adaptive batching through the Classifier dependency) and (2) benchmarks/naive_server.py
(FastAPI calling the Keras model's ``predict`` per request), then drives each with the
same closed loop of concurrent clients posting real test images. Prints throughput,
p50/p99 latency and non-200 answers (503 = the batching dispatcher shedding load) for
each, and Bouncer's ratios against the baseline.

The baseline needs FastAPI, which Bouncer itself does not: install the ``bench`` extra
first (``.venv/bin/pip install -e ".[bench]"``).

Without ``--tag`` it builds a throw-away workspace (demo data + a short training) in a
temp dir, so it never touches your model store:

    .venv/bin/python benchmarks/predict.py                 # ~2 min on 2 cores
    .venv/bin/python benchmarks/predict.py --clients 32 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BASELINE_PACKAGES = ("fastapi", "uvicorn")  # the `bench` extra in pyproject.toml
sys.path.insert(0, str(PROJECT))

from benchmarks.workspace import isolated_env, workspace  # noqa: E402
from training.jobs.processes import bentoml_serve_command, free_port, running  # noqa: E402


@dataclass
class LoadResult:
    name: str
    latencies_ms: list[float]
    statuses: Counter[int]
    wall_s: float

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s

    def percentile(self, q: float) -> float:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]

    def line(self) -> str:
        bad = {code: n for code, n in self.statuses.items() if code != 200}
        return (
            f"{self.name:<34} {self.throughput:8.1f} req/s   p50 {self.percentile(50):7.1f} ms   "
            f"p99 {self.percentile(99):7.1f} ms   ok {self.ok:6d}   non-200 {bad or 0}"
        )


async def drive(name: str, url: str, images: list[bytes], clients: int, seconds: float, warmup: float) -> LoadResult:
    """Closed loop: each client posts one image, waits for the answer, posts the next."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def one_client(worker: int) -> None:
            i = worker
            while (now := time.perf_counter()) < stop_at:
                body = images[i % len(images)]
                i += clients
                response = await client.post(url, files={"image": ("image.png", body, "image/png")})
                if now >= measure_from:
                    latencies.append((time.perf_counter() - now) * 1000)
                    statuses[response.status_code] += 1

        await asyncio.gather(*(one_client(w) for w in range(clients)))
        wall = time.perf_counter() - measure_from
    return LoadResult(name, latencies, statuses, wall)


def excerpt_errors(log: Path, lines: int = 40) -> str:
    """The first traceback in a server log, so a failed answer is explained before the temp dir goes."""
    text = log.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(text) if "Traceback" in line or "[ERROR]" in line), None)
    return "" if start is None else "\n".join(text[start : start + lines])


def prepare_workspace(root: Path, env: dict[str, str], epochs: int) -> str:
    """Demo data and one short training in ``root``; returns the model tag."""
    code = (
        "from training.data.demo_silhouettes import DemoSpec, write_demo_dataset\n"
        "from training.pipeline.training_run import run_training\n"
        "from training.settings import get_settings\n"
        "s = get_settings()\n"
        "write_demo_dataset(s.data_dir, DemoSpec(per_class_limit=200, impostor_count=20))\n"
        f"print(run_training(s, epochs={epochs}).tag)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per server")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--tag", help="serve this existing model version (uses your env's stores)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs for the throw-away model")
    parser.add_argument("--workdir", type=Path, help="keep the workspace and server logs here (default: a temp dir)")
    args = parser.parse_args()
    missing = [name for name in BASELINE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:  # say so now, not after the workspace's training
        raise SystemExit(f"the naive baseline needs {', '.join(missing)}: .venv/bin/pip install -e '.[bench]'")

    with workspace(args.workdir, prefix="bouncer-bench-") as root:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if args.tag is None:
            env.update(isolated_env(root))
            print("preparing a throw-away workspace (demo data + short training) ...", flush=True)
            tag = prepare_workspace(root, env, args.epochs)
        else:
            tag = args.tag
        data_dir = Path(env.get("BOUNCER_DATA_DIR", "data"))
        images = [p.read_bytes() for p in sorted((data_dir / "test").glob("*/*.png"))[:256]]
        if not images:
            raise SystemExit(f"no test images under {data_dir / 'test'}")
        env["BOUNCER_MODEL_TAG"] = tag
        env["BOUNCER_BENCH_TAG"] = tag

        results = []
        servers = [  # name, command for a port, readiness path
            (
                "bouncer (ONNX + adaptive batching)",
                lambda port: bentoml_serve_command("bento_service.service:Bouncer", port),
                "/readyz",
            ),
            (
                "naive (FastAPI + Keras predict)",
                lambda port: [str(BIN / "uvicorn"), "benchmarks.naive_server:app", "--port", str(port)],
                "/ready",
            ),
        ]
        for name, command, ready in servers:
            port, log = free_port(), root / f"{name.split()[0]}.log"
            with running(command(port), ready_url=f"http://127.0.0.1:{port}{ready}", log=log, env=env, cwd=PROJECT):
                url = f"http://127.0.0.1:{port}/predict"
                results.append(asyncio.run(drive(name, url, images, args.clients, args.seconds, args.warmup)))
            if set(results[-1].statuses) != {200}:
                print(excerpt_errors(log))

    bouncer, naive = results
    print(f"\nmodel {tag}; {args.clients} concurrent clients, {args.seconds:.0f} s measured after {args.warmup:.0f} s")
    for result in results:
        print(result.line())
    print(
        f"\nratio bouncer/naive: throughput x{bouncer.throughput / naive.throughput:.2f}, "
        f"p50 x{bouncer.percentile(50) / naive.percentile(50):.2f}, "
        f"p99 x{bouncer.percentile(99) / naive.percentile(99):.2f} (lower latency ratio is better)"
    )
    shed = bouncer.statuses.get(503, 0)
    print(f"bouncer 503 (overloaded) answers: {shed}")


if __name__ == "__main__":
    main()
