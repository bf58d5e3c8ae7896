"""Multi-frame DICOM: one row per frame, from the listing to verify (store format 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_files import make_dicom
from stores import build_store

from xraycore.batch import plan_batches
from xraycore.image.decode import decode_image
from xraycore.image.pipeline import PipelineSpec, run_pipeline
from xraycore.image.synth import phantom_chest
from xraycore.store import ScanStore, schema
from xraycore.store.catalog import list_sources
from xraycore.store.schema import StoreFormatError
from xraycore.store.storage import Storage
from xraycore.store.verify import repair_store, verify_store
from xraycore.store.versions import vacuum_store

pytest.importorskip("pydicom")

SPEC = PipelineSpec(size=64)
BATCH = 4


def _frames() -> np.ndarray:
    """Three different frames, 16-bit, so a frame mix-up shows in the pixels."""
    return np.stack([phantom_chest(96, seed=s).astype(np.uint16) * (40 + 20 * s) for s in range(3)])


@pytest.fixture
def source(tmp_path) -> Path:
    import cv2

    src = tmp_path / "source"
    (src / "series").mkdir(parents=True)
    (src / "series" / "tomo.dcm").write_bytes(make_dicom(_frames()))
    (src / "single.dcm").write_bytes(make_dicom(phantom_chest(80, seed=7).astype(np.uint16) * 50))
    cv2.imwrite(str(src / "plain.png"), phantom_chest(72, seed=8))
    return src


def _run(source: Path, store_url: str, run_id: str, labels=None) -> ScanStore:
    """One run as the flow does it: list, plan against the store, process, commit."""
    return build_store(store_url, source, SPEC, batch_size=BATCH, labels=labels, run_id=run_id)


def test_the_listing_has_one_entry_per_frame(source):
    found = list_sources(Storage.from_url(str(source)))
    assert [(f.image_id, f.frame) for f in found] == [
        ("plain.png", None),
        ("series/tomo.dcm#0", 0),
        ("series/tomo.dcm#1", 1),
        ("series/tomo.dcm#2", 2),
        ("single.dcm", None),
    ]
    assert len({f.uri for f in found if f.frame is not None}) == 1  # one file


def test_a_three_frame_file_gives_three_ok_rows_with_each_frames_pixels(source, tmp_path):
    store = _run(source, str(tmp_path / "store"), "r1")
    rows = {r["image_id"]: r for r in store.read_metadata().to_pylist()}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    data = (source / "series" / "tomo.dcm").read_bytes()
    for k in range(3):
        r = rows[f"series/tomo.dcm#{k}"]
        assert r["frame"] == k
        expected = run_pipeline(decode_image(data, frame=k), SPEC)["preprocessed"]
        assert np.array_equal(store.read("preprocessed", r["row"]), expected), k
    assert rows["single.dcm"]["frame"] is None and rows["plain.png"]["frame"] is None
    # The frames differ, so equal pixels above are not an accident of one frame thrice.
    frames = [store.read("preprocessed", rows[f"series/tomo.dcm#{k}"]["row"]) for k in range(3)]
    assert not np.array_equal(frames[0], frames[1])


def test_a_rerun_skips_every_frame_and_labels_reach_every_frame(source, tmp_path):
    labels = {"tomo.dcm": {"finding_labels": ["Effusion"], "finding_effusion": True}}
    store = _run(source, str(tmp_path / "store"), "r1", labels=labels)
    meta = store.read_metadata()
    again = plan_batches(
        list_sources(Storage.from_url(str(source))),
        meta,
        pipeline_hash=SPEC.hash,
        first_free_row=store.capacity(),
        batch_size=BATCH,
    )
    assert (again.skipped, again.batches) == (5, [])
    by_id = {r["image_id"]: r for r in meta.to_pylist()}
    assert [by_id[f"series/tomo.dcm#{k}"]["finding_effusion"] for k in range(3)] == [True] * 3
    assert by_id["single.dcm"]["finding_effusion"] is None


def test_verify_and_repair_know_frames(source, tmp_path):
    store = _run(source, str(tmp_path / "store"), "r1")
    assert verify_store(store).clean
    rows = {r["image_id"]: r for r in store.read_metadata().to_pylist()}
    # Damage the pixels of one frame only (its row no longer matches its checksum).
    frame1 = rows["series/tomo.dcm#1"]["row"]
    with store.writer(frame1 - frame1 % BATCH, BATCH) as writer:
        for r in rows.values():
            if r["row"] // BATCH == frame1 // BATCH:
                outputs = run_pipeline(phantom_chest(64, seed=99), SPEC)
                if r["row"] != frame1:
                    outputs = {name: store.read(name, r["row"]) for name in store.info()["arrays"]}
                writer.put(r["row"] % BATCH, outputs)
    report = verify_store(store)
    assert [(p.image_id, p.frame, p.kind) for p in report.problems] == [
        ("series/tomo.dcm#1", 1, "different")
    ]
    assert repair_store(store, report, run_id="fix")["rows"] == 1
    after = {r["image_id"]: r for r in store.read_metadata().to_pylist()}
    assert after["series/tomo.dcm#1"]["status"] == "failed"
    assert after["series/tomo.dcm#0"]["status"] == after["series/tomo.dcm#2"]["status"] == "ok"
    redone = _run(source, store.storage.url, "r2")
    final = {r["image_id"]: r for r in redone.read_metadata().to_pylist()}
    assert final["series/tomo.dcm#1"]["status"] == "ok" and len(final) == 5
    # The versions before the repair still read the overwritten frame: reported
    # as theirs, never marked, until a vacuum drops those versions.
    older = verify_store(redone)
    assert [(p.image_id, p.kind) for p in older.problems] == [("series/tomo.dcm#1", "different")]
    assert "older kept version" in older.problems[0].detail and not older.bad_rows
    vacuum_store(redone, keep=1)
    assert verify_store(redone).clean


def test_a_format_2_store_is_refused_with_how_to_rebuild(tmp_path):
    import zarr

    url = str(tmp_path / "old")
    group = zarr.open_group(str(tmp_path / "old" / "images.zarr"), mode="w", zarr_format=3)
    group.attrs.update({"format": 2, "pipeline_hash": "x", "shard_size": 16, "arrays": []})
    with pytest.raises(
        StoreFormatError, match=r"format 2; .*reads format 4 only.*frame.*--overwrite"
    ):
        ScanStore.open(url).info()
    assert schema.FORMAT == 4
