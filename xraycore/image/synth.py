"""Synthetic chest radiographs and a damage simulator, for tests with ground truth.

The damage mimics the damaged-scan restoration notes: a perspective warp with black margins or a
rotation whose corners leave the frame, a boosted (and clipping) green channel
or a jet pseudo-colour rendering, impulse noise and a black circle.
:data:`DAMAGE_FAMILIES` names the combinations the tests measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from xraycore._validate import check_image, check_int

__all__ = [
    "DAMAGE_FAMILIES",
    "SYNTHETIC_FINDINGS",
    "Damage",
    "damage_scan",
    "phantom_chest",
    "synthetic_findings",
]


#: The findings :func:`phantom_chest` can plant, each of another kind: a small
#: dense spot, a diffuse band, an enlarged shape.
SYNTHETIC_FINDINGS = ("nodule", "basal_opacity", "cardiomegaly")


def phantom_chest(
    size: int = 512,
    *,
    seed: int | None = 0,
    opacity: bool = False,
    marker: bool = True,
    findings: tuple[str, ...] = (),
) -> np.ndarray:
    """A left-right and up-down asymmetric phantom of a PA chest radiograph.

    Parameters
    ----------
    size : int, optional
        Height and width in pixels. Default 512.
    seed : int, optional
        Seeds the anatomy jitter and the film texture.
    opacity : bool, optional
        Add a bright consolidation in the right lung (image left), a learnable
        "pneumonia" signal.
    marker : bool, optional
        Put a bright "L"-shaped marker in the top-left corner, so that flips and
        rotations are detectable.
    findings : tuple of str, optional
        Of :data:`SYNTHETIC_FINDINGS`: a small dense nodule somewhere in either
        lung, an opacity over both lung bases, a heart shadow half as wide again.

    Returns
    -------
    scan : (size, size) ndarray of uint8
        Body bright, lungs dark, spine and ribs bright; heart on the image right.
    """
    check_int(size, "size", minimum=32)
    unknown = sorted(set(findings) - set(SYNTHETIC_FINDINGS))
    if unknown:
        raise ValueError(f"unknown findings {unknown}; known: {list(SYNTHETIC_FINDINGS)}")
    rng = np.random.default_rng(seed)
    s = size / 512.0
    img = np.full((size, size), 18, np.float32)

    def ell(cx, cy, ax, ay, value, angle=0.0):
        cv2.ellipse(
            img,
            (int(cx * s), int(cy * s)),
            (int(ax * s), int(ay * s)),
            angle,
            0,
            360,
            float(value),
            -1,
            cv2.LINE_AA,
        )

    j = rng.uniform(-8, 8, size=8)
    ell(256, 300, 220 + j[0], 250, 170)  # body
    ell(170 + j[1], 250, 72, 150 + j[2], 60, 8)  # right lung (image left)
    ell(345 + j[3], 250, 68, 140 + j[4], 60, -8)  # left lung (image right)
    heart = 1.5 if "cardiomegaly" in findings else 1.0
    ell(300 + j[5] - 20 * (heart - 1), 340, 70 * heart, 60 * (1 + (heart - 1) / 2), 150)  # heart
    cv2.rectangle(img, (int(240 * s), int(60 * s)), (int(272 * s), int(500 * s)), 210, -1)
    _ribs(img, s, j[6])
    if opacity:
        ell(165 + j[7], 280, 38, 48, 140)
    if findings:
        _plant(ell, rng, findings)
    if marker:
        cv2.rectangle(img, (int(20 * s), int(20 * s)), (int(32 * s), int(70 * s)), 250, -1)
        cv2.rectangle(img, (int(20 * s), int(58 * s)), (int(55 * s), int(70 * s)), 250, -1)
    img = cv2.GaussianBlur(img, (0, 0), 2.0 * s + 0.5)
    texture = cv2.GaussianBlur(rng.normal(0, 1, img.shape).astype(np.float32), (0, 0), 1.5)
    img += 12.0 * texture / (texture.std() + 1e-6)
    return np.clip(img, 0, 255).astype(np.uint8)


def _ribs(img: np.ndarray, s: float, jitter: float) -> None:
    """Seven pairs of rib arcs on ``img``, ``s`` pixels per 512-pixel unit, shifted
    down by ``jitter``."""
    for k in range(7):
        y = (150 + 38 * k + jitter) * s
        for side in (-1, 1):
            cv2.ellipse(
                img,
                (int((256 + side * 20) * s), int(y)),
                (int(110 * s), int(22 * s)),
                0,
                180 if side < 0 else 270,
                270 if side < 0 else 360,
                150,
                max(1, int(6 * s)),
                cv2.LINE_AA,
            )


def _plant(ell, rng, findings) -> None:
    """Draw ``findings`` with ``ell`` (an ellipse in 512-pixel coordinates); the
    draws come after the anatomy's, so a phantom without findings is unchanged."""
    side, dx, dy = rng.integers(0, 2), rng.uniform(-30, 30), rng.uniform(-70, 50)
    if "basal_opacity" in findings:
        for cx in (170, 345):
            ell(cx, 355, 62, 34, 125)
    if "nodule" in findings:
        ell((170, 345)[side] + dx, 240 + dy, 24, 24, 235)


