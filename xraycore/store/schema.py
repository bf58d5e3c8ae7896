"""What a store's files are called, and which format of store this version reads.

A store is ``STORE/images.zarr`` (Zarr v3, the pixels: :mod:`xraycore.store.packing`
says how each array is stored, :mod:`xraycore.store._codec` how it is compressed)
and ``STORE/metadata.delta`` and ``predictions.delta`` (Delta Lake tables, whose
columns are :mod:`xraycore.store.columns`). Format 4 is format 3 with the metadata
and predictions as Delta Lake tables, every commit a version; format 3 added the
``frame`` column, one row per frame of a multi-frame DICOM.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

__all__ = [
    "BATCH_SIZE",
    "CONFUSION",
    "FORMAT",
    "IMAGES",
    "LEASE",
    "LEGACY_TABLES",
    "METADATA",
    "PREDICTIONS",
    "REPORT",
    "ROC",
    "SHARD_SIZE",
    "SHEET",
    "TEMPORARY_SUFFIX",
    "StoreFormatError",
    "check_format",
    "is_temporary",
    "temporary_path",
]

#: Zarr v3 group of the pixel arrays.
IMAGES = "images.zarr"
#: Delta Lake table of one row per (source, frame); its versions are the store's.
METADATA = "metadata.delta"
#: Delta Lake table of one prediction per (image, model).
PREDICTIONS = "predictions.delta"
#: Format 3's metadata and predictions: directories of Parquet parts
#: (``xray upgrade`` reads them once and removes them).
LEGACY_TABLES = ("metadata.parquet", "predictions.parquet")
#: The key of format 3's predictions (one per image and model).
LEGACY_PREDICTION_KEY = ("image_id", "model_sha256")
#: The lease of the run writing the store (:mod:`xraycore.store.lease`).
LEASE = "_lease.json"
#: A comparison picture of a few rows of the last run.
SHEET = "sheet.png"
#: The classification report of the last scoring run, and its confusion matrix.
REPORT = "classification_report.json"
CONFUSION = "confusion_matrix.png"
#: The ROC curves of a multi-output model's report, one line per finding.
ROC = "roc_curves.png"

#: Every writer of a store (shards, the lease, pictures) writes
#: ``<target>.<random hex>.partial`` and renames it into place, so what a killed
#: writer leaves behind is found (``xray verify``) and removed (``--repair``,
#: and the run holding the lease) by this one suffix.
TEMPORARY_SUFFIX = ".partial"

#: A temporary file younger than this may be a live writer's (a classification
#: run writes predictions without the lease), so it is neither reported nor removed.
TEMPORARY_GRACE_S = 60.0


def temporary_path(target: str) -> str:
    """The temporary file a write of ``target`` goes through (unique per write)."""
    return f"{target}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}"


def is_temporary(path: str) -> bool:
    """True for a file that a writer had not yet renamed into place."""
    return posixpath.basename(path).endswith(TEMPORARY_SUFFIX)


#: Version of the on-disk layout. Bump on any change of names, dtypes or encodings.
FORMAT = 4

#: What each earlier format lacks, for the message that refuses it.
_SINCE = {
    1: "packed edge maps, see the README's store contract",
    2: "one row per frame of a multi-frame DICOM, the metadata's frame column",
}
#: The formats ``xray upgrade`` moves to this one without touching a pixel.
UPGRADABLE = (3,)

#: Images per Zarr shard unless a store says otherwise: a shard of 16 scans is a
#: 10-20 MB object (good for S3), and one writer holds 16 images of every array
#: in memory, not a whole batch.
SHARD_SIZE = 16

#: Rows handed to one writer (one task) in a new store unless a run says otherwise.
BATCH_SIZE = 64


class StoreFormatError(ValueError):
    """The store was written in a format this version does not read."""


def check_format(attrs: dict[str, Any], url: str) -> None:
    """Refuse a store of another format with a message that says how to rebuild it."""
    found = attrs.get("format", 1)
    if found == FORMAT:
        return
    if found in UPGRADABLE:
        raise StoreFormatError(
            f"store {url} is in store format {found}; this version of xray-pipeline reads "
            f"format {FORMAT}, whose metadata is a versioned Delta Lake table. Move it "
            f"without reprocessing a pixel: `xray upgrade {url}`"
        )
    why = f" ({_SINCE[found]} came after it)" if found in _SINCE else ""
    raise StoreFormatError(
        f"store {url} is in store format {found}; this version of xray-pipeline reads "
        f"format {FORMAT} only{why}. "
        f"Rebuild it from its sources: `xray run SOURCE --store {url} --overwrite` "
        "(or write to a new --store)."
    )
