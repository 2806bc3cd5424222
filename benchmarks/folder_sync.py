"""``bouncer import`` (the folder sync) at 100k and 200k images: seconds and peak RSS, this tree against a baseline.

Issue 26: at 1M images the import took 11 min 51 s and 4.16 GiB (~3.7 KB an image). For each size, in a
workspace of the silhouette demo and its variants (``benchmarks/scale.py``'s ``build``, kept in ``--workdir``),
each tree's ``bouncer import`` runs in its own child, interleaved with the other's, twice per run: on a
fresh database (every file hashed and added) and again (nothing changed: every file trusted by its
fingerprint). Prints seconds, the child's peak RSS (the kernel's, ``wait4``: mostly the modules a CLI loads at
small sizes), the import's own growth (the peak above the RSS once ``training.cli`` is loaded, the peak reset
through ``/proc/self/clear_refs`` then) and that growth per image beyond the demo's (10k images), and the ratios
new/baseline (the machine is shared: only the ratios mean something).

    git worktree add /tmp/bouncer-main main    # the baseline's code (any checkout of the project)
    .venv/bin/python benchmarks/folder_sync.py --baseline /tmp/bouncer-main --workdir /tmp/sync-bench
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.scale import build, run_child  # noqa: E402
from benchmarks.workspace import isolated_env, workspace  # noqa: E402

# The demo alone (10k images): its import's growth is subtracted
# before dividing by the images above it
SMALL = 10_000


# The child: `bouncer import` after its modules are loaded and the peak RSS is reset; what it grew by.
# -P: the code is PYTHONPATH's tree, not the working directory's (this project)
CHILD = """
import json
from training.cli import app
import training.curation.labels, training.labels.sync, training.pipeline.readiness  # what the command imports

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))

loaded = status("VmRSS")
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # VmHWM := VmRSS
try:
    app(["-q", "import"])
except SystemExit as stop:
    if stop.code:
        raise
print("RESULT " + json.dumps({"growth": status("VmHWM") - loaded}))
"""


def import_once(tree: Path, root: Path, *, fresh: bool) -> tuple[float, int, int]:
    """Seconds, peak RSS and growth (bytes) of ``bouncer import`` with ``tree``'s code (``fresh``: a new database)."""
    env = {**os.environ, **isolated_env(root), "PYTHONPATH": str(tree), "BOUNCER_STATE_DIR": str(root / "state")}
    data = Path(env["BOUNCER_DATA_DIR"])
    if fresh:
        for stale in (data / "labels.db", data / "labels.db-wal", data / "labels.db-shm", data / "labels.csv"):
            stale.unlink(missing_ok=True)
    seconds, rss, out = run_child([sys.executable, "-P", "-c", CHILD], env, root / "import.log")
    result = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))
    return seconds, rss, result["growth"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--images", type=int, nargs="+", default=[100_000, 200_000])
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (and reuse their images)")
    args = parser.parse_args()
    trees = {"baseline": args.baseline.resolve(), "new": PROJECT}
    with workspace(args.workdir, prefix="bouncer-sync-") as top:
        base: dict[tuple[str, str], int] = {}  # the demo's growth
        print(
            f"{'images':>9} {'tree':>8} {'kind':>7} {'seconds':>8} {'peak MiB':>9} {'growth MiB':>10} {'B/image':>8}",
            flush=True,
        )
        for images in [SMALL, *args.images]:
            root = top / f"ws{images}"
            root.mkdir(parents=True, exist_ok=True)
            build(root, {**os.environ, **isolated_env(root)}, images, "silhouettes")
            figures: dict[tuple[str, str], tuple[float, int, int]] = {}
            for kind in ("fresh", "rescan"):
                order = trees if kind == "fresh" else dict(reversed(trees.items()))  # each tree first once
                for name, tree in order.items():
                    seconds, rss, growth = import_once(tree, root, fresh=kind == "fresh")
                    figures[name, kind] = seconds, rss, growth
                    if images == SMALL:
                        base[name, kind] = growth
                    per_image = (growth - base[name, kind]) / (images - SMALL) if images != SMALL else 0
                    print(
                        f"{images:>9,} {name:>8} {kind:>7} {seconds:>8.1f} {rss / 2**20:>9.0f} {growth / 2**20:>10.0f}"
                        f" {per_image:>8.0f}",
                        flush=True,
                    )
            for kind in ("fresh", "rescan"):
                (s0, r0, g0), (s1, r1, g1) = figures["baseline", kind], figures["new", kind]
                print(
                    f"{images:>9,} new/baseline {kind}: time x{s1 / s0:.2f}, "
                    f"peak RSS x{r1 / r0:.2f}, growth x{g1 / g0:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
