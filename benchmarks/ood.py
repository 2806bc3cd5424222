"""How well ``ood_score`` tells what a model knows from what it does not, the OpenOOD way, and what it costs predict.

In one run, on both demos (the silhouettes and the photos), each written and trained here at
default settings in a throw-away workspace (``--workdir`` keeps them; a second run reuses the
models), with sets nobody tuned the score to:

- **far**: noise at the model's own input size, at twice it and at 224 px (uniform RGB,
  Gaussian RGB, greyscale uniform), solid colours, and the other demo's test split (photos
  for the silhouettes' model, silhouettes for the photos' model);
- **near**: a class held out from training (a second model trained without it, default the
  first class alphabetically), its images against that model's test split;
- **covariate shift** (corrupted inliers, no goal: they are the model's classes): the test
  split blurred, at 30% contrast, at JPEG quality 10, with the model's accuracy on them.

For every method of ``training.model.ood`` (the served one is the version's own ``ood.npz``,
the others are fitted here on the same outputs) and max-softmax: AUROC and FPR@95TPR with
OpenOOD v1.5's definitions (``openood/evaluators/metrics.py``: OOD is the positive class,
FPR@95 is the share of the in-distribution test split flagged at the threshold that catches
95% of the set), the worst far set and the near set per method, and for the served method
the share of each set answered ``ood: false`` at its fitted threshold. Then predict's
throughput without the score and the log, with the score, with both (32 clients,
interleaved rounds, one served model), and the score's own time per image per method.

    .venv/bin/python benchmarks/ood.py --workdir /tmp/bouncer-ood   # ~35 min on 2 cores (four trainings)
    .venv/bin/python benchmarks/ood.py --workdir /tmp/bouncer-ood --skip-throughput   # reuse: ~3 min
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.loadgen import LoadResult, drive, multipart_request, run  # noqa: E402
from benchmarks.workspace import isolated_env, serving, train_throwaway, workspace  # noqa: E402
from training.jobs.processes import free_port  # noqa: E402

DEMOS = {"silhouettes": "DemoSpec()", "photos": "PhotoDemoSpec()"}
OTHER = {"silhouettes": "photos", "photos": "silhouettes"}
GOALS = {"far": 0.95, "near": 0.85}  # worst-case AUROC (issue 25)
METHODS = ["fused", "rmds", "early", "mahalanobis", "knn", "knn+norm", "vim", "energy", "max_logit", "max-softmax"]
CONFIGS = {  # name -> serving env
    "no OOD, no log": {"BOUNCER_OOD_SCORING": "false", "BOUNCER_PREDICTION_LOG": "false"},
    "OOD score": {"BOUNCER_OOD_SCORING": "true", "BOUNCER_PREDICTION_LOG": "false"},
    "OOD score + log (default)": {"BOUNCER_OOD_SCORING": "true", "BOUNCER_PREDICTION_LOG": "true"},
}
NOISE_IMAGES = 200  # per kind and size
LARGE_SIZE = 224


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})


def noise_sets(size: int, rng: np.random.Generator) -> dict[str, list[bytes]]:
    """Noise PNGs at the model's own size, twice it and 224 px; solid colours (any size resizes to itself)."""
    n = NOISE_IMAGES
    sets: dict[str, list[bytes]] = {}
    for side in sorted({size, 2 * size, LARGE_SIZE}):
        shape = (side, side, 3)
        sets[f"uniform {side}"] = [png(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]
        sets[f"gaussian {side}"] = [png(np.clip(rng.normal(128, 64, shape), 0, 255).astype(np.uint8)) for _ in range(n)]
        sets[f"grey {side}"] = [
            png(np.repeat(rng.integers(0, 256, (side, side, 1), dtype=np.uint8), 3, axis=2)) for _ in range(n)
        ]
    sets[f"solid {size}"] = [
        png(np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (size, size, 3)).copy()) for _ in range(n)
    ]
    return sets


