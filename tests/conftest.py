"""Shared fixtures: the real scans in ../shared (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CHESTXRAY8 = SHARED / "chestxray8"
DAMAGED = SHARED / "damaged"


def _need(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*") if p.suffix in (".png", ".jpg"))
    if not files:
        pytest.skip(f"real data folder {folder} is absent (CI provides ../shared)")
    return files


@pytest.fixture(scope="session")
def chestxray8_files() -> list[Path]:
    return _need(CHESTXRAY8)


@pytest.fixture(scope="session")
def damaged_files() -> list[Path]:
    return _need(DAMAGED)


@pytest.fixture(scope="session")
def real_scan(chestxray8_files) -> np.ndarray:
    import cv2

    return cv2.imread(str(chestxray8_files[0]), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto in server mode on a loopback port: a real S3 API over HTTP."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
