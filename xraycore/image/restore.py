"""Restoration of damaged scans (seed 000).

Seed 000's damaged scans are pseudo-coloured (a jet-like colour map) or have a
brighter, noisier green channel, are warped off-axis inside black margins or
rotated with their corners cut off, salted with impulse noise and punched by a
black circle. Each step is a separate function; :func:`restore_scan` detects
which damage is present and runs only the steps it needs (docs/restoration.md).
Colour images are OpenCV BGR throughout. Contrast and exposure (white
balance, CLAHE, equalisation) are in :mod:`xraycore.image.exposure`.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from xraycore._validate import (
    channels_equal,
    check_image,
    check_odd_ksize,
    check_positive,
    to_uint8,
)
from xraycore.image.exposure import percentile_stretch

__all__ = [
    "circle_mask",
    "decode_colormap",
    "denoise_median",
    "dewarp",
    "estimate_skew",
    "frame_corners",
    "fuse_channels",
    "inpaint",
    "rebalance_channel",
    "restore_scan",
    "rotate_scan",
]

_INPAINT = {"ns": cv2.INPAINT_NS, "telea": cv2.INPAINT_TELEA}


def rebalance_channel(
    image: np.ndarray, *, channel: int = 1, ksize: int = 5, scale: float = 0.9
) -> np.ndarray:
    """Blur one over-bright, noisy colour channel and scale it down.

    Parameters
    ----------
    image : (H, W, 3) ndarray, BGR
    channel : int, optional
        0 blue, 1 green (default), 2 red.
    ksize : int, optional
        Gaussian kernel size (odd). Default 5.
    scale : float, optional
        Intensity factor for the channel. Default 0.9.

    Returns
    -------
    image : (H, W, 3) ndarray of uint8

    Notes
    -----
    Seed 000: "isolates the green channel, applies Gaussian blur ... multiplying
    it by a scale factor (0.9)".
    """
    img = to_uint8(check_image(image, channels="color")).copy()
    if channel not in (0, 1, 2):
        raise ValueError(f"channel must be 0, 1 or 2, got {channel!r}")
    ksize = check_odd_ksize(ksize, "ksize")
    scale = check_positive(scale, "scale")
    blurred = cv2.GaussianBlur(img[:, :, channel], (ksize, ksize), 0)
    img[:, :, channel] = cv2.convertScaleAbs(blurred, alpha=scale)
    return img


def denoise_median(image: np.ndarray, *, ksize: int = 3) -> np.ndarray:
    """Median filter, the standard remedy for salt-and-pepper noise.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray
    ksize : int, optional
        Odd aperture. Default 3; 5 for dense noise.

    Returns
    -------
    image : ndarray of uint8, same shape
    """
    img = to_uint8(check_image(image, channels="any"))
    return cv2.medianBlur(img, check_odd_ksize(ksize, "ksize"))


@lru_cache(maxsize=4)
def _colormap_lut(colormap: int) -> np.ndarray:
    """32x32x32 table: quantised BGR colour -> nearest colour-map index."""
    palette = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], colormap)
    palette = palette.reshape(256, 3).astype(np.float32)
    centers = np.arange(4, 256, 8, dtype=np.float32)
    grid = np.stack(np.meshgrid(centers, centers, centers, indexing="ij"), -1).reshape(-1, 3)
    d = (grid**2).sum(1)[:, None] - 2 * grid @ palette.T + (palette**2).sum(1)[None]
    return d.argmin(1).astype(np.uint8)


_COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO}


def decode_colormap(image: np.ndarray, *, colormap: str = "jet") -> np.ndarray:
    """Invert a pseudo-colour rendering: each BGR colour -> its colour-map index.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8, BGR
    colormap : {"jet", "turbo"}, optional
        The OpenCV colour map the scan was rendered with. Default "jet".

    Returns
    -------
    gray : (H, W) ndarray of uint8
        Pure black maps to 0.
    """
    img = to_uint8(check_image(image, channels="color"))
    if colormap not in _COLORMAPS:
        raise ValueError(f"colormap must be one of {sorted(_COLORMAPS)}, got {colormap!r}")
    lut = _colormap_lut(_COLORMAPS[colormap])
    q = (img >> 3).astype(np.int32)
    gray = lut[(q[:, :, 0] << 10) | (q[:, :, 1] << 5) | q[:, :, 2]]
    gray[_brightest(img) < 16] = 0  # black margins and holes stay black
    return gray


def _colormap_residual(img: np.ndarray, colormap: int) -> float:
    palette = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], colormap)
    palette = palette.reshape(256, 3).astype(np.float32)
    px = img.reshape(-1, 3)[:: max(1, img.size // 3 // 4096)].astype(np.float32)
    px = px[px.max(1) > 40]
    if len(px) < 16:
        return np.inf
    d = (px**2).sum(1)[:, None] - 2 * px @ palette.T + (palette**2).sum(1)[None]
    return float(np.median(np.sqrt(np.maximum(d.min(1), 0))))


def _linear_residual(img: np.ndarray) -> float:
    px = img.reshape(-1, 3)[:: max(1, img.size // 3 // 4096)].astype(np.float32)
    px = px[px.max(1) > 40]
    if len(px) < 16:
        return 0.0
    centred = px - px.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    resid = centred - np.outer(centred @ vt[0], vt[0])
    return float(np.median(np.linalg.norm(resid, axis=1)))


def _noise_sigma(channel: np.ndarray) -> float:
    # Immerkaer (1996): fast noise variance estimation from a Laplacian mask.
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    resp = cv2.filter2D(channel.astype(np.float32), -1, k)
    h, w = channel.shape
    return float(np.sqrt(np.pi / 2) * np.abs(resp).sum() / (6.0 * (w - 2) * (h - 2))) + 1e-3


def fuse_channels(image: np.ndarray, *, method: str = "auto") -> np.ndarray:
    """Fuse an imbalanced or pseudo-coloured scan into one grayscale channel.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray
        Grayscale input is returned as uint8 unchanged.
    method : {"auto", "weighted", "jet"}, optional
        "weighted": each channel is standardised (median, inter-quartile range),
        polarity-aligned with the channel sum, and averaged with weights
        ``(1 - clipped fraction)**4 / noise variance``, so a saturated, boosted
        or noisy channel counts little. "jet": :func:`decode_colormap`. "auto"
        (default) picks "jet" when the colours lie closer to the jet colour map
        than to any straight line through colour space.

    Returns
    -------
    gray : (H, W) ndarray of uint8
    """
    check_image(image, channels="any")
    if method not in ("auto", "weighted", "jet"):
        raise ValueError(f"method must be 'auto', 'weighted' or 'jet', got {method!r}")
    img = to_uint8(image)
    if img.ndim == 2:
        return img
    if method == "auto":
        jet = _colormap_residual(img, cv2.COLORMAP_JET)
        method = "jet" if jet < _linear_residual(img) else "weighted"
    if method == "jet":
        return decode_colormap(img, colormap="jet")
    valid = (_brightest(img) > 10).astype(np.uint8)
    if cv2.countNonZero(valid) < 16:
        valid[:] = 1
    channels = cv2.split(img)
    # Polarity from a subsample: channels anti-correlated with the sum are inverted.
    sub = img[::4, ::4][valid[::4, ::4] > 0].astype(np.float32)
    total = sub.sum(axis=1)
    fused = np.zeros(img.shape[:2], np.float32)
    weight_sum = 0.0
    for c, ch in enumerate(channels):
        cum = np.cumsum(cv2.calcHist([ch], [0], valid, [256], [0, 256]).ravel())
        n = cum[-1]
        q1, med, q3 = (float(np.searchsorted(cum, q * n)) for q in (0.25, 0.5, 0.75))
        iqr = max(q3 - q1, 1.0)
        sign = -1.0 if np.corrcoef(sub[:, c], total)[0, 1] < 0 else 1.0
        clipped = float(cum[2] + (n - cum[249])) / n
        noise = _noise_sigma(ch) / iqr
        weight = (1.0 - clipped) ** 4 / noise**2
        # fused += weight * sign * (ch - med) / iqr
        cv2.scaleAdd(ch.astype(np.float32), weight * sign / iqr, fused, dst=fused)
        fused -= weight * sign * med / iqr
        weight_sum += weight
    fused /= max(weight_sum, 1e-12)
    mask = valid > 0
    out = percentile_stretch(fused, mask=mask)
    out[~mask] = 0
    return out


def _order_corners(pts: np.ndarray) -> np.ndarray:
    pts = pts.reshape(-1, 2).astype(np.float32)
    s, d = pts.sum(1), pts[:, 1] - pts[:, 0]
    return np.array(
        [pts[s.argmin()], pts[d.argmin()], pts[s.argmax()], pts[d.argmax()]], np.float32
    )


def _refine_corners(corners: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """Sub-pixel corners: fit a line to the outline points along each edge and
    intersect neighbouring lines."""
    # Densify the hull so every edge has points along its whole length.
    closed = np.vstack([outline, outline[:1]]).astype(np.float32)
    steps = [
        np.linspace(a, b, max(2, int(np.hypot(*(b - a)))), endpoint=False)
        for a, b in zip(closed[:-1], closed[1:], strict=True)
    ]
    pts = np.vstack(steps)
    lines = []
    for i in range(4):
        a, b = corners[i], corners[(i + 1) % 4]
        ab = b - a
        length = float(np.hypot(*ab))
        if length < 8:
            return corners
        t = (pts - a) @ ab / length**2
        rel = pts - a
        dist = np.abs(ab[0] * rel[:, 1] - ab[1] * rel[:, 0]) / length
        sel = pts[(t > 0.15) & (t < 0.85) & (dist < 4)]
        if len(sel) < 8:
            return corners
        vx, vy, x0, y0 = cv2.fitLine(sel, cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        lines.append((np.array([x0, y0]), np.array([vx, vy])))
    refined = []
    for i in range(4):
        (p1, d1), (p2, d2) = lines[i - 1], lines[i]
        det = d1[0] * (-d2[1]) - d1[1] * (-d2[0])
        if abs(det) < 1e-6:
            return corners
        t = ((p2 - p1)[0] * (-d2[1]) - (p2 - p1)[1] * (-d2[0])) / det
        refined.append(p1 + t * d1)
    refined = np.asarray(refined, np.float32)
    if np.abs(refined - corners).max() > 10:
        return corners
    return refined


def frame_corners(image: np.ndarray, *, black_level: int = 10) -> np.ndarray | None:
    """Find the corners of a scan frame that was warped inside black margins.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray
    black_level : int, optional
        Pixels at or below this (uint8 scale, after a 5x5 median) are margin.

    Returns
    -------
    corners : (4, 2) ndarray of float32 or None
        Top-left, top-right, bottom-right, bottom-left (x, y); None when the
        scan fills its frame (no margin to remove).
    """
    img = to_uint8(check_image(image, channels="any"))
    gray = cv2.medianBlur(_brightest(img), 5)
    h, w = gray.shape
    content = (gray > black_level).astype(np.uint8)
    content = cv2.morphologyEx(content, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    contours, _ = cv2.findContours(content, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    area = cv2.contourArea(hull)
    if not 0.3 * h * w <= area <= 0.985 * h * w:
        return None
    quad = cv2.approxPolyDP(hull, 0.02 * cv2.arcLength(hull, True), True)
    if len(quad) != 4:
        quad = cv2.boxPoints(cv2.minAreaRect(hull))
    corners = _refine_corners(_order_corners(quad), hull.reshape(-1, 2))
    outside = np.ones((h, w), np.uint8)
    cv2.fillConvexPoly(outside, corners.astype(np.int32), 0)
    # A warped frame leaves black margin along all four image borders; a scan
    # with a dark band of its own (a collimator edge) does not.
    borders = (outside[0], outside[-1], outside[:, 0], outside[:, -1])
    if sum(float(b.mean()) > 0.05 for b in borders) < 4:
        return None
    # ... and that margin is black in the image itself, not only in the
    # fitted quadrilateral (a letterbox on two sides fits a skewed quad).
    black = content == 0
    if min(float(b.mean()) for b in (black[0], black[-1], black[:, 0], black[:, -1])) < 0.02:
        return None
    if gray[outside > 0].mean() > 2 * black_level:
        return None
    # The hull's corners are good to ~1 pixel; lines fitted to the whole
    # length of each edge halve that (SSIM after de-warping: +0.005-0.008).
    # They are kept only when they confirm the hull.
    lines = _edge_line_corners(content)
    if lines is not None and np.abs(lines - corners).max() < 3.0:
        return lines
    return corners


def _edge_line_corners(content: np.ndarray) -> np.ndarray | None:
    """Corners of a frame inside a margin: the intersections of four edge lines.

    Each image side sees one frame edge: the first content pixel of each row
    (column) from that side, fitted by :func:`_straight_line`. None unless
    every edge is seen along at least a quarter of its side.
    """
    h, w = content.shape
    lines = {}  # side -> (point, direction), image x, y
    for side in ("top", "right", "bottom", "left"):
        mask = content if side in ("left", "right") else np.ascontiguousarray(content.T)
        view = mask[:, ::-1] if side in ("right", "bottom") else mask
        n, m = view.shape
        first = np.argmax(view, axis=1).astype(np.float64)
        seen = np.flatnonzero(view.any(axis=1) & (first > 0) & (first < m / 3))
        fit = _straight_line(seen, first[seen]) if len(seen) >= 0.25 * n else None
        if fit is None or np.ptp(seen[fit[2]]) < 0.25 * n:
            return None
        slope, icept = fit[0], fit[1]
        lines[side] = {
            "left": ((icept, 0.0), (slope, 1.0)),  # x = slope * y + icept
            "right": ((w - 1 - icept, 0.0), (-slope, 1.0)),
            "top": ((0.0, icept), (1.0, slope)),  # y = slope * x + icept
            "bottom": ((0.0, h - 1 - icept), (1.0, -slope)),
        }[side]
    corners = []
    for a, b in (("top", "left"), ("top", "right"), ("bottom", "right"), ("bottom", "left")):
        (p1, d1), (p2, d2) = lines[a], lines[b]
        # p1 + along * d1 == p2 + u * d2
        system = np.array([[d1[0], -d2[0]], [d1[1], -d2[1]]])
        if abs(np.linalg.det(system)) < 1e-6:
            return None
        along, _ = np.linalg.solve(system, np.subtract(p2, p1))
        corners.append((p1[0] + along * d1[0], p1[1] + along * d1[1]))
    return np.asarray(corners, np.float32)


#: Defaults of :func:`estimate_skew`, shared with :func:`restore_scan`.
_SKEW_BLACK, _SKEW_MAX, _SKEW_MIN = 2, 15.0, 0.3


def estimate_skew(
    image: np.ndarray,
    *,
    black_level: int = _SKEW_BLACK,
    max_angle: float = _SKEW_MAX,
    min_angle: float = _SKEW_MIN,
) -> float:
    """Rotation of the scan in degrees (positive: counter-clockwise), 0 if none.

    Two kinds of evidence, tried in order:

    1. a whole frame inside a black margin (:func:`frame_corners`): the mean
       angle of its top and bottom edges;
    2. a frame whose corners left the image (a scan rotated at the same size):
       black wedges fill the image corners, and the hypotenuse of each wedge is
       a straight piece of the frame's edge. Each straight run of the content's
       outline is fitted with a line; the angle is accepted only when at least
       two runs agree, which a body outline or a collimator edge does not do.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray
    black_level : int, optional
        Pixels at or below this (uint8 scale, after a 5x5 median) are outside
        the frame.
    max_angle, min_angle : float, optional
        Angles outside ``min_angle..max_angle`` in magnitude are reported as 0:
        a straight letterbox edge is not a rotation, and chest films are not
        taken at more than a few degrees.

    Returns
    -------
    angle : float
    """
    corners = frame_corners(image)
    if corners is not None:
        tl, tr, br, bl = corners
        top = np.degrees(np.arctan2(tl[1] - tr[1], tr[0] - tl[0]))
        bottom = np.degrees(np.arctan2(bl[1] - br[1], br[0] - bl[0]))
        return float((top + bottom) / 2)
    img = to_uint8(check_image(image, channels="any"))
    return _wedge_skew(img, black_level, max_angle, min_angle)


def _wedge_skew(img: np.ndarray, black_level: int, max_angle: float, min_angle: float) -> float:
    content = (cv2.medianBlur(_brightest(img), 5) > black_level).view(np.uint8)
    angle = _wedge_angle(content, max_angle=max_angle)
    return angle if abs(angle) >= min_angle else 0.0


def _wedge_angle(content: np.ndarray, *, max_angle: float) -> float:
    """Frame rotation from straight runs of the content's outline seen from
    each image side; 0 unless two or more runs agree within 0.5 degrees."""
    h, w = content.shape
    estimates = []  # (angle, weight)
    # From the left and right the outline is x(y); its slope dx/dy is tan(angle).
    # From the top and bottom it is y(x), whose slope dy/dx is -tan(angle).
    # Rows of a C-contiguous copy: argmax along a transposed view is ~5x slower.
    for mask, sign in ((content, 1.0), (np.ascontiguousarray(content.T), -1.0)):
        n, m = mask.shape
        has = mask.any(axis=1)
        for flipped in (False, True):
            view = mask[:, ::-1] if flipped else mask
            first = np.argmax(view, axis=1).astype(np.float64)
            # A wedge: content starts inside the image, in the outer quarter.
            inside = has & (first > 0) & (first < m / 4)
            for start, stop in _runs(inside, min_length=max(16, n // 40)):
                fit = _straight_line(np.arange(start, stop), first[start:stop])
                # A run must lie mostly on its line.
                if fit is None or fit[2].sum() < 0.5 * (stop - start):
                    continue
                slope, length = fit[0], int(fit[2].sum())
                angle = sign * np.degrees(np.arctan(-slope if flipped else slope))
                # Near a corner the neighbouring edge is seen end-on, at ~90 degrees.
                if abs(angle) <= max_angle and length >= max(16, n // 40):
                    estimates.append((angle, length))
    if len(estimates) < 2:
        return 0.0
    angles = np.array([a for a, _ in estimates])
    weights = np.array([wt for _, wt in estimates], np.float64)
    # Each estimate's support: the weight of the estimates within 0.2 degrees.
    close = np.abs(angles[:, None] - angles[None, :]) < 0.2
    support = close @ weights
    best = int(np.argmax(support))
    agree = close[best]
    if agree.sum() < 2:
        return 0.0
    return float(np.average(angles[agree], weights=weights[agree]))


def _straight_line(t: np.ndarray, x: np.ndarray) -> tuple[float, float, np.ndarray] | None:
    """Slope, intercept and inlier mask of the straight part of an outline ``x(t)``.

    Seen from outside, the frame edge is where content starts; dark anatomy
    next to the edge only ever makes content start *later*. So the fit is
    pulled down to the lower envelope: points more than a pixel beyond the
    line are dropped and the line refitted.
    """
    t = t.astype(np.float64)
    keep = np.ones(len(t), bool)
    for attempt in range(4):
        if keep.sum() < 8:
            return None
        slope, icept = np.polyfit(t[keep], x[keep], 1)
        resid = x - (slope * t + icept)
        keep = (resid < (1.0 if attempt else max(1.0, float(np.median(resid))))) & (resid > -3.0)
    if keep.sum() < 8:
        return None
    return float(slope), float(icept), keep


def _runs(flags: np.ndarray, *, min_length: int) -> list[tuple[int, int]]:
    """(start, stop) of each run of True at least ``min_length`` long."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_length]


