"""The ``bouncer`` command line: data, labels, training and serving from one entry point."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import click
import typer
from typer.core import TyperGroup

from training.errors import BouncerError, Conflict, Invalid, Missing
from training.settings import SOURCE_ROOT, Settings, get_settings
from training.tf_logs import import_tensorflow_quietly, quiet_tensorflow

if TYPE_CHECKING:
    from training.curation.curator import Curator
    from training.curation.labels import Labels


class GlobalOptionsAnywhere(TyperGroup):
    """``--data-dir`` and ``-q`` work after the subcommand too (``bouncer import --data-dir X``).

    Click only takes a group's options before the subcommand; users put them anywhere.
    """

    GLOBAL = ("--data-dir", "--quiet", "-q")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args, self.GLOBAL))


def hoist_global_options(args: list[str], names: tuple[str, ...]) -> list[str]:
    """Move ``names`` (``--data-dir X``, ``--data-dir=X``, flags) to the front, keeping everything else in order."""
    front: list[str] = []
    rest: list[str] = []
    items = iter(args)
    for arg in items:
        if arg == "--":
            rest += [arg, *items]
            break
        if arg in names or arg.split("=", 1)[0] in names:
            front.append(arg)
            if arg == "--data-dir":  # the option that takes a value, given as a separate word
                front.append(next(items, ""))
        else:
            rest.append(arg)
    return front + rest


app = typer.Typer(
    name="bouncer",
    help="Train, serve and curate an image classifier whose training labels stay honest.",
    cls=GlobalOptionsAnywhere,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: flags read "--flag / --no-flag", not "<bool>" in a box
)
log = logging.getLogger("bouncer")
F = TypeVar("F", bound=Callable[..., Any])


def _friendly(func: F) -> F:
    """A user's mistake (training.errors.BouncerError: the table the API answers by) is one line and exit 2;
    anything else is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BouncerError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from exc

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(
    data_dir: Annotated[
        Path | None, typer.Option(help="Dataset folder (overrides BOUNCER_DATA_DIR).", show_default=False)
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    if data_dir is not None:
        os.environ["BOUNCER_DATA_DIR"] = str(data_dir)
    quiet_tensorflow()  # before any command imports it
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if quiet:  # MLflow logs INFO lines ("Creating initial MLflow database tables...") through its own handler
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # if it already was


class DemoKind(StrEnum):
    silhouettes = "silhouettes"
    photos = "photos"


def _settings(**overrides: Any) -> Settings:
    return get_settings(**{k: v for k, v in overrides.items() if v is not None})


_MODEL_HELP = "Model tag; default the version the service serves for this dataset (promoted, else the newest)."


@contextmanager
def _curator(model_tag: str | None) -> Iterator[Curator]:
    """The façade the service uses, over the version it serves (or ``model_tag``): the CLI and the API agree."""
    from training.registry.serving import open_curator

    with open_curator(_settings(), model_tag=model_tag) as curator:
        yield curator


@contextmanager
def _labels(settings: Settings) -> Iterator[Labels]:
    """The labels façade the service holds: the CLI's label commands and the API agree."""
    from training.curation.labels import Labels

    with Labels.open(settings) as labels:
        yield labels


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


@app.command("demo-data")
@_friendly
def demo_data(
    kind: Annotated[
        DemoKind, typer.Option(help="silhouettes: 10,000 28x28 animal-mnist drawings; photos: real photographs.")
    ] = DemoKind.silhouettes,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same files.")] = 0,
    impostor_source: Annotated[
        str, typer.Option(help="silhouettes: class whose look-alikes get the wrong label.")
    ] = "dog",
    impostor_target: Annotated[str, typer.Option(help="silhouettes: the wrong label they get.")] = "cat",
    impostor_count: Annotated[
        int, typer.Option(min=0, help="silhouettes: how many look-alikes are mislabelled.")
    ] = 250,
    noise: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="silhouettes: fraction of train images given a random wrong label.")
    ] = 0.05,
    test_per_class: Annotated[int, typer.Option(min=1, help="silhouettes: clean test images per class.")] = 200,
    per_class: Annotated[
        int | None, typer.Option(min=2, help="silhouettes: keep only N images per class (small demos).")
    ] = None,
    copies: Annotated[int, typer.Option(min=2, help="photos: train copies of each photograph.")] = 40,
    poisoned_photo: Annotated[str, typer.Option(help="photos: the photograph whose train copies are mislabelled.")] = (
        "astronaut"
    ),
    poisoned_label: Annotated[str, typer.Option(help="photos: the wrong label they get.")] = "space",
    force: Annotated[bool, typer.Option(help="Replace existing train/test folders.")] = False,
) -> None:
    """Write a poisoned demo dataset into DATA_DIR: animal silhouettes (default) or real photos."""
    settings = _settings()
    if kind is DemoKind.photos:
        from training.data.demo_photos import PhotoDemoSpec, write_photo_dataset

        photo_spec = PhotoDemoSpec(
            seed, train_copies=copies, poisoned_photo=poisoned_photo, poisoned_label=poisoned_label
        )
        poisoned = write_photo_dataset(settings.data_dir, photo_spec, force=force)
    else:
        from training.data.demo_silhouettes import DemoSpec, write_demo_dataset

        spec = DemoSpec(seed, test_per_class, impostor_source, impostor_target, impostor_count, noise, per_class)
        poisoned = write_demo_dataset(settings.data_dir, spec, force=force)
    typer.echo(
        f"wrote {kind} demo data to {settings.data_dir} ({len(poisoned)} poisoned train labels, "
        f"ground truth in {settings.data_dir / 'ground_truth.csv'})"
    )


