"""xraycore: pure image operations and storage for chest X-ray pipelines.

No Prefect, no Dask: usable from a notebook, a DataLoader or a plain script.

- :mod:`xraycore.image`: image operations (decode, restore, exposure, edges, the pipeline).
- :mod:`xraycore.sources`: what goes into a store (listing sources, labels files,
  DICOM headers).
- :mod:`xraycore.store`: everything that knows the store's bytes (names and format,
  columns, packing, storage, durable writes, the Zarr layout and codec, tables,
  lease, verify).
- :mod:`xraycore.train`: the training loader, splits, the baseline and the CNN.
- :mod:`xraycore.predict`: model contracts, scoring, evaluation and reports.
- :mod:`xraycore.batch`: one batch job, from source files to committed rows.

The names a user types most are importable from here; each is imported on first use,
so ``import xraycore`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PipelineSpec": "xraycore.image.pipeline",
    "run_pipeline": "xraycore.image.pipeline",
    "read_image": "xraycore.sources.catalog",
    "ScanStore": "xraycore.store",
    "ScanLoader": "xraycore.train.loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xraycore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
