"""The review page on a big queue: first paint and deep scroll in headless Chromium against a real `bentoml serve`.

Issue 12: a queue over 100k images must stay responsive; the first paint of a
100-thumbnail grid should be under 1 s on this machine (measured, printed, not asserted).
In one run:

1. a workspace (``--workdir``, default a temp dir): the silhouette demo (10,000 images)
   and one quick model trained on it (1 epoch, no augmentation, 2 out-of-fold folds so
   ``suspects`` works), then distinct variants of its train images (flipped, shifted,
   noised PNGs in ``train/<class>/variants-NN/``) up to ``--images`` in all, imported
   after the training as a user's new photos are;
2. ``bentoml serve`` of it on a free port;
3. for the queues ``suspects`` and ``images`` (all train images, by path), in Debian's
   Chromium (Playwright, never a downloaded browser), each time in a fresh browser
   context (empty HTTP cache): the time from navigation to 100 thumbnails loaded
   (``naturalWidth > 0``), cold (the server's first request for that queue) and warm; then
   scrolling to the end of the queue page by page (the page fetches 120 items per request
   as the viewport nears the bottom of what it has), until that last page's thumbnails are
   painted; then the queue length the page shows, DOM and JS heap (after a GC) and the
   longest main-thread task while scrolling; and, in a fresh context, a jump ("from #") to
   the middle of the queue until its first screen of thumbnails is painted;
4. a table, and screenshots in ``<workdir>/screens/``.

A ``--workdir`` that already holds a workspace of the same ``--images`` is reused
(delete it to rebuild). Develop with a small size; 100k takes a while on 2 cores:

    .venv/bin/python benchmarks/review_page.py --images 12000 --workdir /tmp/review-12k
    .venv/bin/python benchmarks/review_page.py --workdir /tmp/review-100k      # 100,000 images
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.workspace import isolated_env, serving, workspace  # noqa: E402
from tests.browser import chromium  # noqa: E402
from training.jobs.processes import free_port  # noqa: E402

# Tall enough for more than 100 thumbnails at once (10 columns, 11 rows), as in the page's browser test.
VIEWPORT = {"width": 1900, "height": 2600}
FIRST = 100  # thumbnails whose first paint is timed
PAGE = 120  # queue items the page fetches a request (app.js PAGE)
QUEUES = {"suspects": "suspects", "images": "images (all train images, by path)"}  # the page's source names
# One quick model: the page needs a served version with out-of-fold probabilities, not a good one
# (no augmentation: its layers took ~40% of a training step here).
QUICK_TRAINING = {"BOUNCER_OUT_OF_FOLD_FOLDS": "2", "BOUNCER_OUT_OF_FOLD_EPOCHS": "1", "BOUNCER_AUGMENT": "none"}
SHIFT = 3  # variants move the picture by up to this many pixels each way
MANIFEST = "review-page-workspace.json"

# Before the page's own scripts: note when FIRST thumbnails are loaded (performance.now() counts from
# navigation start), every long task (> 50 ms on the main thread), the queue's API requests and thumbnails.
TIMING_SCRIPT = """
(() => {
  window.__longTasks = [];
  window.__queueRequests = [];
  window.__thumbnails = 0;
  performance.setResourceTimingBufferSize(5000);
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__longTasks.push([entry.startTime, entry.duration]);
  }).observe({ type: "longtask", buffered: true });
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const queue = /\/(suspects|images)$/.test(entry.name);
      if (entry.name.includes("/ui/thumbnail/")) window.__thumbnails++;
      else if (entry.name.includes("/ui/thumbnails?"))  // a batch: as many as its ids
        window.__thumbnails += new URL(entry.name).searchParams.get("ids").split(",").length;
      else if (queue) window.__queueRequests.push([entry.startTime, entry.responseEnd]);
    }
  }).observe({ type: "resource", buffered: true });
  const check = () => {
    let painted = 0;
    for (const img of document.querySelectorAll("#grid .card img")) if (img.complete && img.naturalWidth > 0) painted++;
    if (painted >= FIRST) window.__firstThumbnails = performance.now();
    else requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})();