@app.command("import")
@_friendly
def import_(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List skipped files.")] = False,
) -> None:
    """Scan DATA_DIR into the label store (keeps relabels) and export labels.csv."""
    settings = _settings()
    with _labels(settings) as labels:
        report = labels.import_folder()
        counts = {s: labels.image_count(split=s) for s in settings.splits}
    typer.echo(
        f"{report.added} added, {report.removed} removed, {report.moved} moved, {report.restored} restored, "
        f"{report.unchanged} unchanged; {len(report.skipped)} skipped; images per split: {counts}; "
        f"classes: {', '.join(report.classes)}"
    )
    for path, reason in report.skipped if verbose else []:
        typer.echo(f"skipped {path}: {reason}")
    for warning in [*report.warnings, *readiness_notes(settings)]:
        typer.echo(f"warning: {warning}")


def readiness_notes(settings: Settings) -> list[str]:
    """What a training of the imported labels will and will not fit (before anyone waits for one)."""
    from training.pipeline.readiness import NotEnoughImages, assess

    with _labels(settings) as labels:
        train = {name: labels.image_count(split=settings.train_split, label=name) for name in labels.classes()}
        n_test = labels.image_count(split=settings.test_split)
    try:
        ready = assess(settings, train, n_test)
    except NotEnoughImages as exc:
        return [f"cannot train yet: {exc}"]
    typer.echo(f"a training will fit: {', '.join(ready.fitted())}")
    return ready.notes


class TrainEngine(StrEnum):
    local = "local"
    ray = "ray"


@app.command()
@_friendly
def train(
    epochs: Annotated[int | None, typer.Option(min=1, help="Max epochs (early stopping may stop sooner).")] = None,
    image_size: Annotated[int | None, typer.Option(min=8, max=512, help="Model input size in pixels.")] = None,
    embedder: Annotated[str | None, typer.Option(help="pca or umap.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed (BOUNCER_SEED); same seed and data, same model.")
    ] = None,
    metrics_file: Annotated[Path | None, typer.Option(help="Write run metrics as JSON here (for DVC).")] = None,
    progress_file: Annotated[Path | None, typer.Option(help="Keep live progress as JSON here.")] = None,
    engine: Annotated[
        TrainEngine | None,
        typer.Option(help="local, or ray: the out-of-fold models as Ray tasks (BOUNCER_TRAIN_ENGINE)."),
    ] = None,
) -> None:
    """Train on the current labels, export to ONNX, fit the embedder, register a new model version."""
    from training.pipeline.training_run import run_training
    from training.progress import JsonFileProgress, console_progress, fan_out

    settings = _settings(
        image_size=image_size,
        embedder=embedder,
        seed=seed,
        train_engine=engine.value if engine else None,
    )
    import_tensorflow_quietly()
    sink = console_progress(log)  # a line that updates in a terminal; a line per phase (and every 30 s) in a log
    result = run_training(
        settings,
        epochs=epochs,
        sink=fan_out(sink, JsonFileProgress(progress_file)) if progress_file else sink,
        metrics_file=metrics_file,
    )
    _print_json(result.summary())  # with beats_baseline and warning, as the train task's result
    for warning in (result.warning, result.ood_warning):
        if warning:
            typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)