def corrupted(paths: list[Path], kind: str) -> list[bytes]:
    """The test split's images blurred (radius 1/28 of the shorter side), at 30% contrast, or at JPEG quality 10."""
    from PIL import Image, ImageEnhance, ImageFilter

    out = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        buffer = io.BytesIO()
        if kind == "jpeg q10":
            image.save(buffer, format="JPEG", quality=10)
        else:
            if kind == "blur":
                image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(image.size) / 28)))
            else:
                image = ImageEnhance.Contrast(image).enhance(0.3)
            image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


@dataclass
class Outputs:
    probabilities: np.ndarray
    embeddings: np.ndarray
    early: np.ndarray | None
    labels: np.ndarray | None = None


class Model:
    """A registered version's outputs on image bytes, decoded as the server decodes uploads."""

    def __init__(self, tag: str) -> None:
        from training.registry.store import load_registered

        self.registered = load_registered(tag)

    def of(self, images: list[bytes], labels: np.ndarray | None = None) -> Outputs:
        from training.data.images import load_model_input

        size = self.registered.image_size
        pixels = np.stack([load_model_input(b, size, max_pixels=40_000_000) for b in images])
        found = self.registered.classifier.predict(pixels)
        return Outputs(found.probabilities, found.embeddings, found.early, labels)

    def split(self, data_dir: Path, split: str) -> tuple[list[Path], Outputs]:
        paths = files(data_dir / split)
        labels = np.array([self.registered.class_names.index(p.parent.name) for p in paths])
        return paths, self.of([p.read_bytes() for p in paths], labels)


@dataclass
class Case:
    """One model's sets: its train and test outputs and each OOD set's."""

    model: Model
    train: Outputs
    test: Outputs
    sets: dict[str, Outputs]  # "far/...", "near/...", "shift/..."


def scorers(case: Case) -> dict[str, Callable[[Outputs], np.ndarray]]:
    """Each method's score (higher = more unusual), fitted on the case's train split, calibrated on its test split."""
    from training.model.ood import fit_ood

    served = case.model.registered.ood
    assert served is not None and served.head is not None, "a version trained before issue 25: retrain it"
    found: dict[str, Callable[[Outputs], np.ndarray]] = {}
    for method in METHODS:
        if method == "max-softmax":
            found[method] = lambda o: 1.0 - o.probabilities.max(axis=1)
            continue
        if method == served.method:
            scorer = served
        else:
            scorer = fit_ood(
                method,
                case.train.embeddings,
                case.train.labels,  # type: ignore[arg-type]
                case.test.embeddings,
                held_out_labels=case.test.labels,
                train_early=case.train.early,
                held_out_early=case.test.early,
                head=served.head,
            )
        found[method] = lambda o, s=scorer: s.score(o.embeddings, o.early)[0]
    return found