def dewarp(
    image: np.ndarray, *, corners: np.ndarray | None = None, interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """Map a warped, rotated scan frame back onto the full image rectangle.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray
    corners : (4, 2) array, optional
        From :func:`frame_corners` (computed when omitted).
    interpolation : int, optional
        OpenCV interpolation flag; use ``cv2.INTER_NEAREST`` for masks.

    Returns
    -------
    image : ndarray, same shape and dtype; unchanged when no frame is found.
    """
    check_image(image, channels="any")
    if corners is None:
        corners = frame_corners(image)
        if corners is None:
            return image.copy()
    h, w = image.shape[:2]
    target = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    matrix = cv2.getPerspectiveTransform(np.asarray(corners, np.float32), target)
    return cv2.warpPerspective(
        image, matrix, (w, h), flags=interpolation, borderMode=cv2.BORDER_REPLICATE
    )


def rotate_scan(image: np.ndarray, *, angle: float = 5.0) -> np.ndarray:
    """Rotate a scan about its centre by ``angle`` degrees counter-clockwise, same
    size, borders replicated (scikit-image's ``transform.rotate`` takes the angle
    positionally and returns floats: another contract, another name).

    Notes
    -----
    Seed 000 rotates every scan by a fixed 5 degrees; :func:`dewarp` measures
    the frame instead.
    """
    check_image(image, channels="any")
    if not np.isfinite(angle):
        raise ValueError(f"angle must be finite, got {angle!r}")
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angle), 1.0)
    return cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


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
    gray = cv2.medianBlur(_brightest(img), 5)
    h, w = gray.shape
    # Shape analysis at ~256 pixels across: a hole of the smallest accepted
    # area is still ~8 pixels wide there, and the opening costs ~0.2 ms.
    step = max(1, round(max(h, w) / 256))
    dark = (gray <= black_level).astype(np.uint8)
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
    mask = np.zeros((h, w), np.uint8)
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
        # Back at full size: the hole is the pure black pixels within the
        # blob's disc (plus a pixel of slack), so its own outline decides.
        cx, cy = (x + ccx + 0.5) * step - 0.5, (y + ccy + 0.5) * step - 0.5
        r_full = (radius + 1.0) * step + 1.0
        disc = np.zeros((h, w), np.uint8)
        cv2.circle(disc, (int(round(cx)), int(round(cy))), int(np.ceil(r_full)), 1, -1)
        points = cv2.findNonZero(disc & dark)
        if points is not None:  # convex hull: bright specks inside the hole are filled too
            cv2.fillConvexPoly(mask, cv2.convexHull(points), 1)
    if margin > 0 and mask.any():
        mask = cv2.dilate(
            mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
        )
    return mask.astype(bool)


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
        Navier-Stokes (default, as seed 000's ``cv2.INPAINT_NS``) or Telea.
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


def restore_scan(image: np.ndarray, *, inpaint_method: str = "telea") -> np.ndarray:
    """Best-effort restoration of a damaged scan into a clean grayscale radiograph.

    Each kind of damage is detected, and only damage that is found is repaired:

    1. impulse noise (more than 1% of the centre changed by a 3x3 median by
       over 80 levels): 5x5 median; other colour inputs get a 3x3 median;
    2. black holes (:func:`circle_mask`, by shape on the brightest channel);
    3. colour (channels differ): pseudo-colour decoding or noise-weighted
       fusion (:func:`fuse_channels`), then the holes are inpainted;
    4. geometry: a whole frame inside a black margin is de-warped
       (:func:`dewarp`); otherwise a rotation measured from the visible frame
       edges (:func:`estimate_skew`) is undone;
    5. a 0.1-99.9 percentile stretch (:func:`~xraycore.image.exposure.percentile_stretch`),
       for fused colour only (a grayscale input keeps its own grey levels).

    A clean grayscale scan (no noise, hole, margin or rotation found) is
    returned unchanged.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray
    inpaint_method : {"telea", "ns"}, optional

    Returns
    -------
    scan : (H, W) ndarray of uint8
    """
    img = to_uint8(check_image(image, channels="any"))
    if img.ndim == 3 and channels_equal(img):
        img = np.ascontiguousarray(img[:, :, 0])
    colour = img.ndim == 3
    if _impulse_fraction(img) > 0.01:
        img = denoise_median(img, ksize=5)
    elif colour:
        img = denoise_median(img, ksize=3)
    # Holes and the frame are found on the colour image: its dark content is
    # still tinted (boosted green, dark-blue jet) while holes and margins are
    # black in every channel.
    holes = circle_mask(img)
    corners = frame_corners(img)
    angle = 0.0 if corners is not None else _wedge_skew(img, _SKEW_BLACK, _SKEW_MAX, _SKEW_MIN)
    gray = fuse_channels(img) if colour else img
    if holes.any():
        gray = inpaint(gray, holes, method=inpaint_method, radius=5.0)
    if corners is not None:
        gray = dewarp(gray, corners=corners)
    elif angle != 0.0:
        gray = rotate_scan(gray, angle=-angle)
    if colour:
        gray = percentile_stretch(gray, low=0.1, high=99.9)
    # A clean uint8 scan went through untouched: never hand back the caller's array.
    return gray.copy() if gray is image else gray


def _brightest(img: np.ndarray) -> np.ndarray:
    """Per-pixel maximum over channels (cv2 is ~10x faster than ndarray.max)."""
    if img.ndim == 2:
        return img
    b, g, r = cv2.split(img)
    return cv2.max(cv2.max(b, g), r)


def _impulse_fraction(img: np.ndarray) -> float:
    # The central quarter is enough to tell noisy from clean.
    h, w = img.shape[:2]
    crop = np.ascontiguousarray(img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4])
    diff = _brightest(cv2.absdiff(crop, cv2.medianBlur(crop, 3)))
    return float(cv2.countNonZero((diff > 80).astype(np.uint8))) / diff.size
