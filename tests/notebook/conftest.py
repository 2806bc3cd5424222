"""Executing a notebook as a test: in its own workspace, its server stopped whatever happens."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from training.jobs.processes import stop_tree

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SAVE_OUTPUTS = bool(os.environ.get("BOUNCER_SAVE_EXECUTED_NOTEBOOK"))  # refresh the committed copies' outputs


def execute_notebook(name: str, workdir: Path) -> nbformat.NotebookNode:
    """Run every cell of ``notebooks/<name>`` (it writes ``serve.pid`` in ``workdir`` when it starts a server)."""
    path = NOTEBOOKS / name
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    try:
        client.execute()
    except BaseException:
        # pytest-timeout's exception can leave the kernel running on its own: it went on training and
        # serving, using the cores the next tests need. Stop it and everything it started.
        process = getattr(getattr(client.km, "provisioner", None), "process", None)
        if process is not None and process.poll() is None:
            stop_tree(process.pid, grace=10)
        raise
    finally:  # a failing cell never reaches the notebook's own shutdown cell
        pid_file = workdir / "serve.pid"
        if pid_file.exists():
            stop_tree(int(pid_file.read_text()), grace=10)
    if SAVE_OUTPUTS:
        nbformat.write(notebook, path)
    return notebook


def pictures(notebook: nbformat.NotebookNode) -> int:
    """How many images the executed notebook shows."""
    return sum("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", []))
