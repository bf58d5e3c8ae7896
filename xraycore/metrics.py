"""Image-quality metrics for tests and benchmarks of restoration."""

from __future__ import annotations

import cv2
import numpy as np

from ._validate import check_image

__all__ = ["ssim"]


def ssim(image: np.ndarray, reference: np.ndarray, *, data_range: float = 255.0) -> float:
    """Mean structural similarity (Wang et al. 2004): Gaussian window sigma 1.5,
    K1 = 0.01, K2 = 0.03.

    Parameters
    ----------
    image, reference : (H, W) ndarray of the same shape

    Returns
    -------
    ssim : float in [-1, 1]
    """
    check_image(image, name="image")
    check_image(reference, name="reference")
    if image.shape != reference.shape:
        raise ValueError(f"shapes differ: image {image.shape} vs reference {reference.shape}")
    x = image.astype(np.float64)
    y = reference.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(a, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))
