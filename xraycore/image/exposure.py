"""Contrast and exposure: white balance and CLAHE (the transfer-learning recipe),
luma equalisation and linear contrast (the damaged-scan restoration notes), and a
robust percentile stretch (sources: CONTRIBUTING.md).

These change how a scan looks, never what it shows: damage repair is in
:mod:`xraycore.image.restore`. No public name here is a scikit-image name with another
contract; where scikit-image has the same idea under its own name, the
docstring says how the two differ. Colour images are OpenCV BGR throughout.
"""

from __future__ import annotations

import cv2
import numpy as np

from xraycore._validate import check_image, check_positive, to_uint8

__all__ = [
    "adjust_contrast",
    "clahe",
    "equalize_luma",
    "percentile_stretch",
    "white_balance",
]


def white_balance(image: np.ndarray, *, tail: float = 0.0005) -> np.ndarray:
    """Stretch each channel on its own after discarding a fraction at each end.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray of uint8, uint16 or float
        Mapped onto uint8 first (uint16 scaled by 255/65535, float min-max).
    tail : float, optional
        Fraction of each channel's pixels discarded at each end. Default
        0.0005 (0.05%), as the transfer-learning recipe.

    Returns
    -------
    image : ndarray of uint8, same shape
        In each channel, the lowest level above the darkest ``tail`` of the
        pixels maps to 0, the lowest level that reaches ``1 - tail`` of them
        to 255, linearly (rounded) in between and clipped outside. A channel
        with a single level is returned unchanged.

    Notes
    -----
    Seed 003: "stretching the RGB channels respectively ... the pixel colors at
    the end of the three channels are discarded since only 0.05% of these
    pixels are meaningful".
    """
    img = to_uint8(check_image(image, channels="any"))
    if not 0 <= tail < 0.5:
        raise ValueError(f"tail must be in [0, 0.5), got {tail!r}")
    channels = [img] if img.ndim == 2 else list(cv2.split(img))
    out = []
    for ch in channels:
        cum = np.cumsum(cv2.calcHist([ch], [0], None, [256], [0, 256]).ravel())
        n = cum[-1]
        lo = int(np.searchsorted(cum, tail * n, side="right"))
        hi = int(np.searchsorted(cum, (1 - tail) * n, side="left"))
        if hi <= lo:
            out.append(ch.copy())
            continue
        levels = np.arange(256, dtype=np.float32)
        lut = np.clip((levels - lo) * 255.0 / (hi - lo), 0, 255).round().astype(np.uint8)
        out.append(cv2.LUT(ch, lut))
    return out[0] if img.ndim == 2 else cv2.merge(out)


def clahe(
    image: np.ndarray, *, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8)
) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV's CLAHE).

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray of uint8, uint16 or float
        Grayscale uint16 is equalised over its 65536 levels. Everything else
        is mapped onto uint8 first; colour is equalised on the L channel of Lab.
    clip_limit : float, optional
        OpenCV's limit: each tile's histogram is clipped at ``clip_limit``
        times its mean bin count (at least one pixel). Default 2.0.
    tile_grid : (int, int), optional
        Tiles across and down. Default (8, 8).

    Returns
    -------
    image : ndarray, same shape
        uint16 for a grayscale uint16 input, uint8 for everything else
        (colour uint16 included: OpenCV's Lab conversion has no 16-bit path).

    Notes
    -----
    Seed 003 enhances with white balance, then CLAHE; its formula was a
    picture lost from the text, so clip limit 2 (the common choice; OpenCV's
    own default is 40) and 8x8 tiles (OpenCV's default) are this library's.
    scikit-image calls this ``equalize_adapthist``, with another
    ``clip_limit`` (a fraction in 0..1) and float output.

    On uint16 the mean bin count is a tile's pixels over 65536 (the clip is
    1 pixel per bin on a 1024x1024 scan) and the clipped mass is spread over
    all 65536 levels: an 8-bit scan scaled onto uint16 (256 occupied levels)
    moves by ~1 level of 255 on average (ChestX-ray8; 15-20 as uint8), while
    real 16-bit detail is equalised.
    :func:`xraycore.image.pipeline.run_pipeline` enhances uint8 only.
    """
    check_image(image, channels="any")
    clip_limit = check_positive(clip_limit, "clip_limit")
    if (
        not isinstance(tile_grid, tuple | list)
        or len(tile_grid) != 2
        or not all(isinstance(t, int) and t > 0 for t in tile_grid)
    ):
        raise ValueError(f"tile_grid must be two positive ints, got {tile_grid!r}")
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tuple(tile_grid))
    if image.ndim == 2:
        return op.apply(image if image.dtype == np.uint16 else to_uint8(image))
    lab = cv2.cvtColor(to_uint8(image), cv2.COLOR_BGR2LAB)
    lab[:, :, 0] = op.apply(lab[:, :, 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)


def equalize_luma(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of the luminance only.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray of uint8, uint16 or float
        Mapped onto uint8 first. Grayscale is equalised as it is; colour
        (BGR) on the Y channel of YUV, its U and V kept.

    Returns
    -------
    image : ndarray of uint8, same shape

    Notes
    -----
    Seed 000 "converts the image to the YUV color space, where histogram
    equalization is applied to the luminance channel ... then converted back
    to the BGR color space": ``cv2.equalizeHist`` on Y. scikit-image's
    ``equalize_hist`` returns floats in 0..1 and equalises every value of a
    colour array together.
    """
    img = to_uint8(check_image(image, channels="any"))
    if img.ndim == 2:
        return cv2.equalizeHist(img)
    yuv = cv2.cvtColor(img, cv2.COLOR_BGR2YUV)
    yuv[:, :, 0] = cv2.equalizeHist(yuv[:, :, 0])
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)