""".replace("FIRST", str(FIRST))

# Where a first paint's time went, from navigation start (ms): the page, its script, its info, the queue's first page.
BREAKDOWN = """
() => {
  const resources = performance.getEntriesByType("resource");
  const at = (part) => resources.find((r) => r.name.includes(part)) || { startTime: NaN, responseEnd: NaN };
  const thumbnails = resources.filter((r) => /\/ui\/thumbnails?[/?]/.test(r.name));
  const [queueStart, queueEnd] = window.__queueRequests[0] || [NaN, NaN];
  return {
    document: performance.getEntriesByType("navigation")[0].responseEnd,
    script: at("/static/app.js").responseEnd,
    infoStart: at("/ui/info").startTime,
    info: at("/ui/info").responseEnd,
    queueStart,
    queue: queueEnd,
    thumbnailsStart: Math.min(...thumbnails.map((r) => r.startTime)),
    painted: window.__firstThumbnails,
  };
}
"""

# In the page: scroll the grid to the bottom of what it holds, wait for the next page, again, until the
# count has no "+" (the source said there is no more); then until the last rows' thumbnails are painted.
DEEP_SCROLL = """
async ({ limitMs, stallMs }) => {
  const viewport = document.querySelector("#viewport");
  const counter = () => document.querySelector("#selection-count").textContent;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const started = performance.now();
  let pages = 0;
  let stopped = "";
  // "120+" (no total known) or "120 of 98,311": more to load
  const number = (text) => Number(text.replace(/[^0-9]/g, ""));
  const more = () => {
    const text = counter();
    const m = text.match(/· (?:#[^–]+–)?([0-9.,\s]+) of ([0-9.,\s]+)$/);
    return text.includes("+") || (m !== null && number(m[1]) < number(m[2]));
  };
  while (more()) {
    if (performance.now() - started > limitMs) { stopped = "time limit"; break; }
    const before = counter();
    viewport.scrollTop = viewport.scrollHeight;
    const waiting = performance.now();
    while (counter() === before && performance.now() - waiting < stallMs) await sleep(5);
    if (counter() === before) { stopped = `no new page within ${stallMs} ms`; break; }
    pages++;
  }
  const loaded = performance.now() - started;
  viewport.scrollTop = viewport.scrollHeight;
  const painted = () => {
    const images = [...document.querySelectorAll("#grid .card img")];
    return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
  };
  while (!painted() && performance.now() - started < limitMs + stallMs) await sleep(5);
  await new Promise((resolve) => requestAnimationFrame(resolve));
  const cards = [...document.querySelectorAll("#grid .card")];
  return {
    ms: performance.now() - started, loadedMs: loaded, pages, stopped, counter: counter(),
    lastIndex: cards.length ? Number(cards[cards.length - 1].dataset.index) : -1,
    since: started,
  };
}
"""


# In the page: type a position into "from #", press Enter, until that screen's thumbnails are painted.
JUMP = """
async ({ position, limitMs }) => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const start = document.querySelector("#start");
  const started = performance.now();
  start.value = String(position);
  start.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true }));
  const counter = () => document.querySelector("#selection-count").textContent;
  const there = () => {
    const first = document.querySelector("#grid .card");
    const images = [...document.querySelectorAll("#grid .card img")];
    return first !== null && Number(first.dataset.index) === 0
      && counter().includes(`#${position.toLocaleString()}–`)
      && images.every((img) => img.complete && img.naturalWidth > 0);
  };
  while (!there()) {
    if (performance.now() - started > limitMs) return { ms: null, counter: counter() };
    await sleep(5);
  }
  await new Promise((resolve) => requestAnimationFrame(resolve));
  const cards = document.querySelectorAll("#grid .card").length;
  return { ms: performance.now() - started, counter: counter(), cards };
}
"""


# --- the workspace ------------------------------------------------------------------------------
def demo_train_files(data_dir: Path) -> list[Path]:
    """The demo's own train images (not variants from an earlier run)."""
    return sorted(data_dir.glob("train/*/*.png"))


