"""How well ``ood_score`` separates what the model knows from what it does not, and what it costs predict.

In one run, on the silhouette demo (written and trained here, in a throw-away workspace):

1. AUROC of each OOD method against the demo's test split (in-distribution, never
   trained on) for (a) random-noise images, (b) the photos demo's images (scikit-image's
   photographs, another domain), (c) a class the model never saw: a second model is
   trained without one class (``--held-out-class``, default the first alphabetically)
   and that class's images are scored against its test split. Methods: the served
   ``mahalanobis`` and ``knn`` (k=1, k=10) over the embedding, and the max-softmax
   baseline (1 - confidence). Also the share flagged ``ood`` at the fitted threshold.
2. Predict throughput of one served model, 32 closed-loop clients, interleaved rounds:
   without OOD scoring or logging, with scoring, with scoring and the prediction log
   (the default). Goal: the default costs at most 10% of throughput.

    .venv/bin/python benchmarks/ood.py                    # ~15 min on 2 cores (two trainings)
    .venv/bin/python benchmarks/ood.py --demo small       # ~5 min, smaller demo, rougher figures
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.loadgen import LoadResult, drive, multipart_request, run  # noqa: E402
from benchmarks.workspace import SMALL_DEMO, isolated_env, serving, train_throwaway, workspace  # noqa: E402
from training.jobs.processes import free_port  # noqa: E402

DEMOS = {"full": "DemoSpec()", "small": SMALL_DEMO}
GOALS = {"noise": 0.95, "photos": 0.95, "held-out class": 0.80}
CONFIGS = {  # name -> serving env
    "no OOD, no log": {"BOUNCER_OOD_SCORING": "false", "BOUNCER_PREDICTION_LOG": "false"},
    "OOD score": {"BOUNCER_OOD_SCORING": "true", "BOUNCER_PREDICTION_LOG": "false"},
    "OOD score + log (default)": {"BOUNCER_OOD_SCORING": "true", "BOUNCER_PREDICTION_LOG": "true"},
}
NOISE_IMAGES = 500


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})


class Outputs:
    """A model version's outputs on sets of image files or bytes, decoded as the server decodes uploads."""

    def __init__(self, tag: str) -> None:
        from training.registry.store import load_registered

        self.model = load_registered(tag)

    def of(self, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        from training.data.images import load_model_input

        size = self.model.image_size
        pixels = np.stack([load_model_input(b, size, max_pixels=40_000_000) for b in images])
        out = self.model.classifier.predict(pixels)
        return out.probabilities, out.embeddings

    def split(self, data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        paths = files(data_dir / split)
        probabilities, embeddings = self.of([p.read_bytes() for p in paths])
        labels = np.array([self.model.class_names.index(p.parent.name) for p in paths])
        return probabilities, embeddings, labels


def auroc_table(main: Outputs, main_data: Path, held_out: Outputs, held_out_data: Path, held_out_class: str) -> None:
    from sklearn.metrics import roc_auc_score

    from training.model.ood import fit_ood
    from training.settings import Settings

    rng = np.random.default_rng(0)
    noise = [png(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)) for _ in range(NOISE_IMAGES)]
    photos_dir = main_data.parent / "photos"
    from training.data.demo_photos import PhotoDemoSpec, write_photo_dataset

    write_photo_dataset(photos_dir, PhotoDemoSpec(), force=True)  # same seed, same photos on a rerun
    photos = [p.read_bytes() for p in files(photos_dir)]
    unseen = [p.read_bytes() for split in ("train", "test") for p in files(main_data / split / held_out_class)]
    print(f"OOD sets: {len(noise)} noise images, {len(photos)} photos, {len(unseen)} images of '{held_out_class}'")

    cases = []  # (set name, model outputs, train split, test split, OOD outputs)
    for name, outputs, data, images in (
        ("noise", main, main_data, noise),
        ("photos", main, main_data, photos),
        ("held-out class", held_out, held_out_data, unseen),
    ):
        cases.append((name, outputs.split(data, "train"), outputs.split(data, "test"), outputs.of(images)))

    served = Settings().ood_method
    methods = [("mahalanobis", 1), ("mahalanobis raw", 1), ("knn", 1), ("knn", 10), ("max-softmax", 0)]
    print(f"\n{'method':<24}" + "".join(f"{name + ' AUROC / flagged':>32}" for name in GOALS))
    for method, k in methods:
        cells = []
        for _, train, test, ood in cases:
            if method == "max-softmax":
                inside, outside, flagged = 1 - test[0].max(axis=1), 1 - ood[0].max(axis=1), None
            else:
                kind, _, raw = method.partition(" ")
                scorer = fit_ood(kind, train[1], train[2], test[1], k=k, normalise=not raw)  # type: ignore[arg-type]
                inside, _ = scorer.score(test[1])
                outside, flags = scorer.score(ood[1])
                flagged = float(flags.mean())
            truth = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
            auroc = roc_auc_score(truth, np.r_[inside, outside])
            cells.append(f"{auroc:.3f} / {'-' if flagged is None else f'{flagged:.0%}'}")
        label = f"{method}{f' k={k}' if method == 'knn' else ''}{' (served)' if method == served else ''}"
        print(f"{label:<24}" + "".join(f"{cell:>32}" for cell in cells))
    print("goals (AUROC): " + ", ".join(f"{name} >= {goal}" for name, goal in GOALS.items()))
    print("flagged: share of the OOD set above the threshold (the test split's 99th percentile: 1% of it)")


def throughput(tag: str, env: dict[str, str], data_dir: Path, args: argparse.Namespace) -> None:
    images = [p.read_bytes() for p in files(data_dir / "test")[:256]]
    bodies = [[("image", "x.png", image)] for image in images]
    rounds: dict[str, list[LoadResult]] = {name: [] for name in CONFIGS}
    for round_number in range(args.rounds):
        for name, extra in CONFIGS.items():
            port = free_port()
            log = data_dir.parent / f"serve-{round_number}-{port}.log"
            serving_env = {**env, "BOUNCER_MODEL_TAG": tag, **extra}
            with serving(port, serving_env, log):
                requests = [multipart_request("127.0.0.1", port, "/predict", parts) for parts in bodies]
                result = run(
                    drive(name, "127.0.0.1", port, requests, clients=32, seconds=args.seconds, warmup=args.warmup)
                )
            rounds[name].append(result)
            print(f"  round {round_number + 1}: {result.line()}", flush=True)
    base = statistics.median(r.throughput for r in rounds["no OOD, no log"])
    print(f"\npredict throughput, 32 clients, median of {args.rounds} interleaved rounds of {args.seconds:.0f} s:")
    for name, results in rounds.items():
        rate = statistics.median(r.throughput for r in results)
        p99 = statistics.median(r.percentile(99) for r in results)
        errors = sum(r.non_2xx for r in results)
        print(
            f"  {name:<28} {rate:8.0f} req/s  x{rate / base:.3f}  ({rate / base - 1:+.1%})  p99 {p99:.0f} ms  "
            f"non-2xx {errors}"
        )
    print("goal: the default (OOD score + log) within 10% of no OOD, no log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", choices=sorted(DEMOS), default="full")
    parser.add_argument("--epochs", type=int, default=None, help="default: the settings' recipe")
    parser.add_argument("--held-out-class", help="default: the demo's first class alphabetically")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per throughput round")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--workdir", type=Path, help="keep the workspaces here (default: a temp dir); run again to reuse its models"
    )
    parser.add_argument("--skip-auroc", action="store_true")
    args = parser.parse_args()

    with workspace(args.workdir, prefix="bouncer-ood-") as root:
        base = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "BOUNCER_OUT_OF_FOLD_FOLDS": "0"}
        env_main = {**base, **isolated_env(root / "main")}
        main_data = Path(env_main["BOUNCER_DATA_DIR"])
        held_out_root = root / "held-out"  # its own data and MLflow store; the model store is shared
        env_held_out = {
            **env_main,
            "BOUNCER_DATA_DIR": str(held_out_root / "data"),
            "BOUNCER_MLFLOW_DIR": str(held_out_root / "mlruns"),
        }
        kept = root / "models.json"
        if kept.is_file():
            tag, held_out_tag, held_out_class = json.loads(kept.read_text())
            print(f"reusing the models of {kept}")
        else:
            print(f"training on the {args.demo} demo ...", flush=True)
            tag = train_throwaway(env_main, args.epochs, demo=DEMOS[args.demo])
            classes = sorted(p.name for p in (main_data / "train").iterdir() if p.is_dir())
            held_out_class = args.held_out_class or classes[0]
            print(f"training the same recipe without '{held_out_class}' ...", flush=True)
            held_out_tag = train_throwaway(
                env_held_out, args.epochs, demo=DEMOS[args.demo], without_class=held_out_class
            )
            kept.write_text(json.dumps([tag, held_out_tag, held_out_class]))
        os.environ["BENTOML_HOME"] = env_main["BENTOML_HOME"]  # before this process first imports bentoml
        print(f"\nmodels: {tag} (all classes), {held_out_tag} (without '{held_out_class}')")
        if not args.skip_auroc:
            held_out_data = Path(env_held_out["BOUNCER_DATA_DIR"])
            auroc_table(Outputs(tag), main_data, Outputs(held_out_tag), held_out_data, held_out_class)
        if not args.skip_throughput:
            print("\nserving the model three ways, interleaved ...", flush=True)
            throughput(tag, env_main, main_data, args)


if __name__ == "__main__":
    main()
