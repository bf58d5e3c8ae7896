"""Shared input checks for xraycore (one place, as scikit-image's ``_shared/utils``)."""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "channels_equal",
    "check_image",
    "check_int",
    "check_odd_ksize",
    "check_positive",
    "to_uint8",
]

_SUPPORTED = (np.uint8, np.uint16, np.float32, np.float64)


def check_image(image, *, name: str = "image", channels: str = "gray") -> np.ndarray:
    """Return ``image`` as an ndarray after checking its rank and dtype.

    ``channels`` is ``"gray"`` (2-D only), ``"color"`` (H, W, 3 only) or ``"any"``.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy ndarray, got {type(image).__name__}")
    if image.dtype.type not in _SUPPORTED:
        raise ValueError(
            f"{name} dtype must be one of uint8, uint16, float32, float64, got {image.dtype}"
        )
    ok_gray = image.ndim == 2
    ok_color = image.ndim == 3 and image.shape[2] == 3
    if channels == "gray" and not ok_gray:
        raise ValueError(f"{name} must be a 2-D grayscale array, got shape {image.shape}")
    if channels == "color" and not ok_color:
        raise ValueError(f"{name} must be an (H, W, 3) BGR array, got shape {image.shape}")
    if channels == "any" and not (ok_gray or ok_color):
        raise ValueError(f"{name} must be (H, W) or (H, W, 3), got shape {image.shape}")
    if image.shape[0] < 3 or image.shape[1] < 3:
        raise ValueError(f"{name} must be at least 3x3 pixels, got shape {image.shape}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return image


def check_positive(value, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as float after checking it is a finite number > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return v


def check_int(value, name: str, *, minimum: int = 0) -> int:
    """Return ``value`` as int after checking it is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_odd_ksize(value, name: str) -> int:
    """Return ``value`` as an odd int >= 3."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 3 or value % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 3, got {value!r}")
    return int(value)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Map any supported grayscale or colour image onto uint8.

    uint8 is returned as is; uint16 is scaled by 255/65535; float images are
    min-max normalised (a constant image maps to 0).
    """
    import cv2

    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros(image.shape, np.uint8)
    return cv2.convertScaleAbs(image, alpha=255.0 / (hi - lo), beta=-lo * 255.0 / (hi - lo))


def channels_equal(image: np.ndarray) -> bool:
    """True when the three channels of an (H, W, 3) image are identical (a gray scan
    saved as colour)."""
    import cv2

    b, g, r = cv2.split(image)
    return bool(np.array_equal(b, g) and np.array_equal(g, r))