@app.command()
@_friendly
def evaluate(
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    model: Annotated[str | None, typer.Option(help=_MODEL_HELP)] = None,
    show: Annotated[int, typer.Option(help="How many misclassified images to list.")] = 10,
) -> None:
    """Evaluate the serving model (its ONNX graph) on the current labels of a split, as the `evaluate` endpoint."""
    from training.model.ood import calibration_status

    settings = _settings()
    with _labels(settings) as labels:  # the request's own mistakes first, before looking for a model
        labels.check_evaluable(split)
    with _curator(model) as curator:
        report = curator.evaluate(split)
        payload = {"model": curator.model.tag, **report.as_dict(), **calibration_status(curator.model.ood)}
    payload["misclassified"] = payload["misclassified"][:show]
    _print_json(payload)


class ScoreEngine(StrEnum):
    local = "local"
    ray = "ray"


@app.command()
@_friendly
def score(
    engine: Annotated[
        ScoreEngine,
        typer.Option(help='local: the cores of this machine; ray: Ray Data actors (pip install -e ".[ray]").'),
    ] = ScoreEngine.local,
    model: Annotated[str | None, typer.Option(help=_MODEL_HELP)] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the shards; default DATA_DIR/.bouncer/scores/<model version>.")
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option(help="Score only this split (repeat for several); default every split.")
    ] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Images per shard; its ONNX runs are sized by pixels.")] = 1024,
) -> None:
    """Score every image of DATA_DIR: probabilities, embeddings and reduced vectors, in .npz shards.

    The same decoding, ONNX graph and embedder as the service, for the whole folder at
    once; unreadable files are counted and skipped. Prints where the shards are and how fast.
    """
    from training.model.scores import default_scores_dir
    from training.registry.serving import Registry, version_of
    from training.scoring.ray_engine import import_ray

    settings = _settings()
    if engine is ScoreEngine.ray:
        import_ray()  # a missing extra is said before any work (EngineUnavailable: one line)
    with _labels(settings) as labels:
        registry = Registry(labels)
        tag = registry.fitting_tag(model) if model else registry.serving_tag()
    folder = (out or default_scores_dir(settings, version_of(tag))).resolve()
    log.info("scoring %s with %s (%s engine) into %s", settings.data_dir, tag, engine, folder)
    if engine is ScoreEngine.ray:
        from training.scoring.ray_engine import score_with_ray

        manifest = score_with_ray(settings, tag, folder, splits=split, chunk_size=chunk_size)
    else:
        from training.scoring.local import score_local

        manifest = score_local(settings, tag, folder, splits=split, chunk_size=chunk_size)
    _print_json(
        {
            "model": manifest.model_tag,
            "engine": manifest.engine,
            "images": manifest.images,
            "skipped": manifest.skipped,
            "seconds": manifest.seconds,
            "images_per_second": manifest.images_per_second,
            "shards": manifest.shards,
            "folder": str(folder),
        }
    )


@app.command()
@_friendly
def suspects(
    k: Annotated[int, typer.Option(min=1, help="How many to list.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many first (pages through the ranking).")] = 0,
    model: Annotated[str | None, typer.Option(help=_MODEL_HELP)] = None,
    flagged_only: Annotated[
        bool, typer.Option(help="Only the flagged ones (cleanlab's label issues, duplicates that disagree).")
    ] = False,
) -> None:
    """Training images whose current label is probably wrong, best first, with a suggested label.

    cleanlab on the out-of-fold probabilities stored with the model version, plus
    duplicates that disagree; the same ranking as the service's `suspects`.
    """
    with _curator(model) as curator:
        found = curator.suspects(k, offset=offset)
    _print_json([asdict(s) for s in found if s.flagged or not flagged_only])


@app.command()
@_friendly
def trace(
    image_ids: Annotated[
        list[str] | None, typer.Argument(help="Images to trace from; default every misclassified test image.")
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="Training neighbours that get a vote from each error.")] = 5,
    limit: Annotated[int, typer.Option(min=1, help="How many to list.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many first (pages through the list).")] = 0,
    model: Annotated[str | None, typer.Option(help=_MODEL_HELP)] = None,
) -> None:
    """Training images that pull misclassified images to the wrong class, most votes first (as `trace`)."""
    with _curator(model) as curator:
        _print_json([asdict(t) for t in curator.trace(image_ids or None, k=k, limit=limit, offset=offset)])


