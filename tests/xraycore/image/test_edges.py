"""Edge filters against a known answer (a step edge) and the float64 scipy formulas."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xraycore.image import edges, measure

DTYPES = [np.uint8, np.uint16, np.float32, np.float64]


def _step(dtype=np.uint8, shape=(64, 80)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    hi = {np.uint8: 200, np.uint16: 50000}.get(dtype, 0.8)
    return np.where(xx >= shape[1] // 2, hi, 0).astype(dtype)


def _random_image(dtype, shape=(67, 91), seed=0) -> np.ndarray:
    # Shapes that divide nothing, so no accidental alignment hides a border bug.
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 2) * 3
    img = (img - img.min()) / (img.max() - img.min())
    if dtype == np.uint8:
        return (img * 255).astype(np.uint8)
    if dtype == np.uint16:
        return (img * 65535).astype(np.uint16)
    return img.astype(dtype)


def _scaled_hypot(a, b):
    m = np.hypot(a, b)
    return m * (255.0 / m.max())


def _reference(name: str, image: np.ndarray) -> np.ndarray:
    """The tutorial's scipy call, computed in float64 as it should have been."""
    x = image.astype(np.float64)
    if name == "log":
        return ndimage.gaussian_laplace(x, sigma=1)
    if name == "ggm":
        return ndimage.gaussian_gradient_magnitude(x, sigma=2)
    if name == "sobel":
        return _scaled_hypot(ndimage.sobel(x, axis=0), ndimage.sobel(x, axis=1))
    if name == "prewitt":
        return _scaled_hypot(ndimage.prewitt(x, axis=0), ndimage.prewitt(x, axis=1))
    raise KeyError(name)


OURS = {
    "log": lambda im: edges.gaussian_laplace(im, sigma=1.0),
    "ggm": lambda im: edges.gaussian_gradient_magnitude(im, sigma=2.0),
    "sobel": edges.sobel,
    "prewitt": edges.prewitt,
}
TOLERANCE = {"log": 0.02, "ggm": 0.02, "sobel": 0.01, "prewitt": 0.01}  # of the output range


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OURS))
def test_filters_match_float64_scipy_on_generated(name, dtype):
    image = _random_image(dtype)
    ours = OURS[name](image)
    ref = _reference(name, image)
    assert ours.dtype == np.float32 and ours.shape == image.shape
    err = np.abs(ours - ref).max() / (ref.max() - ref.min())
    assert err < TOLERANCE[name], f"{name} {dtype}: max error {err:.2e} of range"


@pytest.mark.parametrize("name", sorted(OURS))
def test_filters_match_float64_scipy_on_real_scans(name, chestxray8_files):
    import cv2

    for path in chestxray8_files:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        ref = _reference(name, image)
        err = np.abs(OURS[name](image) - ref).max() / (ref.max() - ref.min())
        # Far tighter than the 2% / 1% requirement: same kernels, float32 rounding.
        assert err < 1e-4, f"{name} on {path.name}: {err:.2e}"


def test_seed_uint8_wraparound_is_fixed():
    # The tutorial's uint8 call wraps negative LoG responses to large positives.
    image = _step()
    seed_style = ndimage.gaussian_laplace(image, sigma=1)
    ours = edges.gaussian_laplace(image)
    assert seed_style.dtype == np.uint8 and seed_style.max() > 200
    assert ours.min() < -10 and ours.max() > 10  # both lobes of the zero crossing


def test_step_edge_known_answers():
    image = _step()
    col = image.shape[1] // 2
    log = edges.gaussian_laplace(image)
    # LoG changes sign across the step and is ~0 far from it.
    assert log[:, col - 1].mean() > 0 > log[:, col].mean()
    assert np.abs(log[:, : col - 6]).max() < 1e-3
    ggm = edges.gaussian_gradient_magnitude(image)
    assert set(np.argmax(ggm, axis=1)) <= {col - 1, col}
    sob = edges.sobel(image)
    assert sob.max() == pytest.approx(255.0)
    assert np.all(sob[:, : col - 2] == 0)


def test_sobel_constant_image_is_zero():
    assert not edges.sobel(np.full((10, 10), 7, np.uint8)).any()


