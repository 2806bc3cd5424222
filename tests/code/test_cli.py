"""The `bouncer` command line: help everywhere, one-line errors, exit code 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli import app

runner = CliRunner()
COMMANDS = [
    "demo-data",
    "import",
    "train",
    "evaluate",
    "suspects",
    "export-labels",
    "relabel",
    "undo",
    "history",
    "images",
    "serve",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_import_relabel_history_undo_round_trip(shapes_dataset: Path) -> None:
    assert runner.invoke(app, ["-q", "import"]).exit_code == 0
    listed = json.loads(runner.invoke(app, ["-q", "images", "--split", "train", "--label", "ring"]).output)
    image_id = listed[0]["image_id"]
    relabelled = runner.invoke(app, ["-q", "relabel", image_id, "--label", "cross", "--reason", "looks like one"])
    assert relabelled.exit_code == 0, relabelled.output
    event_id = json.loads(relabelled.output)["event_id"]
    assert f"{image_id},train,cross" in (shapes_dataset / "labels.csv").read_text()
    events = json.loads(runner.invoke(app, ["-q", "history", "--image-id", image_id]).output)
    assert events[0]["event_id"] == event_id and events[0]["reason"] == "looks like one"
    assert runner.invoke(app, ["-q", "undo", str(event_id)]).exit_code == 0
    assert f"{image_id},train,ring" in (shapes_dataset / "labels.csv").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["relabel", "nope", "--label", "ring"], "unknown image_id"),
        (["undo", "42"], "unknown event_id 42"),
        (["evaluate", "--split", "holdout"], "unknown split"),
    ],
)
def test_bad_input_is_one_clear_line(shapes_dataset: Path, args: list[str], message: str) -> None:
    runner.invoke(app, ["-q", "import"])
    result = runner.invoke(app, ["-q", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_import_of_a_missing_folder_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--data-dir", str(tmp_path / "missing"), "import"])
    assert result.exit_code == 2
    assert "does not exist" in result.output
