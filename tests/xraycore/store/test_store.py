"""The store format (xraycore.store.schema) and ScanStore / ShardWriter on their own."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from stores import build_store, png_files, source_files

from xraycore.batch import Batch, process_batch
from xraycore.image.decode import decode_image
from xraycore.image.pipeline import PipelineSpec, run_pipeline
from xraycore.image.synth import phantom_chest
from xraycore.store import ScanStore, StoreConflictError, columns, packing, schema
from xraycore.store._delta import latest_rows
from xraycore.store.packing import ArraySpec
from xraycore.store.schema import StoreFormatError

EXACT = ("preprocessed", "canny", "mask", "histogram")
PACKED = ("log", "gradient_magnitude", "sobel")


def _assert_round_trip(store: ScanStore, spec: PipelineSpec) -> dict[str, float]:
    """Every stored row against run_pipeline's float32 output; returns the worst
    error of each packed map as a fraction of that map's range."""
    worst = dict.fromkeys(PACKED, 0.0)
    table = store.read_metadata()
    for r in table.to_pylist():
        assert r["status"] == "ok", r["error"]
        expected = run_pipeline(decode_image(Path(r["source"]).read_bytes()), spec)
        for name in EXACT:
            got = store.read(name, r["row"])
            assert got.dtype == expected[name].dtype, name
            assert np.array_equal(got, expected[name]), name
        for name in PACKED:
            got = store.read(name, r["row"])
            assert got.dtype == np.float32
            span = float(np.ptp(expected[name]))
            err = float(np.abs(got - expected[name]).max())
            worst[name] = max(worst[name], err / span)
        assert r["checksum"] == columns.checksum(store.read("preprocessed", r["row"]))
    return worst


def test_edge_maps_within_half_a_percent_and_exact_maps_bit_identical_on_real_scans(
    tmp_path, chestxray8_files
):
    spec = PipelineSpec()
    store = build_store(str(tmp_path / "store"), chestxray8_files, spec, batch_size=8)
    worst = _assert_round_trip(store, spec)
    print("worst error, fraction of each map's range:", worst)
    assert all(w <= 0.005 for w in worst.values()), worst
    # The bound each array declares holds too.
    for name, a in store.arrays().items():
        assert a.packed == (name in PACKED)


def test_round_trip_on_phantoms_with_a_partial_last_shard(tmp_path):
    spec = PipelineSpec(size=256)
    images = [phantom_chest(256, seed=i, opacity=i % 2 == 1) for i in range(11)]
    store = build_store(str(tmp_path / "store"), png_files(tmp_path, images), spec, batch_size=8)
    assert store.batch_size == 8 and store.shard_size == 8
    worst = _assert_round_trip(store, spec)
    assert all(w <= 0.005 for w in worst.values()), worst
    # Rows 11..15 were never given an image: every array reads as zero there.
    for name in ("preprocessed", *PACKED):
        assert not np.any(store.read(name, slice(11, 16)))


def test_bytes_per_scan_default_and_preprocessed_only(tmp_path, chestxray8_files):
    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    full = tmp_path / "full"
    build_store(str(full), chestxray8_files, PipelineSpec(), batch_size=16)
    only = tmp_path / "only"
    build_store(str(only), chestxray8_files, PipelineSpec(outputs=()), batch_size=16)
    n = len(chestxray8_files)
    per_scan = size(full / "images.zarr") / n
    print(f"default store {per_scan / 1e6:.2f} MB per scan")
    assert per_scan <= 2.5e6
    assert ScanStore.open(str(only)).arrays().keys() == {"preprocessed"}
    assert size(only / "images.zarr") / n <= 1.0e6


def test_failed_input_reads_as_zeros_and_does_not_shift_rows(tmp_path):
    spec = PipelineSpec(size=64)
    paths = png_files(tmp_path, [phantom_chest(64, seed=i) for i in range(3)])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    paths.insert(1, bad)
    store_url = str(tmp_path / "store")
    store = ScanStore.open(store_url)
    store.initialise(spec, batch_size=4)
    store.ensure_capacity(4)
    result = process_batch(
        Batch(start=0, items=tuple(source_files(paths))), store=store_url, spec=spec, run_id="r"
    )
    assert (result["ok"], result["failed"]) == (3, 1)
    assert result["rows"] == [0, 2, 3]
    assert not np.any(store.read("preprocessed", 1))
    assert not np.any(store.read("log", 1))
    for row, path in ((0, paths[0]), (2, paths[2]), (3, paths[3])):
        expected = run_pipeline(decode_image(path.read_bytes()), spec)
        assert np.array_equal(store.read("preprocessed", row), expected["preprocessed"])


