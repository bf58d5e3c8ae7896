"""Decoding of radiographs from bytes: PNG, JPEG and DICOM, recognised by content.

Every failure raises :class:`ImageDecodeError`, a :class:`ValueError`, with the
name of the input in the message. Image dimensions are read from the header and
checked against a pixel limit *before* any pixel buffer is allocated, so a
decompression bomb costs microseconds, not gigabytes.
"""

from __future__ import annotations

import io
import os
import re
import struct

import cv2
import numpy as np

from xraycore._validate import channels_equal, check_int

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "decode_image",
    "dicom_frames",
    "image_format",
]

#: Largest image (height * width) decoded by default: 100 megapixels, about
#: 10x the largest digital chest detectors. Override with ``max_pixels=`` or the
#: ``XRAY_MAX_PIXELS`` environment variable.
DEFAULT_MAX_PIXELS = int(os.environ.get("XRAY_MAX_PIXELS", 100_000_000))

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GRAY_TYPES = (0, 4)  # gray, gray + alpha
# Start-of-frame markers carry the image size (all SOFn except DHT, JPG, DAC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageDecodeError(ValueError):
    """An input could not be decoded into an image (empty, truncated, not an image...)."""


def image_format(data: bytes) -> str | None:
    """Return ``"png"``, ``"jpeg"``, ``"dicom"`` or None, judged by content alone."""
    head = bytes(data[:136])
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    # DICOM without the 128-byte preamble (raw data sets, often extension-less):
    # the first element is a group 0x0002 or 0x0008 tag, little or big endian.
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        return "dicom"
    return None