def adjust_contrast(image: np.ndarray, *, alpha: float = 1.2, beta: float = 0.0) -> np.ndarray:
    """Linear contrast and brightness: ``saturate(alpha * image + beta)``.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray of uint8, uint16 or float
        Mapped onto uint8 first.
    alpha : float, optional
        Gain, > 0. Default 1.2.
    beta : float, optional
        Offset in uint8 levels. Default 0.

    Returns
    -------
    image : ndarray of uint8, same shape

    Notes
    -----
    Seed 000 "enhanc[es] the contrast and brightness using linear scaling" but
    gives no values; 1.2 and 0 are this library's choice.
    """
    img = to_uint8(check_image(image, channels="any"))
    alpha = check_positive(alpha, "alpha")
    if not np.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta!r}")
    out = cv2.convertScaleAbs(img, alpha=alpha, beta=float(beta))
    if beta < 0:
        # convertScaleAbs takes |alpha * x + beta|: what beta drives below 0 saturates at 0.
        out[img < -beta / alpha] = 0
    return out


def percentile_stretch(
    image: np.ndarray,
    *,
    low: float = 0.5,
    high: float = 99.5,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Stretch the ``low``..``high`` percentiles of an image onto 0..255.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray of uint8, uint16 or float
        Any range: a fused float image, a uint16 scan.
    low, high : float, optional
        Percentiles (0..100) mapped onto 0 and 255. Defaults 0.5 and 99.5.
    mask : (H, W) ndarray of bool, optional
        Only these pixels set the percentiles (all of them when the mask is
        empty); every pixel is stretched.

    Returns
    -------
    image : ndarray of uint8, same shape
        Values outside the percentiles saturate at 0 and 255. When the two
        percentiles are equal the image is only mapped onto uint8.

    Notes
    -----
    No seed: this library's robust stretch for fused colour scans
    (:func:`xraycore.image.restore.restore_scan` uses 0.1 and 99.9). It is not
    scikit-image's ``rescale_intensity``, which maps given ranges
    (``in_range`` to ``out_range``) and keeps the dtype.
    """
    check_image(image, channels="any")
    if not 0 <= low < high <= 100:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low!r}, high={high!r}")
    if mask is not None and (
        not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.shape != image.shape[:2]
    ):
        raise ValueError(
            f"mask must be a bool ndarray of shape {image.shape[:2]}, got "
            f"{getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}"
        )
    values = image[mask] if mask is not None else image
    if values.size == 0:
        values = image
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        return to_uint8(image)
    scale = 255.0 / (hi - lo)
    out = cv2.convertScaleAbs(image.astype(np.float32), alpha=scale, beta=-lo * scale)
    # convertScaleAbs takes |alpha * x + beta|: values below lo saturate at 0.
    out[image < lo] = 0
    return out
