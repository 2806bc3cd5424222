"""The containerized bento, built and run for real: the image a user builds, its volumes, training, replicas, stops.

One module, so the image is built once (``image``): a local Debian base image tagged as
``python:3.11-slim`` (``tests/container/podman.py``), then exactly what docs/container.md tells a
user, ``bentoml build`` and ``bentoml containerize --backend podman``, of the real Bouncer bento
carrying the tiny demo model. Every test then runs containers of that image as a user would:
BentoML's non-root user, ``/data`` and ``/bentoml`` (BENTOML_HOME) mounted from folders owned
by that user, the token from the environment. Run alone with ``pytest -m container``; nothing
is left behind (the tier's podman has its own store, removed at the end).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import TrainedDemo, digest_tree, eventually
from tests.container.podman import (
    CONTAINER_ENV,
    DATA,
    HOME,
    IMAGE_USER_UID,
    REPLICA_ENV,
    STATE,
    Podman,
    make_base_image,
    missing_tools,
    owned_by_image_user,
    private_podman,
    run_container,
    wait_ready,
)
from tests.postgres import fresh_database
from tests.service.conftest import PROJECT, copy_demo_data
from tests.service.test_readme import bash_blocks, commands
from training.jobs.processes import free_port
from training.labels.store import open_store
from training.labels.sync import import_folder
from training.registry.preflight import EXIT_CODE

pytestmark = [pytest.mark.slow, pytest.mark.container]

# A folder of your own: the tier's podman store is kept there between runs, so a rerun builds warm.
KEEP_STORE = "BOUNCER_TEST_PODMAN_ROOT"
TOKEN = "container-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# One worker per container (two cores, shared with the other test process); tiny trainings.
SERVE_ENV = {**CONTAINER_ENV, "BOUNCER_WORKERS": "1", "BOUNCER_API_TOKEN": TOKEN}
TRAIN_ENV = {"BOUNCER_IMAGE_SIZE": "32", "BOUNCER_MIN_TRAIN_STEPS": "0", "BOUNCER_OUT_OF_FOLD_FOLDS": "0"}


@dataclass
class BuiltImage:
    podman: Podman
    name: str  # the image's name: the bento's tag, as `bentoml containerize` names it
    model_tag: str  # the model the bento carries
    seconds: dict[str, float] = field(default_factory=dict)


README = PROJECT / "README.md"
# The README's Container block, command by command (what each one starts with).
BUILD, CONTAINERIZE, CHOWN, RUN = (
    ".venv/bin/bentoml build",
    ".venv/bin/bentoml containerize",
    "mkdir -p bentoml-store",
    "podman run",
)


def readme_commands() -> dict[str, str]:
    """The commands of the README's Container section, which the tier runs as written (but for :func:`fill`)."""
    (block,) = [b for b in bash_blocks(README.read_text()) if "bentoml containerize" in b]
    lines = commands(block)
    found = {start: [line for line in lines if line.startswith(start)] for start in (BUILD, CONTAINERIZE, CHOWN, RUN)}
    assert all(len(matches) == 1 for matches in found.values()) and len(lines) == 4, lines
    return {start: matches[0] for start, matches in found.items()}


def fill(command: str, **values: str) -> str:
    """``command`` with each placeholder (a key: its text) replaced; a placeholder it lacks is an error."""
    for placeholder, value in values.items():
        assert placeholder in command, f"{placeholder!r} not in the README's {command!r}"
        command = command.replace(placeholder, value)
    return command


def bash(command: str, *, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}:\n{(done.stdout + done.stderr)[-6000:]}"
    return done


