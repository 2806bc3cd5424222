"""What the demo datasets share: the folder they are written into, and what they poisoned.

The ground truth is kept in ``DATA_DIR/ground_truth.csv``, outside the splits. Only
benchmarks, notebooks and tests read it, to score how well the loop finds the
poison: the tool itself never sees the answer.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from training.errors import AlreadyThere

GROUND_TRUTH_FILE = "ground_truth.csv"


@dataclass(frozen=True)
class PoisonedImage:
    path: str  # relative to DATA_DIR
    true_label: str
    given_label: str
    kind: str  # "impostor" (a coherent group) | "noise" (random wrong labels)


def clear_splits(data_dir: Path, *, force: bool) -> None:
    """Make room for a demo dataset: existing split folders are refused, or removed with ``force``."""
    existing = [data_dir / split for split in ("train", "test") if (data_dir / split).exists()]
    if existing and not force:
        raise AlreadyThere(f"{', '.join(map(str, existing))} already exist; pass --force to replace the demo data")
    for folder in existing:
        shutil.rmtree(folder)


def write_ground_truth(data_dir: Path, poisoned: Sequence[PoisonedImage]) -> None:
    with (data_dir / GROUND_TRUTH_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([f.name for f in fields(PoisonedImage)])
        writer.writerows(astuple(item) for item in sorted(poisoned, key=lambda p: p.path))


def read_ground_truth(data_dir: Path) -> list[PoisonedImage]:
    with (data_dir / GROUND_TRUTH_FILE).open(newline="", encoding="utf-8") as handle:
        return [PoisonedImage(**row) for row in csv.DictReader(handle)]
