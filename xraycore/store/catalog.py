"""Listing a source (folder or bucket prefix); reading a labels file (:mod:`.labels`)
or one image by URL."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from xraycore.image.decode import ImageDecodeError, decode_image, dicom_frames, image_format
from xraycore.store.labels import label_for, read_labels
from xraycore.store.storage import Storage

__all__ = [
    "IMAGE_EXTENSIONS",
    "SourceFile",
    "label_for",
    "list_sources",
    "read_image",
    "read_labels",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


#: Bytes read from a DICOM file to find its Number of Frames (the header).
_DICOM_HEAD = 1 << 16


@dataclass(frozen=True)
class SourceFile:
    """One input: where it is, its id in the store, and what the listing says of it.

    A multi-frame DICOM file is one input per frame: ``frame`` is its 0-based
    index (None for a single-frame file) and the id is ``<path>#<frame>``.
    """

    uri: str
    image_id: str
    size: int
    mtime: float | None
    frame: int | None = None


def _mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def list_sources(source: Storage) -> list[SourceFile]:
    """Every image under ``source``, sorted by id.

    Files with an image extension (case-insensitive) are listed; files without
    an extension are listed when their first bytes say DICOM. Ids are paths
    relative to the source root, so a folder and a bucket give the same ids.
    A DICOM file that declares several frames is listed once per frame (its
    header is read for that); one whose header cannot be read is listed once,
    and fails when it is processed, with the reason.
    """
    found = source.find()
    files = []
    for rel, info in found.items():
        name = posixpath.basename(rel) or posixpath.basename(source.root)
        if name.startswith("."):
            continue
        ext = posixpath.splitext(name)[1].lower()
        dicom = ext in (".dcm", ".dicom")
        if ext not in IMAGE_EXTENSIONS:
            if ext:
                continue
            if image_format(source.read_range(rel, 0, 136)) != "dicom":
                continue
            dicom = True
        entry = SourceFile(
            uri=source.uri(rel),
            image_id=rel or name,  # a source that is one file: its id is its name
            size=int(info.get("size") or 0),
            mtime=_mtime(info),
        )
        frames = _frames(source, rel) if dicom else 1
        if frames == 1:
            files.append(entry)
        else:
            files += [
                replace(entry, image_id=f"{entry.image_id}#{k}", frame=k) for k in range(frames)
            ]
    return sorted(files, key=_order)


def _order(f: SourceFile) -> tuple[str, int]:
    """By id, the frames of a file in frame order (``#10`` after ``#9``)."""
    if f.frame is None:
        return f.image_id, 0
    return f.image_id[: -len(f"#{f.frame}")], f.frame


def _frames(source: Storage, rel: str) -> int:
    """Frames a DICOM file declares; 1 when its header cannot be read (it then
    fails, with the reason, when it is processed)."""
    head = source.read_range(rel, 0, _DICOM_HEAD)
    try:
        return dicom_frames(head)
    except ImageDecodeError:
        if len(head) < _DICOM_HEAD:
            return 1
    try:  # a header longer than the first read
        return dicom_frames(source.read_bytes(rel))
    except ImageDecodeError:
        return 1


def read_image(
    uri: str, *, max_pixels: int | None = None, frame: int | None = None, **storage_options
) -> np.ndarray:
    """Read and decode one image from a local path or any fsspec URL (``s3://...``).

    ``storage_options`` go to :class:`~xraycore.store.storage.Storage` (for S3:
    ``endpoint_url``, ``anon``, ``profile``...). See :func:`decode_image` for
    ``frame`` and the result.
    """
    data = Storage.from_url(uri, storage_options).read_bytes()
    return decode_image(data, name=uri, max_pixels=max_pixels, frame=frame)
