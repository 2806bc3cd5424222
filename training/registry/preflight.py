"""Can this server serve its dataset? Checked once before any worker starts; what to fix, in one line, if not.

Without it, a worker whose start failed was restarted by `bentoml serve` forever, a traceback
each time, and a worker started on a mistyped or unmounted data folder first created a new,
empty label database there. The service runs :func:`check_can_serve` in BentoML's main process
(``@bentoml.on_deployment``), before any worker: a missing, unmounted or read-only data folder, an
unmounted model store inside a container, an unreachable PostgreSQL, a label database from a
newer Bouncer, or no model for this dataset raise :class:`CannotServe` with the fix in its message.
The checks that only read come first, so a refusal writes nothing: the label database is opened
(and migrated) only once the folders are usable and the database reachable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from training.labels.migrate import LabelDatabaseSchemaError
from training.labels.store import open_store
from training.registry.serving import ModelResolutionError, resolve_serving_tag
from training.registry.store import use_home_model_store
from training.settings import Settings

EXIT_CODE = 78  # EX_CONFIG (sysexits.h): the configuration is wrong; restarting the same container will not help
CONNECT_TIMEOUT_S = 10
# What BentoML's Dockerfile sets in every image it makes (`bentoml containerize`).
CONTAINERIZED = "BENTOML_CONTAINERIZED"


class CannotServe(RuntimeError):
    """Why this server cannot start, worded so that the message says what to do."""


def in_container() -> bool:
    return os.environ.get(CONTAINERIZED, "").lower() == "true"


def check_can_serve(settings: Settings) -> str:
    """The version this server will serve, once every check passed; :class:`CannotServe` otherwise."""
    _check_data_dir(settings)
    if in_container():
        _check_volumes(settings)
    for url in dict.fromkeys([settings.label_db_url, *([settings.prediction_log_db_url] * settings.prediction_log)]):
        _check_reachable(url)
    if settings.database_url is None and not (settings.data_dir / "labels.db").is_file():
        raise CannotServe(
            f"{settings.data_dir} has no labels.db: its images were never imported. Import them first with "
            "`bouncer import` (inside the image: the same `run` with `-w /home/bentoml/bento/src` and the command "
            "`python -m training.cli import`)"
        )
    try:
        with open_store(settings) as store:
            use_home_model_store()
            return resolve_serving_tag(settings, store)
    except (LabelDatabaseSchemaError, ModelResolutionError) as exc:
        raise CannotServe(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CannotServe(f"the label database {_shown(settings.label_db_url)} failed: {_first_line(exc)}") from None


def _check_data_dir(settings: Settings) -> None:
    data = settings.data_dir
    if not data.is_dir():
        where = "mount the data folder there" if in_container() else "point BOUNCER_DATA_DIR at it"
        raise CannotServe(f"the data folder BOUNCER_DATA_DIR={data} does not exist: {where}")
    for folder in (data, settings.runtime_dir):
        if folder.is_dir():
            _check_writable(folder)
    if settings.database_url is None:
        for name in ("labels.db", "labels.db-wal", "labels.db-shm", "labels.db-writer", "labels.csv"):
            path = data / name
            if path.exists() and not os.access(path, os.W_OK):
                raise CannotServe(_not_writable(path))


def _check_writable(folder: Path) -> None:
    """Whether this user can create files in ``folder``: tried, since access() misjudges some mounts."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".bouncer-write-check-"):
            pass
    except PermissionError:
        raise CannotServe(_not_writable(folder)) from None
    except OSError as exc:  # a read-only file system, a full disk
        raise CannotServe(f"cannot write in {folder}: {exc.strerror}") from None


def _not_writable(path: Path) -> str:
    owner, uid = path.stat().st_uid, os.getuid()
    fix = f"give uid {uid} write access (chown -R {uid}:{uid} on the host's folder"
    fix += "; with podman, add :U to the volume" if in_container() else ""
    return f"{path} is not writable by this server's user (uid {uid}; it belongs to uid {owner}): {fix})"


def _check_volumes(settings: Settings) -> None:
    """Inside a container, what must outlive it must be on a volume: the data folder and the model store."""
    home = Path(os.environ.get("BENTOML_HOME", "~/bentoml")).expanduser()
    for path, what, mount in (
        (settings.data_dir, "the data folder (BOUNCER_DATA_DIR)", f"-v /path/to/data:{settings.data_dir}"),
        (home, "the model store (BENTOML_HOME)", "-e BENTOML_HOME=/bentoml -v /path/to/store:/bentoml"),
    ):
        if _mount_point(path) == Path("/"):
            raise CannotServe(
                f"{what} {path} is not on a volume: labels, trained models and promotions would vanish with the "
                f"container; mount one ({mount})"
            )
    _check_writable(home)


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def _check_reachable(url: str) -> None:
    """Connect once, with a timeout, to a database on a server (a SQLite file needs no check)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return
    engine = create_engine(parsed, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        raise CannotServe(f"cannot reach the database {_shown(url)}: {_first_line(exc)}") from None
    finally:
        engine.dispose()


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
