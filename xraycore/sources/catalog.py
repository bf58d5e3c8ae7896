"""Listing a source (folder or bucket prefix); reading a labels file (:mod:`.labels`)
or one image by URL."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from xraycore.image.decode import ImageDecodeError, decode_image, dicom_frames, image_format
from xraycore.sources.labels import label_for, read_labels
from xraycore.store.storage import Storage

__all__ = [
    "IMAGE_EXTENSIONS",
    "SourceFile",
    "counted",
    "label_for",
    "later_frames",
    "list_sources",
    "read_image",
    "read_labels",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


#: Bytes read from a DICOM file of unknown frame count, one round after the
#: other: a header (and the magic bytes of a file without an extension) fits
#: in the first 8 KiB unless it carries big private tags or an icon; the few
#: that do not are read again, then whole. The first range costs the same GET
#: as 136 bytes would, and one tenth of the 64 KiB read before.
_DICOM_HEADS = (8 << 10, 64 << 10)

#: Files whose first range is read at once: the listing holds at most this many
#: times :data:`_DICOM_HEADS`'s largest read in memory, whatever the source's size.
_HEADS_AT_ONCE = 512

_DICOM_EXTENSIONS = (".dcm", ".dicom")


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One input: where it is, its id in the store, and what the listing says of it.

    A multi-frame DICOM file is one input per frame: ``frame`` is its 0-based
    index (None for a single-frame file) and the id is ``<path>#<frame>``;
    ``frames`` is the number of frames of the file (recorded with each row,
    so that the next listing need not read the header again). ``frames`` is
    None for a DICOM file listed without counting them (``list_sources(...,
    count_frames=False)``): the batch that reads the file counts them.
    """

    uri: str
    image_id: str
    size: int
    mtime: float | None
    frame: int | None = None
    frames: int | None = 1

    @property
    def version(self) -> tuple[int, float | None]:
        """Size and modification time: what the store compares to tell an
        unchanged file (its sha256 is recorded, not recomputed for the check)."""
        return self.size, self.mtime


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


def list_sources(source: Storage, previous=None, *, count_frames: bool = True) -> list[SourceFile]:
    """Every image under ``source``, sorted by id.

    Files with an image extension (case-insensitive) are listed; files without
    an extension are listed when their first bytes say DICOM. Ids are paths
    relative to the source root, so a folder and a bucket give the same ids.
    A DICOM file that declares several frames is listed once per frame; one
    whose header cannot be read is listed once, and fails when it is
    processed, with the reason.

    Parameters
    ----------
    source : Storage
        The folder, bucket prefix or single file.
    previous : pyarrow.Table, optional
        The store's metadata (:meth:`ScanStore.read_metadata`). A file whose
        size and modification time equal those recorded there takes its frame
        count from it: no byte of it is read. The others' headers are read
        concurrently (:meth:`Storage.read_ranges`), a first 8 KiB and more
        only for a header that goes on.
    count_frames : bool, optional
        False: a new or changed file named ``.dcm`` or ``.dicom`` is listed
        once, with ``frames=None``, and no byte of it is read; what reads it
        whole (:func:`xraycore.batch.process_batch`) counts its frames. This
        is the flow's listing: the first run over a DICOM bucket then sends
        one GET per file, not a header GET and then the file's. Files without
        an extension still have their first bytes read, to tell DICOM.
    """
    recorded = recorded_frames(previous)
    files: list[SourceFile] = []
    unread: list[tuple[str, SourceFile]] = []  # DICOM or extensionless, frames unknown
    for rel, info in source.find().items():
        name = posixpath.basename(rel) or posixpath.basename(source.root)
        ext = posixpath.splitext(name)[1].lower()
        if name.startswith(".") or (ext and ext not in IMAGE_EXTENSIONS):
            continue
        entry = SourceFile(
            uri=source.uri(rel),
            image_id=rel or name,  # a source that is one file: its id is its name
            size=int(info.get("size") or 0),
            mtime=_mtime(info),
        )
        known = recorded.get(entry.uri, {}).get(entry.version)
        if known is not None:
            files += _per_frame(entry, known)
        elif ext and ext not in _DICOM_EXTENSIONS:
            files.append(entry)
        elif ext and not count_frames:
            files.append(replace(entry, frames=None))
        else:
            unread.append((rel, entry))
    for i in range(0, len(unread), _HEADS_AT_ONCE):
        chunk = unread[i : i + _HEADS_AT_ONCE]
        for (_, entry), frames in zip(chunk, _read_frames(source, chunk), strict=True):
            if frames is not None:
                files += _per_frame(entry, frames)
    return sorted(files, key=_order)


