"""The containerized bento against `bentoml serve`: image size, build times, start-to-ready, predict req/s, one run.

On this machine and in this one run, with podman (as root) and the container tier's set-up
(``tests/container/podman.py``: a private podman store, a local Debian base image as
``python:3.11-slim``, since no registry is reachable here):

1. trains a throw-away model on a small demo (its own stores, never yours);
2. ``bentoml build`` + ``bentoml containerize --backend podman`` with an empty layer cache
   (cold), then a new bento of the same code and model again (warm: what a rebuild after a code
   change or a training costs); the image's size;
3. start-to-ready: ``podman run`` until ``/readyz`` answers, ``--rounds`` times (median, worst);
4. predict under ``--clients`` concurrent clients (benchmarks/loadgen.py, real test images):
   ``bentoml serve`` of the project on the host, the container with ``--network host`` and the
   container behind a published port (``-p``), in interleaved rounds, same model, same worker
   count; prints each round, the medians and the container's ratios to the host: of throughput,
   and of the CPU the server's processes spend per request (what other jobs on a shared machine
   hardly move, unlike throughput).

    .venv/bin/python benchmarks/container.py                     # ~12 min on 2 cores, cold
    .venv/bin/python benchmarks/container.py --podman-root /var/tmp/bouncer-podman   # kept: reruns build warm
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")
PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.loadgen import LoadResult, drive, multipart_request, run  # noqa: E402
from benchmarks.workspace import isolated_env, serving, train_throwaway, workspace  # noqa: E402
from tests.container.podman import (  # noqa: E402
    CONTAINER_ENV,
    Podman,
    make_base_image,
    missing_tools,
    owned_by_image_user,
    private_podman,
    run_container,
    wait_ready,
)
from training.jobs.processes import free_port  # noqa: E402

SMALL_DEMO = "DemoSpec(per_class_limit=100, impostor_count=10)"


def timed(step: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    out = step()
    return out, time.monotonic() - started


def build_and_containerize(env: dict[str, str], model_tag: str) -> tuple[str, float, float]:
    """A new bento of the project with ``model_tag`` and its image: (image name, build s, containerize s)."""

    def build() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "bentoml", "build", "--arg", f"model_tag={model_tag}", "--output", "tag"],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip().split("__tag__:")[-1]

    bento, build_s = timed(build)

    def containerize() -> str:
        command = [sys.executable, "-m", "bentoml", "containerize", "--backend", "podman", bento]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bentoml containerize failed:\n{(done.stdout + done.stderr)[-4000:]}")
        return bento

    _, containerize_s = timed(containerize)
    return bento, build_s, containerize_s


@contextmanager
def container(
    podman: Podman, image: str, data: Path, home: Path, *, host_network: bool, env: dict[str, str]
) -> Iterator[tuple[str, float, int]]:
    """A container of ``image`` with the two volumes: its URL, seconds from `podman run` to ready, its main pid."""
    port = free_port()
    name = f"bouncer-bench-{port}"
    settings = {**CONTAINER_ENV, **env, **({"BENTOML_PORT": str(port)} if host_network else {})}
    started = time.monotonic()
    run_container(
        podman,
        image,
        name,
        env=settings,
        volumes=[(data, "/data"), (home, "/bentoml")],
        publish=None if host_network else port,
        network_host=host_network,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(podman, name, url)
        ready = time.monotonic() - started
        yield url, ready, podman.inspect("container", name)["State"]["Pid"]
    finally:
        podman("rm", "--force", "--time", "30", name, check=False)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every process under it (a server's workers)."""
    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def load(name: str, url: str, pid: int, images: list[bytes], args: argparse.Namespace) -> tuple[LoadResult, float]:
    """The load's result and the server's CPU milliseconds per answered request (its processes' own time).

    Throughput on a machine other jobs share swings with their load; the CPU a request costs the
    server's processes hardly does, so it tells a container's overhead apart from the noise
    (what the kernel spends forwarding a published port is not in it).
    """
    port = int(url.rsplit(":", 1)[1])
    requests = [multipart_request("127.0.0.1", port, "/predict", [("image", "x.png", image)]) for image in images]
    run(drive(name, "127.0.0.1", port, requests, clients=args.clients, seconds=args.warmup, warmup=0))
    before = cpu_seconds(pid)
    result = run(drive(name, "127.0.0.1", port, requests, clients=args.clients, seconds=args.seconds, warmup=0))
    answered = result.ok + result.non_2xx
    return result, (cpu_seconds(pid) - before) * 1000 / max(answered, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per server and round")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each server; container starts")
    parser.add_argument("--workers", default="2", help="BOUNCER_WORKERS for every server")
    parser.add_argument("--podman-root", type=Path, help="keep the podman store here (default: a temp dir, removed)")
    parser.add_argument("--workdir", type=Path, help="keep the workspace here (default: a temp dir)")
    args = parser.parse_args()
    if why := missing_tools():
        raise SystemExit(why)

    with workspace(args.workdir, prefix="bouncer-container-bench-") as root:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **isolated_env(root)}
        env.update({"BOUNCER_IMAGE_SIZE": "32", "BOUNCER_OUT_OF_FOLD_FOLDS": "0", "BOUNCER_MIN_TRAIN_STEPS": "0"})
        print("training a throw-away model ...", flush=True)
        tag = train_throwaway(env, 2, demo=SMALL_DEMO)
        data = Path(env["BOUNCER_DATA_DIR"])
        images = [p.read_bytes() for p in sorted((data / "test").glob("*/*.png"))[:256]]
        kept = args.podman_root is not None and (args.podman_root / "storage").is_dir()
        cache = "kept from an earlier run" if kept else "empty"
        with private_podman(args.podman_root or root / "podman", keep=args.podman_root is not None) as podman:
            env.update({key: podman.env[key] for key in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF")})
            _, base_s = timed(lambda: make_base_image(podman, root))
            print(f"base image (the test's stand-in for python:3.11-slim): {base_s:.0f} s", flush=True)
            image, cold_build, cold_containerize = build_and_containerize(env, tag)
            first = f"bentoml build {cold_build:.0f} s, containerize {cold_containerize:.0f} s"
            print(f"first build (layer cache {cache}): {first}", flush=True)
            _, warm_build, warm_containerize = build_and_containerize(env, tag)  # a new bento, same requirements
            print(f"second build: bentoml build {warm_build:.0f} s, containerize {warm_containerize:.0f} s", flush=True)
            size = podman.inspect("image", image)["Size"]

            volumes = root / "volumes"
            shutil.copytree(data, volumes / "data")
            (volumes / "bentoml").mkdir()
            owned_by_image_user(volumes)
            serve_env = {"BOUNCER_WORKERS": args.workers}
            starts: list[float] = []
            labels = ("bentoml serve", "container, host network", "container, -p")
            results: dict[str, list[tuple[LoadResult, float]]] = {label: [] for label in labels}
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}/{args.rounds}", flush=True)
                port = free_port()
                host_env = {**env, **serve_env, "BOUNCER_MODEL_TAG": tag}
                with serving(port, host_env, root / f"serve-{round_}.log") as process:
                    answer = load("bentoml serve", f"http://127.0.0.1:{port}", process.pid, images, args)
                    results["bentoml serve"].append(answer)
                for label, host_network in (("container, host network", True), ("container, -p", False)):
                    vols = (volumes / "data", volumes / "bentoml")
                    with container(podman, image, *vols, host_network=host_network, env=serve_env) as started:
                        url, ready, pid = started
                        starts.append(ready)
                        results[label].append(load(label, url, pid, images, args))
                for rounds in results.values():
                    result, cpu_ms = rounds[-1]
                    print(f"  {result.line()}   server CPU {cpu_ms:.2f} ms/request", flush=True)

    host = statistics.median(r.throughput for r, _ in results["bentoml serve"])
    host_cpu = statistics.median(cpu for _, cpu in results["bentoml serve"])
    print(f"\nmodel {tag}; image {image}")
    print(f"image size: {size / 1e9:.2f} GB")
    print(f"build, layer cache {cache}: bentoml build {cold_build:.0f} s + containerize {cold_containerize:.0f} s")
    print(f"build, warm layer cache (a new bento): bentoml build {warm_build:.0f} s + {warm_containerize:.0f} s")
    print(f"start to ready: median {statistics.median(starts):.1f} s, worst {max(starts):.1f} s ({len(starts)} starts)")
    print(f"predict, {args.clients} clients, {args.workers} workers, median of {args.rounds} interleaved rounds:")
    for label, rounds in results.items():
        loads = [r for r, _ in rounds]
        throughput = statistics.median(r.throughput for r in loads)
        spread = f"{min(r.throughput for r in loads):.0f}-{max(r.throughput for r in loads):.0f}"
        cpu = statistics.median(c for _, c in rounds)
        cpu_spread = f"{min(c for _, c in rounds):.2f}-{max(c for _, c in rounds):.2f}"
        print(
            f"  {label:<26} {throughput:7.1f} req/s (rounds {spread}) x{throughput / host:.2f};  "
            f"server CPU {cpu:.2f} ms/request ({cpu_spread}) x{cpu / host_cpu:.2f};  "
            f"p99 {statistics.median(r.percentile(99) for r in loads):.0f} ms;  non-2xx {sum(r.non_2xx for r in loads)}"
        )


if __name__ == "__main__":
    main()
