"""The suspects ranking is one function of the labels: every process pages through the same list.

A server runs several workers, each with its own cached ranking that follows the
reviewer's decisions. A page of the queue may come from any of them, so a worker that
has followed a relabel and a confirm must rank exactly as one that never ranked before
(a fresh ``bouncer suspects`` process), or pages skip and repeat images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.registry.serving import open_curator
from training.settings import Settings

pytestmark = pytest.mark.slow


def fresh_process_ranking() -> list[dict]:
    """What a process that never ranked before answers (the environment names the copy and the version)."""
    bouncer = Path(sys.executable).with_name("bouncer")
    answer = subprocess.run(
        [str(bouncer), "-q", "suspects", "--k", "100000"], capture_output=True, text=True, env=os.environ, check=True
    )
    return json.loads(answer.stdout)


def test_a_worker_that_followed_decisions_ranks_as_a_fresh_one(demo_copy: Settings) -> None:
    with open_curator(demo_copy) as curator:
        before = curator.suspect_ranking()  # this process now keeps a ranking and follows changes
        confirmed = [s.image_id for s in before[:3]]
        confirm = curator.store.events.confirm(confirmed, reason="checked")
        wrong = next(s for s in before[3:] if s.suggested_label != s.label)
        curator.store.events.relabel([wrong.image_id], wrong.suggested_label, reason="fixed")
        followed = [s.__dict__ for s in curator.suspect_ranking()]
        assert not {*confirmed, wrong.image_id} & {s["image_id"] for s in followed}
        assert followed == fresh_process_ranking()

        # the three come back, where a fresh one puts them
        curator.store.events.undo(confirm.event_id, reason="not so sure")
        followed = [s.__dict__ for s in curator.suspect_ranking()]
        assert set(confirmed) <= {s["image_id"] for s in followed}
        assert followed == fresh_process_ranking()