@app.command()
@_friendly
def similar(
    image_id: Annotated[str, typer.Argument(help="The image to start from.")],
    k: Annotated[int, typer.Option(min=1, help="How many neighbours.")] = 10,
    split: Annotated[str, typer.Option(help="Search this split.")] = "train",
    label: Annotated[str | None, typer.Option(help="Only images currently labelled so.")] = None,
    model: Annotated[str | None, typer.Option(help=_MODEL_HELP)] = None,
) -> None:
    """The nearest images to IMAGE_ID in the embedding space (as `similar`)."""
    with _curator(model) as curator:
        _print_json(asdict(curator.similar(image_id, k=k, split=split, label=label)))


@app.command()
@_friendly
def expand(
    image_ids: Annotated[list[str], typer.Argument(help="The confirmed images to grow from.")],
    k: Annotated[int, typer.Option(min=1, help="How many to propose.")] = 20,
    label: Annotated[str | None, typer.Option(help="Only images currently labelled so (the wrong label).")] = None,
    split: Annotated[str, typer.Option(help="Search this split.")] = "train",
    model: Annotated[str | None, typer.Option(help=_MODEL_HELP)] = None,
) -> None:
    """The unreviewed images nearest to a confirmed set (as `expand`)."""
    with _curator(model) as curator:
        _print_json([asdict(n) for n in curator.expand(image_ids, k=k, label=label, split=split)])


