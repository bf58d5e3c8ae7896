"""Contrast and exposure: known answers first, then the seeds' OpenCV formulas."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from xraycore.image import exposure, restore
from xraycore.image.synth import phantom_chest

PHANTOM = phantom_chest(256, seed=1)
DTYPES = [np.uint8, np.uint16, np.float32, np.float64]

# scikit-image's exposure names: none of ours may reuse one with another contract.
SKIMAGE_EXPOSURE = {
    "adjust_gamma",
    "adjust_log",
    "adjust_sigmoid",
    "cumulative_distribution",
    "equalize_adapthist",
    "equalize_hist",
    "histogram",
    "is_low_contrast",
    "match_histograms",
    "rescale_intensity",
}


def _as(image: np.ndarray, dtype) -> np.ndarray:
    """The same uint8 image in another dtype, mapped back onto itself by to_uint8
    (uint16 scaled by 257; float as is, the image holds both 0 and 255)."""
    return image.astype(np.uint16) * 257 if dtype == np.uint16 else image.astype(dtype)


def _colour_cast() -> tuple[np.ndarray, np.ndarray]:
    """A 100x200 BGR image with a colour cast and its white balance, by hand.

    In each channel 19980 pixels fill ``lo..lo+85`` and 10 (0.05%, the transfer-learning
    recipe's tail) lie below and 10 above. Discarding the tails leaves ``lo..lo+85``,
    which stretches onto 0..255 with slope 3: ``3 * (v - lo)``, clipped.
    """
    rng = np.random.default_rng(0)
    channels, expected = [], []
    for lo, dark, bright in ((60, 0, 200), (20, 0, 255), (150, 100, 255)):
        bulk = lo + np.arange(20000 - 20) % 86
        values = rng.permutation(np.concatenate([np.full(10, dark), bulk, np.full(10, bright)]))
        channels.append(values)
        expected.append(np.clip(3 * (values - lo), 0, 255))
    image = np.stack(channels, axis=-1).reshape(100, 200, 3).astype(np.uint8)
    return image, np.stack(expected, axis=-1).reshape(100, 200, 3).astype(np.uint8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_white_balance_maps_each_channels_tails_onto_0_and_255(dtype):
    image, expected = _colour_cast()
    out = exposure.white_balance(_as(image, dtype))
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(out, expected)
    # Grayscale is one such channel.
    gray = exposure.white_balance(_as(image[:, :, 1], dtype))
    assert gray.shape == image.shape[:2]
    assert np.array_equal(gray, expected[:, :, 1])


def test_white_balance_tail_sets_the_discarded_fraction():
    image, _ = _colour_cast()
    # No tail: each channel's own minimum and maximum are the stretch's ends.
    out = exposure.white_balance(image, tail=0.0)
    for c in range(3):
        lo, hi = int(image[:, :, c].min()), int(image[:, :, c].max())
        ref = np.clip(np.round((image[:, :, c] - lo) * 255.0 / (hi - lo)), 0, 255)
        assert np.array_equal(out[:, :, c], ref.astype(np.uint8))
    # A channel with a single level has nothing to stretch.
    flat = np.dstack([image[:, :, 0], np.full(image.shape[:2], 77, np.uint8), image[:, :, 2]])
    assert np.array_equal(exposure.white_balance(flat)[:, :, 1], flat[:, :, 1])


def _deep_scan() -> np.ndarray:
    # Real 16-bit detail: the phantom spread over ~50000 levels, with noise.
    rng = np.random.default_rng(0)
    deep = PHANTOM.astype(np.float64) * 200 + rng.normal(0, 300, PHANTOM.shape)
    return np.clip(deep, 0, 65535).astype(np.uint16)


def test_clahe_uint16_is_opencv_clahe_on_the_same_uint16_input():
    deep = _deep_scan()
    out = exposure.clahe(deep)
    assert out.dtype == np.uint16 and out.shape == deep.shape
    ref = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(deep)
    assert np.array_equal(out, ref)
    assert np.abs(out.astype(np.int64) - deep).mean() > 1000  # it did equalise


def test_clahe_uint16_one_unclipped_tile_is_histogram_equalisation():
    # One tile and no clipping leave plain equalisation over 65536 levels:
    # each level maps to round(65535 * fraction of pixels at or below it).
    image = np.full((64, 64), 50000, np.uint16)
    image[:16] = 1000
    image[16:48] = 20000
    out = exposure.clahe(image, clip_limit=1e6, tile_grid=(1, 1))
    assert out.dtype == np.uint16
    assert np.array_equal(out[:16], np.full((16, 64), 16384))  # 0.25 * 65535 = 16383.75
    assert np.array_equal(out[16:48], np.full((32, 64), 49151))  # 0.75 * 65535 = 49151.25
    assert np.array_equal(out[48:], np.full((16, 64), 65535))


def test_clahe_uint8_and_colour_are_seed_003_opencv_calls():
    op = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    assert np.array_equal(exposure.clahe(PHANTOM), op.apply(PHANTOM))
    colour = np.dstack([PHANTOM, cv2.flip(PHANTOM, 1), 255 - PHANTOM])
    lab = cv2.cvtColor(colour, cv2.COLOR_BGR2LAB)
    lab[:, :, 0] = op.apply(lab[:, :, 0])
    assert np.array_equal(exposure.clahe(colour), cv2.cvtColor(lab, cv2.COLOR_LAB2BGR))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("colour", [False, True])
def test_clahe_output_dtype_and_shape(dtype, colour):
    image = _as(cv2.merge([PHANTOM] * 3) if colour else PHANTOM, dtype)
    out = exposure.clahe(image)
    assert out.shape == image.shape
    assert out.dtype == (np.uint16 if dtype == np.uint16 and not colour else np.uint8)


def test_equalize_luma_on_grey_stored_as_colour_is_equalize_hist():
    # Three equal channels: Y is the grey level and U = V = 128, so each
    # channel of the result is the grey histogram equalisation.
    out = exposure.equalize_luma(cv2.merge([PHANTOM] * 3))
    expected = cv2.equalizeHist(PHANTOM)
    assert out.shape == (*PHANTOM.shape, 3)
    for c in range(3):
        assert np.array_equal(out[:, :, c], expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_equalize_luma_is_seed_000_formula(dtype):
    # Seed 000: BGR -> YUV, cv2.equalizeHist on Y, YUV -> BGR.
    colour = np.dstack([PHANTOM, cv2.flip(PHANTOM, 1), (PHANTOM // 2 + 90).astype(np.uint8)])
    colour[0, 0] = (0, 0, 0)
    colour[0, 1] = (255, 255, 255)
    yuv = cv2.cvtColor(colour, cv2.COLOR_BGR2YUV)
    yuv[:, :, 0] = cv2.equalizeHist(yuv[:, :, 0])
    out = exposure.equalize_luma(_as(colour, dtype))
    assert out.dtype == np.uint8
    assert np.array_equal(out, cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR))
    assert np.array_equal(exposure.equalize_luma(_as(PHANTOM, dtype)), cv2.equalizeHist(PHANTOM))


def test_adjust_contrast_is_saturated_linear_scaling():
    image = np.array([[0, 4, 10], [100, 132, 200], [250, 255, 7]], np.uint8)
    out = exposure.adjust_contrast(image, alpha=2.0, beta=-10)
    assert np.array_equal(out, [[0, 0, 10], [190, 254, 255], [255, 255, 4]])
    assert np.array_equal(
        exposure.adjust_contrast(PHANTOM), cv2.convertScaleAbs(PHANTOM, alpha=1.2)
    )


def test_percentile_stretch_maps_the_percentiles_onto_0_and_255():
    # 0..340: the 25th percentile is 85, the 50th 170, a slope of 3.
    ramp = np.arange(341, dtype=np.float32).reshape(11, 31)
    out = exposure.percentile_stretch(ramp, low=25, high=50)
    assert out.dtype == np.uint8 and out.shape == ramp.shape
    assert np.array_equal(out, np.clip(3 * (ramp - 85), 0, 255))


def test_percentile_stretch_takes_the_percentiles_inside_the_mask():
    image = np.tile(np.arange(30, 116, dtype=np.uint8), (4, 1))  # 30..115: 85 levels wide
    image[0, :5], image[0, 5:10] = 0, 255
    mask = np.ones(image.shape, bool)
    mask[0, :10] = False
    out = exposure.percentile_stretch(image, low=0, high=100, mask=mask)
    assert np.array_equal(out[1:], np.tile(3 * (image[1] - 30), (3, 1)))
    assert np.array_equal(out[0, :10], [0] * 5 + [255] * 5)  # outside the mask: saturated
    # Without the mask the outliers set the range: the identity.
    assert np.array_equal(exposure.percentile_stretch(image, low=0, high=100), image)
    # A constant image is only mapped onto uint8.
    flat = np.full((8, 8), 1000, np.uint16)
    assert np.array_equal(exposure.percentile_stretch(flat), np.full((8, 8), 4, np.uint8))


def test_no_public_name_is_a_scikit_image_name():
    assert not SKIMAGE_EXPOSURE & set(exposure.__all__)
    assert not SKIMAGE_EXPOSURE & set(restore.__all__)
    assert not set(exposure.__all__) & set(restore.__all__)
    assert all(callable(getattr(exposure, name)) for name in exposure.__all__)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: exposure.white_balance(PHANTOM, tail=0.6), "tail must be in"),
        (lambda: exposure.white_balance(PHANTOM, tail=-0.1), "tail must be in"),
        (lambda: exposure.white_balance(np.zeros((8, 8, 4), np.uint8)), r"\(H, W\) or"),
        (lambda: exposure.clahe(PHANTOM, clip_limit=0), "clip_limit"),
        (lambda: exposure.clahe(PHANTOM, tile_grid=(0, 8)), "tile_grid"),
        (lambda: exposure.clahe(PHANTOM, tile_grid=(8,)), "tile_grid"),
        (lambda: exposure.equalize_luma(np.zeros((8, 8), np.int32)), "dtype"),
        (lambda: exposure.adjust_contrast(PHANTOM, alpha=-1), "alpha"),
        (lambda: exposure.adjust_contrast(PHANTOM, beta=float("nan")), "beta"),
        (lambda: exposure.percentile_stretch(PHANTOM, low=50, high=10), "low < high"),
        (lambda: exposure.percentile_stretch(PHANTOM, high=101), "high <= 100"),
        (
            lambda: exposure.percentile_stretch(PHANTOM, mask=np.ones((3, 3), bool)),
            "mask must be",
        ),
        (
            lambda: exposure.percentile_stretch(PHANTOM, mask=np.ones(PHANTOM.shape, np.uint8)),
            "mask must be a bool",
        ),
    ],
)
def test_bad_parameters_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