def write_variants_of(job: tuple[list[tuple[str, int]], int, int]) -> int:
    """One worker's share: ``count`` variants of each (path, count), distinct by their move and noise."""
    originals, seed, shift = job
    from PIL import Image

    moves = [(f, dx, dy) for f in (0, 1) for dx in range(-shift, shift + 1) for dy in range(-shift, shift + 1)]
    moves.remove((0, 0, 0))
    written = 0
    for path_text, count in originals:
        path = Path(path_text)
        pixels = np.asarray(Image.open(path))
        rng = np.random.default_rng([seed, int(path.stem)])  # the demo's stems are unique indices
        for number, choice in enumerate(rng.permutation(len(moves))[:count], start=1):
            flip, dx, dy = moves[choice]
            moved = np.roll(pixels[:, ::-1] if flip else pixels, (dy, dx), axis=(0, 1)).astype(np.int16)
            noised = np.clip(moved + rng.integers(-6, 7, size=moved.shape), 0, 255).astype(np.uint8)
            target = path.parent / f"variants-{number:02d}" / f"{path.stem}-v{number:02d}.png"
            target.parent.mkdir(exist_ok=True)
            Image.fromarray(noised).save(target)
            written += 1
    return written


def write_variants(data_dir: Path, total: int, *, seed: int = 0) -> int:
    """Variants of the demo's train images until the dataset holds ``total`` images; returns how many were written."""
    originals = demo_train_files(data_dir)
    existing = len(originals) + len(list(data_dir.glob("test/*/*.png")))
    needed = total - existing
    if needed <= 0:
        return 0
    per_image, extra = divmod(needed, len(originals))
    shift = SHIFT  # moves further when more variants are asked (1M images: 4 px)
    while (2 * shift + 1) ** 2 * 2 - 1 < per_image + (extra > 0):
        shift += 1
    counts = [(str(p), per_image + (i < extra)) for i, p in enumerate(originals) if per_image or i < extra]
    workers = os.cpu_count() or 1
    jobs = [(counts[i::workers], seed, shift) for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(write_variants_of, jobs))


def train(env: dict[str, str], epochs: int, log: Path) -> str:
    """Train once in a child process (TensorFlow stays out of this one), printing its phases; returns the tag."""
    code = (
        "import time\n"
        "from training.pipeline.training_run import run_training\n"
        "from training.settings import get_settings\n"
        "started, seen = time.monotonic(), []\n"
        "def sink(progress):\n"
        "    if progress.phase not in seen:\n"
        "        seen.append(progress.phase)\n"
        "        print(f'  {time.monotonic() - started:6.0f} s  {progress.phase}: {progress.message}', flush=True)\n"
        f"print('TAG', run_training(get_settings(), epochs={epochs}, sink=sink).tag, flush=True)\n"
    )
    tag = ""
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", code], cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=out, text=True
        )
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("TAG "):
                tag = line.split()[1]
            else:
                print(line, end="", flush=True)
    if child.wait() != 0 or not tag:
        raise RuntimeError(f"training failed (see {log}):\n{log.read_text(errors='replace')[-3000:]}")
    return tag


def build(root: Path, env: dict[str, str], args: argparse.Namespace, stages: dict[str, float]) -> str:
    """The workspace's data and model, or the ones a previous run left in ``root`` for the same size."""
    manifest = root / MANIFEST
    if manifest.exists():
        kept = json.loads(manifest.read_text())
        if kept["images"] == args.images:
            print(f"reusing the workspace in {root}: {kept['images']:,} images, model {kept['tag']}")
            return str(kept["tag"])
        raise SystemExit(f"{root} holds a workspace of {kept['images']:,} images: another --workdir, or delete it")
    from training.data.demo_silhouettes import DemoSpec, write_demo_dataset

    data_dir = Path(env["BOUNCER_DATA_DIR"])
    started = time.perf_counter()
    write_demo_dataset(data_dir, DemoSpec(), force=True)
    stages["write the demo"] = time.perf_counter() - started
    demo = len(list(data_dir.glob("*/*/*.png")))
    if args.images < demo:
        raise SystemExit(f"--images {args.images}: the demo alone has {demo:,} images")
    started = time.perf_counter()
    print(f"training one {args.epochs}-epoch model on the demo's {demo:,} images (log: {root / 'train.log'}) ...")
    tag = train(
        {**env, **QUICK_TRAINING, "BOUNCER_MIN_TRAIN_STEPS": str(args.min_train_steps)}, args.epochs, root / "train.log"
    )
    stages["train"] = time.perf_counter() - started
    # The rest arrive after training, as a user's new photos do: imported, searchable without retraining.
    started = time.perf_counter()
    written = write_variants(data_dir, args.images)
    stages["write variants"] = time.perf_counter() - started
    print(f"wrote {written:,} variants in {stages['write variants']:.0f} s; importing them ...", flush=True)
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("bouncer")), "-q", "import"], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"bouncer import failed: {done.stderr[-3000:]}")
    stages["import"] = time.perf_counter() - started
    manifest.write_text(json.dumps({"images": args.images, "tag": tag}))
    return tag


