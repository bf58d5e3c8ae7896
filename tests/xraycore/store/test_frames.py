"""Multi-frame DICOM: one row per frame, from the listing to verify (store format 3)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from dicom_files import make_dicom
from stores import build_store

from xraycore.batch import plan_batches, plan_later_frames, process_batch
from xraycore.image.decode import decode_image, dicom_frames
from xraycore.image.pipeline import PipelineSpec, run_pipeline
from xraycore.image.synth import phantom_chest
from xraycore.sources.catalog import list_sources, recorded_frames
from xraycore.store import ScanStore, schema
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


def _with_private(data: bytes, length: int) -> bytes:
    """``data`` (a DICOM file) with a private element (0019,xx10) of ``length``
    bytes, which comes before Number of Frames (0028,0008): a long header, as
    vendors' private tags make them."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.private_block(0x0019, "XRAY TEST", create=True).add_new(0x10, "OB", b"\1" * length)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _same_size_and_mtime(path: Path, data: bytes) -> None:
    """Write ``data`` (as long as the file) over ``path``, keeping its modification time."""
    before = path.stat()
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_an_unchanged_file_takes_its_frames_from_the_store_and_is_not_read(source, tmp_path):
    (source / "IM0001").write_bytes((source / "single.dcm").read_bytes())  # DICOM by its magic
    store = _run(source, str(tmp_path / "store"), "r1")
    meta = store.read_metadata()
    frames = {r["image_id"]: r["source_frames"] for r in meta.to_pylist()}
    assert frames == {
        "IM0001": 1,
        "plain.png": 1,
        "series/tomo.dcm#0": 3,
        "series/tomo.dcm#1": 3,
        "series/tomo.dcm#2": 3,
        "single.dcm": 1,
    }
    # Same size and mtime, other bytes: a listing that read them would find no
    # frames in the first and no DICOM magic in the second.
    tomo, im = source / "series" / "tomo.dcm", source / "IM0001"
    _same_size_and_mtime(tomo, b"\0" * tomo.stat().st_size)
    _same_size_and_mtime(im, b"\0" * im.stat().st_size)
    listed = list_sources(Storage.from_url(str(source)), meta)
    assert [(f.image_id, f.frame, f.frames) for f in listed] == [
        ("IM0001", None, 1),
        ("plain.png", None, 1),
        ("series/tomo.dcm#0", 0, 3),
        ("series/tomo.dcm#1", 1, 3),
        ("series/tomo.dcm#2", 2, 3),
        ("single.dcm", None, 1),
    ]
    # Without the store the same files are read: the zeros are no DICOM.
    fresh = [f.image_id for f in list_sources(Storage.from_url(str(source)))]
    assert fresh == ["plain.png", "series/tomo.dcm", "single.dcm"]


def test_a_dicom_replaced_by_one_of_other_frames_is_listed_with_the_new_count(source, tmp_path):
    store = _run(source, str(tmp_path / "store"), "r1")
    tomo = source / "series" / "tomo.dcm"
    tomo.write_bytes(make_dicom(_frames()[:2]))
    os.utime(tomo, (1_000_000, 1_000_000))  # another version, whatever the clock's resolution
    listed = list_sources(Storage.from_url(str(source)), store.read_metadata())
    tomo_entries = [(f.image_id, f.frame, f.frames) for f in listed if "tomo" in f.image_id]
    assert tomo_entries == [("series/tomo.dcm#0", 0, 2), ("series/tomo.dcm#1", 1, 2)]
    redone = _run(source, store.storage.url, "r2")
    rows = {r["image_id"]: r for r in redone.read_metadata().to_pylist()}
    for k in range(2):
        r = rows[f"series/tomo.dcm#{k}"]
        assert (r["run_id"], r["source_frames"], r["source_size"]) == ("r2", 2, tomo.stat().st_size)
    # and the next listing knows the new version from the store
    _same_size_and_mtime(tomo, b"\0" * tomo.stat().st_size)
    again = list_sources(Storage.from_url(str(source)), redone.read_metadata())
    assert [f.frames for f in again if "tomo" in f.image_id] == [2, 2]


