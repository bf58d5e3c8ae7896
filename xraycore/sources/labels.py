"""Labels files of the three large chest X-ray sets, recognised by their header.

- ChestX-ray8 / ChestX-ray14 ``Data_Entry_2017.csv`` (Wang et al. 2017): one row
  per image (``Image Index``), its findings joined by ``|``. Findings are
  boolean columns (the set has no uncertain label).
- CheXpert ``train.csv`` / ``valid.csv`` (Irvin et al. 2019): one row per image,
  keyed by ``Path`` (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``),
  14 observations labelled 1, 0, -1 (uncertain) or blank (not mentioned).
- MIMIC-CXR ``mimic-cxr-2.0.0-chexpert.csv`` (Johnson et al. 2019): the same 14
  observations per study (``subject_id``, ``study_id``); its
  ``mimic-cxr-2.0.0-metadata.csv``, read from next to it, names the study's
  images (``dicom_id``, the file name of the JPG release's images).

CheXpert's and MIMIC-CXR's findings are small-integer columns that keep -1
(:data:`~xraycore.store.columns.FINDING_UNCERTAIN`) and null. Every layout gives
``patient_id``, which the patient-grouped splits use.
"""

from __future__ import annotations

import gzip
import io
import posixpath
from typing import Any

from xraycore.store.columns import finding_column
from xraycore.store.storage import Storage

__all__ = ["LAYOUTS", "Labels", "label_for", "read_labels"]

#: The layouts :func:`read_labels` recognises, and what each is keyed by.
LAYOUTS = {
    "chestxray8": "Data_Entry_2017.csv (columns 'Image Index', 'Finding Labels')",
    "chexpert": "CheXpert train.csv/valid.csv (column 'Path' and the 14 observations)",
    "mimic": (
        "MIMIC-CXR mimic-cxr-2.0.0-chexpert.csv (columns 'subject_id', 'study_id' and the "
        "14 observations) with mimic-cxr-2.0.0-metadata.csv next to it"
    ),
}

#: The 14 observations of the CheXpert labeller, which MIMIC-CXR's files share.
CHEXPERT_OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# Data_Entry_2017.csv columns and the store's names for them.
_CHESTXRAY8_COLUMNS = {
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "patient_age",
    "Patient Gender": "patient_gender",
    "View Position": "view_position",
}
_CHEXPERT_COLUMNS = {
    "Sex": "patient_gender",
    "Age": "patient_age",
    "AP/PA": "view_position",
    "Frontal/Lateral": "frontal_lateral",
}
_MIMIC_METADATA = ("dicom_id", "subject_id", "study_id")


class Labels(dict):
    """Labels by image: a key (a file name, a path's tail, or a file's stem) ->
    the metadata columns of the images it names (see :func:`label_for`).

    Attributes
    ----------
    layout : str
        One of :data:`LAYOUTS`.
    url : str
        The file read.
    """

    layout: str = "chestxray8"
    url: str = ""


def label_for(labels: dict[str, dict], image_id: str) -> dict | None:
    """The labels of the input ``image_id`` (a path relative to the source,
    ``#k`` for frame k of a multi-frame file): the entry of its longest
    ``/``-separated tail that ``labels`` has, else of its file name's stem.

    ChestX-ray8 names a file (``00000001_000.png``), CheXpert a patient, a study
    and a file (``patient00001/study1/view1_frontal.jpg``: CheXpert's files are
    all called ``view<n>_<frontal|lateral>.jpg``), MIMIC-CXR a ``dicom_id`` (the
    stem). Every frame of a multi-frame file gets the file's labels.
    """
    path = image_id.split("#", 1)[0] if "#" in image_id else image_id
    parts = path.split("/")
    for k in range(len(parts)):
        found = labels.get("/".join(parts[k:]))
        if found is not None:
            return found
    return labels.get(posixpath.splitext(parts[-1])[0])


