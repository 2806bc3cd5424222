"""The `bouncer` command line: help everywhere, one-line errors, exit code 2 on bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from training.cli import app, demo_wanted
from training.settings import Settings, get_settings

runner = CliRunner()
GROUP = typer.main.get_command(app)
assert isinstance(GROUP, TyperGroup)
COMMANDS = sorted(GROUP.commands)  # every subcommand, so a new one is covered without editing this list


def test_the_command_list_is_the_apps() -> None:
    expected = {"demo-data", "import", "train", "evaluate", "suspects", "trace", "similar", "expand", "models"}
    assert expected | {"promote", "export-labels", "relabel", "undo", "history", "images", "serve"} <= set(COMMANDS)


def _squashed(text: str) -> str:
    """Without any whitespace: the help wraps lines (at hyphens too) wherever the terminal width puts them."""
    return "".join(text.split())


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_plain_help_for_every_option(command: str | None) -> None:
    """No "<bool>" metavar (Typer's rich help drew one beside --flag/--no-flag), and no option without help."""
    result = runner.invoke(app, [*([command] if command else []), "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert "<bool>" not in result.output
    parameters = (GROUP if command is None else GROUP.commands[command]).params
    assert parameters or command in {"models"}  # `bouncer models` takes nothing
    for parameter in parameters:
        help_text = getattr(parameter, "help", None)
        assert help_text, f"bouncer {command or ''} {parameter.name}: no help text"
        assert _squashed(help_text) in _squashed(result.output), f"{parameter.name}'s help is not shown"
        if isinstance(parameter, TyperOption) and parameter.is_flag:
            assert not parameter.metavar, f"flag {parameter.name} shows a metavar"


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


# --- `bouncer serve` never writes the demo into a user's folder --------------------------------


def _default_settings(monkeypatch: pytest.MonkeyPatch, cwd: Path) -> Settings:
    """Settings as `bouncer serve` sees them in ``cwd`` with no --data-dir and no BOUNCER_DATA_DIR."""
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("BOUNCER_DATA_DIR", raising=False)
    return get_settings()


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_demo_goes_into_the_default_data_folder_when_it_is_missing_or_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _default_settings(monkeypatch, tmp_path)
    assert settings.data_dir == tmp_path / "data"
    assert demo_wanted(settings, None)  # a fresh machine: no data/ yet
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "README.md").write_text("the repository's own note\n")
    (tmp_path / "data" / ".gitignore").write_text("/train\n")
    assert demo_wanted(settings, None)  # a fresh clone: data/ holds only what git ships
    assert demo_wanted(settings, True)


def test_a_named_folder_gets_the_demo_only_when_asked(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert demo_wanted(get_settings(data_dir=tmp_path / "new"), True)
    assert demo_wanted(get_settings(data_dir=empty), True)
    with pytest.raises(FileNotFoundError, match="is empty; .* pass --demo"):
        demo_wanted(get_settings(data_dir=empty), None)


def test_no_demo_never_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist: no dataset to serve"):
        demo_wanted(_default_settings(monkeypatch, tmp_path), False)


@pytest.mark.parametrize(("train", "test"), [("train", "test"), ("Train", "Test"), ("training", "val")])
def test_a_folder_with_a_train_split_is_served_as_it_is(tmp_path: Path, train: str, test: str) -> None:
    for split in (train, test):
        (tmp_path / "data" / split / "cat").mkdir(parents=True)
    for demo in (None, True, False):
        assert not demo_wanted(get_settings(data_dir=tmp_path / "data"), demo)


def test_a_mistyped_data_dir_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "dta"
    result = runner.invoke(app, ["--data-dir", str(typo), "serve"])
    assert result.exit_code == 2, result.output
    assert f"{typo} does not exist; check --data-dir" in result.output
    assert "pass --demo" in result.output
    assert not typo.exists()


@pytest.mark.parametrize("flag", [[], ["--demo"], ["--no-demo"]])
def test_a_folder_of_other_things_is_refused_listing_them_and_left_alone(tmp_path: Path, flag: list[str]) -> None:
    photos = tmp_path / "holiday"
    (photos / "cats").mkdir(parents=True)
    (photos / "dogs").mkdir()
    (photos / "cats" / "tom.jpg").write_bytes(b"not really a jpeg")
    (photos / "train").mkdir()  # a train folder without class folders is no train split either
    (photos / "notes.txt").write_text("mine\n")
    before = _tree(photos)
    result = runner.invoke(app, ["--data-dir", str(photos), "serve", *flag])
    assert result.exit_code == 2, result.output
    assert "has no usable train split" in result.output
    assert "found: cats/, dogs/, notes.txt, train/" in result.output
    assert "Traceback" not in result.output
    assert _tree(photos) == before


def test_serve_offers_both_demo_kinds() -> None:
    result = runner.invoke(app, ["serve", "--help"])
    assert "silhouettes" in result.output and "photos" in result.output
    wrong = runner.invoke(app, ["serve", "--demo-kind", "drawings"])
    assert wrong.exit_code == 2


def test_evaluate_without_a_test_split_says_so_instead_of_accuracy_zero(tmp_path: Path) -> None:
    from tests.conftest import write_mixed_formats

    data = tmp_path / "train-only"
    for kind in ("cross", "ring"):
        write_mixed_formats(data / "train" / kind, kind, 3)
    assert runner.invoke(app, ["-q", "--data-dir", str(data), "import"]).exit_code == 0
    result = runner.invoke(app, ["-q", "--data-dir", str(data), "evaluate"])
    assert result.exit_code == 2
    assert f"no test split in DATA_DIR {data}: no images in a test/, testing/, val/" in result.output
    assert "accuracy" not in result.output and "Traceback" not in result.output


def test_every_command_sets_a_quiet_tensorflow_log_level_a_user_can_override(
    shapes_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.tf_logs import TF_CPP_MIN_LOG_LEVEL

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert runner.invoke(app, ["-q", "import"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == TF_CPP_MIN_LOG_LEVEL == "3"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    assert runner.invoke(app, ["-q", "import"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


def test_global_options_may_follow_the_subcommand(tmp_path: Path) -> None:
    from training.cli import GlobalOptionsAnywhere, hoist_global_options

    names = GlobalOptionsAnywhere.GLOBAL
    assert hoist_global_options(["import", "--data-dir", "/d", "-v"], names) == ["--data-dir", "/d", "import", "-v"]
    assert hoist_global_options(["train", "--data-dir=/d", "-q", "--epochs", "2"], names) == [
        "--data-dir=/d",
        "-q",
        "train",
        "--epochs",
        "2",
    ]
    assert hoist_global_options(["relabel", "--", "-q"], names) == ["relabel", "--", "-q"]  # an image id "-q"
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(app, ["import", "--data-dir", str(missing)])
    assert result.exit_code == 2 and str(missing) in result.output and "No such option" not in result.output


def test_a_taken_port_is_one_line_naming_port_before_any_work(shapes_dataset: Path) -> None:
    """With 3000 taken, `bouncer serve` once printed the other server's address, trained, then a 70-line traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--no-demo", "--port", str(port)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: cannot listen on 0.0.0.0:{port} (Address already in use); choose another port with --port"
    )
    assert not (shapes_dataset / "labels.db").exists()  # nothing imported, nothing trained


@pytest.mark.parametrize("quiet", [False, True])
def test_the_console_shows_no_faiss_loading_lines(quiet: bool) -> None:
    """Every command and server start printed eleven faiss.loader lines (one a ModuleNotFoundError)."""
    import subprocess
    import sys

    code = "import logging; logging.basicConfig(level=logging.INFO)\n"
    code += "from training.tf_logs import quiet_tensorflow; quiet_tensorflow()\n" if quiet else ""
    code += "import faiss\n"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
    assert ("faiss.loader" in shown) is not quiet, shown


def test_labels_csv_is_made_with_the_users_umask(shapes_dataset: Path) -> None:
    """git and DVC users expect 0644 under the usual umask; a temporary file's 0600 stuck to it."""
    previous = os.umask(0o022)
    try:
        assert runner.invoke(app, ["import"]).exit_code == 0
    finally:
        os.umask(previous)
    assert (shapes_dataset / "labels.csv").stat().st_mode & 0o777 == 0o644


def test_a_users_mistake_is_one_line_and_a_bug_keeps_its_traceback() -> None:
    """The CLI once turned every ValueError or PermissionError into a 'user error' that hid the traceback."""
    from training.cli import _friendly
    from training.errors import Invalid

    def mistaken() -> None:
        raise Invalid("unknown split 'holdout'")

    def buggy() -> None:
        raise ValueError("operands could not be broadcast together")  # a bug in Bouncer, not the user's

    with pytest.raises(typer.Exit) as stopped:
        _friendly(mistaken)()
    assert stopped.value.exit_code == 2
    with pytest.raises(ValueError, match="broadcast"):
        _friendly(buggy)()


def test_every_user_error_carries_its_status_from_one_table() -> None:
    """One base class and one table: the API, the review page and the CLI answer by error_code."""
    import importlib
    import pkgutil

    import training
    from training.errors import BouncerError

    for module in pkgutil.walk_packages(training.__path__, "training."):
        if not module.name.endswith(("ray_engine", "pgvector_index")) and ".migrations" not in module.name:
            importlib.import_module(module.name)

    def subclasses(cls: type) -> set[type]:
        return {c for sub in cls.__subclasses__() for c in {sub, *subclasses(sub)}}

    found = subclasses(BouncerError)
    assert len(found) >= 20, sorted(c.__name__ for c in found)
    for cls in found:
        assert int(cls.error_code) in {400, 404, 409, 413, 503}, cls
    from training.data.images import ImageError
    from training.labels.errors import UndoConflictError, UnknownImageError

    assert (int(ImageError("x").error_code), int(UnknownImageError("x").error_code)) == (400, 404)
    assert int(UndoConflictError("x").error_code) == 409
