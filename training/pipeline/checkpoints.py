"""What a stopped training leaves for the next: its main model and each finished fold model, under one key.

At a million images the main model and each fold model take hours; a training killed
after two of three folds (an out-of-memory kill, a reboot, a cancelled task) should not
train them again. Each is saved as it finishes, atomically (whole or absent), in
``STATE_DIR/checkpoints/<key>/``, where the key digests everything they depend on: the
images (paths and bytes), the labels, the classes and both recipes. A rerun with the
same key takes them instead of training; any change (a relabel, another setting) makes
another key, and the stale folders are removed. A registered version removes its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.settings import Settings

if TYPE_CHECKING:
    from training.model.fit import TrainConfig, TrainedClassifier
    from training.model.out_of_fold import FoldInputs, FoldJob, FoldResult, FoldRunner

log = logging.getLogger(__name__)

MAIN_MODEL = "main.keras"
MAIN_FACTS = "main.json"


def run_key(
    image_keys: Sequence[str],
    labels: Sequence[str],
    classes: Sequence[str],
    configs: Sequence[TrainConfig],
    **extra: Any,
) -> str:
    """One digest of what a run's models depend on (``verbose`` aside: it changes no weight)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(image_keys), list(classes), [_recipe(c) for c in configs], extra]).encode())
    for label in labels:
        digest.update(label.encode() + b"\n")
    return digest.hexdigest()[:32]


def _recipe(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(config).items() if k != "verbose"}


@dataclass(frozen=True)
class Checkpoints:
    """One run key's folder: the main model and the fold results finished so far."""

    folder: Path

    @classmethod
    def open(cls, settings: Settings, key: str) -> Checkpoints:
        """The folder of ``key``; folders of other keys (runs whose data or recipe since changed) are removed."""
        root = settings.runtime_dir / "checkpoints"
        if root.is_dir():
            for stale in root.iterdir():
                if stale.name != key:
                    log.info("removing checkpoints of another run (other labels or recipe): %s", stale)
                    shutil.rmtree(stale, ignore_errors=True)
        return cls(root / key)

    def main_model(self) -> TrainedClassifier | None:
        """The main model a stopped run with the same key finished, or None."""
        model_path, facts_path = self.folder / MAIN_MODEL, self.folder / MAIN_FACTS
        if not (model_path.is_file() and facts_path.is_file()):  # the facts are written last
            return None
        import keras

        from training.model.fit import TrainedClassifier

        facts = json.loads(facts_path.read_text())
        log.info("resuming: the main model from %s (a run with the same data and recipe stopped later)", model_path)
        model = keras.models.load_model(model_path, compile=False)
        return TrainedClassifier(model, **facts)

    def save_main(self, trained: TrainedClassifier) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".main-{os.getpid()}.keras"
        trained.model.save(partial)
        os.replace(partial, self.folder / MAIN_MODEL)
        facts = {
            "class_names": trained.class_names,
            "history": trained.history,
            "epochs_run": trained.epochs_run,
            "wall_time_s": trained.wall_time_s,
            "epochs_planned": trained.epochs_planned,
            "validation_accuracy": trained.validation_accuracy,
        }
        partial_facts = self.folder / f".{MAIN_FACTS}-{os.getpid()}"
        partial_facts.write_text(json.dumps(facts))
        os.replace(partial_facts, self.folder / MAIN_FACTS)

    def fold_path(self, fold: int, folds: int) -> Path:
        return self.folder / f"fold-{fold}-of-{folds}.npz"

    def resuming(self, runner: FoldRunner) -> FoldRunner:
        """``runner``, but finished folds are read back instead of trained, and each new one is saved as it comes."""

        from training.model.out_of_fold import FoldResult

        def run(inputs: FoldInputs, jobs: list[FoldJob]) -> Iterator[FoldResult]:
            todo = []
            for job in jobs:
                path = self.fold_path(job[0], inputs.folds)
                if path.is_file():
                    log.info("resuming: fold %d/%d from %s", job[0], inputs.folds, path)
                    yield FoldResult.load(path)
                else:
                    todo.append(job)
            results: Iterable[FoldResult] = runner(inputs, todo) if todo else ()
            for result in results:
                result.save(self.fold_path(result.fold, inputs.folds))
                yield result

        return run

    def clear(self) -> None:
        """The run is registered: nothing to resume."""
        shutil.rmtree(self.folder, ignore_errors=True)
