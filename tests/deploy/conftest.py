"""The project image (deploy/Dockerfile), built once per session by
deploy/build-image.sh as `make image` does, and the containers of one test.

Skipped, saying why, without root or without podman and runc (container_image.py);
a build that fails is a test failure.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from container_image import TEST_IMAGE, Containers, Image, need_podman

# The drills' harness (inputs, clean reference, store checks) is shared, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drills"))

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> Image:
    """The image of this checkout, built once per session by deploy/build-image.sh
    (podman's layer cache makes a rebuild of unchanged code take seconds)."""
    need_podman()
    if not os.environ.get("CONTAINERS_CONF"):
        os.environ["CONTAINERS_CONF"] = str(ROOT / "deploy" / "containers.conf")
    log = tmp_path_factory.mktemp("image") / "build.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        res = subprocess.run(
            [str(ROOT / "deploy" / "build-image.sh")],
            env={**os.environ, "XRAY_IMAGE": TEST_IMAGE},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
    lines = log.read_text().splitlines()
    if res.returncode != 0:
        pytest.fail(f"deploy/build-image.sh failed (log {log}):\n" + "\n".join(lines[-30:]))
    return Image(TEST_IMAGE, lines[-1], time.monotonic() - t0)


@pytest.fixture
def containers(image, request):
    """A :class:`Containers` for one test; every container it started is removed
    after the test (its last log lines shown when the test failed)."""
    box = Containers(image, f"xray-test-{uuid.uuid4().hex[:8]}")
    try:
        yield box
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(box.all_logs())
        with contextlib.suppress(subprocess.TimeoutExpired):
            box.remove(*list(box.started))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report
