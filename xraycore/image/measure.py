"""Measurements of a scan: histograms, summary statistics and threshold masks
(the NumPy X-ray tutorial, seeds 001/002)."""

from __future__ import annotations

import cv2
import numpy as np

from xraycore._validate import check_image, check_int

__all__ = ["histogram", "statistics", "threshold_mask"]


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
    bins = check_int(bins, "bins", minimum=1)
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
