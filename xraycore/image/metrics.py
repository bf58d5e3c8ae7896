"""Image-quality metrics for tests and benchmarks of restoration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from xraycore._validate import check_image

__all__ = ["format_scores", "restoration_scores", "ssim"]


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


def restoration_scores(
    scans: Sequence[np.ndarray],
    *,
    families: Mapping[str, Mapping] | None = None,
    seed: int = 0,
) -> dict[str, list[float]]:
    """SSIM of :func:`~xraycore.image.restore.restore_scan` to the clean scan, per damage family.

    Parameters
    ----------
    scans : sequence of (H, W) ndarray of uint8
        Clean scans. Scan ``i`` is damaged with seed ``seed + i``.
    families : mapping of str to mapping, optional
        Family name -> keyword arguments of :func:`~xraycore.image.synth.damage_scan`.
        Default :data:`~xraycore.image.synth.DAMAGE_FAMILIES`.
    seed : int, optional

    Returns
    -------
    scores : dict of str to list of float
        One SSIM per scan for each family, and ``"clean"``: each undamaged scan
        restored and compared with itself.
    """
    from xraycore.image.restore import restore_scan
    from xraycore.image.synth import DAMAGE_FAMILIES, damage_scan

    families = DAMAGE_FAMILIES if families is None else families
    scores: dict[str, list[float]] = {}
    for name, kwargs in families.items():
        scores[name] = [
            ssim(restore_scan(damage_scan(scan, seed=seed + i, **kwargs)[0]), scan)
            for i, scan in enumerate(scans)
        ]
    scores["clean"] = [ssim(restore_scan(scan), scan) for scan in scans]
    return scores


def format_scores(scores: Mapping[str, Sequence[float]]) -> str:
    """A plain-text table of :func:`restoration_scores`: mean, worst, n per family."""
    lines = [f"{'family':14s} {'mean SSIM':>9s} {'worst':>7s} {'n':>3s}"]
    for name, values in scores.items():
        lines.append(f"{name:14s} {np.mean(values):9.3f} {np.min(values):7.3f} {len(values):3d}")
    return "\n".join(lines)
