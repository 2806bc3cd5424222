"""Every command in the README and in docs/ is run by a test; the ones against a served instance, here.

Their fenced ``bash`` blocks that talk to ``localhost:3000`` run as written, through
bash and the real ``curl``, against a real ``bentoml serve`` of the test demo (its own copy of
the data, so the session server keeps its model), with only the address and the README's
placeholders (``<id>``, ``<old version>``) filled in from earlier answers. Every other bash
block is listed in :data:`COVERED_ELSEWHERE` with the test that covers it or the reason it is
not run; a block nobody accounted for fails the fast test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import TrainedDemo
from tests.service.conftest import PROJECT, copy_demo_data, running_server

README = PROJECT / "README.md"
# The README and the pages it links to: a command in either is run here or accounted for.
DOCUMENTS = [README, *sorted((PROJECT / "docs").glob("*.md"))]
ADDRESS = "localhost:3000"  # what the README's server commands talk to
TRAIN_TIMEOUT_S = 300

# A piece of each bash block that is not run against the server -> where it is covered, or why not run.
COVERED_ELSEWHERE = {
    ".venv/bin/pip install -e . && .venv/bin/bouncer serve": (
        "the install is .ci/run's fresh venv (with [dev]); `bouncer serve` (demo data, import, first training,"
        " then bentoml serve) is tests/code/test_cli.py up to the serve, the served API is this file."
        " Not run as written: it installs from the registry for minutes, then serves on :3000 until stopped"
    ),
    '.venv/bin/pip install -e ".[dev]" && .venv/bin/pytest': "what .ci/run runs, in a fresh venv",
    "benchmarks/predict.py": (
        "a benchmark (load for minutes), not a test; tests/code/test_packaging.py checks that the bench"
        " extra declares what benchmarks/ imports"
    ),
    "benchmarks/ood.py": "a benchmark (four trainings and load for minutes), not a test",
    "benchmarks/scale.py": (
        "benchmarks (the loop at 10k-100k images: an hour and more on 2 cores), not tests;"
        " tests/model/test_streaming.py and test_ray_training.py test what they measure"
    ),
    "benchmarks/label_issues.py": (
        "a benchmark (four datasets, about an hour on 2 cores), not a test; tests/code/test_label_issues.py and"
        " tests/model/test_suspect_ranking.py test the ranking it measures"
    ),
    "export BOUNCER_DATA_DIR=/path/to/my/images": (
        "a user's own folder: import is tests/code/test_cli.py, training tests/model/test_pipeline.py,"
        " a tiny folder tests/model/test_small_folders.py, `serve --no-demo` tests/code/test_cli.py"
        " (test_no_demo_never_writes), --port test_a_taken_port_is_one_line_naming_port_before_any_work"
    ),
    "export BOUNCER_DATABASE_URL=postgresql+psycopg": (
        "the label store on PostgreSQL: tests/service/test_service_postgres.py and test_replicas.py, on"
        " throw-away servers (tests/postgres.py)"
    ),
    "export BOUNCER_VECTOR_INDEX=pgvector": "tests/code/test_pgvector.py, on pgserver's PostgreSQL with pgvector",
    "git clone --branch v0.8.6": (
        "building pgvector from source needs GitHub, which CI cannot reach: tests/postgres.py uses pgserver's build"
    ),
    "export BOUNCER_TEST_POSTGRES_URL": "what tests/postgres.py does for every test session, with a throw-away server",
    "initdb -D /tmp/pgdata": "tests/postgres.py starts the same throw-away server (initdb, pg_ctl) for the tests",
    ".venv/bin/bentoml containerize --backend podman": (
        "tests/container/test_container.py runs the README's block (the same in docs/container.md) as written"
        " (readme_commands: only the placeholders, the container's name and host port filled in), with Debian's"
        " podman"
    ),
    "python -m training.cli import": (
        "tests/container/test_container.py (test_a_dataset_never_imported_is_imported_with_the_documented_command)"
        " runs this import in the image, with the test's volumes"
    ),
    "benchmarks/container.py": "a benchmark (builds and load for minutes, as root with podman), not a test",
}

# Answers a command's curl output with its HTTP status on a last line of its own; curl
# itself exits 0 on a 4xx, so the status is what tells a refusal from an answer.
CURL_WITH_STATUS = "curl() { command curl --silent --show-error --write-out '\\n%{http_code}' \"$@\"; }\n"
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def commands(block: str) -> list[str]:
    """The block's command lines (continuations joined), without blank and comment-only lines."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def all_blocks() -> list[str]:
    return [block for document in DOCUMENTS for block in bash_blocks(document.read_text())]