# --- the page -----------------------------------------------------------------------------------
@dataclass
class QueueResult:
    queue: str
    first_paint_ms: list[float] = field(default_factory=list)  # cold first, then warm
    page_first_grid_ms: list[float] = field(default_factory=list)  # the page's own window.bouncerTimings
    breakdowns: list[dict[str, float]] = field(default_factory=list)  # BREAKDOWN of each first paint
    shown_at_first: str = ""
    deep: dict[str, Any] = field(default_factory=dict)
    dom_elements: int = 0
    cards: int = 0
    dom_nodes: int = 0  # Chromium's count, detached nodes not yet collected included
    heap_mb: float = 0.0
    long_tasks: int = 0
    long_tasks_ms: float = 0.0
    longest_task_ms: float = 0.0
    page_requests_ms: list[float] = field(default_factory=list)  # the queue's pages while scrolling, in the browser
    thumbnails_loaded: int = 0  # while scrolling to the end
    api_length: int = 0
    api_walk_ms: list[float] = field(default_factory=list)  # the same pages straight from the API, one by one
    jump: dict[str, Any] = field(default_factory=dict)  # JUMP to the middle, in a fresh context
    errors: list[str] = field(default_factory=list)


def api_walk(url: str, queue: str, result: QueueResult) -> None:
    """The queue's length and its pages' latencies straight from the API: what the page waits for, without it."""
    with httpx.Client(base_url=url, timeout=600) as client:
        while True:
            started = time.perf_counter()
            page = client.post(f"/{queue}", json=first_page(queue, result.api_length))
            result.api_walk_ms.append((time.perf_counter() - started) * 1000)
            page.raise_for_status()
            result.api_length += len(page.json())
            if len(page.json()) < PAGE:
                return


def first_page(queue: str, offset: int = 0) -> dict[str, Any]:
    """The body of the page's request for one page of ``queue`` (app.js SOURCES, PAGE = 120)."""
    if queue == "suspects":
        return {"k": PAGE, "offset": offset}
    return {"split": "train", "limit": PAGE, "offset": offset}


def warm_workers(url: str, queue: str) -> None:
    """Concurrent requests for the queue's first page, so each worker has its ranking before the warm paints."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: httpx.post(f"{url}/{queue}", json=first_page(queue), timeout=600), range(16)))


def open_queue(browser: Any, url: str, queue: str, result: QueueResult, timeout_s: float) -> tuple[Any, Any]:
    """A fresh context (empty cache) on the queue; waits for FIRST thumbnails and notes the time."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(TIMING_SCRIPT)
    page = context.new_page()
    page.on("pageerror", lambda error: result.errors.append(str(error)))
    page.goto(f"{url}/ui/#/review/{queue}")
    page.wait_for_function("window.__firstThumbnails !== undefined", timeout=timeout_s * 1000, polling=50)
    result.first_paint_ms.append(page.evaluate("window.__firstThumbnails"))
    page.wait_for_function("window.bouncerTimings && window.bouncerTimings.firstGrid !== undefined")
    result.page_first_grid_ms.append(page.evaluate("window.bouncerTimings.firstGrid"))
    result.breakdowns.append(page.evaluate(BREAKDOWN))
    return context, page


