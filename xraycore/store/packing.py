"""How each array of a store is stored: its dtype, its shape, and the linear
packing of the float32 edge maps.

- ``preprocessed`` (uint8), ``canny`` and ``mask`` (bool) and ``histogram``
  (int64) are stored exactly as :func:`xraycore.image.pipeline.run_pipeline` returns
  them.
- The float32 edge maps are *packed* to integers with a fixed linear encoding
  recorded in the array's attributes the way CF conventions (and xarray) spell
  it: ``physical = stored * scale_factor + add_offset``. The range covered is
  the filter's exact bound for 8-bit input, so nothing ever clips:

  ==================== ======= ================ ============== ================
  array                stored  scale_factor     add_offset     max abs error
  ==================== ======= ================ ============== ================
  log                  uint16  1/4              -bound (~-180) 1/8
  gradient_magnitude   uint8   bound/255 (~0.2) 0              ~0.1
  sobel                uint8   1                0              1/2 (of 0..255)
  ==================== ======= ================ ============== ================

  (for the default sigmas). 8 bits are not enough for the LoG: its exact bound
  (+-180) is 2-3x the range a real scan reaches (+-40..80), so an 8-bit step
  would be 0.5-0.8% of a real map's range; 16 bits at a step of 1/4 keep the
  error at 0.1-0.3% of it. For the gradient magnitude (bound 51, real scans
  28-48) 8 bits keep it under 0.4%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xraycore.image.edges import gradient_magnitude_bound, laplace_bound

if TYPE_CHECKING:
    from xraycore.image.pipeline import PipelineSpec

__all__ = ["ArraySpec", "array_specs"]

# (stored dtype, step) of each packed map; the range comes from the filter
# bound, and a step of None spreads that bound over the dtype's codes.
_PACKED = {
    "log": ("uint16", 0.25),
    "gradient_magnitude": ("uint8", None),
    "sobel": ("uint8", 1.0),
}
_EXACT = {"preprocessed": "uint8", "canny": "bool", "mask": "bool", "histogram": "int64"}


@dataclass(frozen=True)
class ArraySpec:
    """How one output is stored.

    Attributes
    ----------
    name : str
    dtype : str
        Stored dtype.
    shape : tuple of int
        Shape of one row (one image): ``(S, S)`` or ``(256,)``.
    scale_factor, add_offset : float or None
        For packed maps, ``physical = stored * scale_factor + add_offset``;
        None for arrays stored exactly.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    scale_factor: float | None = None
    add_offset: float | None = None

    @property
    def packed(self) -> bool:
        return self.scale_factor is not None

    @property
    def fill_value(self) -> Any:
        """The stored value of an unwritten (or failed) row: physical zero."""
        if self.dtype == "bool":
            return False
        if self.packed:
            return int(round(-self.add_offset / self.scale_factor))
        return 0

    @property
    def max_error(self) -> float:
        """Largest absolute difference between a decoded value and the float32 input."""
        return self.scale_factor / 2 if self.packed else 0.0

    def attributes(self) -> dict[str, Any]:
        if not self.packed:
            return {"encoding": "exact"}
        return {
            "encoding": "linear",
            "scale_factor": self.scale_factor,
            "add_offset": self.add_offset,
            "physical_dtype": "float32",
            "max_abs_error": self.max_error,
        }

    def pack(self, values: np.ndarray, out: np.ndarray) -> None:
        """Write ``values`` (float32, physical) into ``out`` in the stored dtype.

        Rounds to nearest and saturates (the range is the filter's exact bound,
        so saturation never happens for 8-bit input).
        """
        if not self.packed:
            out[...] = values
            return
        import cv2

        inv = 1.0 / self.scale_factor
        if self.dtype == "uint8" and self.add_offset == 0:
            # Magnitudes (>= 0): one pass, and the absolute value it takes is a no-op.
            cv2.convertScaleAbs(values, dst=out, alpha=inv)
        else:
            depth = cv2.CV_16U if self.dtype == "uint16" else cv2.CV_8U
            cv2.addWeighted(values, inv, values, 0.0, -self.add_offset * inv, dst=out, dtype=depth)

    def unpack(self, stored: np.ndarray) -> np.ndarray:
        """Physical values (float32) of stored ones; exact arrays are returned as they are."""
        if not self.packed:
            return stored
        out = stored.astype(np.float32)
        out *= np.float32(self.scale_factor)
        out += np.float32(self.add_offset)
        return out

    @classmethod
    def from_attributes(cls, name: str, dtype: str, shape, attrs: dict[str, Any]) -> ArraySpec:
        if attrs.get("encoding") == "linear":
            return cls(name, dtype, tuple(shape), attrs["scale_factor"], attrs["add_offset"])
        return cls(name, dtype, tuple(shape))


def array_specs(spec: PipelineSpec) -> list[ArraySpec]:
    """The arrays a run of ``spec`` stores: ``preprocessed`` and each of ``spec.outputs``."""
    s = spec.size
    out = [ArraySpec("preprocessed", "uint8", (s, s))]
    for name in spec.outputs:
        if name == "histogram":
            out.append(ArraySpec(name, "int64", (256,)))
        elif name in _EXACT:
            out.append(ArraySpec(name, _EXACT[name], (s, s)))
        else:
            dtype, step = _PACKED[name]
            if name == "log":
                bound = laplace_bound(spec.params["log"]["sigma"])
                offset = -math.ceil(bound / step + 1) * step
                top = -offset + bound
            elif name == "gradient_magnitude":
                # 0.1% over the bound sampled at 1441 angles: the true maximum
                # may lie between two samples.
                bound = gradient_magnitude_bound(spec.params["gradient_magnitude"]["sigma"])
                offset, top = 0.0, 1.001 * bound
            else:  # sobel is scaled to 0..255 by definition
                offset, top = 0.0, 255.0
            if step is None:
                step = (top - offset) / np.iinfo(dtype).max
            codes = math.ceil((top - offset) / step)
            if codes > np.iinfo(dtype).max:
                raise ValueError(f"{name}: range {offset}..{top} does not fit {dtype} at {step}")
            out.append(ArraySpec(name, dtype, (s, s), float(step), float(offset)))
    return out