@pytest.fixture(scope="module")
def image(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    """The README's build and containerize, of the real project with the demo model; all removed after."""
    if why := missing_tools():
        pytest.skip(why)
    root = tmp_path_factory.mktemp("podman")
    kept = os.environ.get(KEEP_STORE)
    with private_podman(Path(kept) if kept else root / "podman", keep=bool(kept)) as podman:
        seconds = {}
        started = time.monotonic()
        make_base_image(podman, root)
        seconds["base image"] = time.monotonic() - started
        env = {key: value for key, value in podman.env.items() if key != "BOUNCER_MODEL_TAG"}
        readme = readme_commands()
        venv = f"{Path(sys.executable).parent}/"  # the README's .venv/bin/, wherever this venv is
        started = time.monotonic()
        build = readme[BUILD].replace(".venv/bin/", venv)
        version = trained_demo.result.tag.split(":", 1)[1]
        built = bash(fill(build, **{"<version>": version}), cwd=PROJECT, env=env, timeout=900)
        (bento,) = re.findall(r'Successfully built Bento\(tag="([^"]+)"\)', built.stdout)
        seconds["bentoml build"] = time.monotonic() - started
        started = time.monotonic()
        containerize = fill(
            readme[CONTAINERIZE].replace(".venv/bin/", venv), **{"<bento version>": bento.split(":", 1)[1]}
        )
        first = subprocess.run(
            ["bash", "-c", containerize], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=1800
        )
        if first.returncode != 0:  # once, uv's resolution inside the build failed on a flaky index answer
            print(f"containerize failed, retrying once:\n{(first.stdout + first.stderr)[-3000:]}")
            bash(containerize, cwd=PROJECT, env=env, timeout=1800)
        seconds["bentoml containerize"] = time.monotonic() - started
        size = podman.inspect("image", bento)["Size"]
        timings = ", ".join(f"{step} {s:.0f} s" for step, s in seconds.items())
        print(f"\ncontainer tier: image {bento} {size / 1e9:.2f} GB; {timings}")
        yield BuiltImage(podman, bento, trained_demo.result.tag, seconds)


@dataclass
class Volumes:
    """A user's folders: the dataset (with its labels.db), a model store, a replica's own state; the image's user's."""

    data: Path
    home: Path
    state: Path | None = None

    def mounts(self) -> list[tuple[Path, str]]:
        return [(self.data, DATA), (self.home, HOME), *([(self.state, STATE)] if self.state else [])]


def volumes(trained_demo: TrainedDemo, root: Path) -> Volumes:
    data = copy_demo_data(trained_demo, root / "data")
    home = root / "bentoml"
    home.mkdir()
    owned_by_image_user(root)
    return Volumes(data, home)


@contextmanager
def served(image: BuiltImage, name: str, vols: Volumes | None, *, port: int | None = None, **env: str) -> Iterator[str]:
    """A container of the image on a free port, ready; its URL. Removed after (its log printed if it failed)."""
    port = port or free_port()
    network_host = "BENTOML_PORT" in env
    run_container(
        image.podman,
        image.name,
        name,
        env={**SERVE_ENV, **env},
        volumes=vols.mounts() if vols else (),
        publish=None if network_host else port,
        network_host=network_host,
    )
    url = f"http://127.0.0.1:{env.get('BENTOML_PORT', port)}"
    try:
        print(f"{name} ready in {wait_ready(image.podman, name, url):.1f} s")
        yield url
    finally:
        image.podman("rm", "--force", "--time", "30", name, check=False)


def post(url: str, endpoint: str, body: dict, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/{endpoint}", json=body, timeout=60, **kwargs)  # type: ignore[arg-type]


def ok(url: str, endpoint: str, body: dict, **kwargs: object) -> dict | list:
    response = post(url, endpoint, body, **kwargs)
    assert response.status_code == 200, f"{endpoint}: {response.status_code} {response.text}"
    return response.json()


def predict(url: str, image: Path) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"image": (image.name, image.read_bytes(), "image/png")}, timeout=60)


def test_the_image_runs_as_bentomls_user_and_bakes_in_no_secret(image: BuiltImage) -> None:
    config = image.podman.inspect("image", image.name)["Config"]
    assert config["User"] == "bentoml"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["BOUNCER_DATA_DIR"] == "/data" and env["BENTOML_CONTAINERIZED"] == "true"
    assert not [key for key in env if "TOKEN" in key or "PASSWORD" in key or key == "BOUNCER_DATABASE_URL"]
    ids = image.podman("run", "--rm", "--entrypoint", "id", image.name).stdout.split()
    assert ids[0] == f"uid={IMAGE_USER_UID}(bentoml)"
    # the volumes' mount points belong to that user, so a new named volume is writable as it is
    stat = image.podman("run", "--rm", "--entrypoint", "stat", image.name, "-c", "%u %n", DATA, HOME, STATE)
    assert stat.stdout.split() == [str(IMAGE_USER_UID), DATA, str(IMAGE_USER_UID), HOME, str(IMAGE_USER_UID), STATE]


