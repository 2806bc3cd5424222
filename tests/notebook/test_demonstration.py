"""The demonstration notebook runs end to end against a real served bento, and relabelling helps."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

PROJECT = Path(__file__).resolve().parents[2]
NOTEBOOK = PROJECT / "notebooks" / "demonstration.ipynb"

pytestmark = pytest.mark.slow

# Small enough for CI on 2 cores, big enough that the poisoned group costs accuracy.
CI_BUDGET = {
    "BOUNCER_NOTEBOOK_PER_CLASS": "600",
    "BOUNCER_NOTEBOOK_IMPOSTORS": "150",
    "BOUNCER_EPOCHS": "10",
}


def test_notebook_runs_and_accuracy_improves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "workspace"
    monkeypatch.setenv("BOUNCER_NOTEBOOK_WORKDIR", str(workdir))
    for key, value in CI_BUDGET.items():
        monkeypatch.setenv(key, value)
    for key in ("BOUNCER_DATA_DIR", "BOUNCER_MLFLOW_DIR", "BENTOML_HOME"):  # the notebook sets its own
        monkeypatch.delenv(key, raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    try:
        NotebookClient(
            notebook, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
        ).execute()
    finally:  # a failing cell never reaches the notebook's own shutdown cell
        stop_notebook_server(workdir / "serve.pid")
    plots = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    # confusion matrices before/after and the thumbnail grids: misclassified, traced, expanded, suspects
    assert len(plots) >= 6, f"{len(plots)} plots in the executed notebook"
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["accuracy_after"] > summary["accuracy_before"], summary
    assert summary["fixed"] > 0 and summary["human_decisions"] > 0
    if os.environ.get("BOUNCER_SAVE_EXECUTED_NOTEBOOK"):  # refresh the committed copy's outputs
        nbformat.write(notebook, NOTEBOOK)


def stop_notebook_server(pid_file: Path) -> None:
    """Kill the process group of the `bentoml serve` the notebook started, if still there."""
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
