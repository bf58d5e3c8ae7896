"""One batch of scans: read, process, write whole shards, commit metadata.

Pure of Prefect and Dask: the batch task is a one-line call into
:func:`process_batch`, and the benchmark's bare multiprocessing loop calls the
same function.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np

from xraycore.image import measure
from xraycore.image.decode import ImageDecodeError, decode_image, dicom_frames, image_format
from xraycore.image.pipeline import PipelineSpec, run_pipeline
from xraycore.sources.catalog import SourceFile, counted, label_for, later_frames
from xraycore.sources.header import PSEUDONYM_COLUMNS, Pseudonyms, header_columns, read_header
from xraycore.sources.labels import LAYOUTS
from xraycore.store import ScanStore, columns
from xraycore.store.columns import HEADER_COLUMNS
from xraycore.store.storage import Storage

__all__ = [
    "Batch",
    "Plan",
    "finish_run",
    "plan_batches",
    "plan_later_frames",
    "process_batch",
]


@dataclass(frozen=True)
class Batch:
    """Inputs of one batch: rows ``start .. start + batch_size``; slot i is row start + i.

    One task writes a batch, through one :class:`~xraycore.store.ShardWriter`.
    """

    start: int
    items: tuple[SourceFile, ...]
    labels: tuple[dict | None, ...] = ()
    #: The sources of ``items`` that have rows in the store already (a retried
    #: failure, a changed file): the run's committer replaces their rows.
    replacing: tuple[str, ...] = ()


@dataclass
class Plan:
    batches: list[Batch]
    skipped: int
    end_row: int
    retried: int = 0
    new: int = 0


def plan_batches(
    sources: list[SourceFile],
    previous,
    *,
    pipeline_hash: str,
    first_free_row: int,
    batch_size: int,
    labels: dict[str, dict] | None = None,
) -> Plan:
    """Decide what this run does: skip inputs already ok under the same
    pipeline whose size and modification time are unchanged (sha256 is
    recorded, not recomputed for the check), retry failed or changed ones, add
    new ones; group the work into batches of ``batch_size`` starting at
    ``first_free_row`` rounded up to a batch boundary (the store's batch size:
    its shards divide it, so a shard is only ever written by one task)."""
    if labels and sources and not any(label_for(labels, s.image_id) for s in sources):
        _no_labelled_input(labels, sources)
    done: dict[str, dict] = {}
    failed: set[str] = set()
    if previous is not None:
        for r in previous.select(
            ["source", "frame", "status", "pipeline_hash", "source_size", "source_mtime"]
        ).to_pylist():
            key = (r["source"], r["frame"])
            if r["status"] == "ok" and r["pipeline_hash"] == pipeline_hash:
                done[key] = r
            else:
                failed.add(key)
    todo, skipped, retried, replacing = [], 0, 0, set()
    for src in sources:
        key = (src.uri, src.frame)
        prev = done.get(key)
        if prev and (prev["source_size"], prev["source_mtime"]) == src.version:
            skipped += 1
            continue
        # a file listed without its frame count had its frame 0's row, if any
        again = {key, (src.uri, 0)} if src.frames is None else {key}
        if again & failed or again & done.keys():
            replacing.add(src.uri)
            retried += 1
        todo.append(src)
    plan = _batches(
        todo,
        first_free_row=first_free_row,
        batch_size=batch_size,
        labels=labels,
        replacing=replacing,
    )
    plan.skipped, plan.retried, plan.new = skipped, retried, len(todo) - retried
    return plan


def plan_later_frames(
    found: list[tuple[SourceFile, int]],
    *,
    first_free_row: int,
    batch_size: int,
    labels: dict[str, dict] | None = None,
    previous=None,
) -> Plan:
    """The batches of frames 1 .. n-1 of the files that batches found to hold
    n > 1 frames (``found``: the input as listed, without a frame count, and n;
    :func:`process_batch` wrote its frame 0); those whose source has rows in
    ``previous`` (the metadata the run started from) replace them."""
    todo = [f for entry, frames in found for f in later_frames(entry, frames)]
    replacing: set[str] = set()
    if previous is not None and todo:
        import pyarrow as pa
        import pyarrow.compute as pc

        uris = pa.array(sorted({f.uri for f in todo}), pa.string())
        replacing = set(uris.filter(pc.is_in(uris, previous.column("source"))).to_pylist())
    plan = _batches(
        todo,
        first_free_row=first_free_row,
        batch_size=batch_size,
        labels=labels,
        replacing=replacing,
    )
    plan.new = len(todo)
    return plan


def _batches(
    todo: list[SourceFile],
    *,
    first_free_row: int,
    batch_size: int,
    labels: dict | None,
    replacing: set[str] = frozenset(),
) -> Plan:
    """``todo`` in batches of ``batch_size`` from ``first_free_row`` rounded up to a
    batch boundary; ``replacing``: the sources that have rows already."""
    start = math.ceil(first_free_row / batch_size) * batch_size
    batches = []
    for i in range(0, len(todo), batch_size):
        chunk = tuple(todo[i : i + batch_size])
        lab = tuple(label_for(labels, s.image_id) for s in chunk) if labels else ()
        again = tuple(dict.fromkeys(s.uri for s in chunk if s.uri in replacing))
        batches.append(Batch(start=start + i, items=chunk, labels=lab, replacing=again))
    end = start + len(batches) * batch_size if batches else first_free_row
    return Plan(batches=batches, skipped=0, end_row=end)


def _no_labelled_input(labels: dict[str, dict], sources: list[SourceFile]) -> None:
    """The one-line error of a labels file that names none of the inputs."""
    layout = getattr(labels, "layout", None)
    what = f"{getattr(labels, 'url', '')} ({LAYOUTS[layout]})" if layout else "labels"
    example = next(iter(labels), None)
    raise ValueError(
        f"labels file {what} names none of the {len(sources)} inputs: it names images like "
        f"{example!r}, the inputs are like {sources[0].image_id!r}"
    )


def process_batch(
    batch: Batch,
    *,
    store: str,
    spec: PipelineSpec | dict,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
    source_options: dict[str, Any] | None = None,
    fence: str | None = None,
    commit: bool = True,
    pseudonyms: Pseudonyms | None = None,
) -> dict[str, Any]:
    """Process one batch end to end and return a small summary (no pixels).

    Every input gets a row; an input that cannot be read, decoded or processed
    becomes a ``failed`` row with its error class and message, and never fails
    the batch. An input listed without its frame count (``frames=None``) is
    counted here: a multi-frame file's row is its frame 0, and the result's
    ``frames`` names its slot and frame count, for :func:`plan_later_frames`.
    Pixels are written (whole shards, by the store's
    :class:`~xraycore.store.ShardWriter`) before the metadata that describes
    them. With ``commit=False`` (a run's batch task) the rows are written as a
    file of the metadata table and not committed: the result's ``table_file``
    (a :class:`~xraycore.store._files.TableFile`, a few hundred bytes) is what
    the run's committer commits (:meth:`~xraycore.store.ScanStore.commit_row_files`).
    Otherwise they are committed here, merged by key; with ``fence`` (the run
    id of the lease holder, see :meth:`~xraycore.store.ScanStore.fence`) only
    while that run is still the store's writer.

    A DICOM's header columns (:mod:`xraycore.sources.header`) are read from the
    bytes read for its pixels; its identifiers are pseudonymised with
    ``pseudonyms``, else with the key of this process's environment
    (``XRAY_PSEUDONYM_KEY``), else not stored: the result's ``unkeyed`` counts
    the rows whose header named a patient, study or series then.
    """
    pseudonyms = pseudonyms or Pseudonyms.from_environment()
    spec = spec if isinstance(spec, PipelineSpec) else PipelineSpec.from_dict(spec)
    # A batch runs in a worker that owns one core; OpenCV's own thread pool would
    # oversubscribe it.
    cv2.setNumThreads(1)
    target = ScanStore.open(store, storage_options)
    rows, t0 = [], time.perf_counter()
    pipeline_hash = spec.hash  # a JSON dump and a sha256: once, not per row
    # The frames of one file are read, hashed and their header parsed once:
    # (uri, bytes, sha256, (header columns, unkeyed) or None).
    last: tuple[str, bytes, str, tuple[dict, bool] | None] | None = None
    found: list[tuple[int, int]] = []  # (slot, frames) of multi-frame files listed uncounted
    unkeyed = 0
    with target.writer(batch.start, len(batch.items)) as writer:
        for slot, item in enumerate(batch.items):
            row = columns.metadata_row(
                image_id=item.image_id,
                source=item.uri,
                frame=item.frame,
                frames=item.frames or 0,  # 0: not counted yet
                size=item.size,
                mtime=item.mtime,
                pipeline_hash=pipeline_hash,
                run_id=run_id,
            )
            try:
                if last is None or last[0] != item.uri:
                    data = Storage.from_url(item.uri, source_options).read_bytes()
                    header = _header(data, pseudonyms)
                    last = (item.uri, data, hashlib.sha256(data).hexdigest(), header)
                data, row["sha256"], header = last[1], last[2], last[3]
                if header is not None:  # a DICOM's: every frame's row has them
                    row.update(header[0])
                    unkeyed += header[1]
                if item.frames is None:  # listed without counting: this is frame 0
                    frames = _frames_in(data)
                    first = counted(item, frames)
                    row.update(image_id=first.image_id, frame=first.frame, source_frames=frames)
                    if frames > 1:
                        found.append((slot, frames))
                image = decode_image(data, name=row["image_id"], frame=row["frame"])
                row["height"], row["width"] = int(image.shape[0]), int(image.shape[1])
                row["channels"] = 1 if image.ndim == 2 else int(image.shape[2])
                row["source_dtype"] = str(image.dtype)
                outputs = run_pipeline(image, spec)
                row.update(measure.statistics(outputs["preprocessed"]))
                row["checksum"] = columns.checksum(outputs["preprocessed"])
            except Exception as exc:  # one bad input is a failed row, never a failed batch
                row["error"] = f"{type(exc).__name__}: {exc}"
            else:
                # Outside the per-input handler: a store that cannot be written
                # (a full disk, say) fails the batch, not this input.
                writer.put(slot, outputs)
                row["row"] = batch.start + slot
                row["status"] = "ok"
            if batch.labels and batch.labels[slot]:
                _label(row, batch.labels[slot])
            rows.append(row)
        compute_s = time.perf_counter() - t0
    if commit:
        target.commit_rows(rows, run_id=run_id, fence=fence, pipeline_hash=pipeline_hash)
        written = None
    else:
        written = target.write_rows(rows, run_id=run_id, part=batch.start)
    ok = sum(r["status"] == "ok" for r in rows)
    return {
        "table_file": written,
        "start": batch.start,
        "ok": ok,
        "failed": len(rows) - ok,
        "compute_s": compute_s,
        "total_s": time.perf_counter() - t0,
        "failures": [(r["image_id"], r["error"]) for r in rows if r["status"] != "ok"],
        "pid": os.getpid(),
        "rows": [r["row"] for r in rows if r["status"] == "ok"],
        "items": [(r["row"], r["image_id"]) for r in rows if r["status"] == "ok"],
        "frames": found,
        "unkeyed": unkeyed,
    }


def _header(data: bytes, pseudonyms: Pseudonyms | None) -> tuple[dict[str, Any], bool] | None:
    """A source file's header columns (None: not a DICOM, or its header cannot be
    read), and whether it names a patient, study or series that no key could
    pseudonymise."""
    if image_format(data) != "dicom":
        return None
    ds = read_header(data)
    if ds is None:
        return None
    columns = header_columns(ds, pseudonyms)
    named = columns.pop("_identifiers")
    return columns, bool(named and pseudonyms is None)


def _label(row: dict[str, Any], labels: dict[str, Any]) -> None:
    """A labels file's columns over ``row``'s: its values win where it has one
    (MIMIC-CXR's and ChestX-ray8's ids stay theirs), a header's where it has none."""
    row.update({k: v for k, v in labels.items() if v is not None or k not in HEADER_COLUMNS})
    if not any(row[k] is not None and labels.get(k) is None for k in PSEUDONYM_COLUMNS):
        row["pseudonym_key"] = None  # no pseudonym of the header's is left


