"""Shared fixtures: the real scans in ../shared (skipped with a reason when absent)."""

from __future__ import annotations

import io
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


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    preamble: bool = True,
    with_pixels: bool = True,
) -> bytes:
    """A minimal single-frame DICOM file (explicit VR little endian) in memory."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()
    return data if preamble else data[132:]