def _read_csv(url: str, storage_options: dict[str, Any] | None):
    import pyarrow.csv as pacsv

    storage = Storage.from_url(url, storage_options)
    try:
        raw = storage.read_bytes()
    except FileNotFoundError as exc:
        raise ValueError(f"labels file {url} does not exist") from exc
    if raw[:2] == b"\x1f\x8b":  # MIMIC-CXR ships its tables gzipped
        raw = gzip.decompress(raw)
    try:
        return pacsv.read_csv(io.BytesIO(raw))
    except Exception as exc:
        raise ValueError(f"labels file {url} is not a readable CSV: {exc}") from exc


def _layout(names: list[str], url: str) -> str:
    """The layout a header says, or a one-line error naming the three expected."""
    if "Image Index" in names and "Finding Labels" in names:
        return "chestxray8"
    observations = set(CHEXPERT_OBSERVATIONS) & set(names)
    if "Path" in names and observations:
        return "chexpert"
    if {"subject_id", "study_id"} <= set(names) and observations:
        return "mimic"
    if set(_MIMIC_METADATA) <= set(names):
        raise ValueError(
            f"labels file {url} is MIMIC-CXR's metadata (images of each study), not its "
            "labels: give mimic-cxr-2.0.0-chexpert.csv, with this file next to it"
        )
    expected = "; ".join(LAYOUTS.values())
    shown = names[:6] + (["..."] if len(names) > 6 else [])
    raise ValueError(f"labels file {url} has columns {shown}, expected one of: {expected}")


def read_labels(url: str, storage_options: dict[str, Any] | None = None) -> Labels:
    """Read a labels CSV of ChestX-ray8, CheXpert or MIMIC-CXR (:data:`LAYOUTS`).

    Parameters
    ----------
    url : str
        The CSV (plain or gzipped). For MIMIC-CXR, ``mimic-cxr-2.0.0-chexpert.csv``;
        its ``-metadata.csv`` (same suffix) is read from the same folder.
    storage_options : dict, optional

    Returns
    -------
    labels : Labels
        Key -> columns (see :func:`label_for` for the keys). ChestX-ray8:
        ``finding_labels`` (list of str, "No Finding" kept as its own label), one
        bool ``finding_<name>`` per finding seen in the file, and ``follow_up``,
        ``patient_id``, ``patient_age``, ``patient_gender``, ``view_position`` when
        present. CheXpert and MIMIC-CXR: one ``finding_<name>`` per observation
        (1, 0, -1 or None), ``patient_id``, and the view and patient columns each has.
    """
    table = _read_csv(url, storage_options)
    layout = _layout(table.column_names, url)
    if layout == "chestxray8":
        found = _chestxray8(table)
    elif layout == "chexpert":
        found = _chexpert(table, url)
    else:
        found = _mimic(table, url, storage_options)
    labels = Labels(found)
    labels.layout, labels.url = layout, url
    return labels


def _chestxray8(table) -> dict[str, dict]:
    names = table.column_names
    rows = table.to_pylist()
    split = [[f.strip() for f in str(r["Finding Labels"]).split("|") if f.strip()] for r in rows]
    findings = sorted({f for found in split for f in found})
    labels: dict[str, dict] = {}
    for r, found in zip(rows, split, strict=True):
        entry: dict[str, Any] = {"finding_labels": found}
        for f in findings:
            entry[finding_column(f)] = f in found
        for src, dst in _CHESTXRAY8_COLUMNS.items():
            if src in names:
                value = r[src]
                if dst == "patient_age":
                    entry[dst] = _years(value)
                elif dst == "follow_up":
                    entry[dst] = value
                else:
                    entry[dst] = None if value is None else str(value)
        labels[str(r["Image Index"])] = entry
    return labels


def _years(value) -> int | None:
    """An age as whole years: ``58``, ``58.0`` or ChestX-ray8's first release's
    ``058Y``; None for anything else (the metadata's ``patient_age`` is int64)."""
    if isinstance(value, int | float) and value == value:
        return int(value)
    text = str(value or "").strip().upper().removesuffix("Y")
    return int(text) if text.isdigit() else None


