"""Geometric damage: a frame warped inside black margins, or rotated at the same
size with its corners cut off.

:func:`frame_corners` finds a whole frame inside a margin and :func:`dewarp` maps
it back onto the image; :func:`estimate_skew` measures a rotation (from the
frame, or from the black wedges a rotation at the same size leaves in the image
corners) and :func:`rotate_scan` undoes it.
"""

from __future__ import annotations

import cv2
import numpy as np

from xraycore._validate import check_image, to_uint8
from xraycore.image.restore._colour import brightest_channel

__all__ = ["dewarp", "estimate_skew", "frame_corners", "rotate_scan", "wedge_skew"]


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
    gray = cv2.medianBlur(brightest_channel(img), 5)
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


#: Defaults of :func:`estimate_skew`, shared with :func:`wedge_skew` (and so with
#: :func:`~xraycore.image.restore.restore_scan`).
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
    return wedge_skew(img, black_level=black_level, max_angle=max_angle, min_angle=min_angle)


def wedge_skew(
    img: np.ndarray,
    *,
    black_level: int = _SKEW_BLACK,
    max_angle: float = _SKEW_MAX,
    min_angle: float = _SKEW_MIN,
) -> float:
    """:func:`estimate_skew`'s second kind of evidence alone: the rotation of a
    frame whose corners left the image, from the black wedges in its corners.

    For a caller that has already looked for a whole frame
    (:func:`frame_corners`) and found none, as :func:`~xraycore.image.restore.restore_scan` has.

    Parameters
    ----------
    img : (H, W) or (H, W, 3) ndarray of uint8
        Already checked and converted (``to_uint8``).
    black_level, max_angle, min_angle
        As :func:`estimate_skew` takes them.

    Returns
    -------
    angle : float
        Degrees, positive counter-clockwise; 0 when no two wedges agree or
        the angle is outside ``min_angle..max_angle``.
    """
    content = (cv2.medianBlur(brightest_channel(img), 5) > black_level).view(np.uint8)
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
