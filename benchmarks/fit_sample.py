"""The embedder and OOD fits at 1M train images: all of them against a BOUNCER_FIT_SAMPLE_MAX sample.

Issue 26: at 1M images the embedding phase of a training peaked at 3.26 GiB and the OOD fit at
4.46 GiB (1.39 and 1.50 at 100k). Each fit runs in its own child process on synthetic network
outputs of a training's shapes (128-d embeddings of 10 Gaussian classes with their own
covariances, 64 early features, a linear head fitted to them, 2,000 held-out images), so the
peak RSS is the fit's own over the arrays it starts with. Prints seconds and memory of each,
and what the sample costs in quality: the AUROC of the fused OOD score against out-of-distribution
points (a held-out eleventh class and a mixture between classes), all against sample.

    .venv/bin/python benchmarks/fit_sample.py                   # 1M train images
    .venv/bin/python benchmarks/fit_sample.py --images 300000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, sys, time
import numpy as np
import psutil
sys.path.insert(0, PROJECT)
from sklearn.metrics import roc_auc_score
from training.labels.records import ImageRecord
from training.model.inference import Predictions
from training.model.ood import Head
from training.pipeline import training_run as run
from training.settings import Settings

n, cap = N, CAP
rng = np.random.default_rng(0)
classes = [f"c{i}" for i in range(11)]
centres = rng.normal(0, 4.0, (11, 128)).astype(np.float32)
mixes = [rng.normal(0, 0.6, (128, 128)).astype(np.float32) for _ in range(11)]
def draw(label, count):
    return centres[label] + rng.normal(0, 1, (count, 128)).astype(np.float32) @ mixes[label]
labels = rng.integers(0, 10, n)
emb = np.empty((n, 128), np.float32)
for c in range(10):
    emb[labels == c] = draw(c, int((labels == c).sum()))
early = (emb[:, :64] * 0.5 + rng.normal(0, 0.3, (n, 64))).astype(np.float32)
test_labels = rng.integers(0, 10, 2000)
test = np.concatenate([draw(c, 1)[None, 0] for c in test_labels]).astype(np.float32)
kernel = (centres[:10].T / 10).astype(np.float32)
head = Head(kernel, np.zeros(10, np.float32))
def predictions(e):
    return Predictions(np.full((len(e), 10), 0.1, np.float32), e, (e[:, :64] * 0.5).astype(np.float32))
records = [ImageRecord(str(i), f"p{i}", "train", classes[l], classes[l], "0" * 64) for i, l in enumerate(labels)]
tests = [ImageRecord(f"t{i}", f"t{i}", "test", classes[l], classes[l], "0" * 64) for i, l in enumerate(test_labels)]
data = run._Dataset(records, tests, classes[:10], "v", "d")
settings = Settings(fit_sample_max=cap, data_dir=os.environ["TMP"], state_dir=os.environ["TMP"])
train, held = Predictions(np.full((n, 10), 0.1, np.float32), emb, early), predictions(test)
import threading
me = psutil.Process()
before = me.memory_info().rss
top = [before]
def sample():
    while True:
        top[0] = max(top[0], me.memory_info().rss)
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
started = time.perf_counter()
embedder, index = run._embed(settings, data, train, held)
embedded = time.perf_counter()
ood, _ = run._baseline(settings, data, train, held, embedder, True, head)
done = time.perf_counter()
time.sleep(0.1)
peak = top[0]
far = draw(10, 1000)
between = ((draw(0, 1000) + draw(1, 1000)) / 2).astype(np.float32)
inside = draw(2, 1000)
aurocs = {}
for name, outside in (("held-out class", far), ("between two classes", between)):
    x = np.concatenate([inside, outside])
    raw = ood.raw(x, (x[:, :64] * 0.5).astype(np.float32))
    aurocs[name] = float(roc_auc_score(np.r_[np.zeros(1000), np.ones(1000)], raw))
print("RESULT " + json.dumps({"embed_s": embedded - started, "ood_s": done - embedded,
      "peak_over_start_gib": (peak - before) / 2**30, "auroc": aurocs}))
"""


def run_fit(images: int, cap: int, tmp: Path) -> dict:
    code = CHILD.replace("PROJECT", repr(str(PROJECT))).replace("N, CAP", f"{images}, {cap}")
    env = {**os.environ, "TMP": str(tmp), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    (line,) = [x for x in out.splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--cap", type=int, default=200_000, help="BOUNCER_FIT_SAMPLE_MAX of the sampled fit")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows = {
            f"all {args.images:,}": run_fit(args.images, args.images, Path(tmp)),
            f"sample of {args.cap:,}": run_fit(args.images, args.cap, Path(tmp)),
        }
    print(f"\n{args.images:,} train images, 128-d embeddings, 64 early features, 10 classes")
    print("| fit on | embedder s | OOD s | peak RSS over the start (GiB) | AUROC held-out class | AUROC between |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        a = r["auroc"]
        print(
            f"| {name} | {r['embed_s']:.1f} | {r['ood_s']:.1f} | {r['peak_over_start_gib']:.2f} | "
            f"{a['held-out class']:.4f} | {a['between two classes']:.4f} |"
        )


if __name__ == "__main__":
    main()
