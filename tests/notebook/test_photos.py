"""The photos notebook: with every setting at its default, the loop finds every poisoned photo and fixes the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.notebook.conftest import execute_notebook, pictures

# A whole notebook trains and retrains: more than the suite's 900 s per test on a slow or busy 2-core machine
# (its cells have their own 1200 s limit in execute_notebook).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_photos_loop_finds_every_poisoned_photo_and_retraining_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "workspace"
    monkeypatch.setenv("BOUNCER_NOTEBOOK_WORKDIR", str(workdir))
    # every setting at its default: none of the test session's small-and-fast overrides
    for key in [k for k in os.environ if k.startswith("BOUNCER_")] + ["BENTOML_HOME", "MLFLOW_TRACKING_URI"]:
        if key != "BOUNCER_NOTEBOOK_WORKDIR":
            monkeypatch.delenv(key, raising=False)
    notebook = execute_notebook("photos.ipynb", workdir)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["found"] == summary["planted"] > 0, summary  # from 3 similar calls
    assert summary["calls"]["similar"] <= 3
    assert summary["promoted"] is True
    assert summary["accuracy_after"] >= 0.97 and summary["accuracy_after"] > summary["accuracy_before"], summary
    assert pictures(notebook) >= 2, "thumbnails of the errors and of the neighbours"