def synthetic_findings(
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    prevalence: float = 0.3,
    missing: float = 0.1,
    uncertain: float = 0.1,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, list]]:
    """Phantoms with known findings, and labels as a labeller gives them.

    Each finding of :data:`SYNTHETIC_FINDINGS` is planted independently with
    probability ``prevalence``; its label is then blank with probability
    ``missing``, -1 (uncertain) with probability ``uncertain``, else the truth.

    Returns
    -------
    scans : (n, size, size) ndarray of uint8
    truth : dict
        Finding -> (n,) bool: planted or not.
    labels : dict
        Finding -> list of 1, 0, -1 or None (what a labels file says).
    """
    rng = np.random.default_rng(seed)
    truth = {f: rng.random(n) < prevalence for f in SYNTHETIC_FINDINGS}
    scans = np.stack(
        [
            phantom_chest(
                size,
                seed=int(rng.integers(2**31)),
                findings=tuple(f for f in SYNTHETIC_FINDINGS if truth[f][i]),
            )
            for i in range(n)
        ]
    )
    labels = {}
    for f in SYNTHETIC_FINDINGS:
        u = rng.random(n)
        labels[f] = [
            None if u[i] < missing else -1 if u[i] < missing + uncertain else int(truth[f][i])
            for i in range(n)
        ]
    return scans, truth, labels


@dataclass(frozen=True)
class Damage:
    """Ground truth of :func:`damage_scan`: where the frame and the hole went."""

    corners: np.ndarray  # (4, 2) x, y of the scan's corners in the damaged image: tl, tr, br, bl
    circle: tuple[int, int, int]  # cx, cy, radius in the damaged image; radius 0: no hole
    angle: float  # degrees, counter-clockwise; 0 when the geometry is untouched


_COLOURS = ("green", "jet", "gray")
_GEOMETRIES = ("warp", "rotate", "none")
_CIRCLES = ("upper", "lung", "none")

#: Named damage families for tests and benchmarks: keyword arguments of
#: :func:`damage_scan`. "warp" and "jet" are the family of the real damaged
#: scans of the restoration notes; "rotate-crop" is the notes' own description (a gray scan,
#: green channel brighter and noisier, impulse noise, a hole anywhere in the
#: lung field, a rotation whose corners leave the frame); the rest isolate one
#: kind of damage each, or combine them differently.
DAMAGE_FAMILIES: dict[str, dict] = {
    "warp": {},
    "jet": {"colour": "jet"},
    "rotate-crop": {"geometry": "rotate", "circle": "lung", "green_noise": 20.0},
    "imbalance": {"geometry": "none", "circle": "none", "noise": 0.0, "green_noise": 20.0},
    "dark-circle": {"colour": "gray", "geometry": "none", "circle": "lung", "noise": 0.0},
    "rotation": {"colour": "gray", "geometry": "rotate", "circle": "none", "noise": 0.0},
    "impulse": {"colour": "gray", "geometry": "none", "circle": "none"},
    "jet-rotate": {"colour": "jet", "geometry": "rotate", "circle": "lung"},
}


def damage_scan(
    scan: np.ndarray,
    *,
    seed: int | None = 0,
    colour: str = "green",
    geometry: str = "warp",
    circle: str = "upper",
    angle: float | None = None,
    margin: float = 0.06,
    perspective: float = 0.02,
    noise: float = 0.04,
    green_gain: float = 1.5,
    green_bias: float = 30.0,
    green_noise: float = 0.0,
    circle_radius: float | None = None,
) -> tuple[np.ndarray, Damage]:
    """Damage a clean scan the way the damaged-scan restoration notes describe theirs.

    Parameters
    ----------
    scan : (H, W) ndarray of uint8
    seed : int, optional
    colour : {"green", "jet", "gray"}, optional
        "green" (default): the green channel becomes ``clip(gain * scan + bias
        + N(0, green_noise))`` and red 0.8x, blue is the scan. "jet": the
        scan rendered with OpenCV's jet colour map, as the real damaged scans.
        "gray": three equal channels.
    geometry : {"warp", "rotate", "none"}, optional
        "warp" (default): rotation plus perspective inside a black margin, the
        whole frame visible. "rotate": rotation about the centre at the same
        size, so the scan's corners leave the image and black wedges fill the
        image corners. "none": untouched.
    circle : {"upper", "lung", "none"}, optional
        Where the black hole goes: "upper" (default) the upper image-right
        lung, where the real damaged scans have it; "lung" anywhere in either
        lung field, over dark lung as often as not; "none": no hole.
    angle : float, optional
        Rotation in degrees; default uniform in +-(2..6).
    margin : float, optional
        Black margin around the warped frame, as a fraction of the size.
    perspective : float, optional
        Random corner displacement, as a fraction of the size.
    noise : float, optional
        Fraction of pixels hit by impulse noise, per channel.
    green_gain, green_bias, green_noise : float, optional
        Brightness, offset and Gaussian noise (sigma, grey levels) of the green
        channel for ``colour="green"``.
    circle_radius : float, optional
        Radius of the black hole as a fraction of the size; default 4-7%.

    Returns
    -------
    damaged : (H, W, 3) ndarray of uint8, BGR
    truth : Damage
    """
    _check_damage(scan, noise=noise, colour=colour, geometry=geometry, circle=circle)
    # One generator, drawn in this order (angle, corners, green noise, hole,
    # impulses): the order is part of what a seed means, so it must not change.
    rng = np.random.default_rng(seed)
    if angle is None:
        angle = float(rng.uniform(2, 6) * rng.choice([-1, 1]))
    if geometry == "none":
        angle = 0.0
    dst, warped, inside = _warp(
        scan, rng, geometry=geometry, angle=angle, margin=margin, perspective=perspective
    )
    damaged = _colourise(
        warped, inside, rng, colour=colour, gain=green_gain, bias=green_bias, sigma=green_noise
    )
    cx, cy, r = _punch_hole(damaged, rng, circle=circle, radius=circle_radius)
    _salt_and_pepper(damaged, rng, noise=noise)
    return damaged, Damage(corners=dst, circle=(cx, cy, r), angle=angle)


