"""Minimal DICOM files made in memory for the decoding and flow tests."""

from __future__ import annotations

import io

import numpy as np


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple | None = None,
    voi_function: str | None = None,
    voi_lut: np.ndarray | None = None,
    palette: np.ndarray | None = None,
    preamble: bool = True,
    with_pixels: bool = True,
    header: dict | None = None,
) -> bytes:
    """A minimal DICOM file (explicit VR little endian) in memory.

    Parameters
    ----------
    pixels : (H, W) or (frames, H, W) ndarray of uint8, uint16 or int16
        Stored values; int16 sets Pixel Representation 1, a 3-D array is
        written as a multi-frame file.
    window : (center, width), optional
        Either may be a list, for several alternative windows.
    voi_function : str, optional
        VOI LUT Function (0028,1056): LINEAR, LINEAR_EXACT or SIGMOID.
    voi_lut : (N,) ndarray of uint16, optional
        A VOI LUT Sequence item mapping stored values 0..N-1, 16 bits per entry.
    palette : (N, 3) ndarray of uint8 or uint16, optional
        Red, green and blue palette entries for stored values 0..N-1; the
        photometric interpretation becomes PALETTE COLOR.
    header : dict, optional
        More elements by keyword (``{"PatientName": "DOE^JANE"}``); a value of
        None leaves an element out (``{"Modality": None}``).
    """
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
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "PALETTE COLOR" if palette is not None else photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.LUTData = voi_lut.astype("<u2").tobytes()
        ds.VOILUTSequence = [item]
    if palette is not None:
        lut_bits = 8 if palette.dtype == np.uint8 else 16
        for c, colour in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [len(palette), 0, lut_bits])
            # 8-bit entries are still written as 16-bit words (PS3.3 C.7.6.3.1.6).
            words = palette[:, c].astype("<u2")
            setattr(ds, f"{colour}PaletteColorLookupTableData", words.tobytes())
    for keyword, value in (header or {}).items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if with_pixels:
        ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()
    return data if preamble else data[132:]