def measure(browser: Any, url: str, queue: str, screens: Path, args: argparse.Namespace) -> QueueResult:
    result = QueueResult(queue)
    for attempt in range(args.repeats):
        context, page = open_queue(browser, url, queue, result, args.first_timeout)
        if attempt == 0:
            result.shown_at_first = page.inner_text("#selection-count")
            page.screenshot(path=str(screens / f"{queue}-first.png"))
            warm_workers(url, queue)
        if attempt < args.repeats - 1:
            context.close()
    firsts = ", ".join(f"{ms:.0f}" for ms in result.first_paint_ms)
    print(f"  {queue}: first paint {firsts} ms; scrolling to the end ...", flush=True)
    thumbnails_before = page.evaluate("window.__thumbnails")
    result.deep = page.evaluate(DEEP_SCROLL, {"limitMs": args.deep_seconds * 1000, "stallMs": 120_000})
    since = result.deep["since"]
    result.thumbnails_loaded = page.evaluate("window.__thumbnails") - thumbnails_before
    tasks = [duration for start, duration in page.evaluate("window.__longTasks") if start >= since]
    result.long_tasks, result.long_tasks_ms, result.longest_task_ms = len(tasks), sum(tasks), max(tasks, default=0.0)
    requests = page.evaluate("window.__queueRequests")
    result.page_requests_ms = [end - start for start, end in requests if start >= since]
    page.screenshot(path=str(screens / f"{queue}-deep.png"))
    cdp = context.new_cdp_session(page)
    cdp.send("HeapProfiler.collectGarbage")
    cdp.send("Performance.enable")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    result.dom_nodes = int(metrics.get("Nodes", 0))
    result.heap_mb = metrics.get("JSHeapUsedSize", 0) / 2**20
    result.dom_elements = page.evaluate("document.querySelectorAll('*').length")
    result.cards = page.locator("#grid .card").count()
    context.close()
    api_walk(url, queue, result)
    result.jump = jump_to_the_middle(browser, url, queue, result)
    return result


