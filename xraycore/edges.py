"""Edge filters of the NumPy X-ray tutorial (seeds 001/002), computed in float.

The tutorial calls ``scipy.ndimage`` on the uint8 image, so its results are
computed and returned in uint8 and negative responses wrap around. These
functions compute in float32 with the *same* kernels and the same 'reflect'
border (OpenCV's ``BORDER_REFLECT``), and match the float64 scipy formulas.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from ._validate import check_image, check_positive, to_uint8

__all__ = [
    "canny",
    "gaussian_gradient_magnitude",
    "gaussian_laplace",
    "histogram",
    "prewitt",
    "sobel",
    "statistics",
    "threshold_mask",
]

_TRUNCATE = 4.0  # scipy.ndimage's default kernel half-width in sigmas
_BORDER = cv2.BORDER_REFLECT  # == scipy.ndimage mode="reflect"


@lru_cache(maxsize=64)
def _gaussian_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian and its first two derivatives, sampled exactly as scipy does.

    Returned already flipped for correlation (OpenCV filters correlate; scipy's
    ``gaussian_filter1d`` correlates with the reversed kernel).
    """
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    phi /= phi.sum()
    d1 = -x / (sigma * sigma) * phi
    d2 = (x * x / sigma**4 - 1.0 / (sigma * sigma)) * phi
    return tuple(k[::-1].astype(np.float32).copy() for k in (phi, d1, d2))


def _as_filter_input(image: np.ndarray) -> np.ndarray:
    # sepFilter2D accepts uint8/uint16/float32 directly; float64 goes to float32.
    return image.astype(np.float32) if image.dtype == np.float64 else image


def gaussian_laplace(image: np.ndarray, *, sigma: float = 1.0) -> np.ndarray:
    """Laplacian of Gaussian edge response.

    Parameters
    ----------
    image : (H, W) ndarray of uint8, uint16 or float
        Grayscale radiograph.
    sigma : float, optional
        Gaussian scale in pixels. Default 1.0, as in the NumPy X-ray tutorial.

    Returns
    -------
    edges : (H, W) ndarray of float32

    Notes
    -----
    Equals ``scipy.ndimage.gaussian_laplace(image.astype(float), sigma)``
    (truncate 4, mode 'reflect') up to float32 rounding; computed as two
    separable passes of the exact Gaussian second-derivative kernels.
    """
    check_image(image)
    sigma = check_positive(sigma, "sigma")
    g0, _, g2 = _gaussian_kernels(sigma)
    src = _as_filter_input(image)
    dyy = cv2.sepFilter2D(src, cv2.CV_32F, g0, g2, borderType=_BORDER)
    dxx = cv2.sepFilter2D(src, cv2.CV_32F, g2, g0, borderType=_BORDER)
    return cv2.add(dxx, dyy, dst=dxx)


def gaussian_gradient_magnitude(image: np.ndarray, *, sigma: float = 2.0) -> np.ndarray:
    """Gradient magnitude computed with Gaussian first derivatives.

    Parameters
    ----------
    image : (H, W) ndarray of uint8, uint16 or float
    sigma : float, optional
        Gaussian scale in pixels. Default 2.0, as in the NumPy X-ray tutorial.

    Returns
    -------
    magnitude : (H, W) ndarray of float32

    Notes
    -----
    Equals ``scipy.ndimage.gaussian_gradient_magnitude(image.astype(float), sigma)``.
    """
    check_image(image)
    sigma = check_positive(sigma, "sigma")
    g0, g1, _ = _gaussian_kernels(sigma)
    src = _as_filter_input(image)
    gx = cv2.sepFilter2D(src, cv2.CV_32F, g1, g0, borderType=_BORDER)
    gy = cv2.sepFilter2D(src, cv2.CV_32F, g0, g1, borderType=_BORDER)
    return cv2.magnitude(gx, gy)