def decode_image(
    data: bytes, *, name: str | None = None, max_pixels: int | None = None, frame: int | None = None
) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM file held in memory.

    Parameters
    ----------
    data : bytes
        The whole file.
    name : str, optional
        Used in error messages (a path or URL).
    max_pixels : int, optional
        Refuse images with more than this many pixels, checked from the header
        before decoding. Default :data:`DEFAULT_MAX_PIXELS`.
    frame : int, optional
        Which frame of a multi-frame DICOM file to decode (0-based). Default
        None: single-frame files only, a multi-frame file is refused rather
        than silently cut to its first frame. PNG and JPEG ignore it.

    Returns
    -------
    image : (H, W) or (H, W, 3) ndarray of uint8 or uint16
        Grayscale as 2-D, colour in OpenCV's BGR order; alpha is dropped and a
        colour file whose channels are identical is returned as grayscale.
        DICOM follows pydicom's display pipeline: modality LUT or rescale, then
        the VOI LUT Sequence or else the first window with its VOI LUT Function
        (LINEAR, LINEAR_EXACT or SIGMOID), scaled onto the full range of uint8
        (BitsStored <= 8) or uint16; MONOCHROME1 is inverted so that bone is
        bright. PALETTE COLOR has its palette applied and is returned as its
        luminance (ITU-R BT.601 weights), never as palette indices.

    Raises
    ------
    ImageDecodeError
        For every input that cannot be decoded: empty, truncated, unrecognised
        or malformed data, DICOM without pixel data or with an unsupported
        photometric interpretation, a multi-frame DICOM without ``frame``, or
        an image larger than ``max_pixels``. The message starts with ``name``.
    """
    label = name or "<bytes>"
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if limit <= 0:
        raise ValueError(f"max_pixels must be > 0, got {max_pixels!r}")
    if frame is not None:
        check_int(frame, "frame")
    data = bytes(data)
    if len(data) == 0:
        raise ImageDecodeError(f"{label}: empty file (0 bytes)")
    kind = image_format(data)
    if kind is None:
        raise ImageDecodeError(
            f"{label}: not a PNG, JPEG or DICOM image (starts with {data[:8]!r})"
        )
    decoders = {"png": _decode_png, "jpeg": _decode_jpeg}
    try:
        if kind == "dicom":
            return _decode_dicom(data, label, limit, frame)
        return decoders[kind](data, label, limit)
    except ImageDecodeError:
        raise
    except Exception as exc:
        # Whatever a decoder library raises (cv2.error, struct.error, ...), the
        # caller gets one exception class that names the input.
        raise ImageDecodeError(
            f"{label}: {kind.upper()} could not be decoded ({type(exc).__name__}: {_short(exc)})"
        ) from exc


#: (0028,0008) Number of Frames.
_NUMBER_OF_FRAMES = 0x00280008


def dicom_frames(head: bytes, *, complete: bool = True) -> int | None:
    """Number of frames a DICOM file declares (1 when it says nothing), read
    from its first bytes (the header; the pixel data need not be there).

    Parameters
    ----------
    head : bytes
        The file, or its first bytes.
    complete : bool, optional
        Whether ``head`` is the whole file. When it is not, None means "read
        more": the bytes end before an element that comes after Number of
        Frames (0028,0008), so that element, if the file has one, may lie beyond
        them (the elements of a data set come in tag order, PS3.5 7.1).

    Raises :class:`ImageDecodeError` when the header cannot be parsed or its
    Number of Frames is not a positive integer (with ``complete=False``, an
    unparsable prefix is None instead: it may be cut inside an element).
    """
    import warnings

    try:
        import pydicom

        with warnings.catch_warnings():  # a header cut short is expected here
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(head), force=True, stop_before_pixels=True)
            last = max((int(tag) for tag in ds.keys()), default=0)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImageDecodeError(
            "is DICOM, but pydicom is not installed (pip install 'xray-pipeline[dicom]')"
        ) from exc
    except Exception as exc:
        if not complete:
            return None
        raise ImageDecodeError(
            f"DICOM header could not be read ({type(exc).__name__}: {_dicom_error(exc)})"
        ) from exc
    if not complete and last <= _NUMBER_OF_FRAMES:
        return None
    if frames < 1:
        raise ImageDecodeError(f"DICOM declares {frames} frames")
    return frames


def _short(exc: BaseException, limit: int = 300) -> str:
    # pydicom quotes the offending value, which can be a whole LUT or pixel buffer.
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


#: A quoted value in an exception's text: '...', "..." or b'...'.
_QUOTED = re.compile(r"""b?(['"])(.*?)\1""")
#: What a quoted DICOM keyword looks like ('PatientName'): kept.
_KEYWORD = re.compile(r"[A-Z][A-Za-z]*")


def _dicom_error(exc: BaseException) -> str:
    """The text of a pydicom error with the values it quotes left out: a header's
    value may identify a patient, and the text is stored as the row's error."""

    def value(found: re.Match) -> str:
        return found.group(0) if _KEYWORD.fullmatch(found.group(2)) else "<value>"

    return _QUOTED.sub(value, _short(exc))


def _check_size(height: int, width: int, label: str, limit: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"{label}: header declares an empty image ({width}x{height})")
    if height * width > limit:
        raise ImageDecodeError(
            f"{label}: image of {width}x{height} = {height * width:,} pixels exceeds the "
            f"limit of {limit:,} (max_pixels / XRAY_MAX_PIXELS); refusing to decode"
        )


def _finish(image: np.ndarray | None, label: str, kind: str, gray: bool) -> np.ndarray:
    if image is None:
        raise ImageDecodeError(f"{label}: corrupt {kind} data (decoder failed)")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if gray else cv2.COLOR_BGRA2BGR)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and (gray or channels_equal(image)):
        image = np.ascontiguousarray(image[:, :, 0])
    return image


def _decode_png(data: bytes, label: str, limit: int) -> np.ndarray:
    # Walk the chunk list: a PNG cut short has no IEND, and libpng may hand back
    # a partly grey image for it instead of failing.
    pos, width, height, color_type, seen_iend = 8, 0, 0, -1, False
    n = len(data)
    while pos + 8 <= n:
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > n:
            raise ImageDecodeError(
                f"{label}: truncated PNG ({ctype.decode('latin-1')} chunk needs {end} bytes, "
                f"file has {n})"
            )
        if ctype == b"IHDR":
            if length < 13:
                raise ImageDecodeError(f"{label}: corrupt PNG header")
            width, height = struct.unpack(">II", data[pos + 8 : pos + 16])
            color_type = data[pos + 17]
            _check_size(height, width, label, limit)
        elif ctype == b"IEND":
            seen_iend = True
            break
        pos = end
    if color_type < 0:
        raise ImageDecodeError(f"{label}: truncated PNG (no IHDR header)")
    if not seen_iend:
        raise ImageDecodeError(f"{label}: truncated PNG (no IEND chunk after {n} bytes)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return _finish(image, label, "PNG", color_type in _PNG_GRAY_TYPES)


def _decode_jpeg(data: bytes, label: str, limit: int) -> np.ndarray:
    pos, n, size, last_sos = 2, len(data), None, -1
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise ImageDecodeError(f"{label}: corrupt JPEG (bad marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        if marker == 0xD9:
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and pos + 9 <= n:
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            _check_size(h, w, label, limit)
            size = (h, w)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            last_sos = pos
            break
        pos += 2 + length
    if size is None:
        raise ImageDecodeError(f"{label}: truncated JPEG (no frame header)")
    if last_sos < 0 or data.rfind(b"\xff\xd9") < last_sos:
        raise ImageDecodeError(f"{label}: truncated JPEG (no end-of-image marker)")
    # ANYCOLOR|ANYDEPTH keeps grayscale as grayscale and applies EXIF orientation.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    return _finish(image, label, "JPEG", False)


def _decode_dicom(data: bytes, label: str, limit: int, frame: int | None) -> np.ndarray:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImageDecodeError(
            f"{label}: is DICOM, but pydicom is not installed (pip install 'xray-pipeline[dicom]')"
        ) from exc
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise ImageDecodeError(
            f"{label}: corrupt DICOM ({type(exc).__name__}: {_dicom_error(exc)})"
        ) from exc
    if "PixelData" not in ds:
        raise ImageDecodeError(f"{label}: DICOM file has no pixel data")
    try:
        return _dicom_pixels(ds, label, limit, frame)
    except ImageDecodeError:
        raise
    except Exception as exc:
        # A malformed header value (a Number of Frames of "1A", a Window Width
        # of 0 for LINEAR) surfaces deep inside pydicom as a bare ValueError.
        raise ImageDecodeError(
            f"{label}: DICOM could not be decoded ({type(exc).__name__}: {_dicom_error(exc)})"
        ) from exc


def _dicom_pixels(ds, label: str, limit: int, frame: int | None) -> np.ndarray:
    from pydicom.pixels import (
        apply_color_lut,
        apply_modality_lut,
        apply_voi,
        apply_voi_lut,
        pixel_array,
    )

    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(rows, cols, label, limit)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame is None and frames != 1:
        raise ImageDecodeError(
            f"{label}: multi-frame DICOM ({frames} frames); pass frame=k to decode one of them"
        )
    index = 0 if frame is None else frame
    if not 0 <= index < frames:
        raise ImageDecodeError(f"{label}: frame {index} requested, the file has {frames}")
    # Only the requested frame is decoded: a cine run of 1,000 frames costs one.
    pixels = ds.pixel_array if frames == 1 else pixel_array(ds, index=index)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    bits = int(ds.get("BitsStored", 8) or 8)
    if photometric == "PALETTE COLOR":
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _palette_luma(apply_color_lut(pixels, ds), depth)
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        rgb = pixels if pixels.dtype == np.uint8 else _to_dtype(pixels, 0, 2**bits - 1, bits)
        return np.ascontiguousarray(rgb[:, :, ::-1])
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageDecodeError(f"{label}: unsupported Photometric Interpretation {photometric!r}")
    values = apply_modality_lut(pixels, ds)
    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    # PS3.3 C.11.2.1.2: a VOI LUT Sequence wins over a window, the first of
    # several views is the default, and the window's VOI LUT Function
    # (LINEAR, LINEAR_EXACT, SIGMOID) is pydicom's to apply.
    with np.errstate(over="ignore"):  # SIGMOID far from the centre: exp -> inf -> 0
        shown = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    if has_lut:
        # The table's own range, read by pydicom (LUT Data is US or OW, either
        # byte order): the LUT applied to every input it maps.
        entries, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
        table = apply_voi(np.arange(first, first + (entries or 65536)), ds, index=0)
        lo, hi = float(table.min()), float(table.max())
    elif has_window:
        lo, hi = _window_output_range(ds)
    else:
        lo, hi = float(np.min(shown)), float(np.max(shown))
    image = _to_dtype(shown, lo, hi, bits)
    if photometric == "MONOCHROME1":
        image = np.iinfo(image.dtype).max - image
    return image


def _window_output_range(ds) -> tuple[float, float]:
    """The output range of :func:`pydicom.pixels.apply_windowing` for ``ds``.

    pydicom maps a window onto the range of the modality LUT's output: the
    stored-pixel range through the rescale, or 0..2**n - 1 for a Modality LUT
    Sequence. The same range maps onto uint8/uint16 here, so a window's
    centre lands on mid-grey.
    """
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        # A negative slope swaps the ends, as in pydicom: hi < lo inverts.
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def _palette_luma(rgb: np.ndarray, depth: int) -> np.ndarray:
    """Luminance of a palette-applied image, uint8 for 8-bit palette entries.

    ITU-R BT.601 weights, the ones Pillow's ``convert("L")`` and OpenCV's
    ``COLOR_RGB2GRAY`` document. pydicom returns 8-bit entries stored in
    16-bit words as uint16, so the dtype comes from the descriptor's depth.
    """
    dtype = np.uint8 if depth <= 8 else np.uint16
    luma = rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.rint(luma), 0, np.iinfo(dtype).max).astype(dtype)


def _to_dtype(values: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    dtype = np.uint8 if bits <= 8 else np.uint16
    top = float(np.iinfo(dtype).max)
    if hi == lo:
        return np.zeros(values.shape, dtype)
    scaled = (values.astype(np.float64) - lo) * (top / (hi - lo))
    return np.clip(np.rint(scaled), 0, top).astype(dtype)
