"""The columns of a store's tables: metadata (one row per source frame) and
predictions (one per image, model and finding), the finding columns, and the
rows and Arrow schemas made from them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

__all__ = [
    "ABSENT_LABEL",
    "FINDING_LABELS",
    "FINDING_PREFIX",
    "FINDING_TYPE",
    "FINDING_UNCERTAIN",
    "HEADER_COLUMNS",
    "METADATA_COLUMNS",
    "METADATA_KEY",
    "METADATA_TIME",
    "PREDICTION_COLUMNS",
    "PREDICTION_KEY",
    "PREDICTION_TIME",
    "absent_label",
    "arrow_schema",
    "checksum",
    "conform_metadata",
    "finding_column",
    "finding_columns",
    "finding_name",
    "is_absent_label",
    "metadata_conflicts",
    "metadata_row",
    "prediction_row",
    "prediction_schema",
]

#: What a DICOM header says of its scan (:mod:`xraycore.sources.header`), null for
#: other files and where the header says nothing; a labels file's values win
#: where it names the same column. ``patient_id``, ``study_id`` and
#: ``series_id`` are keyed pseudonyms (or a labels file's own ids),
#: ``pseudonym_key`` the fingerprint of the key that made them; ``patient_age``
#: is in whole years, 90 for any age over 89; ``study_year`` is the year alone;
#: ``pixel_spacing_mm`` is (row, column). A table written before these columns
#: is read with them null.
HEADER_COLUMNS: dict[str, str] = {
    "patient_id": "string",
    "study_id": "string",
    "series_id": "string",
    "view_position": "string",
    "modality": "string",
    "body_part": "string",
    "patient_sex": "string",
    "patient_age": "int64",
    "study_year": "int64",
    "pixel_spacing_mm": "list<double>",
    "pseudonym_key": "string",
}

#: The metadata columns every row has, in order (label columns from a labels
#: file follow them). ``frame`` is the 0-based frame of a multi-frame DICOM
#: (null for a single-frame file); a row is one (source, frame), and
#: ``source_frames`` the number of frames of its source file (so an unchanged
#: file's next listing reads no header; null in rows written before it, which
#: readers take as unknown; 0 for a file listed without its frame count that
#: could not be read, so nothing is known of it). ``checksum``
#: is the CRC-32 of the stored ``preprocessed`` bytes, so a store can be
#: verified after the fact.
METADATA_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "source": "string",
    "frame": "int64",
    "row": "int64",
    "status": "string",
    "error": "string",
    "height": "int64",
    "width": "int64",
    "channels": "int64",
    "source_dtype": "string",
    "sha256": "string",
    "source_size": "int64",
    "source_mtime": "double",
    "source_frames": "int64",
    "pipeline_hash": "string",
    "run_id": "string",
    "min": "double",
    "max": "double",
    "mean": "double",
    "median": "double",
    "checksum": "string",
    "processed_at": "timestamp[us, tz=UTC]",
    **HEADER_COLUMNS,
}


def metadata_conflicts(arrow_schema) -> list[str]:
    """The fixed columns whose type in ``arrow_schema`` (a metadata table's) is
    not theirs, as ``"name (found, expected)"``: a table written before the
    header columns with a labels file's ``study_id`` as integers, say. Such a
    table takes no new rows until ``xray upgrade`` conforms it
    (:func:`conform_metadata`)."""
    found = []
    for field in arrow_schema:
        want = METADATA_COLUMNS.get(field.name)
        if want is not None and field.type != _arrow_type(want):
            found.append(f"{field.name} ({field.type}, expected {_arrow_type(want)})")
    return found


def conform_metadata(table):
    """``table`` (metadata rows) with every fixed column present (null where
    missing) and in its type: integer ids as text, an age such as ``058Y`` as
    years (an age that is not a number of years becomes null). Any other value
    that has no form in its column's type raises."""
    import pyarrow as pa
    import pyarrow.compute as pc

    fields = []
    for name in table.column_names:
        want = METADATA_COLUMNS.get(name)
        fields.append(pa.field(name, _arrow_type(want)) if want else table.schema.field(name))
        if name == "patient_age" and pa.types.is_string(table.schema.field(name).type):
            years = pc.extract_regex(table[name], r"^\s*0*(?P<n>\d{1,3})\s*[Yy]?\s*$")
            table = table.set_column(
                table.column_names.index(name), name, pc.struct_field(years, "n")
            )
    for name, want in METADATA_COLUMNS.items():
        if name not in table.column_names:
            table = table.append_column(
                pa.field(name, _arrow_type(want)), pa.nulls(table.num_rows, _arrow_type(want))
            )
            fields.append(pa.field(name, _arrow_type(want)))
    return table.cast(pa.schema(fields))


#: The columns of a prediction (one per image and model; re-scoring replaces).
PREDICTION_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "row": "int64",
    "score": "double",
    "label": "string",
    "model": "string",
    "model_sha256": "string",
    "run_id": "string",
    "classified_at": "timestamp[us, tz=UTC]",
    # The finding a multi-output model scored (null for a model of one finding).
    "finding": "string",
    # What the model was trained on (its lineage), when its contract says.
    "training_store_version": "int64",
    "training_rows_sha256": "string",
}