def test_canny_is_real_canny_on_step():
    image = _step()
    out = edges.canny(image)
    assert out.dtype == bool and out.shape == image.shape
    cols = np.nonzero(out.any(axis=0))[0]
    # One thin line at the step (non-maximum suppression), nothing elsewhere.
    assert len(cols) == 1 and abs(int(cols[0]) - image.shape[1] // 2) <= 1
    assert out[2:-2, cols[0]].all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_canny_dtypes(dtype):
    out = edges.canny(_step(dtype))
    assert out.dtype == bool and out.any()


def test_canny_ignores_impulse_noise_that_sobel_sees():
    rng = np.random.default_rng(1)
    image = np.full((64, 64), 100, np.uint8)
    image[rng.random(image.shape) < 0.002] = 110
    assert not edges.canny(image, sigma=2.0).any()
    assert edges.sobel(image).max() > 0


def test_prewitt_fourier_smoothing_matches_wrapped_gaussian():
    image = _random_image(np.float64, shape=(64, 96))
    ours = edges.prewitt(image, fourier_sigma=3.0)
    smooth = ndimage.gaussian_filter(image, 3.0, mode="wrap", truncate=8)
    ref = _scaled_hypot(ndimage.prewitt(smooth, axis=0), ndimage.prewitt(smooth, axis=1))
    assert np.abs(ours - ref).max() < 0.01 * 255


def test_threshold_mask_matches_tutorial():
    image = _random_image(np.uint8)
    assert np.array_equal(measure.threshold_mask(image), np.where(image > 150, 1, 0).astype(bool))
    noisy = measure.threshold_mask(image, keep_values=True)
    assert noisy.dtype == np.uint8
    assert np.array_equal(noisy, np.where(image > 150, image, 0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_histogram_matches_numpy(dtype):
    image = _random_image(dtype)
    counts = measure.histogram(image)
    assert counts.shape == (256,) and counts.dtype == np.int64 and counts.sum() == image.size
    rng = {np.uint8: (0, 256), np.uint16: (0, 65536)}.get(dtype, (image.min(), image.max()))
    assert np.array_equal(counts, np.histogram(image, 256, range=rng)[0])


def test_histogram_tutorial_binning_matches_ndimage(real_scan):
    lo, hi = int(real_scan.min()), int(real_scan.max())
    ours = measure.histogram(real_scan, value_range=(lo, hi))
    ref = ndimage.histogram(real_scan, min=lo, max=hi, bins=256)
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_statistics_match_numpy(dtype):
    for shape in [(67, 91), (64, 64)]:  # odd and even pixel counts (median rule)
        image = _random_image(dtype, shape=shape)
        s = measure.statistics(image)
        assert s == pytest.approx(
            {
                "min": image.min(),
                "max": image.max(),
                "mean": image.mean(dtype=np.float64),
                "median": np.median(image),
            }
        )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: edges.gaussian_laplace(np.zeros((8, 8)), sigma=0), "sigma must be > 0"),
        (lambda: edges.gaussian_laplace(np.zeros((8, 8)), sigma=-1), "sigma must be > 0"),
        (
            lambda: edges.gaussian_gradient_magnitude(np.zeros((8, 8)), sigma=float("nan")),
            "sigma must be > 0",
        ),
        (lambda: edges.sobel(np.zeros((8, 8, 2))), "2-D grayscale"),
        (lambda: edges.sobel(np.zeros((8, 8), np.int32)), "dtype must be"),
        (lambda: edges.sobel(np.full((8, 8), np.nan)), "NaN"),
        (lambda: edges.sobel(np.zeros((2, 8))), "at least 3x3"),
        (
            lambda: edges.canny(np.zeros((8, 8)), low_threshold=60, high_threshold=10),
            "low_threshold must be <=",
        ),
        (lambda: edges.canny(np.zeros((8, 8)), sigma=-1), "sigma must be >= 0"),
        (lambda: edges.prewitt(np.zeros((8, 8)), fourier_sigma=0), "fourier_sigma must be > 0"),
        (lambda: measure.histogram(np.zeros((8, 8)), bins=0), "bins must be"),
        (lambda: measure.histogram(np.zeros((8, 8)), value_range=(5, 1)), "value_range"),
        (lambda: measure.threshold_mask(np.zeros((8, 8)), threshold=float("inf")), "threshold"),
    ],
)
def test_bad_parameters_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_array_raises_type_error():
    with pytest.raises(TypeError, match="image must be a numpy ndarray"):
        edges.sobel([[1, 2, 3]] * 3)
