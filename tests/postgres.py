"""A PostgreSQL server for the tests: the one BOUNCER_TEST_POSTGRES_URL names, or a throw-away one.

The throw-away server is started from Debian's PostgreSQL binaries when they are
installed (README command 2 installs them), in a temp folder, with trust auth on
127.0.0.1 and fsync off, and stopped at the end of the session. Without either, the
PostgreSQL cases skip and say how to run them.

Debian's apt has no pgvector, so the pgvector backend's tests run on a second throw-away
server started from the PostgreSQL + pgvector build that the ``pgserver`` wheel (a dev
extra, from PyPI) carries, unless Debian's server has the extension itself.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

HOW = "set BOUNCER_TEST_POSTGRES_URL=postgresql+psycopg://user@host/postgres, or apt-get install postgresql"


def debian_binaries() -> Path | None:
    """The newest Debian PostgreSQL's bin folder, if one is installed."""
    found = list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        return None
    return max(found, key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)] or [0]).parent


def debian_has_pgvector() -> bool:
    binaries = debian_binaries()
    version = binaries.parent.name if binaries else ""
    return bool(version) and Path(f"/usr/share/postgresql/{version}/extension/vector.control").exists()


def pgserver_binaries() -> Path | None:
    """The bin folder of the PostgreSQL + pgvector build inside the ``pgserver`` wheel, if installed."""
    spec = find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    binaries = Path(spec.origin).parent / "pginstall" / "bin"
    return binaries if (binaries / "initdb").exists() else None


@contextmanager
def throwaway_server(binaries: Path | None = None) -> Iterator[str | None]:
    """A fresh server's URL for the session (Debian's binaries unless given), or None where none is installed."""
    binaries = binaries or debian_binaries()
    if binaries is None:
        yield None
        return
    # util-linux's runuser lives in /usr/sbin, which a narrowed PATH may leave out
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    as_postgres = [runuser, "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="bouncer-pg-"))
    data = root / "data"
    if not str(binaries).startswith("/usr/"):
        # A build inside a venv (pgserver's), copied beside the data so that the postgres user can
        # run it whatever the permissions of the checkout. Relative paths are kept: it finds lib/ and
        # share/ from bin/, and its bundled libpq in site-packages/pgserver.libs by its RPATH.
        install = binaries.parent  # .../site-packages/pgserver/pginstall
        packages = install.parent.parent
        shutil.copytree(install, root / "pkg" / "pgserver" / "pginstall", symlinks=True)
        if (packages / "pgserver.libs").is_dir():
            shutil.copytree(packages / "pgserver.libs", root / "pkg" / "pgserver.libs", symlinks=True)
        binaries = root / "pkg" / "pgserver" / "pginstall" / "bin"
    if as_postgres:
        shutil.chown(root, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    run = {"check": True, "capture_output": True, "text": True}
    try:
        initdb = [*as_postgres, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        subprocess.run(initdb, **run)
        pg_ctl = [*as_postgres, str(binaries / "pg_ctl"), "-D", str(data)]
        subprocess.run([*pg_ctl, "-o", options, "-l", str(root / "server.log"), "-w", "start"], **run)
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else exc
        raise RuntimeError(f"could not start a throw-away PostgreSQL from {binaries}: {detail}") from exc
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """An empty database on ``server`` for one test, dropped afterwards (with whatever still holds it)."""
    name = f"bouncer_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