def _scaled_magnitude(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    mag = cv2.magnitude(gx, gy)
    peak = float(mag.max())
    if peak > 0:
        cv2.multiply(mag, 255.0 / peak, dst=mag)
    return mag


def sobel(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude scaled to 0..255.

    Parameters
    ----------
    image : (H, W) ndarray of uint8, uint16 or float

    Returns
    -------
    magnitude : (H, W) ndarray of float32
        ``hypot(sobel_x, sobel_y) * 255 / max``; all zeros for a constant image.

    Notes
    -----
    The tutorial's ``ndimage.sobel`` on both axes, ``np.hypot`` and the 255/max
    scaling, computed in float instead of uint8.
    """
    check_image(image)
    src = _as_filter_input(image)
    gx = cv2.Sobel(src, cv2.CV_32F, 1, 0, ksize=3, borderType=_BORDER)
    gy = cv2.Sobel(src, cv2.CV_32F, 0, 1, ksize=3, borderType=_BORDER)
    return _scaled_magnitude(gx, gy)


_PREWITT_DERIV = np.array([-1.0, 0.0, 1.0], np.float32)
_PREWITT_SMOOTH = np.array([1.0, 1.0, 1.0], np.float32)


def prewitt(image: np.ndarray, *, fourier_sigma: float | None = None) -> np.ndarray:
    """Prewitt gradient magnitude scaled to 0..255, optionally after Fourier smoothing.

    This is what the tutorial calls "Canny"; it is not Canny (see :func:`canny`).

    Parameters
    ----------
    image : (H, W) ndarray of uint8, uint16 or float
    fourier_sigma : float, optional
        If given, the image is first smoothed by a Gaussian of this standard
        deviation (pixels) applied in the frequency domain: FFT, multiplication
        by the Gaussian's transform (``scipy.ndimage.fourier_gaussian``),
        inverse FFT. The tutorial passed the spatial image straight to
        ``fourier_gaussian``, which expects an FFT; this does it right. The
        FFT implies a periodic ('wrap') border.

    Returns
    -------
    magnitude : (H, W) ndarray of float32
    """
    check_image(image)
    src = _as_filter_input(image)
    if fourier_sigma is not None:
        from scipy import fft, ndimage

        sigma = check_positive(fourier_sigma, "fourier_sigma")
        spectrum = fft.rfft2(src.astype(np.float32), workers=1)
        spectrum = ndimage.fourier_gaussian(spectrum, sigma, n=src.shape[1])
        src = fft.irfft2(spectrum, s=src.shape, workers=1).astype(np.float32)
    gx = cv2.sepFilter2D(src, cv2.CV_32F, _PREWITT_DERIV, _PREWITT_SMOOTH, borderType=_BORDER)
    gy = cv2.sepFilter2D(src, cv2.CV_32F, _PREWITT_SMOOTH, _PREWITT_DERIV, borderType=_BORDER)
    return _scaled_magnitude(gx, gy)


def canny(
    image: np.ndarray,
    *,
    sigma: float = 1.0,
    low_threshold: float = 20.0,
    high_threshold: float = 50.0,
) -> np.ndarray:
    """Canny edge detector (Gaussian smoothing, Sobel gradients, non-maximum
    suppression, hysteresis).

    Parameters
    ----------
    image : (H, W) ndarray of uint8, uint16 or float
        Non-uint8 input is scaled to uint8 first (uint16 by 255/65535, float by
        its min and max).
    sigma : float, optional
        Standard deviation of the Gaussian pre-smoothing. Default 1.0; 0 skips it.
    low_threshold, high_threshold : float, optional
        Hysteresis thresholds on the L2 Sobel gradient magnitude of the smoothed
        uint8 image. Defaults 20 and 50 mark about 2% of the pixels of a
        ChestX-ray8 scan as edges (the 80th-90th percentile of its gradient).

    Returns
    -------
    edges : (H, W) ndarray of bool
    """
    check_image(image)
    sigma = check_positive(sigma, "sigma", allow_zero=True)
    low = check_positive(low_threshold, "low_threshold", allow_zero=True)
    high = check_positive(high_threshold, "high_threshold", allow_zero=True)
    if low > high:
        raise ValueError(f"low_threshold must be <= high_threshold, got {low!r} > {high!r}")
    src = to_uint8(image)
    if sigma > 0:
        src = cv2.GaussianBlur(src, (0, 0), sigma, borderType=_BORDER)
    return cv2.Canny(src, low, high, L2gradient=True) > 0


def threshold_mask(
    image: np.ndarray, *, threshold: float = 150, keep_values: bool = False
) -> np.ndarray:
    """Pixels brighter than a threshold.

    Parameters
    ----------
    image : (H, W) ndarray
    threshold : float, optional
        Default 150, as in the tutorial (``np.where(xray_image > 150, ...)``).
    keep_values : bool, optional
        False (default) returns a bool mask (the tutorial's "less noisy" mask);
        True returns the image where above the threshold and 0 elsewhere (its
        "noisy" mask), in the input dtype.

    Returns
    -------
    mask : (H, W) ndarray of bool, or of the input dtype with ``keep_values``
    """
    check_image(image)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number):
        raise TypeError(f"threshold must be a real number, got {threshold!r}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    mask = image > threshold
    if keep_values:
        return np.where(mask, image, np.zeros((), image.dtype))
    return mask


def _hist_u8(image: np.ndarray) -> np.ndarray:
    return cv2.calcHist([image], [0], None, [256], [0, 256]).ravel()


def histogram(
    image: np.ndarray, *, bins: int = 256, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Pixel-intensity histogram.

    Parameters
    ----------
    image : (H, W) ndarray
    bins : int, optional
        Number of equal-width bins. Default 256.
    value_range : (float, float), optional
        Lower and upper edge. Default: the dtype's range for integers
        ((0, 256) for uint8, (0, 65536) for uint16), so that histograms of
        different scans are comparable; the image's min and max for floats.

    Returns
    -------
    counts : (bins,) ndarray of int64
        As ``np.histogram(image, bins, range=value_range)[0]``.

    Notes
    -----
    The tutorial uses ``ndimage.histogram(image, min=image.min(),
    max=image.max(), bins=256)``; pass ``value_range=(image.min(), image.max())``
    for that binning.
    """
    check_image(image)
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if value_range is None:
        if image.dtype.kind == "u":
            value_range = (0, int(np.iinfo(image.dtype).max) + 1)
        else:
            value_range = (float(image.min()), float(image.max()))
    lo, hi = float(value_range[0]), float(value_range[1])
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise ValueError(f"value_range must be finite with low <= high, got {value_range!r}")
    if image.dtype == np.uint8 and bins == 256 and (lo, hi) == (0.0, 256.0):
        return _hist_u8(image).astype(np.int64)
    if hi == lo:
        hi = lo + 1.0
    return np.histogram(image, bins=bins, range=(lo, hi))[0].astype(np.int64)


def statistics(image: np.ndarray) -> dict[str, float]:
    """Min, max, mean and median of the pixel values (the tutorial's summary).

    Returns
    -------
    stats : dict with float values under ``min``, ``max``, ``mean``, ``median``
    """
    check_image(image, channels="any")
    if image.dtype == np.uint8 and image.ndim == 2:
        counts = _hist_u8(image)
        cum = np.cumsum(counts)
        n = image.size
        # np.median semantics: mean of the two middle values for even n.
        lo = int(np.searchsorted(cum, (n - 1) // 2, side="right"))
        hi = int(np.searchsorted(cum, n // 2, side="right"))
        median = (lo + hi) / 2.0
        mn, mx = cv2.minMaxLoc(image)[:2]
        return {
            "min": float(mn),
            "max": float(mx),
            "mean": float(cv2.mean(image)[0]),
            "median": median,
        }
    return {
        "min": float(image.min()),
        "max": float(image.max()),
        "mean": float(image.mean(dtype=np.float64)),
        "median": float(np.median(image)),
    }