#: Prefix of the label columns, one per finding (``finding_pneumonia``).
FINDING_PREFIX = "finding_"


def finding_column(finding: str) -> str:
    """The metadata column of a finding: ``"Pleural Thickening"`` ->
    ``finding_pleural_thickening``; a column name is returned as it is."""
    import re

    text = finding.strip()
    if text.startswith(FINDING_PREFIX):
        return text
    return FINDING_PREFIX + re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def finding_name(column: str) -> str:
    """A finding's name for people, its column without the prefix:
    ``finding_pleural_thickening`` -> ``pleural_thickening``."""
    return column.removeprefix(FINDING_PREFIX)


#: What the label of a finding's absence starts with (``no pneumonia``).
ABSENT_LABEL = "no "


def absent_label(finding: str) -> str:
    """The label a model gives a scan without ``finding`` (a name or a column):
    ``no pneumonia``; the finding's presence is labelled with its name."""
    return ABSENT_LABEL + finding_name(finding)


def is_absent_label(label: str) -> bool:
    """True for a label of a finding's absence (:func:`absent_label`)."""
    return label.startswith(ABSENT_LABEL)


#: The list of a scan's findings as ChestX-ray8 writes them ("Effusion|Mass"): a
#: column with the finding prefix that is not a finding.
FINDING_LABELS = "finding_labels"


def finding_columns(columns) -> list[str]:
    """The finding columns among ``columns`` (one label per finding), sorted."""
    return sorted(c for c in columns if c.startswith(FINDING_PREFIX) and c != FINDING_LABELS)


#: A finding column's value for an uncertain label (CheXpert's and MIMIC-CXR's
#: labellers write -1); 1 is present, 0 absent, null not mentioned.
FINDING_UNCERTAIN = -1
#: The type of a finding column that can hold an uncertain label (ChestX-ray8's,
#: which cannot, are boolean).
FINDING_TYPE = "int8"


#: What names a row of each table, and which of two rows of a key wins
#: (:func:`xraycore.store._delta.latest_rows`); ``frame`` is null for a
#: single-frame file, and a null frame equals a null frame.
METADATA_KEY = ("source", "frame")
METADATA_TIME = "processed_at"
PREDICTION_KEY = ("image_id", "model_sha256", "finding")
PREDICTION_TIME = "classified_at"


