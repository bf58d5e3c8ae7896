"""Inputs for the flow tests, and their Dask processes with the Prefect API's
address. The servers themselves (Prefect, moto) are tests/conftest.py's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_files import make_dicom
from fixtures import prefect_api  # noqa: F401 (every flow test talks to the server)
from real_data import CHESTXRAY8

from xraycore.image.synth import damage_scan, phantom_chest


def _png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(buf.tobytes())


@pytest.fixture
def source_dir(tmp_path) -> Path:
    """Good scans and bad files. The two scans listed first are real ones when
    ../shared is there, else phantoms under ChestX-ray8 names: the listing has
    the same shape either way (rows 0 and 1 are ok scans)."""
    src = tmp_path / "source"
    (src / "sub").mkdir(parents=True)
    real = CHESTXRAY8
    first = sorted(real.glob("*.png"))[:2]
    for p in first:
        shutil.copy(p, src / p.name)
    for i in range(len(first), 2):
        _png(src / f"0000000{i}_000.png", phantom_chest(512, seed=20 + i))
    for i in range(3):
        _png(src / f"phantom_{i}.png", phantom_chest(200 + 50 * i, seed=i))
    damaged, _ = damage_scan(phantom_chest(256, seed=9), seed=1)
    ok, buf = cv2.imencode(".jpg", damaged)
    (src / "sub" / "damaged.jpg").write_bytes(buf.tobytes())
    (src / "empty.png").write_bytes(b"")
    good = (src / "phantom_0.png").read_bytes()
    (src / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "notes.png").write_bytes(b"this is not an image")
    (src / "README.txt").write_text("ignored: not an image extension")
    (src / "LICENSE").write_text("ignored: no extension and not DICOM")
    deep = phantom_chest(160, seed=4).astype(np.uint16) * 64
    (src / "sub" / "scan.dcm").write_bytes(make_dicom(deep))
    (src / "sub" / "IM0001").write_bytes(make_dicom(deep, photometric="MONOCHROME1"))
    return src


@pytest.fixture
def labels_csv(tmp_path) -> Path:
    """Labels in ChestX-ray8's Data_Entry_2017.csv format for some of the inputs."""
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        "phantom_0.png,Cardiomegaly|Effusion,0,11,58,M,PA,1024,1024,0.14,0.14\n"
        "phantom_1.png,No Finding,1,11,58,M,PA,1024,1024,0.14,0.14\n"
        "phantom_2.png,Pneumonia,0,12,33,F,AP,1024,1024,0.14,0.14\n"
    )
    return path


@pytest.fixture
def bad_inputs() -> dict[str, str]:
    """The bad files of ``source_dir`` and what their error message must say."""
    return dict(BAD)


BAD = {
    "empty.png": "empty file",
    "truncated.png": "truncated PNG",
    "notes.png": "not a PNG, JPEG or DICOM",
}


@pytest.fixture
def dask_cluster(tmp_path, prefect_server, start_dask_processes):
    """`dask scheduler` and two `dask worker` processes on loopback."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    with start_dask_processes(tmp_path, env) as (address, pids):
        yield address, pids
