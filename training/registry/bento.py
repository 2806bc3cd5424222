"""Rebuild the bento after a promotion, so `bentoml containerize` ships the new model.

Only where Bouncer's source is: a server running from a built bento (a container) has no
bentofile.yaml and no build context, and says how to ship the new version instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from training.settings import SOURCE_ROOT

PROJECT_DIR = SOURCE_ROOT
BUILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class BuildOutcome:
    tag: str | None  # None when no bento was built
    message: str


def build_context(project: Path = PROJECT_DIR) -> Path | None:
    """The directory to build from, or None inside a built bento (which has bento.yaml, not a bentofile)."""
    if (project / "bentofile.yaml").is_file() and not (project.parent / "bento.yaml").is_file():
        return project
    return None


def build_bento(model_tag: str, project: Path = PROJECT_DIR) -> BuildOutcome:
    """`bentoml build` with ``model_tag`` as the model the bento carries and serves by default."""
    context = build_context(project)
    if context is None:  # e.g. inside an image made by `bentoml containerize`: no source tree, no build tool
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        return BuildOutcome(
            None,
            f"bento not rebuilt: this server runs from a built bento ({project.parent}), which holds no source to "
            f"build from. {model_tag} serves now and is kept in the model store of BENTOML_HOME={home}; to ship it "
            f"in an image, build from Bouncer's source with that store: BENTOML_HOME=<its folder> bentoml build "
            f"--arg model_tag={model_tag}, then bentoml containerize",
        )
    env = {**os.environ, "BOUNCER_MODEL_TAG": model_tag}
    done = subprocess.run(
        # --arg pins the model: `bentoml serve <bento>` from a store would otherwise serve its newest version
        [sys.executable, "-m", "bentoml", "build", str(context), "--arg", f"model_tag={model_tag}", "--output", "tag"],
        cwd=context,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"bentoml build failed (exit {done.returncode}):\n{tail}")
    match = re.search(r"__tag__:(\S+)", done.stdout)
    if match is None:
        raise RuntimeError(f"bentoml build printed no tag:\n{done.stdout[-2000:]}")
    return BuildOutcome(match.group(1), f"built bento {match.group(1)} with model {model_tag}")