def test_the_readme_container_answers_every_endpoint(
    image: BuiltImage, trained_demo: TrainedDemo, tmp_path: Path
) -> None:
    """The README's chown and `podman run` as written (but its name and host port), then every endpoint."""
    readme = readme_commands()
    vols = Volumes(copy_demo_data(trained_demo, tmp_path / "data"), tmp_path / "bentoml-store")
    bash(readme[CHOWN], cwd=tmp_path, env=dict(os.environ), timeout=60)
    port, name = free_port(), "bouncer-readme"
    values = {
        "--name bouncer ": f"--name {name} ",
        "-p 3000:3000": f"-p 127.0.0.1:{port}:3000",
        "<bento version>": image.name.split(":", 1)[1],
    }
    bash(fill(readme[RUN], **values), cwd=tmp_path, env={**image.podman.env, "BOUNCER_API_TOKEN": TOKEN}, timeout=120)
    url = f"http://127.0.0.1:{port}"
    try:
        print(f"{name} ready in {wait_ready(image.podman, name, url):.1f} s")
        picture = sorted((vols.data / "test" / "dog").glob("*.png"))[0]
        answer = predict(url, picture)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == image.model_tag.split(":", 1)[1]
        evaluation = ok(url, "evaluate", {"split": "test"})
        assert evaluation["n"] == len(list((vols.data / "test").glob("*/*.png")))
        first = ok(url, "images", {"split": "train", "label": "cat", "limit": 1})[0]
        similar = ok(url, "similar", {"image_id": first["image_id"], "k": 3, "split": "train", "label": "cat"})
        assert len(similar["results"]) == 3 and {r["label"] for r in similar["results"]} == {"cat"}
        assert ok(url, "suspects", {"k": 5})  # the demo model was trained with its out-of-fold models
        body = {"image_ids": [first["image_id"]], "label": "dog", "reason": "from the container test"}
        assert post(url, "relabel", body).status_code == 401  # the token, from the environment, guards writes
        relabel = ok(url, "relabel", body, headers=AUTH)
        assert relabel["changed"] == [{"image_id": first["image_id"], "old_label": "cat", "new_label": "dog"}]
        assert eventually(lambda: f",{first['image_id']}," in (vols.data / "labels.csv").read_text(), timeout=10)
        page = httpx.get(f"{url}/ui/", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        openapi = httpx.get(f"{url}/", timeout=30)
        assert openapi.status_code == 200 and "swagger" in openapi.text.lower()
        assert httpx.get(f"{url}/docs.json", timeout=30).json()["info"]["title"] == "Bouncer"
    finally:
        image.podman("rm", "--force", "--time", "30", name, check=False)
    # what the server wrote belongs to the image's user, in the mounted folders
    assert (vols.data / "labels.db").stat().st_uid == IMAGE_USER_UID
    assert (vols.home / "models" / "bouncer" / image.model_tag.split(":", 1)[1]).is_dir()


def test_a_training_inside_the_container_serves_and_survives_a_new_container(
    image: BuiltImage, trained_demo: TrainedDemo, tmp_path: Path
) -> None:
    vols = volumes(trained_demo, tmp_path)
    original = image.model_tag.split(":", 1)[1]
    with served(image, "bouncer-train-1", vols, **TRAIN_ENV) as url:
        target = ok(url, "images", {"split": "train", "label": "horse", "limit": 1})[0]["image_id"]
        decision = ok(url, "relabel", {"image_ids": [target], "label": "zebra", "reason": "r"}, headers=AUTH)
        submit = httpx.post(f"{url}/train/submit", json={"epochs": 1, "force": True}, headers=AUTH, timeout=30)
        assert submit.status_code == 200, submit.text
        task = submit.json()["task_id"]

        def done() -> bool:
            return httpx.get(f"{url}/train/status", params={"task_id": task}, timeout=30).json()["status"] not in {
                "pending",
                "in_progress",
            }

        assert eventually(done, timeout=600, interval=2), ok(url, "train_progress", {})
        result = httpx.get(f"{url}/train/get", params={"task_id": task}, timeout=30)
        assert result.status_code == 200, (result.text, ok(url, "train_progress", {}))
        trained = result.json()
        assert trained["promoted"] is True and trained["previous_version"] == original
        # no source tree in the image: nothing is built, and the result says what to do instead
        assert trained["bento_tag"] is None
        assert "runs from a built bento" in trained["bento_message"]
        assert "BENTOML_HOME=/bentoml" in trained["bento_message"]
        new = trained["model_version"]
        picture = sorted(vols.data.glob("test/dog/*.png"))[0]
        assert eventually(lambda: predict(url, picture).json()["model_version"] == new)
    # registered in the mounted store (not in the container's layer), and served by a new container
    assert (vols.home / "models" / "bouncer" / new / "model.onnx").is_file()
    with served(image, "bouncer-train-2", vols) as url:
        serving = [m["version"] for m in ok(url, "models", {}) if m["serving"]]
        assert serving == [new]
        assert predict(url, sorted(vols.data.glob("test/dog/*.png"))[0]).json()["model_version"] == new
        history = ok(url, "history", {"image_id": target, "limit": 5})
        assert history[0]["event_id"] == decision["event_id"]
        assert ok(url, "train_progress", {})["state"] == "succeeded"
    # what the result says to do instead of a rebuild: a bento of the new version, from the source, with that store
    build = [sys.executable, "-m", "bentoml", "build", "--arg", f"model_tag={trained['tag']}", "--output", "tag"]
    env = {**os.environ, "BENTOML_HOME": str(vols.home)}
    done = subprocess.run(build, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    bento = done.stdout.strip().split("__tag__:")[-1]
    shipped = vols.home / "bentos" / bento.replace(":", "/") / "bento.yaml"
    assert f"tag: {trained['tag']}" in shipped.read_text()


def test_sigterm_loses_no_acknowledged_relabel_and_flushes_the_prediction_log(
    image: BuiltImage, trained_demo: TrainedDemo, tmp_path: Path
) -> None:
    """`podman stop` (SIGTERM) while relabels and predictions stream in: every acknowledged one is on disk."""
    vols = volumes(trained_demo, tmp_path)
    # a long flush interval: predictions still queued at the stop are written only by the shutdown's flush
    env = {"BOUNCER_WORKERS": "2", "BOUNCER_PREDICTION_LOG_FLUSH_MS": "60000"}
    acknowledged: list[int] = []
    predicted: list[int] = []
    failures: list[str] = []
    stop = threading.Event()
    with served(image, "bouncer-sigterm", vols, **env) as url:
        ids = [i["image_id"] for i in ok(url, "images", {"split": "train", "limit": 40})]
        picture = sorted(vols.data.glob("test/dog/*.png"))[0]

        def relabel(start: int) -> None:
            for n in range(start, 10_000, 2):
                if stop.is_set():
                    return
                try:
                    body = {"image_ids": [ids[n % len(ids)]], "label": ("cat", "dog")[n % 2]}
                    answer = post(url, "relabel", body, headers=AUTH)
                except httpx.HTTPError:
                    continue  # the server is going: not acknowledged
                if answer.status_code == 200 and answer.json()["event_id"] is not None:  # None: nothing changed
                    acknowledged.append(answer.json()["event_id"])
                elif answer.status_code >= 500:
                    failures.append(answer.text)

        def predicting() -> None:
            while not stop.is_set():
                try:
                    answer = predict(url, picture)
                except httpx.HTTPError:
                    continue
                if answer.status_code == 200:
                    predicted.append(1)
                elif answer.status_code >= 500:
                    failures.append(answer.text)

        threads = [threading.Thread(target=relabel, args=(i,)) for i in (0, 1)] + [threading.Thread(target=predicting)]
        for thread in threads:
            thread.start()
        assert eventually(lambda: len(acknowledged) >= 20 and len(predicted) >= 20, timeout=120)
        stopped = image.podman("stop", "--time", "60", "bouncer-sigterm", timeout=120)
        stop.set()
        for thread in threads:
            thread.join()
        assert stopped.returncode == 0
        log = image.podman.logs("bouncer-sigterm")
        code = image.podman.inspect("container", "bouncer-sigterm")["State"]["ExitCode"]
    assert failures == []
    assert log.count("Completed cleanup hook: _close") == 2, log[-3000:]  # both workers wrote what they held
    assert "SIGKILL" not in log
    with closing(sqlite3.connect(vols.data / "labels.db")) as db:
        recorded = {row[0] for row in db.execute("SELECT event_id FROM label_events")}
    assert set(acknowledged) <= recorded, sorted(set(acknowledged) - recorded)
    with closing(sqlite3.connect(vols.data / ".bouncer" / "predictions.db")) as db:
        logged = db.execute("SELECT count(*) FROM predictions").fetchone()[0]
    assert logged >= len(predicted), (logged, len(predicted))
    answered = f"{len(acknowledged)} relabels acknowledged, {len(predicted)} predictions answered"
    print(f"stopped (exit {code}): {answered}, {logged} logged")


def _register_copy(store: Path, tag: str) -> str:
    """A second version (the same weights under a new tag) in the model store folder ``store``."""
    script = textwrap.dedent(
        f"""
        import shutil, bentoml
        source = bentoml.models.get({tag!r})
        with bentoml.models.create(source.tag.name, metadata=dict(source.info.metadata)) as model:
            shutil.copytree(source.path, model.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.yaml"))
        print(model.tag)
        """
    )
    home_of_tests = os.environ["BENTOML_HOME"]
    shutil.copytree(Path(home_of_tests) / "models" / tag.replace(":", "/"), store / "models" / tag.replace(":", "/"))
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "BENTOML_HOME": str(store)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("index", ["faiss", "pgvector"])
def test_two_replicas_on_one_postgresql_agree(
    image: BuiltImage,
    trained_demo: TrainedDemo,
    tmp_path: Path,
    index: str,
    postgres_server: str | None,
    pgvector_server: str | None,
) -> None:
    """deploy/compose.yaml's layout: two containers sharing /data and /bentoml, each its own /state and port."""
    server = pgvector_server if index == "pgvector" else postgres_server
    if not server:
        pytest.skip(f"no PostgreSQL{' with pgvector' if index == 'pgvector' else ''} (see tests/postgres.py)")
    with fresh_database(server) as database:
        if index == "pgvector":
            with create_engine(database).begin() as connection:
                connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        data = copy_demo_data(trained_demo, tmp_path / "data")
        (data / "labels.db").unlink()  # the labels live in the database
        settings = trained_demo.settings.model_copy(update={"data_dir": data, "database_url": database})
        with open_store(settings) as store:
            import_folder(settings, store)
        store_folder = tmp_path / "bentoml"
        second = _register_copy(store_folder, image.model_tag)
        for name in ("a", "b"):
            (tmp_path / f"state-{name}").mkdir()
        owned_by_image_user(tmp_path)
        env = {
            **REPLICA_ENV,
            "BOUNCER_DATABASE_URL": database,
            "BOUNCER_VECTOR_INDEX": index,
            "BOUNCER_MODEL_POLL_SECONDS": "1",
        }
        a_volumes, b_volumes = (Volumes(data, store_folder, tmp_path / f"state-{name}") for name in ("a", "b"))
        with (
            served(image, f"bouncer-{index}-a", a_volumes, BENTOML_PORT=str(free_port()), **env) as a,
            served(image, f"bouncer-{index}-b", b_volumes, BENTOML_PORT=str(free_port()), **env) as b,
        ):
            # a relabel through one is seen by the other at once, in its lists and in its vector index
            moved = ok(a, "images", {"split": "train", "label": "horse", "limit": 1})[0]["image_id"]
            ok(a, "relabel", {"image_ids": [moved], "label": "cow", "reason": "r"}, headers=AUTH)
            assert ok(b, "history", {"image_id": moved, "limit": 1})[0]["changes"][0]["new_label"] == "cow"
            for url in (a, b):
                query = ok(url, "images", {"split": "train", "label": "cow", "limit": 2})
                other = next(i["image_id"] for i in query if i["image_id"] != moved)
                found = ok(url, "similar", {"image_id": other, "k": 1000, "split": "train", "label": "cow"})
                assert moved in {r["image_id"] for r in found["results"]}, url
                stale = ok(url, "similar", {"image_id": other, "k": 1000, "split": "train", "label": "horse"})
                assert moved not in {r["image_id"] for r in stale["results"]}, url
            # a promotion through one is served by both
            version = second.split(":", 1)[1]
            ok(a, "promote", {"version": version, "reason": "replicas"}, headers=AUTH)
            picture = sorted(data.glob("test/dog/*.png"))[0]
            assert eventually(
                lambda: all(predict(url, picture).json()["model_version"] == version for url in (a, b)), timeout=15
            )
            assert not (data / ".bouncer").exists()  # each replica's train task files are in its own /state


FAULTS = ["no volumes", "data folder of another user", "label database from a newer Bouncer", "PostgreSQL unreachable"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_container_that_cannot_serve_says_why_in_one_line_and_exits(
    image: BuiltImage, trained_demo: TrainedDemo, tmp_path: Path, fault: str
) -> None:
    # One at a time: four containers started at once took longer here (2 cores), 38-115 s against ~50 s.
    vols = volumes(trained_demo, tmp_path)
    env: dict[str, str] = {}
    mounts = vols.mounts()
    if fault == "no volumes":
        mounts, expected = [], "the data folder (BOUNCER_DATA_DIR) /data is not on a volume"
    elif fault == "data folder of another user":
        for path in [vols.data, *vols.data.rglob("*")]:
            os.chown(path, 0, 0)
        expected = f"/data is not writable by this server's user (uid {IMAGE_USER_UID}; it belongs to uid 0)"
    elif fault == "label database from a newer Bouncer":
        with closing(sqlite3.connect(vols.data / "labels.db")) as db, db:
            db.execute("UPDATE alembic_version SET version_num = '9999'")
        expected = "is at schema revision 9999, which this Bouncer does not know"
    else:
        env["BOUNCER_DATABASE_URL"] = f"postgresql+psycopg://bouncer:pw@127.0.0.1:{free_port()}/bouncer"
        expected = "cannot reach the database postgresql+psycopg://bouncer:***@127.0.0.1"
    before = digest_tree(vols.data)
    name = f"bouncer-fault-{FAULTS.index(fault)}"
    run_container(image.podman, image.name, name, env={**SERVE_ENV, **env}, volumes=mounts)
    try:
        code = image.podman.exit_code(name)
        log = image.podman.logs(name)
    finally:
        image.podman("rm", "--force", name, check=False)
    assert code == EXIT_CODE, log[-3000:]
    lines = [line for line in log.splitlines() if "Bouncer cannot start" in line]
    assert len(lines) == 1 and expected in lines[0], log[-3000:]
    assert "Traceback" not in log
    assert digest_tree(vols.data) == before  # nothing half-written: nothing written at all


def test_a_dataset_never_imported_is_imported_with_the_documented_command(
    image: BuiltImage, trained_demo: TrainedDemo, tmp_path: Path
) -> None:
    """A data folder without labels.db: one line saying how to import it; that command, run in the image, does."""
    vols = volumes(trained_demo, tmp_path)
    (vols.data / "labels.db").unlink()
    run_container(image.podman, image.name, "bouncer-unimported", env=SERVE_ENV, volumes=vols.mounts())
    try:
        assert image.podman.exit_code("bouncer-unimported") == EXIT_CODE
        log = image.podman.logs("bouncer-unimported")
    finally:
        image.podman("rm", "--force", "bouncer-unimported", check=False)
    assert "/data has no labels.db: its images were never imported" in log and "-w /home/bentoml/bento/src" in log
    volume_args = [arg for host, inside in vols.mounts() for arg in ("-v", f"{host}:{inside}")]
    env_args = [arg for key, value in SERVE_ENV.items() for arg in ("-e", f"{key}={value}")]
    command = ["python", "-m", "training.cli", "import"]
    source = ["-w", "/home/bentoml/bento/src"]
    imported = image.podman("run", "--rm", *source, *volume_args, *env_args, image.name, *command)
    assert " added, 0 removed" in imported.stdout, imported.stdout + imported.stderr
    with served(image, "bouncer-imported", vols) as url:  # the bento's pinned model fits the classes
        assert ok(url, "images", {"split": "train", "limit": 1})


KUBERNETES = PROJECT / "deploy" / "kubernetes" / "bouncer.yaml"


def test_the_kubernetes_manifests_play_with_podman(
    image: BuiltImage, trained_demo: TrainedDemo, tmp_path: Path
) -> None:
    """deploy/kubernetes/bouncer.yaml through `podman kube play`, as far as podman 4.3 can run it.

    Played as written: both PersistentVolumeClaims (podman makes them named volumes; the dataset is
    then copied into ``bouncer-data``) and the Deployment (non-root securityContext, the env, the
    three volumes, the emptyDir). Changed for podman, and only that: the image (the one built here);
    one replica (podman publishes containerPort on the host, so a second would collide), on a free
    host port; the Secret's two values as plain env values (podman 4.3.1 stores a played Secret so
    that secretKeyRef cannot read it, containers/podman#17071), the database a SQLite file on the
    data volume (PostgreSQL replicas: test_two_replicas_on_one_postgresql_agree). Not played: the
    Secret and the Service (podman has no Service). The probes are polled here: podman turns the
    liveness probe into a healthcheck that needs curl and systemd, and ignores readiness.
    """
    import yaml

    documents = list(yaml.safe_load_all(KUBERNETES.read_text()))
    secret = next(d for d in documents if d["kind"] == "Secret")
    values = {**secret["stringData"], "api-token": TOKEN, "database-url": "sqlite:////data/labels.db"}
    claims = [d for d in documents if d["kind"] == "PersistentVolumeClaim"]
    (deployment,) = (d for d in documents if d["kind"] == "Deployment")
    deployment["spec"]["replicas"] = 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container["image"] = f"localhost/{image.name}"
    port = free_port()
    container["ports"][0]["hostPort"] = port
    for variable in container["env"]:
        if "valueFrom" in variable:
            variable["value"] = values[variable.pop("valueFrom")["secretKeyRef"]["key"]]
        if variable["name"] == "BOUNCER_WORKERS":
            variable["value"] = "1"
    (tmp_path / "claims.yaml").write_text(yaml.safe_dump_all(claims))
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    podman = image.podman
    podman("kube", "play", str(tmp_path / "claims.yaml"))
    try:
        data = volumes(trained_demo, tmp_path / "source").data
        archive = tmp_path / "data.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(data, arcname=".")  # owned by the image's user, as volumes() left it
        podman("volume", "import", "bouncer-data", str(archive))
        podman("kube", "play", str(tmp_path / "deployment.yaml"), check=False)  # healthchecks need systemd: logged
        names = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
        (name,) = [n for n in names if n.startswith("bouncer-pod")]
        url = f"http://127.0.0.1:{port}"
        print(f"kube play: {name} ready in {wait_ready(podman, name, url):.1f} s")
        assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
        assert podman("exec", name, "id", "-u").stdout.strip() == str(IMAGE_USER_UID)
        picture = sorted(data.glob("test/dog/*.png"))[0]
        assert predict(url, picture).json()["model_version"] == image.model_tag.split(":", 1)[1]
        first = ok(url, "images", {"split": "train", "label": "cat", "limit": 1})[0]["image_id"]
        assert post(url, "relabel", {"image_ids": [first], "label": "dog"}).status_code == 401
        ok(url, "relabel", {"image_ids": [first], "label": "dog"}, headers=AUTH)
        models = podman("run", "--rm", "-v", "bouncer-models:/m", "--entrypoint", "ls", image.name, "/m/models/bouncer")
        assert image.model_tag.split(":", 1)[1] in models.stdout.split()  # the store is the claimed volume
    finally:
        podman("kube", "down", str(tmp_path / "deployment.yaml"), check=False)
        podman("volume", "rm", "--force", "bouncer-data", "bouncer-models", check=False)
