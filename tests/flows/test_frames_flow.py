"""The flow lists a new DICOM file without reading it: the batch that reads it
whole counts its frames, and a multi-frame file's later frames follow in
batches of their own. Every frame gets its own row, pixels and labels."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_files import make_dicom

from flows.cluster import local_cluster
from flows.preprocess import preprocess_dataset
from flows.server import run_flow
from xraycore.image.decode import decode_image
from xraycore.image.pipeline import PipelineSpec, run_pipeline
from xraycore.image.synth import phantom_chest
from xraycore.store import ScanStore
from xraycore.store.verify import verify_store

pytest.importorskip("pydicom")

SIZE = 64


def _series(frames: int, seed: int) -> bytes:
    """Frames that differ, so a frame mix-up shows in the pixels."""
    scans = [
        phantom_chest(96, seed=seed + k).astype(np.uint16) * (40 + 9 * k) for k in range(frames)
    ]
    return make_dicom(np.stack(scans))


def _run(source, store, **kw):
    kw.setdefault("cluster", local_cluster(1))
    return run_flow(
        preprocess_dataset, source=str(source), store=str(store), size=SIZE, batch_size=4, **kw
    )


def test_a_new_multi_frame_file_gives_one_row_per_frame_with_its_pixels_and_labels(tmp_path):
    import cv2

    src = tmp_path / "source"
    src.mkdir()
    (src / "a_series.dcm").write_bytes(_series(6, seed=1))
    for i in range(3):
        (src / f"b_{i}.dcm").write_bytes(
            make_dicom(phantom_chest(80, seed=10 + i).astype(np.uint16) * 50)
        )
    cv2.imwrite(str(src / "c_plain.png"), phantom_chest(72, seed=8))
    labels = tmp_path / "Data_Entry_2017.csv"
    labels.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        "a_series.dcm,Effusion,0,11,58,M,PA,96,96,0.14,0.14\n"
        "b_0.dcm,No Finding,0,12,40,F,PA,80,80,0.14,0.14\n"
    )

    first = _run(src, tmp_path / "store", labels=str(labels))
    # 5 files listed; the series' frames 1-5 are found by the batch that read it
    assert (first["inputs"], first["ok"], first["failed"]) == (10, 10, 0), first
    assert first["batches"] == 2 + 2  # 5 files in batches of 4, then 5 later frames

    store = ScanStore.open(str(tmp_path / "store"))
    rows = {r["image_id"]: r for r in store.read_metadata().to_pylist()}
    assert sorted(rows) == [
        *(f"a_series.dcm#{k}" for k in range(6)),
        "b_0.dcm",
        "b_1.dcm",
        "b_2.dcm",
        "c_plain.png",
    ]
    data, spec = (src / "a_series.dcm").read_bytes(), PipelineSpec(size=SIZE)
    for k in range(6):
        r = rows[f"a_series.dcm#{k}"]
        assert (r["frame"], r["source_frames"], r["status"]) == (k, 6, "ok")
        expected = run_pipeline(decode_image(data, frame=k), spec)["preprocessed"]
        assert np.array_equal(store.read("preprocessed", r["row"]), expected), k
        assert r["finding_effusion"] is True
    assert [rows[f"b_{i}.dcm"]["source_frames"] for i in range(3)] == [1, 1, 1]
    assert rows["b_0.dcm"]["frame"] is None and rows["b_0.dcm"]["finding_effusion"] is False
    assert len({r["row"] for r in rows.values()}) == 10
    assert verify_store(store).clean

    again = _run(src, tmp_path / "store", labels=str(labels))
    assert (again["ok"], again["skipped"], again["batches"]) == (0, 10, 0), again

    # replaced by a file of two frames: listed uncounted again, processed again
    (src / "a_series.dcm").write_bytes(_series(2, seed=30))
    changed = _run(src, tmp_path / "store")
    assert (changed["ok"], changed["skipped"], changed["batches"]) == (2, 4, 2), changed
    latest = ScanStore.open(str(tmp_path / "store")).read_metadata().to_pylist()
    now = {(r["frame"], r["source_frames"]) for r in latest if r["run_id"] == changed["run_id"]}
    assert now == {(0, 2), (1, 2)}
