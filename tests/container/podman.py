"""Podman for the container tier: a private store and configuration, a local base image, containers.

Everything lives under one folder of the test's own (``CONTAINERS_CONF`` and
``CONTAINERS_STORAGE_CONF`` point at files there), so the machine's podman set-up and images
are neither used nor changed, and removing that folder removes every image and container made.

No container registry is reachable in CI, and BentoML's Dockerfile starts ``FROM
python:3.11-slim``: :func:`make_base_image` builds a minimal Debian root file system with
``mmdebstrap`` from the Debian mirror apt already uses on this machine (python3, pip, CA
certificates) and tags it under that name, so podman uses it without pulling. Only this test
image trusts the machine's extra CA certificates (the package index may be reached through
them) and sets ``PIP_BREAK_SYSTEM_PACKAGES=1`` (Debian's Python refuses a system-wide ``pip
install``, which BentoML's Dockerfile does for ``uv``); nothing of it goes into what Bouncer ships.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

BASE_IMAGE = "docker.io/library/python:3.11-slim"  # what BentoML's generated Dockerfile starts FROM
TOOLS = ("podman", "mmdebstrap", "runc")
HOW = "apt-get install podman runc fuse-overlayfs slirp4netns uidmap mmdebstrap (README, command 2), as root"


def containers_conf(root: Path) -> str:
    """The tier's containers.conf: runc, cgroupfs, file events and explicit ulimits made podman work in
    CI's sandbox (crun could not set RLIMIT_NOFILE there, and cgroups are v1); podman's runtime state
    and network definitions under ``root``, so that nothing of the machine's podman is shared or removed."""
    return f"""\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{root / "tmp"}"

[network]
network_config_dir = "{root / "networks"}"
"""


EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")  # Debian's folder for locally added CAs
IMAGE_USER_UID = 1034  # BentoML's user in the images it makes
# The layout docs/container.md, deploy/compose.yaml and deploy/kubernetes/ give a container, and
# the tier runs (tests/code/test_deploy_files.py checks that the files agree): the dataset at
# /data, BENTOML_HOME (the model store) at /bentoml, and with replicas sharing /data, each one's
# train task files at /state.
DATA, HOME, STATE = "/data", "/bentoml", "/state"
CONTAINER_ENV = {"BENTOML_HOME": HOME}
REPLICA_ENV = {**CONTAINER_ENV, "BOUNCER_STATE_DIR": STATE}


def with_sbin() -> str:
    """PATH with the sbin folders (chroot, iptables, runuser live there), which CI's narrowed PATH may leave out."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join([*path, *(d for d in ("/usr/sbin", "/sbin") if d not in path)])


def missing_tools() -> str | None:
    """Why the container tier cannot run here, or None."""
    absent = [tool for tool in TOOLS if shutil.which(tool, path=with_sbin()) is None]
    if absent:
        return f"{', '.join(absent)} not installed: {HOW}"
    if os.geteuid() != 0:
        return "the container tier runs rootful podman: run it as root"
    return None


@dataclass(frozen=True)
class Podman:
    """``podman`` with this tier's own configuration and store."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": with_sbin(),
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
        }

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 300, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, input=input
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
        return done

    def inspect(self, what: str, name: str) -> dict:
        return json.loads(self(what, "inspect", name).stdout)[0]

    def logs(self, name: str) -> str:
        done = self("logs", name, check=False)
        return done.stdout + done.stderr

    def exit_code(self, name: str, *, timeout: float = 120) -> int:
        """Wait for the container to stop; its exit code."""
        return int(self("wait", name, timeout=timeout).stdout.strip().splitlines()[-1])


@contextmanager
def private_podman(root: Path, *, keep: bool = False) -> Iterator[Podman]:
    """A podman whose configuration, images and containers all live under ``root``; all removed after.

    ``keep``: leave the images (not the containers) for the next run, whose build then starts warm.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "containers.conf").write_text(containers_conf(root))
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "storage"}"\nrunroot = "{root / "run"}"\n'
    )
    podman = Podman(root)
    try:
        yield podman
    finally:
        podman("pod", "rm", "--all", "--force", "--time", "0", check=False)
        podman("rm", "--all", "--force", "--time", "0", check=False)
        podman("volume", "rm", "--all", "--force", check=False)
        if not keep:  # this store's images and layers (not `system reset`, which also clears shared state)
            podman("rmi", "--all", "--force", check=False)
            shutil.rmtree(root, ignore_errors=True)


def apt_sources() -> list[str]:
    """The machine's apt source files, for mmdebstrap: the mirror CI's apt already reaches."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    return [
        str(f)
        for f in files
        if f.is_file()
        and f.suffix in {".list", ".sources"}
        and any(line.strip() and not line.lstrip().startswith("#") for line in f.read_text().splitlines())
    ]


def debian_suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("no VERSION_CODENAME in /etc/os-release")


def make_base_image(podman: Podman, work: Path) -> None:
    """A minimal Debian with python3 and pip, as ``python:3.11-slim`` (the name BentoML's Dockerfile uses)."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:  # a kept store's
        return
    rootfs = work / "rootfs.tar"
    hooks = []
    if any(EXTRA_CA_DIR.rglob("*.crt")):
        hooks += [
            f"--customize-hook=sync-in {EXTRA_CA_DIR} {EXTRA_CA_DIR}",
            '--customize-hook=chroot "$1" update-ca-certificates',
        ]
    command = [
        "mmdebstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,python3-pip,ca-certificates",
        *hooks,
        debian_suite(),
        str(rootfs),
        *apt_sources(),
    ]
    done = subprocess.run(command, env=podman.env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"mmdebstrap exited {done.returncode}:\n{done.stderr[-4000:]}")
    changes = ["ENV PIP_BREAK_SYSTEM_PACKAGES=1", "ENV UV_NATIVE_TLS=1", 'CMD ["/bin/bash"]']
    podman("import", *(f"--change={c}" for c in changes), str(rootfs), "localhost/bouncer-test-base:latest")
    podman("tag", "localhost/bouncer-test-base:latest", BASE_IMAGE)
    rootfs.unlink()


def run_container(
    podman: Podman,
    image: str,
    name: str,
    *,
    env: dict[str, str] | None = None,
    volumes: Sequence[tuple[Path, str]] = (),
    publish: int | None = None,
    network_host: bool = False,
    extra: Sequence[str] = (),
) -> None:
    """``podman run -d``: ``volumes`` are (host folder, container path); ``publish`` maps that host port to 3000."""
    args = ["run", "-d", "--name", name]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    for host, inside in volumes:
        args += ["-v", f"{host}:{inside}"]
    if publish is not None:
        args += ["-p", f"127.0.0.1:{publish}:3000"]
    if network_host:
        args += ["--network", "host"]
    podman(*args, *extra, image)


def wait_ready(podman: Podman, name: str, url: str, *, timeout: float = 180) -> float:
    """Seconds until ``url``/readyz answers 200; the container's log if it stops first or never answers."""
    started = time.monotonic()
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        state = podman.inspect("container", name)["State"]
        if not state["Running"]:
            raise RuntimeError(f"{name} exited {state['ExitCode']}:\n{podman.logs(name)[-4000:]}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{podman.logs(name)[-4000:]}")
        time.sleep(0.25)


def owned_by_image_user(folder: Path) -> Path:
    """``folder`` and everything in it owned by the image's user, as a user's mounted folder must be."""
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, IMAGE_USER_UID, IMAGE_USER_UID, follow_symlinks=False)
    return folder