def auroc_fpr95(inside: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    """OpenOOD v1.5 (metrics.py): OOD is positive; FPR at the first threshold with TPR >= 95%."""
    from sklearn.metrics import roc_auc_score, roc_curve

    truth = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    scores = np.r_[inside, outside]
    fpr, tpr, _ = roc_curve(truth, scores)
    return float(roc_auc_score(truth, scores)), float(fpr[np.argmax(tpr >= 0.95)])


def measure(demo: str, main: Case, held: Case) -> dict[str, dict[str, tuple[float, float]]]:
    """{method: {set: (AUROC, FPR@95)}} for one demo; prints its tables."""
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for case in (main, held):
        for method, score in scorers(case).items():
            inside = score(case.test)
            for name, outputs in case.sets.items():
                results.setdefault(method, {})[name] = auroc_fpr95(inside, score(outputs))
    names = list(main.sets) + list(held.sets)
    far = [n for n in names if n.startswith("far/")]
    print(f"\n### {demo}: AUROC / FPR@95 per set\n")
    print("| method | " + " | ".join(n.split("/", 1)[1] for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for method, cells in results.items():
        row = " | ".join(f"{cells[n][0]:.3f} / {cells[n][1]:.2f}" for n in names)
        print(f"| {_label(method, main)} | {row} |")
    served = main.model.registered.ood
    assert served is not None
    print(f"\nserved ({served.method}): share answered `ood: false` (missed) at the fitted threshold; accuracy")
    for case in (main, held):
        scorer = case.model.registered.ood
        assert scorer is not None
        for name, outputs in case.sets.items():
            _, flags = scorer.score(outputs.embeddings, outputs.early)
            accuracy = ""
            if outputs.labels is not None:
                accuracy = f", model accuracy {np.mean(outputs.probabilities.argmax(axis=1) == outputs.labels):.3f}"
            print(f"  {name:<28} missed {1 - flags.mean():6.1%}  ({len(flags)} images{accuracy})")
        _, test_flags = scorer.score(case.test.embeddings, case.test.early)
        print(f"  {'(its test split: flagged)':<28} {test_flags.mean():6.1%}  calibrated: {scorer.calibrated}")
    worst = {m: min(far, key=lambda n, m=m: results[m][n][0]) for m in results}
    print(f"\n### {demo}: worst far set and the near set per method (AUROC / FPR@95)\n")
    print("| method | worst far | which | near (held-out class) |\n|---|---|---|---|")
    near = next(n for n in names if n.startswith("near/"))
    for method, cells in results.items():
        w = worst[method]
        print(
            f"| {_label(method, main)} | {cells[w][0]:.3f} / {cells[w][1]:.2f} | {w.split('/', 1)[1]} "
            f"| {cells[near][0]:.3f} / {cells[near][1]:.2f} |"
        )
    return results


def _label(method: str, case: Case) -> str:
    served = case.model.registered.ood
    return f"**{method}** (served)" if served is not None and method == served.method else method


def summary(all_results: dict[str, dict[str, dict[str, tuple[float, float]]]]) -> None:
    """The headline: per method, the worst far AUROC and the near AUROC on each demo, and the goals."""
    demos = list(all_results)
    print("\n### Worst case over both demos (AUROC / FPR@95)\n")
    print("| method | " + " | ".join(f"{d}: worst far | {d}: near" for d in demos) + " | meets the goals |")
    print("|---" * (2 * len(demos) + 2) + "|")
    for method in METHODS:
        cells, ok = [], True
        for demo in demos:
            per = all_results[demo][method]
            far = min((v for n, v in per.items() if n.startswith("far/")), key=lambda v: v[0])
            near = next(v for n, v in per.items() if n.startswith("near/"))
            ok &= far[0] >= GOALS["far"] and near[0] >= GOALS["near"]
            cells += [f"{far[0]:.3f} / {far[1]:.2f}", f"{near[0]:.3f} / {near[1]:.2f}"]
        print(f"| {method} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")
    print(f"goals: worst far AUROC >= {GOALS['far']}, near >= {GOALS['near']}, on both demos")


def case_sets(demo: str, model: Model, data: Path, other_data: Path) -> dict[str, Outputs]:
    rng = np.random.default_rng(0)
    sets = {f"far/{name}": model.of(images) for name, images in noise_sets(model.registered.image_size, rng).items()}
    sets["far/other demo"] = model.of([p.read_bytes() for p in files(other_data / "test")])
    test_paths, _ = model.split(data, "test")
    labels = np.array([model.registered.class_names.index(p.parent.name) for p in test_paths])
    for kind in ("blur", "contrast 0.3", "jpeg q10"):
        sets[f"shift/{kind}"] = model.of(corrupted(test_paths, kind), labels)
    return sets


def score_timing(case: Case, rounds: int = 5) -> None:
    """Each method's own time per image, batches of 1 and of 64 (interleaved rounds after a warm-up, median),
    with one BLAS thread as in a serving worker."""
    from threadpoolctl import threadpool_limits

    timings: dict[str, dict[int, list[float]]] = {}
    fitted = scorers(case)
    with threadpool_limits(1):
        _time_rounds(case, fitted, timings, rounds + 1)
    print("\nthe score's own time per image (µs; median of interleaved rounds, one thread, this process):")
    for method, by_batch in timings.items():
        one, many = statistics.median(by_batch[1][1:]), statistics.median(by_batch[64][1:])
        print(f"  {method:<12} batch 1: {one:7.1f}   batch 64: {many:6.1f}")


def _time_rounds(
    case: Case,
    fitted: dict[str, Callable[[Outputs], np.ndarray]],
    timings: dict[str, dict[int, list[float]]],
    rounds: int,
) -> None:
    for _ in range(rounds):
        for method, score in fitted.items():
            for batch in (1, 64):
                rows = Outputs(
                    case.test.probabilities[:batch],
                    case.test.embeddings[:batch],
                    None if case.test.early is None else case.test.early[:batch],
                )
                repeats = max(1, 2000 // batch)
                started = time.perf_counter()
                for _ in range(repeats):
                    score(rows)
                per_image = (time.perf_counter() - started) / (repeats * batch)
                timings.setdefault(method, {}).setdefault(batch, []).append(per_image * 1e6)


def predict_cost(case: Case, rounds: int = 7) -> None:
    """CPU time per image of predict's model step (bento_service.predictor.infer: the ONNX run and the score),
    served version against the same network as registered before issue 25 (graph without early_features,
    the mahalanobis score) and against no score; interleaved rounds, one thread, the process's CPU time
    (less disturbed by other processes on a shared machine than wall time)."""
    from dataclasses import replace

    import onnx
    from onnx.utils import Extractor
    from threadpoolctl import threadpool_limits

    from bento_service.predictor import infer
    from training.model.inference import INPUT_NAME, OUTPUT_EMBEDDING, OUTPUT_PROBABILITIES, OnnxClassifier
    from training.model.ood import fit_ood
    from training.registry.store import MODEL_FILE, load_registered

    registered = case.model.registered
    served = load_registered(registered.tag, threads=1)
    graph = onnx.load(bentoml_path(registered.tag, MODEL_FILE))
    before_graph = Extractor(graph).extract_model([INPUT_NAME], [OUTPUT_PROBABILITIES, OUTPUT_EMBEDDING])
    before_scorer = fit_ood("mahalanobis", case.train.embeddings, case.train.labels, case.test.embeddings)  # type: ignore[arg-type]
    classifier = OnnxClassifier(before_graph.SerializeToString(), served.class_names, served.image_size, threads=1)
    before = replace(served, classifier=classifier, ood=before_scorer)
    modes = {
        "no OOD score": lambda x: infer(served, x, want_embeddings=False, score=False),
        "before issue 25 (mahalanobis)": lambda x: infer(before, x, want_embeddings=False),
        "served (fused)": lambda x: infer(served, x, want_embeddings=False),
    }
    rng = np.random.default_rng(0)
    size = served.image_size
    cost: dict[tuple[str, int], list[float]] = {}
    with threadpool_limits(1):
        for _ in range(rounds + 1):  # the first is a warm-up
            for batch in (1, 32):
                pixels = rng.integers(0, 256, (batch, size, size, 3)).astype(np.uint8)
                repeats = max(10, 640 // batch)
                for name, run_once in modes.items():
                    started = time.process_time()
                    for _ in range(repeats):
                        run_once(pixels)
                    cost.setdefault((name, batch), []).append((time.process_time() - started) / (repeats * batch))
    print("\npredict's model step (ONNX run + score), CPU µs per image, median of interleaved rounds, one thread:")
    for batch in (1, 32):
        base = statistics.median(cost[("no OOD score", batch)][1:])
        before_cost = statistics.median(cost[("before issue 25 (mahalanobis)", batch)][1:])
        for name in modes:
            value = statistics.median(cost[(name, batch)][1:])
            print(
                f"  batch {batch:>2}  {name:<30} {value * 1e6:8.1f}  x{value / base:.3f} of no score, "
                f"x{value / before_cost:.3f} of before"
            )


def bentoml_path(tag: str, name: str) -> str:
    import bentoml

    return str(bentoml.models.get(tag).path_of(name))


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


def train_models(root: Path, base: dict[str, str], args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """Four versions in one model store: each demo, and each demo without its held-out class."""
    kept = root / "models.json"
    models: dict[str, dict[str, str]] = json.loads(kept.read_text()) if kept.is_file() else {}
    if models:
        print(f"reusing the models of {kept}")
    for demo, spec in DEMOS.items():
        for without in (False, True):
            key = f"{demo} without" if without else demo
            if key in models:
                continue
            env = {**base, **isolated_env(root / key.replace(" ", "-")), "BENTOML_HOME": str(root / "bentoml")}
            data = Path(env["BOUNCER_DATA_DIR"])
            held_out = None
            if without:
                held_out = (
                    args.held_out_class.get(demo)
                    or sorted(p.name for p in (Path(models[demo]["data"]) / "train").iterdir() if p.is_dir())[0]
                )
            started = time.perf_counter()
            print(f"training the {demo} demo{f' without {held_out!r}' if held_out else ''} ...", flush=True)
            tag = train_throwaway(env, args.epochs, demo=spec, without_class=held_out)
            print(f"  {tag} in {time.perf_counter() - started:.0f} s", flush=True)
            models[key] = {"tag": tag, "data": str(data), "held_out": held_out or ""}
            kept.write_text(json.dumps(models, indent=1))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: the settings' recipe")
    parser.add_argument(
        "--held-out-class",
        action="append",
        default=[],
        metavar="DEMO=CLASS",
        help="the near-OOD class per demo (default: the first alphabetically: bear, cat)",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per throughput round")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-auroc", action="store_true")
    parser.add_argument(
        "--workdir", type=Path, help="keep the workspaces here (default: a temp dir); run again to reuse its models"
    )
    args = parser.parse_args()
    args.held_out_class = dict(item.split("=", 1) for item in args.held_out_class)

    with workspace(args.workdir, prefix="bouncer-ood-") as root:
        base = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "BOUNCER_OUT_OF_FOLD_FOLDS": "0"}
        base.pop("BOUNCER_OOD_METHOD", None)  # the default is what is measured
        models = train_models(root, base, args)
        os.environ["BENTOML_HOME"] = str(root / "bentoml")  # before this process first imports bentoml
        print("\nmodels: " + ", ".join(f"{k}: {v['tag']}" for k, v in models.items()))
        if not args.skip_auroc:
            all_results = {}
            for demo in DEMOS:
                data, other = Path(models[demo]["data"]), Path(models[OTHER[demo]]["data"])
                main_model, held_model = Model(models[demo]["tag"]), Model(models[f"{demo} without"]["tag"])
                held_data = Path(models[f"{demo} without"]["data"])
                held_out = models[f"{demo} without"]["held_out"]
                unseen = [p.read_bytes() for split in ("train", "test") for p in files(data / split / held_out)]
                main = Case(main_model, main_model.split(data, "train")[1], main_model.split(data, "test")[1], {})
                main.sets = case_sets(demo, main_model, data, other)
                held = Case(
                    held_model,
                    held_model.split(held_data, "train")[1],
                    held_model.split(held_data, "test")[1],
                    {f"near/held-out class ({held_out})": held_model.of(unseen)},
                )
                print(
                    f"\n{demo}: {main_model.registered.image_size} px input, {len(main.test.labels)} test images "  # type: ignore[arg-type]
                    f"(fewest per class {main_model.registered.ood.held_out_min_per_class}), "  # type: ignore[union-attr]
                    f"held-out class {held_out!r}: {len(unseen)} images"
                )
                all_results[demo] = measure(demo, main, held)
                if demo == "silhouettes":
                    score_timing(main)
                    predict_cost(main)
            summary(all_results)
        if not args.skip_throughput:
            print("\nserving the silhouettes' model three ways, interleaved ...", flush=True)
            env = {**base, **isolated_env(root / "silhouettes"), "BENTOML_HOME": str(root / "bentoml")}
            throughput(models["silhouettes"]["tag"], env, Path(models["silhouettes"]["data"]), args)


if __name__ == "__main__":
    main()
