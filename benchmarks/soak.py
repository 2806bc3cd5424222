"""A soak: 16 clients of mixed traffic against one served bento for a bounded time.

Each client loops over a weighted mix of what a review session and its users send:
predict, similar, images, history, relabel followed by its undo, and evaluate. Prints
answers by status, p50/p99 per endpoint, and the server's memory (RSS of its whole
process tree) at the start, the middle and the end, so a leak or a queue shows.

Without ``--tag`` it builds a throw-away workspace (demo data + a short training) in a
temp dir, never touching your stores:

    .venv/bin/python benchmarks/soak.py --seconds 300     # ~8 min on 2 cores with the training
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import psutil

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.workspace import model_to_measure, serving, workspace  # noqa: E402
from training.jobs.processes import descendants, free_port  # noqa: E402

TOKEN = "soak"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIX = {"predict": 30, "similar": 20, "images": 20, "history": 15, "relabel+undo": 10, "evaluate": 5}


class Soak:
    def __init__(self, url: str, images: list[bytes], ids: list[str], labels: list[str]) -> None:
        self.url, self.images, self.ids, self.labels = url, images, ids, labels
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self.errors: list[str] = []

    async def call(
        self, client: httpx.AsyncClient, name: str, method: str, path: str, **kwargs: object
    ) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await client.request(method, f"{self.url}{path}", timeout=120, **kwargs)
        except httpx.HTTPError as exc:
            self.statuses[name][0] += 1
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            raise
        self.latencies[name].append((time.perf_counter() - started) * 1000)
        self.statuses[name][response.status_code] += 1
        if response.status_code >= 400 and len(self.errors) < 20:
            self.errors.append(f"{name}: {response.status_code} {response.text[:200]}")
        return response

    async def one(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        op = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        image_id = rng.choice(self.ids)
        if op == "predict":
            files = {"image": ("x.png", rng.choice(self.images), "image/png")}
            await self.call(client, op, "POST", "/predict", files=files)
        elif op == "similar":
            await self.call(client, op, "POST", "/similar", json={"image_id": image_id, "k": 10})
        elif op == "images":
            body = {"split": "train", "limit": 100, "offset": rng.randrange(0, max(1, len(self.ids) - 100))}
            await self.call(client, op, "POST", "/images", json=body)
        elif op == "history":
            await self.call(client, op, "POST", "/history", json={"limit": 50})
        elif op == "evaluate":
            await self.call(client, op, "POST", "/evaluate", json={"split": "test"})
        else:
            body = {"image_ids": [image_id], "label": rng.choice(self.labels), "reason": "soak"}
            answer = await self.call(client, "relabel", "POST", "/relabel", json=body, headers=AUTH)
            event_id = answer.json().get("event_id") if answer.status_code == 200 else None
            if event_id is not None:
                undo = await self.call(client, "undo", "POST", "/undo", json={"event_id": event_id}, headers=AUTH)
                if undo.status_code == 409:  # another client changed the image since: not an error of the server
                    self.statuses["undo"][409] -= 1
                    self.statuses["undo (conflict: a later change)"][409] += 1

    async def client(self, seed: int, deadline: float) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                try:
                    await self.one(client, rng)
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)


def rss_mb(pid: int) -> float:
    processes = [psutil.Process(pid), *descendants(pid)]
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total / 2**20


async def soak(url: str, pid: int, args: argparse.Namespace, soaker: Soak) -> list[tuple[str, float]]:
    deadline = time.monotonic() + args.seconds
    memory = [("start", rss_mb(pid))]
    clients = [asyncio.create_task(soaker.client(seed, deadline)) for seed in range(args.clients)]
    await asyncio.sleep(args.seconds / 2)
    memory.append(("middle", rss_mb(pid)))
    await asyncio.gather(*clients)
    memory.append(("end", rss_mb(pid)))
    return memory


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else float("nan")


def report(soaker: Soak, memory: list[tuple[str, float]], args: argparse.Namespace) -> None:
    print(f"\n{args.clients} clients, {args.seconds:.0f} s, mix {MIX}")
    print(f"{'endpoint':<34} {'calls':>7} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for name in sorted(soaker.statuses):
        times = soaker.latencies.get(name, [])
        statuses = {code: n for code, n in sorted(soaker.statuses[name].items()) if n}
        print(f"{name:<34} {len(times):>7} {p(times, 50):>8.1f} {p(times, 99):>8.1f}  {statuses}")
    bad = sum(n for name, c in soaker.statuses.items() for code, n in c.items() if code == 0 or code >= 500)
    print(f"5xx or no answer: {bad}")
    print("server RSS (MB): " + ", ".join(f"{when} {mb:.0f}" for when, mb in memory))
    for line in soaker.errors[:10]:
        print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tag", help="serve this existing model version (uses your env's stores)")
    parser.add_argument("--workdir", type=Path, help="keep the workspace and the server log here")
    args = parser.parse_args()
    with workspace(args.workdir, prefix="bouncer-soak-") as root:
        env, tag = model_to_measure(root, args.tag)
        data_dir = Path(env.get("BOUNCER_DATA_DIR", "data"))
        images = [path.read_bytes() for path in sorted(data_dir.glob("test/*/*.png"))[:200]]
        port = free_port()
        serve_env = {**env, "BOUNCER_MODEL_TAG": tag, "BOUNCER_API_TOKEN": TOKEN}
        url = f"http://127.0.0.1:{port}"
        with serving(port, serve_env, root / "soak-server.log") as server:
            listed = httpx.post(f"{url}/images", json={"split": "train", "limit": 10_000}, timeout=60).json()
            ids = [row["image_id"] for row in listed]
            labels = sorted({row["label"] for row in listed})
            httpx.post(f"{url}/evaluate", json={"split": "test"}, timeout=300)  # the first evaluation infers the split
            soaker = Soak(url, images, ids, labels)
            memory = asyncio.run(soak(url, server.pid, args, soaker))
        report(soaker, memory, args)


if __name__ == "__main__":
    main()