@app.command()
@_friendly
def drift(
    window: Annotated[str, typer.Option(help="Each window's length: 30m, 1h, 24h, 7d, 2w.")] = "24h",
    windows: Annotated[int, typer.Option(min=1, max=366, help="How many windows back.")] = 7,
    model: Annotated[str | None, typer.Option(help=_MODEL_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The whole report as JSON (the `drift` endpoint's).")] = False,
) -> None:
    """Have served predictions moved away from the training data? OOD share, label mix and embedding, per window."""
    from training.monitoring.prediction_log import PredictionLog

    settings = _settings()
    log = PredictionLog(settings)
    with _curator(model) as curator:
        report = curator.drift(log, window=window, windows=windows)
    if as_json:
        _print_json(report)
        return
    typer.echo(
        f"model {report['model_version']}; reference: {report['reference']['source']} "
        f"({report['reference']['n']} images); alpha {report['alpha']}"
    )
    for name, method in report["methods"].items():
        typer.echo(f"  {name}: {method}")
    typer.echo(f"\n{'window start (UTC)':<22}{'n':>8}{'OOD share':>11}{'label JS':>10}{'KS max':>8}  verdict")
    for w in report["windows"]:
        share = "-" if w["ood"]["share"] is None else f"{w['ood']['share']:.1%}"
        js = "-" if w["labels"].get("js_distance") is None else f"{w['labels']['js_distance']:.2f}"
        ks = "-" if w["embedding"].get("ks_max") is None else f"{w['embedding']['ks_max']:.2f}"
        typer.echo(f"{w['start']:<22}{w['n']:>8}{share:>11}{js:>10}{ks:>8}  {w['verdict']}")
    typer.echo(f"\nverdict (newest window): {report['verdict']}")
    for reason in report["reasons"]:
        typer.echo(f"  - {reason}")


@app.command("import-predictions")
@_friendly
def import_predictions(
    since: Annotated[str, typer.Option(help="How far back: 30m, 1h, 24h, 7d, 2w.")] = "7d",
    limit: Annotated[int, typer.Option(min=1, help="At most this many pictures, most unusual first.")] = 100,
    split: Annotated[str | None, typer.Option(help="Into this split; default the train split.")] = None,
    label: Annotated[str | None, typer.Option(help="File them under this class; default the predicted one.")] = None,
    ood_only: Annotated[
        bool, typer.Option("--ood-only/--all-logged", help="Only predictions flagged ood, or any kept image.")
    ] = True,
    model: Annotated[str | None, typer.Option(help=_MODEL_HELP)] = None,
) -> None:
    """Logged images (kept with BOUNCER_LOG_IMAGES=ood|all) into the dataset, unreviewed, for labelling.

    Each is copied to DATA_DIR/<split>/<label>/logged-<hash>.<ext> and imported like any new
    file; the review page's queue then shows it. A picture is imported once.
    """
    from training.monitoring.prediction_log import PredictionLog

    settings = _settings()
    log = PredictionLog(settings)
    with _curator(model) as curator:
        imported = curator.import_predictions(
            log, since=since, limit=limit, split=split, label=label, ood_only=ood_only
        )
    _print_json([asdict(i) for i in imported])
    if not imported:
        typer.echo(
            f"nothing to import: no logged image{' flagged ood' if ood_only else ''} in the last {since} "
            "(images are kept only with BOUNCER_LOG_IMAGES=ood or all)",
            err=True,
        )


@app.command()
@_friendly
def models() -> None:
    """This dataset's model versions, newest first, with metrics and which one serves (as `models`)."""
    from training.registry.serving import Registry

    with _labels(_settings()) as labels:
        _print_json([asdict(v) for v in Registry(labels).versions()])


@app.command("export-labels")
@_friendly
def export_labels(
    output: Annotated[Path | None, typer.Option(help="Where to write; default DATA_DIR/labels.csv.")] = None,
) -> None:
    """Write the curated labels to a sorted, deterministic CSV for git/DVC."""
    settings = _settings()
    with _labels(settings) as labels:
        version = labels.export_csv(output)
    typer.echo(f"wrote {output or settings.labels_csv} (data version {version})")


@app.command()
@_friendly
def relabel(
    image_ids: Annotated[list[str], typer.Argument(help="One or more image ids.")],
    label: Annotated[str, typer.Option(help="The new class.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the audit history.")] = "",
    actor: Annotated[str, typer.Option(help="Who; default $USER.")] = "",
) -> None:
    """Change the label of images in one transaction (recorded, undoable)."""
    with _labels(_settings()) as labels:
        _print_json(asdict(labels.relabel(image_ids, label, reason=reason, actor=actor or _user())))


@app.command()
@_friendly
def undo(
    event_id: Annotated[int, typer.Argument(help="The event to revert (see `bouncer history`).")],
    actor: Annotated[str, typer.Option(help="Who; default $USER.")] = "",
) -> None:
    """Revert one relabel event by recording its inverse."""
    with _labels(_settings()) as labels:
        _print_json(asdict(labels.undo(event_id, actor=actor or _user())))


@app.command()
@_friendly
def history(
    image_id: Annotated[str | None, typer.Option(help="Only events touching this image.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many events.")] = 20,
) -> None:
    """List label events, newest first."""
    with _labels(_settings()) as labels:
        _print_json([e.as_dict() for e in labels.history(image_id=image_id, limit=limit)])


@app.command()
@_friendly
def images(
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    label: Annotated[str | None, typer.Option(help="Only images currently labelled so.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many images.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many first (sorted by path).")] = 0,
) -> None:
    """List images with their ids and curated labels."""
    with _labels(_settings()) as labels:
        records = labels.images(split=split, label=label, limit=limit, offset=offset)
    _print_json([{"image_id": r.image_id, "path": r.path, "split": r.split, "label": r.label} for r in records])


@app.command()
@_friendly
def promote(
    version: Annotated[str, typer.Argument(help="Model version to serve (see `bouncer models`).")],
    reason: Annotated[str, typer.Option(help="Why (kept in the promotion record).")] = "",
) -> None:
    """Serve VERSION: running services swap to it within BOUNCER_MODEL_POLL_SECONDS, new ones start on it.

    Prints what the `promote` endpoint answers: the version, its tag and the version that served before.
    """
    from training.registry.serving import ModelResolutionError, Registry, version_of

    with _labels(_settings()) as labels:
        registry = Registry(labels)
        try:
            previous: str | None = version_of(registry.serving_tag())
        except ModelResolutionError:  # nothing could serve before: promoting is how to fix that
            previous = None
        tag = registry.promote(version, actor=_user(), reason=reason or "cli promote")
    _print_json({"version": version, "tag": tag, "previous_version": previous})


def demo_wanted(settings: Settings, demo: bool | None) -> bool:
    """Whether `bouncer serve` writes the demo dataset into DATA_DIR before serving it.

    A user's folder is never touched: the demo goes only into a folder that does not
    exist or is empty, and only into the default ./data or when ``--demo`` asked for it
    (``demo`` True); ``--no-demo`` (False) never writes. A folder with a train split is
    served as it is (False). Anything else raises, saying what was found, so a typo'd
    ``--data-dir`` creates nothing.
    """
    from training.data.folders import find_split_folders, folder_contents, has_class_folders

    data_dir = settings.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise Invalid(f"{data_dir} is a file, not a dataset folder")
    found = folder_contents(data_dir) if data_dir.is_dir() else None
    if found:
        train = find_split_folders(data_dir, settings.train_split, settings.test_split).train
        if train is not None and has_class_folders(data_dir / train):
            return False
        raise Invalid(
            f"{data_dir} has no usable {settings.train_split} split (a train/, Train/ or training/ folder "
            f"holding one folder per class); found: {', '.join(found)}. Arrange it as "
            f"{settings.train_split}/<class>/<image> and {settings.test_split}/<class>/<image> (README, "
            "data layout), or give --data-dir an empty folder and --demo for the demo data"
        )
    state = "does not exist" if found is None else "is empty"
    if demo is False:
        raise Missing(f"{data_dir} {state}: no dataset to serve (and --no-demo writes none)")
    if demo is None and "data_dir" in settings.model_fields_set:  # a folder the user named, maybe mistyped
        raise Missing(
            f"{data_dir} {state}; check --data-dir / BOUNCER_DATA_DIR, or pass --demo to write the demo dataset there"
        )
    return True


def _write_demo(data_dir: Path, kind: DemoKind) -> None:
    if kind is DemoKind.photos:
        from training.data.demo_photos import PhotoDemoSpec, write_photo_dataset

        write_photo_dataset(data_dir, PhotoDemoSpec())
    else:
        from training.data.demo_silhouettes import DemoSpec, write_demo_dataset

        write_demo_dataset(data_dir, DemoSpec())


@app.command()
@_friendly
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port (checked free before anything else).")] = 3000,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on: 0.0.0.0 every interface (BentoML's default), 127.0.0.1 this machine."),
    ] = "0.0.0.0",
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs for the first training.")] = None,
    demo: Annotated[
        bool | None,
        typer.Option(
            "--demo/--no-demo",
            help=(
                "--demo: write the demo dataset into DATA_DIR if it does not exist or is empty (without it, only "
                "the default ./data gets one); --no-demo: never write it."
            ),
            show_default=False,
        ),
    ] = None,
    demo_kind: Annotated[DemoKind, typer.Option(help="Which demo dataset to write.")] = DemoKind.silhouettes,
) -> None:
    """Get ready and serve: demo data into an empty ./data, import, train if this dataset has no model, serve."""
    from training.pipeline.training_run import run_training
    from training.progress import console_progress
    from training.registry.serving import Registry

    settings = _settings()
    check_port_free(host, port)  # before minutes of training, not after
    if demo_wanted(settings, demo):
        typer.echo(f"no dataset in {settings.data_dir}: writing the {demo_kind} demo data there")
        _write_demo(settings.data_dir, demo_kind)
    elif demo:
        typer.echo(f"{settings.data_dir} already holds a dataset: serving it, no demo data written")
    with _labels(settings) as labels:
        labels.import_folder()
        untrained = not settings.pinned_model_tag and not Registry(labels).version_tags()
    if untrained:
        typer.echo(f"no '{settings.model_name}' model of the dataset in {settings.data_dir}: training one first")
        import_tensorflow_quietly()
        result = run_training(settings, epochs=epochs, sink=console_progress(log))
        typer.echo(json.dumps(result.summary(), indent=2))
    with _labels(settings) as labels:  # a version that cannot serve this dataset: one line here, not a crash there
        typer.echo(f"model: {Registry(labels).serving_tag()}")
    # this interpreter's bentoml, never one found on PATH: the venv need not be activated
    command = [sys.executable, "-m", "bentoml", "serve", "bento_service.service:Bouncer", "--port", str(port)]
    command += ["--host", host]
    check_port_free(host, port)  # still free after the training?
    shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1") else host
    typer.echo(f"review page: http://{shown}:{port}/ui/   API and OpenAPI page: http://{shown}:{port}/")
    typer.echo(f"serving: {' '.join(command)}")
    os.environ["BOUNCER_DATA_DIR"] = str(settings.data_dir)  # the service must see the same paths
    os.environ["BOUNCER_MLFLOW_DIR"] = str(settings.mlflow_dir)
    os.chdir(SOURCE_ROOT)
    os.execv(sys.executable, command)


def check_port_free(host: str, port: int) -> None:
    """OSError naming --port when ``host:port`` cannot be listened on (another server has it)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortInUse(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another port with --port"
            ) from None


class PortInUse(Conflict, OSError):
    """The port ``bouncer serve`` was asked for is taken: a user error (one line, exit 2)."""


def _user() -> str:
    return os.environ.get("USER") or os.environ.get("USERNAME") or "cli"


if __name__ == "__main__":
    app()