def jump_to_the_middle(browser: Any, url: str, queue: str, result: QueueResult) -> dict[str, Any]:
    """A fresh context (empty cache) on the queue, then "from #" the middle position: until it is painted."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.on("pageerror", lambda error: result.errors.append(str(error)))
    page.goto(f"{url}/ui/#/review/{queue}")
    page.locator("#grid .card").first.wait_for(timeout=600_000)
    position = max(1, result.api_length // 2)
    jumped = page.evaluate(JUMP, {"position": position, "limitMs": 120_000})
    context.close()
    return {"position": position, **jumped}


def shown_length(counter: str) -> str:
    """'0 selected · 120 of 12,000' -> '12,000'; '240+' (no total known) -> '240+'."""
    return counter.rpartition(" of ")[2] if " of " in counter else counter.rpartition("· ")[2]


def where_it_went(b: dict[str, float]) -> str:
    """One first paint's timeline from navigation start, ms."""
    return (
        f"page {b['document']:.0f}, app.js {b['script']:.0f}, ui/info {b['infoStart']:.0f}-{b['info']:.0f}, "
        f"first queue page {b['queueStart']:.0f}-{b['queue']:.0f}, thumbnails {b['thumbnailsStart']:.0f}-"
        f"{b['painted']:.0f}"
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: list[QueueResult], images: int, stages: dict[str, float]) -> None:
    print("\nstages: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items()))
    print(
        f"\nreview page, {images:,} images in the dataset, viewport {VIEWPORT['width']}x{VIEWPORT['height']}, "
        f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'queue':<10} {'in queue':>9} {'page shows':>11} {'first paint ms':>15} {'warm ms':>8} "
        f"{'deep scroll ms':>15} {'pages':>6} {'DOM elements':>13} {'cards':>6} {'JS heap MB':>11} "
        f"{'longest task ms':>16}"
    )
    for r in results:
        warm = f"{median(r.first_paint_ms[1:]):.0f}" if len(r.first_paint_ms) > 1 else "-"
        print(
            f"{r.queue:<10} {r.api_length:>9,} {shown_length(r.deep['counter']):>11} {r.first_paint_ms[0]:>15.0f} "
            f"{warm:>8} {r.deep['ms']:>15.0f} {r.deep['pages']:>6} {r.dom_elements:>13} {r.cards:>6} "
            f"{r.heap_mb:>11.1f} {r.longest_task_ms:>16.0f}"
        )
    print(
        f"first paint: navigation to {FIRST} thumbnails loaded, a fresh browser cache each time (cold: the server's "
        "first request for the queue; warm: the median of the rest, after requests for the queue's first page "
        "reached every worker); deep scroll: from the first page to the "
        "last page's thumbnails painted, scrolling to the bottom of what the page holds each time a page arrives"
    )
    for r in results:
        print(f"\n{QUEUES[r.queue]}:")
        firsts = ", ".join(f"{ms:.0f}" for ms in r.first_paint_ms)
        own = ", ".join(f"{ms:.0f}" for ms in r.page_first_grid_ms)
        print(f"  first paints {firsts} ms; the page's own firstGrid (from its queue request on) {own} ms")
        for label, breakdown in (("cold", r.breakdowns[0]), ("last", r.breakdowns[-1])):
            print(f"  {label}: {where_it_went(breakdown)}")
        print(
            f"  the page showed '{r.shown_at_first}' at first paint and '{r.deep['counter']}' at the end; "
            f"the API pages {r.api_length:,}"
        )
        per_page = r.deep["loadedMs"] / r.deep["pages"] if r.deep["pages"] else 0.0
        stopped = f"; STOPPED: {r.deep['stopped']}" if r.deep["stopped"] else ""
        print(
            f"  to the end: {r.deep['pages']} pages fetched one after another in {r.deep['loadedMs']:.0f} ms "
            f"({per_page:.0f} ms a page), last card #{r.deep['lastIndex']:,}, its thumbnails painted at "
            f"{r.deep['ms']:.0f} ms; {r.thumbnails_loaded:,} thumbnails loaded meanwhile{stopped}"
        )
        print(
            f"  a queue page's request took {median(r.page_requests_ms):.0f} ms in the browser while scrolling "
            f"(median; max {max(r.page_requests_ms, default=float('nan')):.0f}), {median(r.api_walk_ms):.0f} ms "
            f"straight from the API (median of {len(r.api_walk_ms)}; all of them {sum(r.api_walk_ms):.0f} ms)"
        )
        if r.jump:
            took = f"{r.jump['ms']:.0f} ms" if r.jump["ms"] is not None else "NOT within 120 s"
            print(
                f"  from # {r.jump['position']:,} (the middle): that screen's thumbnails painted in {took} "
                f"(the page showed '{r.jump['counter']}')"
            )
        print(
            f"  after it: {r.dom_elements} DOM elements ({r.cards} cards), Chromium's node count {r.dom_nodes}, "
            f"JS heap {r.heap_mb:.1f} MB after a GC; {r.long_tasks} long tasks while scrolling, "
            f"{r.long_tasks_ms:.0f} ms in all, the longest {r.longest_task_ms:.0f} ms"
        )
        if r.errors:
            print(f"  JavaScript errors: {r.errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="images in the dataset (train + test)")
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the workspace here (default: a temp dir)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--min-train-steps", type=int, default=50, help="BOUNCER_MIN_TRAIN_STEPS for the training")
    parser.add_argument("--repeats", type=int, default=3, help="first paints per queue (the first with a cold server)")
    parser.add_argument("--first-timeout", type=float, default=600, help="seconds to wait for a first paint")
    parser.add_argument("--deep-seconds", type=float, default=3600, help="stop scrolling a queue after this long")
    parser.add_argument("--queues", nargs="+", choices=list(QUEUES), default=list(QUEUES))
    args = parser.parse_args()
    stages: dict[str, float] = {}
    with workspace(args.workdir, prefix="bouncer-review-page-") as root:
        env = {**os.environ, **isolated_env(root)}
        tag = build(root, env, args, stages)
        screens = root / "screens"
        screens.mkdir(exist_ok=True)
        port = free_port()
        started = time.perf_counter()
        with serving(port, {**env, "BOUNCER_MODEL_TAG": tag}, root / "server.log", timeout=600):
            stages["start the server"] = time.perf_counter() - started
            print(f"serving {tag} at http://127.0.0.1:{port}/ui/ (log: {root / 'server.log'})", flush=True)
            results = []
            with chromium() as browser:
                for queue in args.queues:
                    started = time.perf_counter()
                    results.append(measure(browser, f"http://127.0.0.1:{port}", queue, screens, args))
                    stages[f"measure {queue}"] = time.perf_counter() - started
        report(results, args.images, stages)
        print(f"\nscreenshots: {screens}")


if __name__ == "__main__":
    main()
