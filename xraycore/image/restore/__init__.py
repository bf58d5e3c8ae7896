"""Restoration of damaged scans (the damaged-scan restoration notes, CONTRIBUTING.md).

Seed 000's damaged scans are pseudo-coloured (a jet-like colour map) or have a
brighter, noisier green channel, are warped off-axis inside black margins or
rotated with their corners cut off, salted with impulse noise and punched by a
black circle. Each step is a separate function; :func:`restore_scan` detects
which damage is present and runs only the steps it needs (docs/restoration.md).
Colour images are OpenCV BGR throughout. Contrast and exposure (white
balance, CLAHE, equalisation) are in :mod:`xraycore.image.exposure`.

One private module per kind of damage: colour and noise (:mod:`._colour`),
geometry (:mod:`._geometry`), holes (:mod:`._circles`), and the driver that
detects and repairs them (:mod:`._scan`).
"""

from xraycore.image.restore._circles import circle_mask, inpaint
from xraycore.image.restore._colour import (
    decode_colormap,
    denoise_median,
    fuse_channels,
    rebalance_channel,
)
from xraycore.image.restore._geometry import dewarp, estimate_skew, frame_corners, rotate_scan
from xraycore.image.restore._scan import restore_scan

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