def _observation(value, column: str, url: str) -> int | None:
    """A labeller's value (1.0, 0.0, -1.0 or blank) as 1, 0, -1 or None."""
    if value is None or value != value:  # blank, or NaN
        return None
    if value not in (1, 0, -1):
        raise ValueError(
            f"labels file {url}: {column!r} holds {value!r}; expected 1, 0, -1 or blank"
        )
    return int(value)


def _observations(table, url: str) -> tuple[list[str], list[list[int | None]]]:
    """The observation columns a file has and their values, column by column."""
    present = [o for o in CHEXPERT_OBSERVATIONS if o in table.column_names]
    values = [[_observation(v, o, url) for v in table[o].to_pylist()] for o in present]
    return present, values


def _chexpert(table, url: str) -> dict[str, dict]:
    present, values = _observations(table, url)
    paths = [str(p) for p in table["Path"].to_pylist()]
    extra = {
        dst: table[src].to_pylist()
        for src, dst in _CHEXPERT_COLUMNS.items()
        if src in table.column_names
    }
    labels: dict[str, dict] = {}
    for i, path in enumerate(paths):
        parts = path.split("/")
        # .../train/patient00001/study1/view1_frontal.jpg: the patient is the third from last.
        if len(parts) < 3 or not parts[-3].startswith("patient"):
            raise ValueError(
                f"labels file {url}: Path {path!r} is not .../patient<id>/study<n>/<file> "
                "(CheXpert's layout)"
            )
        entry: dict[str, Any] = {
            finding_column(o): column[i] for o, column in zip(present, values, strict=True)
        }
        entry["patient_id"] = parts[-3]
        for dst, column in extra.items():
            value = column[i]
            if dst == "patient_age":
                entry[dst] = _years(value)
            else:
                entry[dst] = None if value is None else str(value)
        labels["/".join(parts[-3:])] = entry
    return labels


def _metadata_url(url: str) -> str:
    head, sep, tail = url.rpartition("-chexpert.csv")
    if not sep:
        raise ValueError(
            f"labels file {url} is in MIMIC-CXR's layout but not named *-chexpert.csv[.gz]: "
            "its -metadata.csv is found by that name"
        )
    return f"{head}-metadata.csv{tail}"


def _mimic(table, url: str, storage_options: dict[str, Any] | None) -> dict[str, dict]:
    present, values = _observations(table, url)
    by_study: dict[tuple[int, int], dict] = {}
    subjects, studies = table["subject_id"].to_pylist(), table["study_id"].to_pylist()
    for i, key in enumerate(zip(subjects, studies, strict=True)):
        by_study[key] = {
            finding_column(o): column[i] for o, column in zip(present, values, strict=True)
        }
    meta_url = _metadata_url(url)
    try:
        meta = _read_csv(meta_url, storage_options)
    except ValueError as exc:
        raise ValueError(f"MIMIC-CXR labels {url} need their metadata file: {exc}") from exc
    missing = [c for c in _MIMIC_METADATA if c not in meta.column_names]
    if missing:
        raise ValueError(f"MIMIC-CXR metadata {meta_url} has no column {missing}")
    views = meta["ViewPosition"].to_pylist() if "ViewPosition" in meta.column_names else None
    labels: dict[str, dict] = {}
    for i, (dicom, subject, study) in enumerate(
        zip(*(meta[c].to_pylist() for c in _MIMIC_METADATA), strict=True)
    ):
        findings = by_study.get((subject, study))
        if findings is None:  # a study the labeller did not label
            continue
        entry: dict[str, Any] = {**findings, "patient_id": str(subject), "study_id": str(study)}
        if views is not None:
            entry["view_position"] = None if views[i] is None else str(views[i])
        labels[str(dicom)] = entry
    return labels
