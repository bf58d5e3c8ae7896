"""Holes: black discs punched into a scan, found by their shape and inpainted."""

from __future__ import annotations

import cv2
import numpy as np

from xraycore._validate import check_image, check_positive, to_uint8
from xraycore.image.restore._colour import brightest_channel

__all__ = ["circle_mask", "inpaint"]

_INPAINT = {"ns": cv2.INPAINT_NS, "telea": cv2.INPAINT_TELEA}


def circle_mask(
    image: np.ndarray,
    *,
    black_level: int = 4,
    min_area: float = 0.0005,
    max_area: float = 0.05,
    min_circularity: float = 0.75,
    margin: int = 2,
) -> np.ndarray:
    """Detect black circular holes punched into a scan, by their shape.

    A hole is a near-perfect disc of pure black. Its contrast to the
    surroundings is no evidence: over dark lung there is little. So the pure
    black pixels are opened with a disc a little smaller than the smallest
    hole, which cuts the hole from any dark neighbour it touches and removes
    dark texture, and each remaining blob that is round enough is a hole.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray
        Colour scans are judged on their brightest channel, where a black hole
        stays black whatever the colour coding of the rest.
    black_level : int, optional
        Brightest uint8 level counted as the hole, after a 5x5 median.
        Default 4: the hole is drawn at 0, while lung on real scans stays
        above it.
    min_area, max_area : float, optional
        Accepted hole area as a fraction of the image. Defaults 0.05% and 5%.
    min_circularity : float, optional
        ``4*pi*area / perimeter**2`` and area / enclosing-circle area must both
        reach this. Default 0.75.
    margin : int, optional
        Dilation in pixels so the hole's anti-aliased rim is inpainted too.

    Returns
    -------
    mask : (H, W) ndarray of bool
        Regions touching the image border or the black margin of a warped frame
        are never holes.
    """
    img = to_uint8(check_image(image, channels="any"))
    gray = cv2.medianBlur(brightest_channel(img), 5)
    h, w = gray.shape
    dark = (gray <= black_level).astype(np.uint8)
    # Shape analysis at ~256 pixels across: a hole of the smallest accepted
    # area is still ~8 pixels wide there, and the opening costs ~0.2 ms.
    step = max(1, round(max(h, w) / 256))
    mask = np.zeros((h, w), np.uint8)
    for centre, radius in _hole_discs(
        dark, step, min_area=min_area, max_area=max_area, min_circularity=min_circularity
    ):
        # Back at full size: the hole is the pure black pixels within the
        # blob's disc (plus a pixel of slack), so its own outline decides.
        disc = np.zeros((h, w), np.uint8)
        cv2.circle(disc, centre, radius, 1, -1)
        points = cv2.findNonZero(disc & dark)
        if points is not None:  # convex hull: bright specks inside the hole are filled too
            cv2.fillConvexPoly(mask, cv2.convexHull(points), 1)
    if margin > 0 and mask.any():
        mask = cv2.dilate(
            mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
        )
    return mask.astype(bool)


