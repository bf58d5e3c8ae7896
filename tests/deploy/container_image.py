"""Containers from the project image (deploy/Dockerfile), run with podman on the
host's network; the tests' fixtures are in conftest.py.

The container tests need root (rootful podman) and the OS packages podman and runc,
plus mmdebstrap where no image registry is in reach; they skip, saying why, when
either is missing. CI installs the packages (``.ci/run``) and runs as root, so CI
runs them. A build that fails is a test failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: The tag the tests build and run: not the user's xray-pipeline:latest (the layers
#: are shared, so the second build of the two is quick).
TEST_IMAGE = "localhost/xray-pipeline:test"
PACKAGES = ("podman", "runc")


def need_podman() -> None:
    """Skip, saying why, unless this process is root and podman and runc are installed."""
    if os.geteuid() != 0:
        pytest.skip("needs root (rootful podman); CI runs as root")
    missing = [b for b in PACKAGES if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (CI: apt-get install podman runc mmdebstrap)"
        )


@dataclass(frozen=True)
class Image:
    """The built image: its tag and the build script's summary line (time, size)."""

    tag: str
    summary: str
    seconds: float


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@dataclass
class Containers:
    """Containers from the image, on the host's network (loopback is the host's),
    removed at teardown. A folder given to :meth:`start` is mounted at its own path,
    so a path means the same inside and outside."""

    image: Image
    prefix: str
    started: list[str] = field(default_factory=list)

    def start(
        self,
        name: str,
        *command: str,
        read: tuple[Path, ...] = (),
        write: tuple[Path, ...] = (),
        env: dict[str, str] | None = None,
        as_host_user: bool = False,
    ) -> str:
        """Start ``command`` (the image's own when none) detached; returns the
        container's name. ``as_host_user``: run as this process's uid and gid instead
        of the image's user, as a container that writes a host folder must."""
        full = f"{self.prefix}-{name}"
        args = ["run", "--detach", "--name", full, "--hostname", full, "--network", "host"]
        if as_host_user:
            args += ["--user", f"{os.getuid()}:{os.getgid()}"]
        for folder in read:
            args += ["--volume", f"{folder}:{folder}:ro"]
        for folder in write:
            args += ["--volume", f"{folder}:{folder}"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        res = podman(*args, self.image.tag, *command)
        assert res.returncode == 0, f"podman run {full}: {res.stderr.strip()}"
        self.started.append(full)
        return full

    def kill(self, name: str) -> None:
        res = podman("kill", name)
        assert res.returncode == 0, f"podman kill {name}: {res.stderr.strip()}"

    def state(self, name: str) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()

    def logs(self, name: str, lines: int = 40) -> str:
        res = podman("logs", "--tail", str(lines), name)
        return f"--- {name}\n{res.stdout}{res.stderr}"

    def all_logs(self) -> str:
        return "\n".join(self.logs(name) for name in self.started)

    def remove(self, *names: str) -> None:
        for name in names:
            podman("rm", "--force", "--time", "0", name)
            self.started.remove(name)