def _frames_in(data: bytes) -> int:
    """The frames of a source file read whole: a DICOM's Number of Frames, 1 for
    any other file and for a header that cannot be read (decoding then fails,
    with the reason)."""
    if image_format(data) != "dicom":
        return 1
    try:
        return dicom_frames(data)
    except ImageDecodeError:
        return 1


def finish_run(
    *,
    store: str,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
    pipeline_hash: str | None = None,
) -> int:
    """The end of a run wherever it is called (a Dask worker, so that the flow's
    process never holds the run's table files or its history): the batches'
    files compacted (:meth:`~xraycore.store.ScanStore.finish_run`), then what
    killed writers left removed (:meth:`~xraycore.store.ScanStore.end_run`, for
    the lease holder, whose batches are all done); returns the store's rows."""
    target = ScanStore.open(store, storage_options)
    rows = target.finish_run(run_id, pipeline_hash=pipeline_hash)
    target.end_run(run_id)
    return rows


def classify_rows(
    items: list[tuple[int, str]],
    *,
    store: str,
    model: str,
    contract: dict | None = None,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
    commit: bool = True,
) -> dict[str, Any]:
    """Score stored rows with an ONNX model and commit their predictions.

    ``items`` are (row, image_id) pairs, known to the caller from the metadata
    it already holds. Reads ``preprocessed`` for those rows from the store (no
    pixels travel through the caller) and returns counts only. With
    ``commit=False`` the predictions are written as a file of their table for
    the run's committer, and the result's ``table_file`` describes it.
    """
    from xraycore.predict.contract import ModelContract, OnnxClassifier

    target = ScanStore.open(store, storage_options)
    c = ModelContract.from_dict(contract) if contract else None
    classifier = OnnxClassifier(model, c, storage_options)
    ids = {int(row): image_id for row, image_id in items}
    rows = sorted(ids)
    scans = target.read("preprocessed", rows) if rows else np.zeros((0, 1, 1), np.uint8)
    scored, positive = _scored(classifier, rows, scans)
    now = datetime.now(UTC)
    lineage = classifier.contract.training or {}
    records = [
        columns.prediction_row(
            image_id=ids[r],
            row=r,
            score=score,
            label=label,
            model=model,
            model_sha256=classifier.sha256,
            run_id=run_id,
            classified_at=now,
            finding=finding,
            training_store_version=lineage.get("store_version"),
            training_rows_sha256=lineage.get("rows_sha256"),
        )
        for r, finding, score, label in scored
    ]
    written = None
    if not commit and records:
        written = target.write_predictions(records, run_id=run_id, part=min(rows, default=0))
    elif commit:
        target.commit_predictions(records, run_id=run_id)
    counts = {"rows": len(rows), "positive": positive}
    return counts if commit else {**counts, "table_file": written}


def _scored(classifier, rows, scans) -> tuple[list[tuple], int]:
    """(row, finding, score, label) per prediction (finding None for a model of one
    finding, one per finding of a multi-output model), and how many rows are
    positive (have a finding called present)."""
    findings = classifier.contract.findings
    if not findings:
        scores = classifier.scores(scans) if rows else np.zeros(0)
        labels = classifier.labels(scores)
        scored = [(r, None, s, lab) for r, s, lab in zip(rows, scores, labels, strict=True)]
        return scored, sum(lab == classifier.contract.labels[1] for lab in labels)
    scores = classifier.scores(scans) if rows else np.zeros((0, len(findings)))
    labels = classifier.finding_labels(scores)
    scored = [
        (r, f, s, lab)
        for r, row_scores, row_labels in zip(rows, scores, labels, strict=True)
        for f, s, lab in zip(findings, row_scores, row_labels, strict=True)
    ]
    return scored, sum(any(not columns.is_absent_label(lab) for lab in row) for row in labels)
