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

from xraycore._validate import check_image, check_positive, to_uint8

__all__ = [
    "canny",
    "gaussian_kernels",
    "gaussian_gradient_magnitude",
    "gaussian_laplace",
    "gradient_magnitude_bound",
    "laplace_bound",
    "prewitt",
    "sobel",
]

_TRUNCATE = 4.0  # scipy.ndimage's default kernel half-width in sigmas
_BORDER = cv2.BORDER_REFLECT  # == scipy.ndimage mode="reflect"


@lru_cache(maxsize=64)
def gaussian_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def laplace_bound(sigma: float) -> float:
    """The largest absolute value :func:`gaussian_laplace` can return for 8-bit
    input (0..255) at ``sigma``: what a stored map's packing must cover."""
    g0, _, g2 = (k.astype(np.float64) for k in gaussian_kernels(float(sigma)))
    kernel = np.outer(g2, g0) + np.outer(g0, g2)
    return 255.0 * max(kernel[kernel > 0].sum(), -kernel[kernel < 0].sum())


def gradient_magnitude_bound(sigma: float) -> float:
    """The largest value :func:`gaussian_gradient_magnitude` can return for
    8-bit input at ``sigma``, sampled at 1441 angles (the true maximum may lie
    a little above, between two samples)."""
    g0, g1, _ = (k.astype(np.float64) for k in gaussian_kernels(float(sigma)))
    kx, ky = np.outer(g0, g1), np.outer(g1, g0)
    # The magnitude is the largest directional derivative; its bound for input
    # in 0..255 is 255 times the positive mass of the directional kernel.
    return 255.0 * max(
        np.clip(np.cos(t) * kx + np.sin(t) * ky, 0, None).sum()
        for t in np.linspace(0, 2 * np.pi, 1441)
    )


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
    g0, _, g2 = gaussian_kernels(sigma)
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
    g0, g1, _ = gaussian_kernels(sigma)
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