def _hole_discs(
    dark: np.ndarray, step: int, *, min_area: float, max_area: float, min_circularity: float
) -> list[tuple[tuple[int, int], int]]:
    """Centre and radius, at full size, of each hole's disc among the pure black
    pixels ``dark``, judged on them shrunk ``step`` times (:func:`circle_mask`)."""
    h, w = dark.shape
    small = (
        cv2.resize(dark, (w // step, h // step), interpolation=cv2.INTER_AREA) if step > 1 else dark
    )
    small = (small > 0.5).astype(np.uint8) if step > 1 else small
    sh, sw = small.shape
    r_min = np.sqrt(min_area * h * w / np.pi) / step
    k = max(3, 2 * int(0.6 * r_min) + 1)
    opened = cv2.morphologyEx(
        small, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    )
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    discs = []
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        # Margin pixels (connected to the border) are not holes.
        if x == 0 or y == 0 or x + bw >= sw or y + bh >= sh:
            continue
        if area * step**2 < min_area * h * w:
            continue
        comp = (labels[y : y + bh, x : x + bw] == i).astype(np.uint8)
        blob = _round_blob(comp, min_circularity) or _inscribed_disc(comp, 2 * r_min)
        if blob is None:
            continue
        ccx, ccy, radius = blob
        if np.pi * (radius * step) ** 2 > max_area * h * w:
            continue
        cx, cy = (x + ccx + 0.5) * step - 0.5, (y + ccy + 0.5) * step - 0.5
        r_full = (radius + 1.0) * step + 1.0
        discs.append(((int(round(cx)), int(round(cy))), int(np.ceil(r_full))))
    return discs


def _inscribed_disc(comp: np.ndarray, r_min: float) -> tuple[float, float, float] | None:
    """The largest disc inside a blob, if the blob's outline follows it.

    A hole that touches a dark band or dark anatomy merges with it into a blob
    that is not round. The hole is then the blob's largest inscribed disc,
    provided most of a ring just outside that disc is not dark: a square or a
    dark region holds a large disc too, but surrounds it.
    """
    pad = 3
    patch = cv2.copyMakeBorder(comp, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    distance = cv2.distanceTransform(patch, cv2.DIST_L2, 5)
    radius = float(distance.max())
    if radius < r_min:
        return None
    cy, cx = np.unravel_index(int(np.argmax(distance)), distance.shape)
    theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    ring_x = np.clip(np.rint(cx + (radius + 2) * np.cos(theta)), 0, patch.shape[1] - 1)
    ring_y = np.clip(np.rint(cy + (radius + 2) * np.sin(theta)), 0, patch.shape[0] - 1)
    outside = patch[ring_y.astype(int), ring_x.astype(int)] == 0
    if outside.mean() < 0.75:
        return None
    return float(cx - pad), float(cy - pad), radius + 0.5


def _round_blob(comp: np.ndarray, min_circularity: float) -> tuple[float, float, float] | None:
    """Centre and radius of the largest blob in a binary patch if it is a disc."""
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    perimeter = cv2.arcLength(contour, True)
    (ccx, ccy), radius = cv2.minEnclosingCircle(contour)
    filled = cv2.contourArea(contour)
    if perimeter <= 0 or radius <= 0:
        return None
    # A digitised contour's perimeter runs long at small sizes: compare
    # against the pixel disc's, not the true circle's.
    circularity = 4 * np.pi * filled / perimeter**2 * (1 + 1.0 / radius)
    fill = filled / (np.pi * radius**2)
    if circularity < min_circularity or fill < min_circularity:
        return None
    return float(ccx), float(ccy), float(radius)


def inpaint(
    image: np.ndarray, mask: np.ndarray, *, method: str = "ns", radius: float = 3.0
) -> np.ndarray:
    """Fill the masked region from its surroundings.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray
    mask : (H, W) ndarray of bool
    method : {"ns", "telea"}, optional
        Navier-Stokes (default, as the damaged-scan restoration notes' ``cv2.INPAINT_NS``) or Telea.
    radius : float, optional
        Neighbourhood radius in pixels. Default 3.

    Returns
    -------
    image : ndarray of uint8, same shape
    """
    img = to_uint8(check_image(image, channels="any"))
    if not isinstance(mask, np.ndarray) or mask.shape != img.shape[:2]:
        raise ValueError(
            f"mask must be an ndarray of shape {img.shape[:2]}, got "
            f"{getattr(mask, 'shape', type(mask).__name__)}"
        )
    if method not in _INPAINT:
        raise ValueError(f"method must be 'ns' or 'telea', got {method!r}")
    radius = check_positive(radius, "radius")
    if not mask.any():
        return img.copy()
    return cv2.inpaint(img, mask.astype(np.uint8), radius, _INPAINT[method])
