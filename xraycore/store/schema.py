"""The store's format, in one place: arrays, encodings, metadata columns.

A reader of the store contract needs this file and nothing else. Format 4
(format 3 with the metadata and predictions as Delta Lake tables, every
commit a version; format 3 added the ``frame`` column, one row per frame of a
multi-frame DICOM):

- Every array holds one image per chunk, ``shard_size`` images per shard, and
  is compressed with Blosc over a bit shuffle: zstd level 1 for
  ``preprocessed`` and ``gradient_magnitude`` (smallest), lz4 for the others
  (3x faster to encode, within 5-10% of zstd's size for them); chosen by
  measurement on real scans (``benchmarks/bench_store.py``, docs/benchmarks.md).
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
import posixpath
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from xraycore.image.pipeline import PipelineSpec

__all__ = [
    "CONFUSION",
    "FORMAT",
    "HEADER_COLUMNS",
    "IMAGES",
    "LEGACY_TABLES",
    "conform_metadata",
    "metadata_conflicts",
    "LEASE",
    "METADATA",
    "METADATA_COLUMNS",
    "PREDICTIONS",
    "PREDICTION_COLUMNS",
    "REPORT",
    "ROC",
    "SHEET",
    "TEMPORARY_SUFFIX",
    "FINDING_PREFIX",
    "ArraySpec",
    "StoreFormatError",
    "array_specs",
    "check_format",
    "checksum",
    "FINDING_TYPE",
    "FINDING_UNCERTAIN",
    "FINDING_LABELS",
    "finding_column",
    "finding_columns",
    "is_temporary",
    "metadata_row",
    "prediction_row",
    "temporary_path",
]

# -- The files of a store, relative to its root --------------------------------
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

# One Blosc block per 1 MB: zstd then encodes 1.5x faster and 3% smaller than
# with Blosc's default block size (a chunk is always read whole anyway).
_ZSTD = {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle", "blocksize": 1 << 20}
_LZ4 = {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}
#: Blosc settings per array. Measured per 1024x1024 real scan (size, encode
#: time on one core): preprocessed zstd 0.73 MB / 1.5 ms vs lz4 0.85 MB / 0.8 ms;
#: log lz4 0.70 MB / 0.7 ms vs zstd 0.65 MB / 1.4 ms; gradient magnitude zstd
#: 0.38 MB / 1.2 ms vs lz4 0.49 MB / 0.7 ms; sobel lz4 0.52 MB / 0.6 ms vs zstd
#: 0.46 MB / 1.1 ms; the boolean maps lz4 0.03 MB each. Bit shuffle beat byte
#: and no shuffle for every array but one (log with zstd, at 1.4x its encode
#: time). zstd where it saves the most bytes per ms, lz4 elsewhere: 2.4 MB.
COMPRESSORS = {
    "preprocessed": _ZSTD,
    "log": _LZ4,
    "gradient_magnitude": _ZSTD,
    "sobel": _LZ4,
    "canny": _LZ4,
    "mask": _LZ4,
    "histogram": _ZSTD,
}

# (stored dtype, step) of each packed map; the range comes from the filter
# bound, and a step of None spreads that bound over the dtype's codes.
_PACKED = {
    "log": ("uint16", 0.25),
    "gradient_magnitude": ("uint8", None),
    "sobel": ("uint8", 1.0),
}
_EXACT = {"preprocessed": "uint8", "canny": "bool", "mask": "bool", "histogram": "int64"}


class StoreFormatError(ValueError):
    """The store was written in a format this version does not read."""


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


def _log_bound(sigma: float) -> float:
    from xraycore.image.edges import gaussian_kernels

    g0, _, g2 = (k.astype(np.float64) for k in gaussian_kernels(float(sigma)))
    kernel = np.outer(g2, g0) + np.outer(g0, g2)
    return 255.0 * max(kernel[kernel > 0].sum(), -kernel[kernel < 0].sum())


def _gradient_bound(sigma: float) -> float:
    from xraycore.image.edges import gaussian_kernels

    g0, g1, _ = (k.astype(np.float64) for k in gaussian_kernels(float(sigma)))
    kx, ky = np.outer(g0, g1), np.outer(g1, g0)
    # The magnitude is the largest directional derivative; its bound for input
    # in 0..255 is 255 times the positive mass of the directional kernel.
    return 255.0 * max(
        np.clip(np.cos(t) * kx + np.sin(t) * ky, 0, None).sum()
        for t in np.linspace(0, 2 * np.pi, 1441)
    )


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
                bound = _log_bound(spec.params["log"]["sigma"])
                offset = -math.ceil(bound / step + 1) * step
                top = -offset + bound
            elif name == "gradient_magnitude":
                # 0.1% over the bound sampled at 1441 angles: the true maximum
                # may lie between two samples.
                bound = _gradient_bound(spec.params["gradient_magnitude"]["sigma"])
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


#: What a DICOM header says of its scan (:mod:`xraycore.store.header`), null for
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