def server_blocks() -> list[str]:
    return [block for block in all_blocks() if ADDRESS in block]


def test_every_bash_block_is_run_or_accounted_for() -> None:
    blocks = all_blocks()
    assert server_blocks(), f"no README command talks to {ADDRESS}: nothing for the served test to run"
    for block in blocks:
        if ADDRESS in block:
            continue
        matches = [key for key in COVERED_ELSEWHERE if key in block]
        assert len(matches) == 1, f"say where this README block is tested (COVERED_ELSEWHERE):\n{block}"
    for key in COVERED_ELSEWHERE:
        assert any(key in block for block in blocks), f"no README block holds {key!r} any more: drop its entry"


@dataclass
class Answer:
    command: str
    exit_code: int
    status: int
    body: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.body)


def run(command: str, assignments: list[str], cwd: Path) -> Answer:
    """``command`` through bash and the real curl, after the block's earlier assignments."""
    script = CURL_WITH_STATUS + "".join(f"{line}\n" for line in assignments) + command + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120)
    body, _, status = done.stdout.rpartition("\n")
    return Answer(command, done.returncode, int(status) if status.isdigit() else 0, body, done.stderr)


@dataclass
class Demo:
    url: str
    root: Path  # the commands' working directory: its data/ is the served dataset
    first_version: str


@pytest.fixture(scope="module")
def demo(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    # Out-of-fold models stay on: the copy keeps the demo's dataset identity, so this training is
    # the newest version of the demo's dataset, and the demo's `suspects` tests need its audit.
    root = tmp_path_factory.mktemp("readme")
    data_dir = copy_demo_data(trained_demo, root / "data")
    env = {
        "BOUNCER_DATA_DIR": str(data_dir),
        "BOUNCER_MLFLOW_DIR": str(root / "mlruns"),
        "BOUNCER_EPOCHS": "2",  # as the demo's model was trained, so `{}` retrains it the same way
        "BOUNCER_BUILD_BENTO": "false",  # test_service_train builds the bento
    }
    with running_server(trained_demo, root, **env) as url:
        yield Demo(url, root, trained_demo.result.tag.split(":", 1)[1])


def wait_for_the_task(url: str, task_id: str) -> None:
    """What a reader does between submit and get: wait until the task is no longer running."""
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while httpx.get(f"{url}/train/status", params={"task_id": task_id}, timeout=30).json()["status"] in {
        "pending",
        "in_progress",
    }:
        assert time.monotonic() < deadline, f"training {task_id} still running after {TRAIN_TIMEOUT_S} s"
        time.sleep(1)


@pytest.mark.slow
def test_the_readme_commands_answer_from_a_served_demo(demo: Demo) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the README's commands use it")
    address = demo.url.removeprefix("http://")
    filled: dict[str, str] = {"<old version>": demo.first_version}
    answers: list[Answer] = []
    for block in server_blocks():
        assignments: list[str] = []
        for command in commands(block):
            if ASSIGNMENT.match(command):
                assignments.append(command)
                continue
            if "/train/get" in command:
                wait_for_the_task(demo.url, filled["<id>"])
            runnable = command.replace(ADDRESS, address)
            for placeholder, value in filled.items():
                runnable = runnable.replace(placeholder, value)
            assert not re.search(r"<[a-z ]+>", runnable), f"a README placeholder nothing filled in: {command}"
            answer = run(runnable, assignments, demo.root)
            assert answer.exit_code == 0, f"{command}\nexit {answer.exit_code}: {answer.stderr}"
            assert 200 <= answer.status < 300, f"{command}\nHTTP {answer.status}: {answer.body}"
            body = answer.json()  # every answer is JSON
            if "/train/submit" in command:
                filled["<id>"] = body["task_id"]
            answers.append(answer)

    ran = " ".join(a.command for a in answers)
    for endpoint in ("/predict", "/evaluate", "/train/submit", "/train_progress", "/train/get", "/promote"):
        assert endpoint in ran, f"the README no longer runs {endpoint}: update this test's expectations"
    predicted = next(a.json() for a in answers if "/predict" in a.command)
    assert predicted["label"] and predicted["model_version"] == demo.first_version
    result = next(a.json() for a in answers if "/train/get" in a.command)
    # The README: `{}` retrains as the first model was trained; on unchanged labels it scores the same
    # and is promoted.
    assert result["promoted"], result["promotion_message"]
    assert result["metrics"]["test_accuracy"] == pytest.approx(result["previous_metrics"]["test_accuracy"])
    rolled_back = next(a.json() for a in answers if "/promote" in a.command)
    assert rolled_back["version"] == demo.first_version and rolled_back["previous_version"] == result["model_version"]