def recorded_frames(previous) -> dict[str, dict[tuple[int, float | None], int]]:
    """Source URL -> {(size, mtime): frames} as the store's metadata recorded it.

    A version of a file (:attr:`SourceFile.version`) has the frames its rows
    were listed with, whatever happened to the file since (the rows of a file
    replaced by one with fewer frames stay, under the old version). Frames come
    from ``source_frames``; for rows written before that column (null), from
    the rows themselves: 1 for a row without a frame, else the number of frame
    rows of that version.
    """
    if previous is None or previous.num_rows == 0:
        return {}
    columns = ["source", "frame", "source_size", "source_mtime"]
    has_frames = "source_frames" in previous.column_names
    rows = previous.select(columns + (["source_frames"] if has_frames else [])).to_pylist()
    recorded: dict[str, dict[tuple[int, float | None], int]] = {}
    counted: dict[tuple, int] = {}
    for r in rows:
        version = (r["source_size"], r["source_mtime"])
        if r.get("source_frames") == 0:
            continue
        if r.get("source_frames"):
            recorded.setdefault(r["source"], {})[version] = r["source_frames"]
        elif r["frame"] is not None:
            counted[(r["source"], version)] = counted.get((r["source"], version), 0) + 1
        else:
            counted.setdefault((r["source"], version), 1)
    for (uri, version), frames in counted.items():
        recorded.setdefault(uri, {}).setdefault(version, frames)
    return recorded


def _per_frame(entry: SourceFile, frames: int, first: int = 0) -> list[SourceFile]:
    """The inputs of a file of ``frames`` frames: itself, or one per frame
    (from frame ``first``)."""
    if frames == 1:
        return [entry] if first == 0 else []
    return [
        replace(entry, image_id=f"{entry.image_id}#{k}", frame=k, frames=frames)
        for k in range(first, frames)
    ]


def counted(entry: SourceFile, frames: int) -> SourceFile:
    """The first input of a file listed without counting its frames
    (``frames=None``) once they are known: itself, or its frame 0."""
    return _per_frame(entry, frames)[0]


def later_frames(entry: SourceFile, frames: int) -> list[SourceFile]:
    """The inputs of frames 1 .. ``frames - 1`` of a file listed without
    counting them (its frame 0 is :func:`counted`)."""
    return _per_frame(entry, frames, first=1)


def _order(f: SourceFile) -> tuple[str, int]:
    """By id, the frames of a file in frame order (``#10`` after ``#9``)."""
    if f.frame is None:
        return f.image_id, 0
    return f.image_id[: -len(f"#{f.frame}")], f.frame


def _read_frames(source: Storage, files: list[tuple[str, SourceFile]]) -> list[int | None]:
    """Frames each DICOM (or extensionless) file declares, from its header: None
    for an extensionless file that is not DICOM (or is gone), 1 for a header
    that cannot be read (the file then fails, with the reason, when it is
    processed)."""
    frames: list[int | None] = [None] * len(files)
    pending = list(range(len(files)))
    for rnd, length in enumerate(_DICOM_HEADS):
        if not pending:
            break
        heads = source.read_ranges(
            [files[i][0] for i in pending], [0] * len(pending), [length] * len(pending)
        )
        still = []
        for i, head in zip(pending, heads, strict=True):
            entry = files[i][1]
            named = _has_extension(entry.uri)  # .dcm or .dicom: listed whatever it holds
            if rnd == 0 and (head is None or not (named or image_format(head) == "dicom")):
                frames[i] = 1 if named else None  # a .dcm gone since find() fails later
                continue
            found = _header_frames(head or b"", complete=len(head or b"") < length)
            if found is None:
                still.append(i)
            else:
                frames[i] = found
        pending = still
    for i in pending:  # a header longer than the largest range: read the whole file
        frames[i] = _header_frames(source.read_bytes(files[i][0]), complete=True)
    return frames


def _has_extension(uri: str) -> bool:
    return bool(posixpath.splitext(posixpath.basename(uri))[1])


def _header_frames(head: bytes, *, complete: bool) -> int | None:
    try:
        return dicom_frames(head, complete=complete)
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