def _check_damage(scan: np.ndarray, *, noise: float, colour: str, geometry: str, circle: str):
    check_image(scan)
    if scan.dtype != np.uint8:
        raise ValueError(f"scan must be uint8, got {scan.dtype}")
    if not 0 <= noise < 1:
        raise ValueError(f"noise must be in [0, 1), got {noise!r}")
    for value, name, allowed in (
        (colour, "colour", _COLOURS),
        (geometry, "geometry", _GEOMETRIES),
        (circle, "circle", _CIRCLES),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _warp(
    scan: np.ndarray,
    rng: np.random.Generator,
    *,
    geometry: str,
    angle: float,
    margin: float,
    perspective: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame's corners in the damaged image, the warped scan, and the
    pixels inside the frame."""
    h, w = scan.shape
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    centre = np.array([(w - 1) / 2, (h - 1) / 2], np.float32)
    shrink = 1.0 - 2 * margin if geometry == "warp" else 1.0
    theta = np.radians(angle)
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]], np.float32)
    dst = (src - centre) * shrink @ rot.T + centre
    if geometry == "warp":
        dst += rng.uniform(-perspective, perspective, size=(4, 2)).astype(np.float32) * [w, h]
    matrix = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    warped = cv2.warpPerspective(
        scan, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    # Bilinear, not nearest: OpenCV's nearest-neighbour warp rounds in fixed
    # point and bends a long frame edge by most of a pixel.
    inside = (
        cv2.warpPerspective(np.full((h, w), 255, np.uint8), matrix, (w, h), flags=cv2.INTER_LINEAR)
        > 127
    )
    return dst, warped, inside


def _colourise(
    warped: np.ndarray,
    inside: np.ndarray,
    rng: np.random.Generator,
    *,
    colour: str,
    gain: float,
    bias: float,
    sigma: float,
) -> np.ndarray:
    """The warped scan as BGR: jet, three equal channels, or a boosted green."""
    if colour == "jet":
        damaged = cv2.applyColorMap(warped, cv2.COLORMAP_JET)
        damaged[~inside] = 0
        return damaged
    if colour == "gray":
        return cv2.merge([warped, warped, warped])
    base = warped.astype(np.float32)
    green = base * gain + bias * inside
    if sigma > 0:
        green += rng.normal(0.0, sigma, warped.shape).astype(np.float32) * inside
    bgr = np.stack([base, green, base * 0.8], axis=-1)
    return np.clip(bgr, 0, 255).astype(np.uint8)


def _punch_hole(
    damaged: np.ndarray, rng: np.random.Generator, *, circle: str, radius: float | None
) -> tuple[int, int, int]:
    """Draw the black hole into ``damaged``; its centre and radius (0: none)."""
    if circle == "none":
        return 0, 0, 0
    h, w = damaged.shape[:2]
    r = int((radius if radius is not None else rng.uniform(0.04, 0.07)) * w)
    if circle == "upper":
        cx = int(rng.uniform(0.55, 0.75) * w)
        cy = int(rng.uniform(0.2, 0.35) * h)
    else:  # either lung field of a PA chest film
        side = rng.choice([-1, 1])
        cx = int((0.5 + side * rng.uniform(0.12, 0.25)) * w)
        cy = int(rng.uniform(0.3, 0.65) * h)
    cv2.circle(damaged, (cx, cy), r, (0, 0, 0), -1, cv2.LINE_AA)
    return cx, cy, r


def _salt_and_pepper(damaged: np.ndarray, rng: np.random.Generator, *, noise: float) -> None:
    """Impulse noise in place: a ``noise`` fraction of each channel set to 0 or 255."""
    h, w = damaged.shape[:2]
    for c in range(3):
        hit = rng.random((h, w)) < noise
        salt = rng.random((h, w)) < 0.5
        damaged[:, :, c][hit & salt] = 255
        damaged[:, :, c][hit & ~salt] = 0
