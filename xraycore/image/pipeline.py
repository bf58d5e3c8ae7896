"""A declarative pipeline spec, its provenance hash, and the per-scan runner.

``run_pipeline(image, spec)`` is everything one scan goes through; flows and
tasks call it and nothing else, so a notebook gets bit-identical results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from xraycore._validate import check_image, check_int, to_uint8
from xraycore.image import edges, exposure, measure, restore

__all__ = [
    "ENHANCE_STEPS",
    "OUTPUTS",
    "PIPELINE_VERSION",
    "PipelineSpec",
    "fit_to_size",
    "run_pipeline",
]

#: Bump when an operation changes its numbers, so old stores are recognised as stale.
PIPELINE_VERSION = 3

OUTPUTS = ("log", "gradient_magnitude", "sobel", "canny", "mask", "histogram")
ENHANCE_STEPS = ("white_balance", "clahe", "equalize", "contrast")


def _default_params() -> dict[str, dict[str, Any]]:
    # Every default from a cited source (CONTRIBUTING.md): the NumPy X-ray tutorial
    # for the filters, the transfer-learning recipe for white balance and CLAHE,
    # the damaged-scan restoration notes for contrast and inpainting.
    return {
        "log": {"sigma": 1.0},
        "gradient_magnitude": {"sigma": 2.0},
        "canny": {"sigma": 1.0, "low_threshold": 20.0, "high_threshold": 50.0},
        "mask": {"threshold": 150},
        "white_balance": {"tail": 0.0005},
        "clahe": {"clip_limit": 2.0, "tile_grid": [8, 8]},
        "contrast": {"alpha": 1.2, "beta": 0.0},
        "restore": {"inpaint_method": "telea"},
    }


@dataclass(frozen=True)
class PipelineSpec:
    """What happens to every scan of a run.

    Attributes
    ----------
    size : int
        Output height and width S. Default 1024 (ChestX-ray8's size).
    fit : {"letterbox", "resize"}
        How other sizes reach S x S: keep the aspect ratio and pad with black
        (default), or stretch.
    restore : {"auto", "always", "never"}
        Run :func:`xraycore.image.restore.restore_scan`: "auto" (default) for colour
        inputs only (damaged, pseudo-coloured scans); grayscale scans are taken
        as they are.
    enhance : tuple of str
        Contrast steps applied, in order, to make ``preprocessed``. Default
        ("white_balance", "clahe"), the transfer-learning recipe's enhancement.
    outputs : tuple of str
        Edge outputs to compute, from :data:`OUTPUTS`. They are computed on the
        restored scan before enhancement, as the tutorial computes them on the
        original.
    params : dict
        Per-step keyword arguments, merged over the defaults of the cited sources (CONTRIBUTING.md).
    """

    size: int = 1024
    fit: str = "letterbox"
    restore: str = "auto"
    enhance: tuple[str, ...] = ("white_balance", "clahe")
    outputs: tuple[str, ...] = OUTPUTS
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int(self.size, "size", minimum=16)
        if self.fit not in ("letterbox", "resize"):
            raise ValueError(f"fit must be 'letterbox' or 'resize', got {self.fit!r}")
        if self.restore not in ("auto", "always", "never"):
            raise ValueError(f"restore must be 'auto', 'always' or 'never', got {self.restore!r}")
        object.__setattr__(self, "enhance", tuple(self.enhance))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        for step in self.enhance:
            if step not in ENHANCE_STEPS:
                raise ValueError(f"enhance step must be one of {ENHANCE_STEPS}, got {step!r}")
        for out in self.outputs:
            if out not in OUTPUTS:
                raise ValueError(f"output must be one of {OUTPUTS}, got {out!r}")
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"outputs has duplicates: {self.outputs!r}")
        defaults = _default_params()
        if not isinstance(self.params, dict):
            raise ValueError(f"params must be a dict, got {type(self.params).__name__}")
        merged = {}
        for step, kwargs in self.params.items():
            if step not in defaults:
                raise ValueError(f"params has unknown step {step!r}; known: {sorted(defaults)}")
            unknown = set(kwargs) - set(defaults[step])
            if unknown:
                raise ValueError(f"params[{step!r}] has unknown keys {sorted(unknown)}")
        for step, kwargs in defaults.items():
            merged[step] = {**kwargs, **self.params.get(step, {})}
        object.__setattr__(self, "params", merged)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["enhance"] = list(self.enhance)
        d["outputs"] = list(self.outputs)
        return d

    @property
    def hash(self) -> str:
        """Stable 16-hex-digit digest of the spec and :data:`PIPELINE_VERSION`."""
        canonical = json.dumps(
            {"version": PIPELINE_VERSION, **self.to_dict()},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"pipeline spec has unknown keys {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> PipelineSpec:
        """Read a spec from a ``.json`` or ``.toml`` file."""
        path = Path(path)
        text = path.read_text()
        try:
            d = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: not a valid pipeline spec ({exc})") from exc
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a pipeline spec must be a mapping")
        return cls.from_dict(d)

    @classmethod
    def load(
        cls, pipeline: str | Path | dict[str, Any] | None = None, *, size: int | None = None
    ) -> PipelineSpec:
        """The spec of a run: a file (``.json``/``.toml``), a mapping or the
        defaults (None), with ``size`` on top when given.

        Parameters
        ----------
        pipeline : str, Path, dict or None
        size : int, optional
            Output size S, replacing the spec's.

        Returns
        -------
        spec : PipelineSpec
        """
        if isinstance(pipeline, dict):
            base = dict(pipeline)
        elif pipeline:
            base = cls.from_file(pipeline).to_dict()
        else:
            base = {}
        if size is not None:
            base["size"] = size
        return cls.from_dict(base)


def fit_to_size(image: np.ndarray, size: int, *, fit: str = "letterbox") -> np.ndarray:
    """Bring a 2-D image to ``size`` x ``size`` by letterboxing (black padding,
    centred, aspect kept) or resizing; area interpolation when shrinking."""
    check_image(image)
    h, w = image.shape
    if (h, w) == (size, size):
        return image
    if fit == "resize":
        interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
        return cv2.resize(image, (size, size), interpolation=interp)
    if fit != "letterbox":
        raise ValueError(f"fit must be 'letterbox' or 'resize', got {fit!r}")
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((size, size), image.dtype)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = scaled
    return out


def run_pipeline(image: np.ndarray, spec: PipelineSpec | None = None) -> dict[str, np.ndarray]:
    """Run one decoded scan through the pipeline.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray
        As returned by :func:`xraycore.image.decode.decode_image`.
    spec : PipelineSpec, optional
        Default ``PipelineSpec()``.

    Returns
    -------
    outputs : dict
        ``preprocessed`` (S, S) uint8 and each of ``spec.outputs``: ``log``,
        ``gradient_magnitude``, ``sobel`` (float32), ``canny``, ``mask`` (bool),
        ``histogram`` (256,) int64.
    """
    spec = spec or PipelineSpec()
    check_image(image, channels="any")
    p = spec.params
    colour = image.ndim == 3
    if spec.restore == "always" or (spec.restore == "auto" and colour):
        scan = restore.restore_scan(image, **p["restore"])
    elif colour:
        scan = cv2.cvtColor(to_uint8(image), cv2.COLOR_BGR2GRAY)
    else:
        scan = to_uint8(image)
    scan = fit_to_size(scan, spec.size, fit=spec.fit)

    out: dict[str, np.ndarray] = {}
    for name in spec.outputs:
        if name == "log":
            out[name] = edges.gaussian_laplace(scan, **p["log"])
        elif name == "gradient_magnitude":
            out[name] = edges.gaussian_gradient_magnitude(scan, **p["gradient_magnitude"])
        elif name == "sobel":
            out[name] = edges.sobel(scan)
        elif name == "canny":
            out[name] = edges.canny(scan, **p["canny"])
        elif name == "mask":
            out[name] = measure.threshold_mask(scan, **p["mask"])
        elif name == "histogram":
            out[name] = measure.histogram(scan)

    enhanced = scan
    for step in spec.enhance:
        if step == "white_balance":
            enhanced = exposure.white_balance(enhanced, **p["white_balance"])
        elif step == "clahe":
            kw = dict(p["clahe"], tile_grid=tuple(p["clahe"]["tile_grid"]))
            enhanced = exposure.clahe(enhanced, **kw)
        elif step == "equalize":
            enhanced = exposure.equalize_luma(enhanced)
        elif step == "contrast":
            enhanced = exposure.adjust_contrast(enhanced, **p["contrast"])
    out["preprocessed"] = enhanced
    return out