def test_metadata_columns_and_types_come_from_the_schema(tmp_path):
    import pyarrow as pa

    spec = PipelineSpec(size=64)
    paths = png_files(tmp_path, [phantom_chest(64, seed=1)])
    store = build_store(str(tmp_path / "store"), paths, spec, batch_size=2)
    table = store.read_metadata()
    assert table.column_names[: len(columns.METADATA_COLUMNS)] == list(columns.METADATA_COLUMNS)
    assert table.schema.field("processed_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("row").type == pa.int64()
    row = table.to_pylist()[0]
    stored = store.read("preprocessed", row["row"])
    assert row["checksum"] == f"crc32:{zlib.crc32(stored.tobytes()):08x}"


def test_metadata_part_keeps_label_columns_missing_from_the_first_row(tmp_path):
    store = ScanStore.open(str(tmp_path / "s"))
    store.storage.makedirs()
    now = datetime.now(UTC)
    rows = [
        {"image_id": "a", "source": "a", "processed_at": now},
        {"image_id": "b", "source": "b", "processed_at": now, "finding_x": True},
    ]
    store.commit_rows(rows, run_id="r")
    table = store.read_metadata()
    assert table.column("finding_x").to_pylist() == [None, True]


def test_format_1_store_is_refused_with_how_to_rebuild(tmp_path):
    import zarr

    url = str(tmp_path / "old")
    group = zarr.open_group(str(tmp_path / "old" / "images.zarr"), mode="w", zarr_format=3)
    group.attrs.update({"format": 1, "pipeline_hash": "x", "shard_size": 64, "arrays": []})
    store = ScanStore.open(url)
    with pytest.raises(StoreFormatError, match=r"format 1.*--overwrite"):
        store.info()
    with pytest.raises(StoreFormatError, match="Rebuild"):
        store.read("preprocessed", 0)
    with pytest.raises(StoreFormatError):
        store.initialise(PipelineSpec(size=64), batch_size=64)
    # --overwrite discards it and starts a format-2 store.
    store.initialise(PipelineSpec(size=64), batch_size=64, overwrite=True)
    assert store.info()["format"] == schema.FORMAT


def test_another_batch_size_or_spec_is_refused(tmp_path):
    store = ScanStore.open(str(tmp_path / "s"))
    store.initialise(PipelineSpec(size=64), batch_size=32)
    with pytest.raises(StoreConflictError, match="--batch-size 32"):
        store.initialise(PipelineSpec(size=64), batch_size=64)
    with pytest.raises(StoreConflictError, match="pipeline"):
        store.initialise(PipelineSpec(size=128), batch_size=32)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        ScanStore.open(str(tmp_path / "t")).initialise(PipelineSpec(size=64), batch_size=0)


@pytest.mark.parametrize(("batch_size", "shard"), [(64, 16), (32, 16), (24, 12), (7, 7), (17, 1)])
def test_shards_divide_the_batch(tmp_path, batch_size, shard):
    store = ScanStore.open(str(tmp_path / "s"))
    store.initialise(PipelineSpec(size=32), batch_size=batch_size)
    assert store.shard_size == shard
    assert store.zarr_array("preprocessed").shards == (shard, 32, 32)


def test_writer_checks_alignment_order_and_range(tmp_path):
    spec = PipelineSpec(size=32)
    store = ScanStore.open(str(tmp_path / "s"))
    store.initialise(spec, batch_size=8)
    store.ensure_capacity(16)
    with pytest.raises(ValueError, match="not aligned"):
        store.writer(4, 4)
    with pytest.raises(ValueError, match="at most 8 rows"):
        store.writer(0, 9)
    outputs = run_pipeline(phantom_chest(32), spec)
    writer = store.writer(8, 8)
    writer.put(7, outputs)
    with pytest.raises(ValueError, match="outside"):
        writer.put(8, outputs)
    writer.close()
    assert np.array_equal(store.read("preprocessed", 15), outputs["preprocessed"])
    assert not np.any(store.read("preprocessed", slice(8, 15)))


def _small_store(tmp_path: Path, *, rows: int, seed: int):
    """A 32 px store in batches of 8 with room for ``rows``, and one scan's outputs."""
    spec = PipelineSpec(size=32)
    store = ScanStore.open(str(tmp_path / "s"))
    store.initialise(spec, batch_size=8)
    store.ensure_capacity(rows)
    return store, run_pipeline(phantom_chest(32, seed=seed), spec)


def test_a_later_batch_reusing_shard_buffers_never_shows_an_earlier_batchs_pixels(tmp_path):
    """Writers of one process reuse shard buffers (fresh pages are costly): a
    row that gets no image must still read as zero, not as what the buffer held
    for the previous batch; two writers at once never share a buffer."""
    store, outputs = _small_store(tmp_path, rows=24, seed=1)
    with store.writer(0, 8) as first:
        for slot in range(8):
            first.put(slot, outputs)
        held = first._buffer(0)
    with store.writer(8, 8) as second, store.writer(16, 8) as third:
        second.put(0, outputs)  # slots 1..7 fail
        third.put(7, outputs)  # slots 0..6 fail
        assert second._buffer(0) is held  # reused...
        assert third._buffer(0) is not held  # ...by one writer only
    assert np.array_equal(store.read("preprocessed", 0), outputs["preprocessed"])
    assert np.array_equal(store.read("preprocessed", 8), outputs["preprocessed"])
    assert np.array_equal(store.read("preprocessed", 23), outputs["preprocessed"])
    for name in ("preprocessed", *PACKED, "canny", "mask", "histogram"):
        assert not np.any(store.read(name, slice(9, 16))), name
        assert not np.any(store.read(name, slice(16, 23))), name


def test_without_the_direct_encoder_the_writer_goes_through_zarr(tmp_path, monkeypatch):
    """A layout (or a Zarr) the direct encoder does not know: Zarr writes every array."""
    from xraycore.store import _codec

    monkeypatch.setattr(_codec.ShardEncoder, "for_array", classmethod(lambda *a: None))
    store, outputs = _small_store(tmp_path, rows=8, seed=2)
    with store.writer(0, 8) as writer:
        assert writer._encoders == {}
        writer.put(5, outputs)
    assert np.array_equal(store.read("preprocessed", 5), outputs["preprocessed"])
    assert np.array_equal(store.read("canny", 5), outputs["canny"])
    assert not np.any(store.read("log", 4))


def test_shards_written_directly_are_the_bytes_zarr_writes(tmp_path):
    """The writer encodes image shards itself (the array's own codecs, not
    Zarr's async pipeline): every object must equal what Zarr writes for the
    same rows, a failed (fill) row and a partial shard included."""
    import zarr

    spec = PipelineSpec(size=64)
    images = [phantom_chest(64, seed=i, opacity=i % 2 == 1) for i in range(7)]
    outputs = [run_pipeline(image, spec) for image in images]
    direct = ScanStore.open(str(tmp_path / "direct"))
    direct.initialise(spec, batch_size=8)
    direct.ensure_capacity(16)
    with direct.writer(8, 8) as writer:
        assert set(writer._encoders) == {a.name for a in packing.array_specs(spec)} - {"histogram"}
        for slot, out in enumerate(outputs):
            if slot != 3:  # slot 3 fails; slot 7 is past the last input
                writer.put(slot, out)

    # The same rows through Zarr's own write path.
    by_zarr = ScanStore.open(str(tmp_path / "zarr"))
    by_zarr.initialise(spec, batch_size=8)
    by_zarr.ensure_capacity(16)
    for name, a in by_zarr.arrays().items():
        block = np.full((8, *a.shape), a.fill_value, a.dtype)
        for slot, out in enumerate(outputs):
            if slot != 3:
                a.pack(out[name], block[slot])
        with zarr.config.set({"array.write_empty_chunks": True}):
            by_zarr.group("a")[name][8:16] = block

    def objects(root: Path) -> dict[str, bytes]:
        files = (root / "images.zarr").rglob("*")
        return {
            str(f.relative_to(root)): f.read_bytes()
            for f in files
            if f.is_file() and "c" in f.relative_to(root).parts
        }

    got, expected = objects(tmp_path / "direct"), objects(tmp_path / "zarr")
    assert got.keys() == expected.keys() and len(got) == len(direct.arrays())
    for key in expected:
        assert got[key] == expected[key], key
    # And Zarr reads them back.
    assert np.array_equal(direct.read("preprocessed", 12), outputs[4]["preprocessed"])
    assert not np.any(direct.read("log", 11)) and not np.any(direct.read("log", 15))


@pytest.mark.parametrize("name", PACKED)
def test_packing_never_clips_and_errs_by_at_most_half_a_step(name):
    (a,) = [x for x in packing.array_specs(PipelineSpec(size=64)) if x.name == name]
    lo = a.add_offset
    hi = a.add_offset + a.scale_factor * (np.iinfo(a.dtype).max)
    bound = {"log": 179.63, "gradient_magnitude": 50.86, "sobel": 255.0}[name]
    assert lo <= (-bound if name == "log" else 0.0) and hi >= bound
    rng = np.random.default_rng(0)
    low = -bound if name == "log" else 0.0
    values = rng.uniform(low, bound, (64, 64)).astype(np.float32)
    values[0, :2] = (low, bound)
    packed = np.empty(values.shape, a.dtype)
    a.pack(values, packed)
    back = a.unpack(packed)
    assert back.dtype == np.float32
    assert np.abs(back - values).max() <= a.scale_factor / 2 + 1e-6
    # An unwritten row decodes to physical zero.
    assert a.unpack(np.array([a.fill_value], a.dtype))[0] == 0.0


def test_filter_bounds_are_reached_and_hold_for_a_worst_case_image():
    from xraycore.image import edges

    # A step edge and a single bright pixel reach the gradient and LoG bounds.
    (log_spec, ggm_spec) = [
        a for a in packing.array_specs(PipelineSpec(size=64)) if a.name in PACKED[:2]
    ]
    spot = np.zeros((33, 33), np.uint8)
    spot[16, 16] = 255
    ring = np.full((33, 33), 255, np.uint8)
    ring[16, 16] = 0
    log_range = (
        float(edges.gaussian_laplace(spot).min()),
        float(edges.gaussian_laplace(ring).max()),
    )
    step = np.zeros((33, 33), np.uint8)
    step[:, 17:] = 255
    ggm_max = float(edges.gaussian_gradient_magnitude(step).max())
    top = ggm_spec.scale_factor * np.iinfo(ggm_spec.dtype).max
    assert log_spec.add_offset <= log_range[0] and ggm_max <= top


def test_dask_from_zarr_with_the_recorded_scale_equals_read(tmp_path):
    """The README's recipe: raw Zarr through Dask, unpacked with the attributes."""
    import dask.array as da
    import zarr

    spec = PipelineSpec(size=64)
    paths = png_files(tmp_path, [phantom_chest(64, seed=i) for i in range(3)])
    store = build_store(str(tmp_path / "store"), paths, spec, batch_size=4)
    arr = zarr.open_array(str(tmp_path / "store" / "images.zarr"), path="log", mode="r")
    lazy = da.from_zarr(arr)
    physical = lazy * arr.attrs["scale_factor"] + arr.attrs["add_offset"]
    assert np.allclose(physical[:3].compute(), store.read("log", slice(0, 3)), atol=0)


def test_array_spec_survives_its_attributes():
    for a in packing.array_specs(PipelineSpec(size=64)):
        back = ArraySpec.from_attributes(a.name, a.dtype, a.shape, a.attributes())
        assert back == a


def test_a_dataset_with_open_arrays_pickles_for_dataloader_workers(tmp_path):
    """A DataLoader with spawned workers pickles the dataset after the parent
    has read from it (arrays open, local Zarr store included)."""
    import pickle

    from xraycore.train.baseline import ScanDataset

    spec = PipelineSpec(size=32)
    paths = png_files(tmp_path, [phantom_chest(32, seed=i) for i in range(3)])
    build_store(str(tmp_path / "store"), paths, spec, batch_size=4)
    dataset = ScanDataset(str(tmp_path / "store"))
    first = dataset[1]
    again = pickle.loads(pickle.dumps(dataset))
    assert len(again) == len(dataset) == 3
    got = again[1]
    expected = first[0] if isinstance(first, tuple) else first
    assert np.array_equal(got[0] if isinstance(got, tuple) else got, expected)


def test_the_latest_row_per_key_wins_with_a_null_frame_a_key_of_its_own():
    import pyarrow as pa

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    table = pa.Table.from_pylist(
        [
            {"source": "a", "frame": None, "processed_at": t0, "v": 1},
            {"source": "a", "frame": None, "processed_at": t0 + timedelta(days=1), "v": 2},
            {"source": "a", "frame": 0, "processed_at": t0, "v": 3},
            {"source": "b", "frame": None, "processed_at": t0 + timedelta(days=2), "v": 4},
            {"source": "b", "frame": None, "processed_at": t0, "v": 5},
        ]
    )
    latest = latest_rows(table, columns.METADATA_KEY, columns.METADATA_TIME)
    assert latest.column("v").to_pylist() == [3, 2, 4]  # sorted by key, nulls last
    predictions = pa.Table.from_pylist(
        [
            {"image_id": "a", "model_sha256": "m", "finding": None, "classified_at": t0, "v": 1},
            {
                "image_id": "a",
                "model_sha256": "m",
                "finding": None,
                "classified_at": t0 + timedelta(1),
                "v": 2,
            },
            {"image_id": "a", "model_sha256": "n", "finding": None, "classified_at": t0, "v": 3},
        ]
    )
    latest = latest_rows(predictions, columns.PREDICTION_KEY, columns.PREDICTION_TIME)
    assert latest.column("v").to_pylist() == [2, 3]


def test_shard_keys_name_the_stored_objects_of_every_array(tmp_path):
    store = build_store(
        tmp_path / "store",
        png_files(tmp_path, [phantom_chest(64, seed=i) for i in range(20)]),
        PipelineSpec(size=32),
        batch_size=16,
    )
    for name in store.arrays():
        for shard in (0, 1):
            key = store.shard_key(name, shard)
            assert store.storage.exists(key), key
            decoder = store.shard_decoder(name)
            if decoder is not None:  # the object holds that shard's rows
                rows = slice(shard * store.shard_size, (shard + 1) * store.shard_size)
                stored = decoder.decode(store.storage.read_bytes(key))
                np.testing.assert_array_equal(stored, store.read(name, rows, decode=False))
    assert store.shard_key("preprocessed", 1) == "images.zarr/preprocessed/c/1/0/0"
    assert store.shard_key("histogram", 1) == "images.zarr/histogram/c/1/0"


def test_read_metadata_of_some_rows_reads_those_rows_only(tmp_path):
    images = [phantom_chest(48, seed=i) for i in range(6)]
    spec = PipelineSpec(size=32, enhance=(), outputs=())
    store = build_store(str(tmp_path / "store"), png_files(tmp_path, images), spec, batch_size=2)
    every = store.read_metadata()
    some = store.read_metadata(rows=[1, 4, 99])
    assert sorted(some["row"].to_pylist()) == [1, 4]
    assert some.column_names == every.column_names
    assert store.read_metadata(rows=[]) is None
    # Some columns of some rows: those columns (image_id always, for the order),
    # one the table does not have left out.
    few = store.read_metadata(rows=[4, 1], columns=["row", "status", "patient_id", "nonesuch"])
    assert few.column_names == ["image_id", "row", "status", "patient_id"]
    assert (
        few.to_pylist()
        == every.filter(pc.is_in(every["row"], pa.array([1, 4])))
        .select(few.column_names)
        .to_pylist()
    )
    # A table written before a fixed column: asked for, it reads as null.
    from xraycore.store._delta import commit_info

    store.metadata.replace(every.drop_columns(["patient_id"]), commit_info("batch", "older"))
    old = store.read_metadata(rows=[1], columns=["patient_id", "source"])
    assert old.column_names == ["image_id", "source", "patient_id"]
    assert old["patient_id"].to_pylist() == [None] and old["patient_id"].type == pa.string()
