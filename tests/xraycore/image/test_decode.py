"""Decoding by content, every failure as ValueError, and orientation golden tests."""

from __future__ import annotations

import struct
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from dicom_files import make_dicom

from xraycore.image import decode as xio
from xraycore.image.synth import phantom_chest
from xraycore.sources.catalog import read_image


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


PHANTOM = phantom_chest(128, seed=3)


def _assert_marker_top_left(image: np.ndarray) -> None:
    # The phantom's bright "L" marker sits in the top-left corner: a flip or a
    # transpose moves it elsewhere.
    img = image.astype(np.float64)
    n = img.shape[0] // 6
    corners = [img[:n, :n], img[:n, -n:], img[-n:, :n], img[-n:, -n:]]
    assert int(np.argmax([c.mean() for c in corners])) == 0


def test_png_roundtrip_8_and_16_bit():
    assert np.array_equal(xio.decode_image(_png(PHANTOM)), PHANTOM)
    deep = PHANTOM.astype(np.uint16) * 257
    out = xio.decode_image(_png(deep))
    assert out.dtype == np.uint16 and np.array_equal(out, deep)


def test_png_alpha_dropped_and_gray_colour_collapsed():
    bgra = cv2.cvtColor(PHANTOM, cv2.COLOR_GRAY2BGRA)
    bgra[..., 3] = 10
    out = xio.decode_image(_png(bgra))
    assert out.shape == PHANTOM.shape and np.array_equal(out, PHANTOM)
    colour = np.dstack([PHANTOM, PHANTOM // 2, PHANTOM // 3])
    out = xio.decode_image(_png(colour))
    assert out.shape == colour.shape and np.array_equal(out, colour)  # BGR kept


def test_jpeg_gray_and_colour():
    out = xio.decode_image(_jpeg(PHANTOM))
    assert out.shape == PHANTOM.shape and np.abs(out.astype(int) - PHANTOM).mean() < 3
    colour = np.dstack([PHANTOM, PHANTOM // 2, 255 - PHANTOM])
    out = xio.decode_image(_jpeg(colour))
    assert out.shape == colour.shape
    assert np.abs(out.astype(int) - colour).mean() < 4  # channel order preserved (BGR)


def test_format_by_content_not_extension(tmp_path):
    path = tmp_path / "scan.jpg"  # a PNG behind a misleading name
    path.write_bytes(_png(PHANTOM))
    assert np.array_equal(read_image(str(path)), PHANTOM)
    assert xio.image_format(_png(PHANTOM)) == "png"
    assert xio.image_format(_jpeg(PHANTOM)) == "jpeg"
    assert xio.image_format(make_dicom(PHANTOM)) == "dicom"
    assert xio.image_format(make_dicom(PHANTOM, preamble=False)) == "dicom"


def test_orientation_golden_png_and_dicom():
    _assert_marker_top_left(PHANTOM)
    _assert_marker_top_left(xio.decode_image(_png(PHANTOM)))
    _assert_marker_top_left(xio.decode_image(_jpeg(PHANTOM)))
    dcm = xio.decode_image(make_dicom(PHANTOM.astype(np.uint16) * 16))
    _assert_marker_top_left(dcm)
    assert dcm.dtype == np.uint16


def test_dicom_monochrome1_is_inverted_so_bone_is_bright():
    stored = (255 - PHANTOM).astype(np.uint16) * 16  # MONOCHROME1: high value = dark
    out = xio.decode_image(make_dicom(stored, photometric="MONOCHROME1"))
    _assert_marker_top_left(out)
    corr = np.corrcoef(out.ravel().astype(float), PHANTOM.ravel().astype(float))[0, 1]
    assert corr > 0.999


def test_dicom_rescale_and_window():
    raw = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    # HU = 2 * raw - 1000; window centre 1000 width 2000 -> [0, 2000) HU maps onto 0..65535.
    out = xio.decode_image(make_dicom(raw, slope=2.0, intercept=-1000.0, window=(1000.0, 2000.0)))
    hu = 2.0 * raw - 1000.0
    expected = np.clip((hu - 999.5) / 1999.0 + 0.5, 0, 1) * 65535
    assert np.abs(out.astype(float) - expected).max() <= 1.0
    assert out[0, 0] == 0 and out[-1, -1] == 65535


def test_dicom_without_window_uses_full_range():
    raw = np.linspace(100, 900, 32 * 32).astype(np.uint16).reshape(32, 32)
    out = xio.decode_image(make_dicom(raw))
    assert out.min() == 0 and out.max() == 65535


def test_dicom_without_preamble():
    out = xio.decode_image(make_dicom(PHANTOM, preamble=False))
    lo, hi = float(PHANTOM.min()), float(PHANTOM.max())
    expected = np.rint((PHANTOM - lo) * 255.0 / (hi - lo))  # no window: full range
    assert out.dtype == np.uint8 and np.array_equal(out, expected.astype(np.uint8))


def _truncated(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


def _bomb_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def _bomb_jpeg(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x00" * 64


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty file"),
        (b"hello, this is a text file", "not a PNG, JPEG or DICOM"),
        (_truncated(_png(PHANTOM), 0.5), "truncated PNG"),
        (_truncated(_png(PHANTOM), 0.02), "truncated PNG"),
        (_png(PHANTOM)[:8], "truncated PNG"),
        (_truncated(_jpeg(PHANTOM), 0.6), "truncated JPEG"),
        (b"\xff\xd8\xff\xe0", "truncated JPEG"),
        (make_dicom(PHANTOM, with_pixels=False), "no pixel data"),
        (_truncated(make_dicom(PHANTOM), 0.7), "DICOM"),
        (_bomb_png(100_000, 100_000), "exceeds the limit"),
        (_bomb_jpeg(60_000, 60_000), "exceeds the limit"),
        (_bomb_png(0, 10), "empty image"),
    ],
    ids=[
        "empty",
        "text",
        "png-half",
        "png-head",
        "png-sig",
        "jpeg-cut",
        "jpeg-stub",
        "dicom-nopixels",
        "dicom-cut",
        "png-bomb",
        "jpeg-bomb",
        "png-zero",
    ],
)
def test_bad_inputs_raise_value_error_fast_without_allocating(data, match):
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match) as info:
        xio.decode_image(data, name="scan-x")
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(info.value, xio.ImageDecodeError)
    assert "scan-x" in str(info.value)
    assert elapsed < 1.0
    assert peak < 50_000_000  # a bomb declares 10 GB; nothing near it is allocated


def test_dicom_bomb_refused_before_pixels():
    small = make_dicom(PHANTOM)
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    ds = dcmread(DicomBytesIO(small))
    ds.Rows, ds.Columns = 60000, 60000
    import io as _io

    buf = _io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(xio.ImageDecodeError, match="exceeds the limit"):
        xio.decode_image(buf.getvalue())


def test_pixel_limit_is_configurable():
    with pytest.raises(xio.ImageDecodeError, match="exceeds the limit of 100"):
        xio.decode_image(_png(PHANTOM), max_pixels=100)
    with pytest.raises(ValueError, match="max_pixels must be > 0"):
        xio.decode_image(_png(PHANTOM), max_pixels=0)


def test_type_error_for_non_bytes():
    with pytest.raises(TypeError, match="data must be bytes"):
        xio.decode_image("not bytes")


def test_real_scans_decode_as_8bit_1024(chestxray8_files):
    for path in chestxray8_files:
        image = read_image(str(path))
        assert image.shape == (1024, 1024) and image.dtype == np.uint8
        assert np.array_equal(image, cv2.imread(str(path), cv2.IMREAD_UNCHANGED))


def test_real_damaged_scans_decode_as_colour(damaged_files):
    image = read_image(str(damaged_files[0]))
    assert image.ndim == 3 and image.shape[2] == 3


# --- DICOM display pipeline against pydicom's own -------------------------------------------
# pydicom's pipeline is: pixel data -> modality LUT -> VOI LUT Sequence, else the first window
# with its VOI LUT Function -> MONOCHROME1 inversion. decode_image maps the output range of
# that pipeline (the modality LUT's range for a window, PS3.3 C.11.2.1.2) onto uint16.

RAMP = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
SIGNED = np.linspace(-2000, 2000, 64 * 64).reshape(64, 64).astype(np.int16)
U16 = (0.0, 65535.0)


def _pydicom_display(data: bytes) -> np.ndarray:
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = dcmread(DicomBytesIO(data))
    return apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)


@pytest.mark.parametrize(
    ("pixels", "kwargs", "out_range"),
    [
        (RAMP, dict(window=(2000.0, 1500.0)), U16),
        (RAMP, dict(window=(2000.0, 1500.0), voi_function="LINEAR"), U16),
        (RAMP, dict(window=(2000.0, 1500.0), voi_function="LINEAR_EXACT"), U16),
        (RAMP, dict(window=(2000.0, 1500.0), voi_function="SIGMOID"), U16),
        (
            RAMP,
            dict(window=(2000.0, 1500.0), voi_function="SIGMOID", photometric="MONOCHROME1"),
            U16,
        ),
        (RAMP, dict(window=([2500.0, 500.0], [800.0, 100.0]), voi_function="SIGMOID"), U16),
        (RAMP, dict(window=([2500.0, 500.0], [800.0, 100.0])), U16),
        (
            RAMP,
            dict(slope=2.0, intercept=-1000.0, window=(3000.0, 4000.0), voi_function="SIGMOID"),
            (-1000.0, 2 * 65535.0 - 1000.0),
        ),
        (SIGNED, dict(window=(100.0, 2000.0)), (-32768.0, 32767.0)),
        (SIGNED, dict(window=(100.0, 2000.0), voi_function="SIGMOID"), (-32768.0, 32767.0)),
    ],
    ids=[
        "linear-default",
        "linear",
        "linear-exact",
        "sigmoid",
        "sigmoid-monochrome1",
        "sigmoid-first-of-two",
        "linear-first-of-two",
        "rescale-sigmoid",
        "signed-linear",
        "signed-sigmoid",
    ],
)
def test_dicom_window_matches_pydicom_pipeline(pixels, kwargs, out_range):
    data = make_dicom(pixels, **kwargs)
    lo, hi = out_range
    expected = (_pydicom_display(data) - lo) * 65535.0 / (hi - lo)
    if kwargs.get("photometric") == "MONOCHROME1":
        expected = 65535.0 - expected
    out = xio.decode_image(data, name="scan.dcm")
    assert out.dtype == np.uint16 and out.shape == pixels.shape
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0


def test_dicom_sigmoid_is_not_the_linear_window():
    # Guards the test above: the two functions differ by far more than its 1 LSB.
    linear = xio.decode_image(make_dicom(RAMP, window=(2000.0, 1500.0)))
    sigmoid = xio.decode_image(make_dicom(RAMP, window=(2000.0, 1500.0), voi_function="SIGMOID"))
    assert np.abs(linear.astype(float) - sigmoid).max() > 5000
    # PS3.3 C.11.2.1.3.1: the centre maps to mid-range, a width either side to 1/(1+e^-4).
    centre = np.full((4, 4), 2000, np.uint16)
    out = xio.decode_image(make_dicom(centre, window=(2000.0, 1500.0), voi_function="SIGMOID"))
    assert abs(int(out[0, 0]) - 65535 / 2) <= 1


def test_dicom_voi_lut_sequence_wins_over_window():
    lut = np.rint(np.sqrt(np.arange(4096) / 4095.0) * 4095).astype(np.uint16)
    data = make_dicom(RAMP, voi_lut=lut, window=(2000.0, 100.0), voi_function="SIGMOID")
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.pixels import apply_voi

    ds = dcmread(DicomBytesIO(data))
    shown = apply_voi(ds.pixel_array, ds).astype(np.float64)
    expected = (shown - lut.min()) * 65535.0 / (lut.max() - lut.min())
    out = xio.decode_image(data)
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0


def _hot_palette(dtype) -> np.ndarray:
    # Not monotonic in luminance: the index image is not a stand-in for it.
    top = float(np.iinfo(dtype).max)
    t = np.linspace(0.0, 1.0, 256)
    rgb = np.stack([np.clip(3 * t, 0, 1), np.abs(np.sin(6 * t)), 1 - t], axis=1)
    return np.rint(rgb * top).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_dicom_palette_colour_is_its_luminance_not_indices(dtype):
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.pixels import apply_color_lut

    indices = PHANTOM  # uint8 stored values 0..255, one palette entry each
    data = make_dicom(indices, palette=_hot_palette(dtype))
    ds = dcmread(DicomBytesIO(data))
    rgb = apply_color_lut(ds.pixel_array, ds).astype(dtype)
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # BT.601, OpenCV's documented weights
    out = xio.decode_image(data, name="palette.dcm")
    assert out.dtype == dtype and out.shape == indices.shape
    assert np.abs(out.astype(np.int64) - expected).max() <= 1
    corr = np.corrcoef(out.ravel().astype(float), indices.ravel().astype(float))[0, 1]
    assert corr < 0.9  # indices would correlate 1.0


def test_dicom_multi_frame_refused_unless_a_frame_is_chosen():
    frames = np.stack([RAMP, RAMP[::-1], RAMP[:, ::-1]])
    data = make_dicom(frames)
    with pytest.raises(xio.ImageDecodeError, match=r"cine\.dcm: multi-frame DICOM \(3 frames\)"):
        xio.decode_image(data, name="cine.dcm")
    for k in range(3):
        out = xio.decode_image(data, frame=k)
        lo, hi = float(frames[k].min()), float(frames[k].max())
        expected = np.rint((frames[k] - lo) * 65535.0 / (hi - lo))
        assert np.array_equal(out, expected.astype(np.uint16))
    with pytest.raises(xio.ImageDecodeError, match="cine.dcm: frame 3 requested, the file has 3"):
        xio.decode_image(data, name="cine.dcm", frame=3)
    with pytest.raises(ValueError, match="frame must be an int >= 0"):
        xio.decode_image(data, frame=-1)


def _patched(data: bytes, tag_and_vr: bytes, old: bytes, new: bytes) -> bytes:
    """Replace one element's value by a malformed one of the same length."""
    element = tag_and_vr + struct.pack("<H", len(old)) + old
    assert data.count(element) == 1 and len(new) == len(old)
    return data.replace(element, tag_and_vr + struct.pack("<H", len(new)) + new)


@pytest.mark.parametrize(
    "data",
    [
        _patched(make_dicom(np.stack([RAMP, RAMP])), b"\x28\x00\x08\x00IS", b"2 ", b"1A"),
        _patched(
            make_dicom(RAMP, window=(2000.0, 1500.0)), b"\x28\x00\x51\x10DS", b"1500.0", b"15x0.0"
        ),
        make_dicom(RAMP, window=(2000.0, 0.0)),  # LINEAR needs a width >= 1
        make_dicom(RAMP, window=(2000.0, 1500.0), voi_function="LOG"),
        make_dicom(RAMP, photometric="MONOCHROME3"),
    ],
    ids=["frames-1A", "width-15x0", "width-0", "function-LOG", "photometric-unknown"],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")  # pydicom, as in use
def test_malformed_dicom_header_is_image_decode_error(data):
    with pytest.raises(xio.ImageDecodeError, match=r"^bad\.dcm: "):
        xio.decode_image(data, name="bad.dcm")
