"""Listing a source (folder or bucket prefix) and joining ChestX-ray8 labels."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from .io import image_format
from .storage import Storage

__all__ = ["IMAGE_EXTENSIONS", "SourceFile", "list_sources", "read_labels"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


@dataclass(frozen=True)
class SourceFile:
    """One input: where it is, its id in the store, and what the listing says of it."""

    uri: str
    image_id: str
    size: int
    mtime: float | None


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
    """
    found = source.find()
    files = []
    for rel, info in found.items():
        name = posixpath.basename(rel) or posixpath.basename(source.root)
        if name.startswith("."):
            continue
        ext = posixpath.splitext(name)[1].lower()
        if ext not in IMAGE_EXTENSIONS:
            if ext:
                continue
            with source.open(rel) as f:
                if image_format(f.read(136)) != "dicom":
                    continue
        uri = source.uri(rel)
        rel = rel or name  # a source that is one file: its id is its name
        files.append(
            SourceFile(uri=uri, image_id=rel, size=int(info.get("size") or 0), mtime=_mtime(info))
        )
    return sorted(files, key=lambda f: f.image_id)


def _finding_column(finding: str) -> str:
    return "finding_" + re.sub(r"[^0-9a-z]+", "_", finding.strip().lower()).strip("_")


# Data_Entry_2017.csv columns and the store's names for them.
_LABEL_COLUMNS = {
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "patient_age",
    "Patient Gender": "patient_gender",
    "View Position": "view_position",
}


def read_labels(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, dict]:
    """Read a labels CSV in ChestX-ray8's ``Data_Entry_2017.csv`` format.

    Returns
    -------
    labels : dict
        Image file name (``Image Index``) -> columns: ``finding_labels`` (list
        of str, "No Finding" kept as its own label), one bool ``finding_<name>``
        per finding seen in the file, and ``follow_up``, ``patient_id``,
        ``patient_age``, ``patient_gender``, ``view_position`` when present.
    """
    import io as _io

    import pyarrow.csv as pacsv

    storage = Storage.from_url(url, storage_options)
    try:
        raw = storage.read_bytes()
    except FileNotFoundError as exc:
        raise ValueError(f"labels file {url} does not exist") from exc
    try:
        table = pacsv.read_csv(_io.BytesIO(raw))
    except Exception as exc:
        raise ValueError(f"labels file {url} is not a readable CSV: {exc}") from exc
    names = table.column_names
    for required in ("Image Index", "Finding Labels"):
        if required not in names:
            raise ValueError(
                f"labels file {url} has no {required!r} column (Data_Entry_2017.csv format); "
                f"columns are {names}"
            )
    rows = table.to_pylist()
    findings = sorted(
        {f.strip() for r in rows for f in str(r["Finding Labels"]).split("|") if f.strip()}
    )
    labels: dict[str, dict] = {}
    for r in rows:
        found = [f.strip() for f in str(r["Finding Labels"]).split("|") if f.strip()]
        entry: dict[str, Any] = {"finding_labels": found}
        for f in findings:
            entry[_finding_column(f)] = f in found
        for src, dst in _LABEL_COLUMNS.items():
            if src in names:
                value = r[src]
                numeric = dst in ("follow_up", "patient_age")
                entry[dst] = value if value is None or numeric else str(value)
        labels[str(r["Image Index"])] = entry
    return labels
