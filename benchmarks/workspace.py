"""A throw-away workspace for a benchmark: its own data folder, model store and MLflow store, never the user's."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def workspace(keep_in: Path | None, *, prefix: str) -> Iterator[Path]:
    """A temporary folder, or ``keep_in`` (created, kept afterwards) when the user wants to look at it later."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp) if keep_in is None else keep_in.resolve()
        root.mkdir(parents=True, exist_ok=True)
        yield root


def isolated_env(root: Path) -> dict[str, str]:
    """The settings that point every store into ``root``."""
    return {
        "BENTOML_HOME": str(root / "bentoml"),
        "BOUNCER_DATA_DIR": str(root / "data"),
        "BOUNCER_MLFLOW_DIR": str(root / "mlruns"),
    }