def test_rows_written_before_source_frames_give_the_count_of_their_frame_rows(source, tmp_path):
    meta = _run(source, str(tmp_path / "store"), "r1").read_metadata()
    old = meta.drop_columns(["source_frames"])
    tomo = source / "series" / "tomo.dcm"
    _same_size_and_mtime(tomo, b"\0" * tomo.stat().st_size)
    listed = list_sources(Storage.from_url(str(source)), old)
    assert [(f.image_id, f.frames) for f in listed if "tomo" in f.image_id] == [
        (f"series/tomo.dcm#{k}", 3) for k in range(3)
    ]


@pytest.mark.parametrize("private", [20_000, 100_000])  # past the first range, past the second
def test_a_header_longer_than_the_first_ranges_is_read_on(tmp_path, private):
    src = tmp_path / "long"
    src.mkdir()
    data = _with_private(make_dicom(_frames()), private)
    (src / "tomo.dcm").write_bytes(data)
    (src / "IM0002").write_bytes(data)  # no extension: the magic is in the first range
    listed = list_sources(Storage.from_url(str(src)))
    assert [(f.image_id, f.frames) for f in listed] == [
        *[(f"IM0002#{k}", 3) for k in range(3)],
        *[(f"tomo.dcm#{k}", 3) for k in range(3)],
    ]


def test_a_header_cut_anywhere_is_never_given_a_wrong_frame_count():
    data = _with_private(make_dicom(_frames()), 300)
    pixels = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    for cut in range(0, pixels + 12, 7):
        assert dicom_frames(data[:cut], complete=False) in (None, 3), cut
    assert dicom_frames(data[: pixels + 12], complete=False) == 3  # up to its length
    assert dicom_frames(data) == 3


def test_a_listing_that_does_not_count_frames_reads_no_dcm(source, monkeypatch):
    (source / "IM0001").write_bytes((source / "single.dcm").read_bytes())  # DICOM by its magic
    asked: list[list[str]] = []
    read_ranges = Storage.read_ranges
    monkeypatch.setattr(
        Storage,
        "read_ranges",
        lambda self, rels, *a: asked.append(rels) or read_ranges(self, rels, *a),
    )
    listed = list_sources(Storage.from_url(str(source)), count_frames=False)
    assert [(f.image_id, f.frame, f.frames) for f in listed] == [
        ("IM0001", None, 1),  # no extension: its first bytes were read, and counted
        ("plain.png", None, 1),
        ("series/tomo.dcm", None, None),  # counted by the batch that reads it
        ("single.dcm", None, None),
    ]
    assert asked == [["IM0001"]]


def test_a_batch_counts_the_frames_of_an_uncounted_file_and_records_none_it_cannot_read(
    source, tmp_path
):
    store = ScanStore.open(str(tmp_path / "store"))
    store.initialise(SPEC, batch_size=BATCH)
    listed = list_sources(Storage.from_url(str(source)), count_frames=False)
    (source / "single.dcm").unlink()  # gone between the listing and its batch
    plan = plan_batches(listed, None, pipeline_hash=SPEC.hash, first_free_row=0, batch_size=BATCH)
    store.ensure_capacity(plan.end_row)
    (batch,) = plan.batches
    result = process_batch(batch, store=store.storage.url, spec=SPEC, run_id="r1")
    assert result["frames"] == [(1, 3)]  # slot 1, tomo.dcm: 3 frames
    rows = {r["image_id"]: r for r in store.read_metadata().to_pylist()}
    assert sorted(rows) == ["plain.png", "series/tomo.dcm#0", "single.dcm"]
    assert (rows["series/tomo.dcm#0"]["frame"], rows["series/tomo.dcm#0"]["source_frames"]) == (
        0,
        3,
    )
    assert rows["single.dcm"]["status"] == "failed"
    assert rows["single.dcm"]["source_frames"] == 0  # not counted: nothing recorded
    assert "single.dcm" not in str(recorded_frames(store.read_metadata()))

    ((frame0, frames),) = [(batch.items[slot], n) for slot, n in result["frames"]]
    later = plan_later_frames([(frame0, frames)], first_free_row=plan.end_row, batch_size=BATCH)
    assert [(f.image_id, f.frame, f.frames) for b in later.batches for f in b.items] == [
        ("series/tomo.dcm#1", 1, 3),
        ("series/tomo.dcm#2", 2, 3),
    ]
    assert later.batches[0].start == plan.end_row