def metadata_row(
    *,
    image_id: str,
    source: str,
    size: int,
    mtime: float,
    pipeline_hash: str,
    run_id: str,
    frame: int | None = None,
    frames: int = 1,
) -> dict[str, Any]:
    """A new row in the ``failed`` state with every column present; the batch
    fills in what it learns and marks it ``ok`` once the pixels are in place.
    ``frames`` is the number of frames of the source file (``frame`` is this
    row's)."""
    row: dict[str, Any] = dict.fromkeys(METADATA_COLUMNS)
    row.update(
        image_id=image_id,
        source=source,
        frame=frame,
        status="failed",
        source_size=size,
        source_mtime=mtime,
        source_frames=frames,
        pipeline_hash=pipeline_hash,
        run_id=run_id,
        processed_at=datetime.now(UTC),
    )
    return row


def prediction_row(
    *,
    image_id: str,
    row: int,
    score: float,
    label: str,
    model: str,
    model_sha256: str,
    run_id: str,
    classified_at: datetime | None = None,
    finding: str | None = None,
    training_store_version: int | None = None,
    training_rows_sha256: str | None = None,
) -> dict[str, Any]:
    """A prediction with every column of :data:`PREDICTION_COLUMNS`.

    Parameters
    ----------
    image_id : str
    row : int
        The array row that was scored: a prediction holds for those pixels only.
    score : float
        Probability of the positive label.
    label : str
        The label the model's contract gives that score.
    model : str
        The model's URL, for people; ``model_sha256`` is the key.
    model_sha256 : str
        SHA-256 of the model file (:func:`xraycore.predict.contract.model_sha256`).
    run_id : str
    classified_at : datetime, optional
        Default now; the latest prediction per (image, model, finding) wins.
    finding : str, optional
        The finding column a multi-output model's score is of.
    training_store_version, training_rows_sha256 : optional
        From the model's lineage (its contract's ``training``): the store
        version and the rows it was trained on.

    Returns
    -------
    row : dict
    """
    prediction: dict[str, Any] = dict.fromkeys(PREDICTION_COLUMNS)
    prediction.update(
        image_id=image_id,
        row=int(row),
        score=float(score),
        label=label,
        model=model,
        model_sha256=model_sha256,
        run_id=run_id,
        classified_at=classified_at if classified_at is not None else datetime.now(UTC),
        finding=finding,
        training_store_version=training_store_version,
        training_rows_sha256=training_rows_sha256,
    )
    return prediction


def arrow_schema(rows: list[dict[str, Any]]):
    """The pyarrow schema of a metadata part: the fixed columns with their
    types, then any extra (label) columns as pyarrow infers them."""
    import pyarrow as pa

    fields = [pa.field(k, _arrow_type(t)) for k, t in METADATA_COLUMNS.items()]
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in METADATA_COLUMNS))
    if extra:
        inferred = pa.Table.from_pylist([{k: r.get(k) for k in extra} for r in rows]).schema
        fields += [_finding_field(f) for f in inferred]
    return pa.schema(fields)


def _finding_field(field):
    """An integer (or all-null) finding column as :data:`FINDING_TYPE`: 1, 0, -1
    or null, whichever part it was written in (a boolean one stays boolean)."""
    import pyarrow as pa

    finding = field.name.startswith(FINDING_PREFIX) and field.name != FINDING_LABELS
    if finding and (pa.types.is_integer(field.type) or pa.types.is_null(field.type)):
        return pa.field(field.name, pa.type_for_alias(FINDING_TYPE))
    return field


def prediction_schema():
    """The pyarrow schema of a predictions part."""
    import pyarrow as pa

    return pa.schema([pa.field(k, _arrow_type(t)) for k, t in PREDICTION_COLUMNS.items()])


def _arrow_type(name: str):
    import pyarrow as pa

    if name.startswith("timestamp"):
        return pa.timestamp("us", tz="UTC")
    if name.startswith("list<"):
        return pa.list_(pa.type_for_alias(name[5:-1]))
    return pa.type_for_alias(name)


def checksum(preprocessed: np.ndarray) -> str:
    """``crc32:`` and the CRC-32 of a scan's stored ``preprocessed`` bytes (C order)."""
    import zlib

    return f"crc32:{zlib.crc32(np.ascontiguousarray(preprocessed)):08x}"
