"""Scanning real folders: split folders by the names datasets use, and class folders with nothing in them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import write_mixed_formats
from training.cli import app
from training.data.folders import find_split_folders, scan_folder
from training.labels.store import open_store
from training.labels.sync import import_folder
from training.settings import Settings

SPLITS = ("train", "test")
MAX_PIXELS = 10_000_000


def two_classes(split_dir: Path, count: int = 3) -> None:
    for kind in ("cross", "ring"):
        write_mixed_formats(split_dir / kind, kind, count)


@pytest.mark.parametrize(("train", "test"), [("Train", "Test"), ("training", "testing"), ("TRAINING", "Testing")])
def test_split_folders_in_any_case_and_long_form(settings: Settings, train: str, test: str) -> None:
    two_classes(settings.data_dir / train)
    two_classes(settings.data_dir / test, count=2)
    with open_store(settings) as store:
        report = import_folder(settings, store)
        assert report.added == 10 and report.warnings == []
        records = store.queries.images()
    # the label DB knows the canonical split; the path is the file's real one on disk
    assert {r.split for r in records if r.path.startswith(f"{train}/")} == {"train"}
    assert {r.split for r in records if r.path.startswith(f"{test}/")} == {"test"}
    assert all(settings.data_dir.joinpath(r.path).is_file() for r in records)


@pytest.mark.parametrize("validation", ["val", "Validation", "valid"])
def test_a_validation_folder_is_the_test_split_when_there_is_none(
    settings: Settings, validation: str, caplog: pytest.LogCaptureFixture
) -> None:
    two_classes(settings.data_dir / "train")
    two_classes(settings.data_dir / validation, count=2)
    with caplog.at_level(logging.INFO, logger="training.data.folders"):
        scan = scan_folder(settings.data_dir, SPLITS, max_pixels=MAX_PIXELS)
    assert scan.split_folders == {"train": "train", "test": validation}
    held_out = [f for f in scan.files if f.split == "test"]
    assert len(held_out) == 4 and all(f.path.startswith(f"{validation}/") for f in held_out)
    assert f"using {validation}/ as the test split" in caplog.text


def test_a_validation_folder_beside_a_test_folder_is_ignored_with_a_warning(settings: Settings) -> None:
    two_classes(settings.data_dir / "train")
    two_classes(settings.data_dir / "test", count=2)
    two_classes(settings.data_dir / "val", count=1)
    scan = scan_folder(settings.data_dir, SPLITS, max_pixels=MAX_PIXELS)
    assert not any(f.path.startswith("val/") for f in scan.files)
    assert scan.warnings == ["val/ ignored: test/ is the test split"]


def test_two_folders_for_one_split_is_an_error_naming_both(settings: Settings) -> None:
    two_classes(settings.data_dir / "train")
    two_classes(settings.data_dir / "Training")
    with pytest.raises(ValueError, match=r"2 folders for the train split \(Training, train\)"):
        scan_folder(settings.data_dir, SPLITS, max_pixels=MAX_PIXELS)


def test_split_names_from_the_settings_are_understood_too(tmp_path: Path) -> None:
    for name in ("fit", "Holdout", "val"):
        (tmp_path / name).mkdir()
    found = find_split_folders(tmp_path, "fit", "holdout")
    assert (found.train, found.test) == ("fit", "Holdout")
    assert found.by_split("fit", "holdout") == {"fit": "fit", "holdout": "Holdout"}


def test_a_class_folder_without_a_readable_image_is_reported_and_not_a_class(settings: Settings) -> None:
    data = settings.data_dir
    two_classes(data / "train")
    two_classes(data / "test", count=2)
    (data / "train" / "square").mkdir()  # empty
    (data / "train" / "zebra").mkdir()
    (data / "train" / "zebra" / "notes.jpg").write_text("not an image")  # nothing readable either
    with open_store(settings) as store:
        report = import_folder(settings, store)
        assert store.queries.classes() == ["cross", "ring"]
    assert report.classes == ["cross", "ring"]
    assert "train/square/ holds no readable image: 'square' is not a class" in report.warnings
    assert "train/zebra/ holds no readable image: 'zebra' is not a class" in report.warnings
    assert dict(report.skipped)["train/zebra/notes.jpg"].startswith("not an image")


def test_a_class_with_test_images_but_no_train_folder_is_warned_about(settings: Settings) -> None:
    two_classes(settings.data_dir / "Train")
    two_classes(settings.data_dir / "Test", count=2)
    write_mixed_formats(settings.data_dir / "Test" / "square", "square", 2)
    scan = scan_folder(settings.data_dir, SPLITS, max_pixels=MAX_PIXELS)
    assert scan.classes == ["cross", "ring", "square"]  # its test images keep their label
    assert scan.warnings == ["class 'square' has test images but no Train/square/ images: no model learns it"]


def test_bouncer_import_prints_the_warnings(settings: Settings) -> None:
    two_classes(settings.data_dir / "train")
    two_classes(settings.data_dir / "test", count=2)
    (settings.data_dir / "train" / "square").mkdir()
    result = CliRunner().invoke(app, ["-q", "--data-dir", str(settings.data_dir), "import"])
    assert result.exit_code == 0, result.output
    assert "warning: train/square/ holds no readable image: 'square' is not a class" in result.output
    assert "classes: cross, ring\n" in result.output
