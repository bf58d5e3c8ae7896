"""The training loader (xraycore.train.loader.ScanLoader) on small phantom stores."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from stores import build_store, png_files

from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.store.storage import Storage
from xraycore.train.loader import ScanLoader, epoch_order, rank_batches

ROWS = 180  # 45 shards of 4 rows
ALL_KINDS = ("preprocessed", "log", "gradient_magnitude", "canny", "histogram")


def _labelled(table):
    import pyarrow as pa

    rows = table["row"].to_numpy()
    label = pa.array([None if r % 10 == 3 else bool(r % 3 == 0) for r in rows], pa.bool_())
    split = pa.array(["train" if r % 5 else "test" for r in rows], pa.string())
    return table.append_column("finding_x", label).append_column("split", split)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loader")
    images = [phantom_chest(64, seed=i % 12, opacity=i % 2 == 1) for i in range(ROWS)]
    spec = PipelineSpec(size=64, outputs=("log", "gradient_magnitude", "canny", "histogram"))
    built = build_store(str(folder / "store"), png_files(folder, images), spec, batch_size=4)
    built.replace_rows(_labelled, run_id="labels")
    assert built.shard_size == 4
    return built


def _epoch(loader) -> list[np.ndarray]:
    return [b["row"] for b in loader]


def _rows(batches) -> list[int]:
    return [int(r) for b in batches for r in b]


# -- pixels -------------------------------------------------------------------
def test_batches_hold_exactly_what_store_read_returns(store):
    loader = ScanLoader(store, batch_size=8, arrays=ALL_KINDS, target="finding_x", seed=3)
    table = store.read_metadata().to_pylist()
    by_row = {r["row"]: r for r in table}
    n = 0
    for batch in loader:
        rows = batch["row"].tolist()
        assert batch["row"].dtype == np.int64
        assert batch["target"].dtype == np.int64
        for name in ALL_KINDS:
            expected = store.read(name, rows)
            assert batch[name].dtype == expected.dtype, name
            assert batch[name].shape == expected.shape, name
            assert np.array_equal(batch[name], expected), name  # bit for bit
        assert batch["image_id"].tolist() == [by_row[r]["image_id"] for r in rows]
        assert batch["target"].tolist() == [int(by_row[r]["finding_x"]) for r in rows]
        n += len(rows)
    assert n == sum(1 for r in table if r["finding_x"] is not None)
    # Batches kept by the caller are never overwritten by later ones (buffers
    # are reused only once nobody holds them).
    kept = list(loader)
    for batch in kept:
        assert np.array_equal(
            batch["preprocessed"], store.read("preprocessed", batch["row"].tolist())
        )
        assert np.array_equal(batch["log"], store.read("log", batch["row"].tolist()))
    assert len({id(b["preprocessed"]) for b in kept}) == len(kept)


def test_a_dropped_batch_buffer_is_used_again(store):
    loader = ScanLoader(store, batch_size=8)
    seen = set()
    for batch in loader:
        seen.add(batch["preprocessed"].__array_interface__["data"][0])
        view = batch["preprocessed"][0]  # a view holds the buffer
        del batch
    assert len(seen) <= 4 < len(loader)
    assert view.shape == (64, 64)


def test_one_buffer_pool_lends_only_what_nobody_holds():
    """The loader's batches and the store's shard writers share one pool class:
    a lent set comes back only once every array of it is free, a taken set
    never goes to a second taker before it is given back."""
    from xraycore.store import BufferPool

    pool = BufferPool(keep=2)
    layout = {"preprocessed": ((4, 8, 8), "uint8"), "log": ((4, 8, 8), "float32")}

    def address(buffers):
        return buffers["log"].ctypes.data

    first = pool.lend(layout)
    assert {n: (a.shape, a.dtype) for n, a in first.items()} == {
        "preprocessed": ((4, 8, 8), np.dtype("uint8")),
        "log": ((4, 8, 8), np.dtype("float32")),
    }
    seen = address(first)
    assert address(pool.lend(layout)) != seen  # the returned dict holds the set
    kept = first["log"][1:]  # a view of one array holds the whole set
    del first
    assert address(pool.lend(layout)) != seen
    del kept
    assert address(pool.lend(layout)) == seen
    # ``keep`` sets per layout: past it, sets are lent but not kept.
    held = [pool.lend(layout) for _ in range(3)]
    assert len({address(b) for b in held}) == 3
    assert address(pool.lend(layout)) not in {address(b) for b in held}

    taken = pool.take(layout)
    other = pool.take(layout)
    assert taken["log"] is not other["log"]
    pool.give_back(taken)
    assert pool.take(layout)["log"] is taken["log"]
    assert pool.take(layout)["log"] is not taken["log"]  # handed out once per give_back


def test_selection_follows_split_where_and_target(store):
    table = store.read_metadata().to_pylist()
    loader = ScanLoader(store, batch_size=5, split="test", where={"status": "ok"})
    assert sorted(_rows(_epoch(loader))) == sorted(r["row"] for r in table if r["row"] % 5 == 0)
    loader = ScanLoader(store, batch_size=5, where={"split": "train"}, target="finding_x")
    expected = [r["row"] for r in table if r["row"] % 5 and r["row"] % 10 != 3]
    assert sorted(_rows(_epoch(loader))) == sorted(expected)
    assert ScanLoader(store, batch_size=5, shuffle=False).order().tolist() == list(range(ROWS))


# -- exactly once ---------------------------------------------------------------
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_row_once_per_epoch_across_ranks(store, world_size):
    for drop_last in (False, True):
        per_rank = [
            _epoch(
                ScanLoader(
                    store, batch_size=7, rank=r, world_size=world_size, drop_last=drop_last, seed=1
                )
            )
            for r in range(world_size)
        ]
        rows = [x for batches in per_rank for x in _rows(batches)]
        assert len(rows) == len(set(rows))
        if drop_last:
            counts = {len(batches) for batches in per_rank}
            assert len(counts) == 1
            assert all(len(b) == 7 for batches in per_rank for b in batches)
            assert ROWS - len(rows) < world_size * 7
        else:
            assert sorted(rows) == list(range(ROWS))


def test_order_is_a_function_of_seed_and_epoch(store):
    a = ScanLoader(store, batch_size=8, seed=5)
    b = ScanLoader(store, batch_size=8, seed=5)
    assert a.order().tolist() == b.order().tolist()
    assert _rows(_epoch(a)) == a.order().tolist()
    first = a.order().tolist()
    a.set_epoch(1)
    assert a.order().tolist() != first
    assert sorted(a.order().tolist()) == sorted(first)
    assert ScanLoader(store, batch_size=8, seed=6).order().tolist() != first
    # Every rank sees the same global order: rank blocks concatenate to it.
    ranks = [ScanLoader(store, batch_size=8, seed=5, rank=r, world_size=3) for r in range(3)]
    assert [x for r in ranks for x in r.order().tolist()] == first


def test_rank_blocks_are_contiguous_and_balanced():
    bounds = [
        rank_batches(103, batch_size=10, rank=r, world_size=4, drop_last=False) for r in range(4)
    ]
    assert bounds[0][0, 0] == 0 and bounds[-1][-1, 1] == 103
    for left, right in zip(bounds, bounds[1:], strict=False):
        assert left[-1, 1] == right[0, 0]
    dropped = [
        rank_batches(103, batch_size=10, rank=r, world_size=4, drop_last=True) for r in range(4)
    ]
    assert [len(b) for b in dropped] == [2, 2, 2, 2]


# -- shuffle quality ------------------------------------------------------------
def _spearman(x: np.ndarray) -> float:
    """Rank correlation between position and value (values distinct)."""
    ranks = np.argsort(np.argsort(x))
    return float(np.corrcoef(np.arange(len(x)), ranks)[0, 1])


def test_default_shuffle_mixes_shards_and_forgets_storage_order(store):
    loader = ScanLoader(store, batch_size=32)
    for epoch in range(3):
        loader.set_epoch(epoch)
        batches = _epoch(loader)
        full = [b for b in batches if len(b) == 32]
        assert np.mean([len(set((b // 4).tolist())) for b in full]) >= 8
        assert abs(_spearman(np.concatenate(batches))) < 0.1


def test_order_function_on_a_large_synthetic_selection():
    shards = np.repeat(np.arange(2000), 16)
    for epoch in range(2):
        order = epoch_order(shards, seed=0, epoch=epoch, window=12)
        assert sorted(order.tolist()) == list(range(len(shards)))
        assert abs(_spearman(order)) < 0.1
        batches = order[: 32 * 200].reshape(200, 32)
        assert np.mean([len(set(shards[b].tolist())) for b in batches]) >= 8


# -- resume ---------------------------------------------------------------------
def _counting_reads(monkeypatch) -> list[str]:
    """Every object read from the store (a local store is mapped) from now on,
    by readers of the store's URL opened from now on (an earlier loader may
    still finish reads it had started ahead)."""
    seen: list[str] = []
    real_many, real_map, real_init = Storage.read_many, Storage.map_bytes, Storage.__post_init__

    def post_init(self):
        real_init(self)
        self._counted = True

    def read_many(self, rels):
        if getattr(self, "_counted", False):
            seen.extend(rels)
        return real_many(self, rels)

    def map_bytes(self, rel):
        if getattr(self, "_counted", False):
            seen.append(rel)
        return real_map(self, rel)

    monkeypatch.setattr(Storage, "__post_init__", post_init)

    monkeypatch.setattr(Storage, "read_many", read_many)
    monkeypatch.setattr(Storage, "map_bytes", map_bytes)
    return seen


def test_map_bytes_is_the_file_without_a_copy(store, tmp_path):
    key = store.shard_key("preprocessed", 3)
    assert bytes(store.storage.map_bytes(key)) == store.storage.read_bytes(key)
    assert store.storage.map_bytes("images.zarr/no-such-object") is None
    (tmp_path / "empty").write_bytes(b"")
    assert Storage.from_url(str(tmp_path)).map_bytes("empty") == b""
    with pytest.raises(ValueError, match="map_bytes reads local files"):
        Storage.from_url("s3://bucket/store").map_bytes("x")


def test_resume_yields_what_the_uninterrupted_loader_would_and_skips_reading(store, monkeypatch):
    whole = ScanLoader(store, batch_size=6, seed=2, arrays=("preprocessed", "log"))
    whole.set_epoch(1)
    batches = list(whole)
    first = ScanLoader(store, batch_size=6, seed=2, arrays=("preprocessed", "log"))
    first.set_epoch(1)
    it = iter(first)
    for _ in range(17):
        next(it)
    state = first.state_dict()
    assert state["batches"] == 17 and state["epoch"] == 1
    reads = _counting_reads(monkeypatch)
    t0 = time.perf_counter()
    resumed = ScanLoader(store.storage.url, batch_size=6, seed=2, arrays=("preprocessed", "log"))
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert time.perf_counter() - t0 < 5
    assert len(rest) == len(batches) - 17
    for got, want in zip(rest, batches[17:], strict=True):
        assert got["row"].tolist() == want["row"].tolist()
        assert np.array_equal(got["preprocessed"], want["preprocessed"])
        assert np.array_equal(got["log"], want["log"])
    needed = {int(r) // 4 for b in batches[17:] for r in b["row"]}
    read_shards = {int(p.split("/")[-3]) for p in reads}
    assert read_shards == needed  # shards only the skipped batches needed were not read
    assert len(reads) == 2 * len(needed)  # each shard object once


def test_state_of_another_order_is_refused(store):
    state = ScanLoader(store, batch_size=6, world_size=2).state_dict()
    with pytest.raises(ValueError, match="world_size 2 .this loader: 1."):
        ScanLoader(store, batch_size=6).load_state_dict(state)
    with pytest.raises(ValueError, match="selection"):
        ScanLoader(store, batch_size=6, world_size=2, split="test").load_state_dict(state)
    with pytest.raises(ValueError, match="an epoch has"):
        ScanLoader(store, batch_size=6, world_size=2).load_state_dict({**state, "batches": 999})


# -- torch ----------------------------------------------------------------------
def test_torch_order_does_not_depend_on_workers(store):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    for world_size, workers in ((1, 0), (1, 2), (2, 1), (3, 2), (4, 2)):
        everything = []
        for rank in range(world_size):
            loader = ScanLoader(store, batch_size=5, seed=4, rank=rank, world_size=world_size)
            got = list(DataLoader(loader.to_torch(), batch_size=None, num_workers=workers))
            assert all(isinstance(b["preprocessed"], torch.Tensor) for b in got)
            assert [b["row"].tolist() for b in got] == [b.tolist() for b in _epoch(loader)]
            everything += _rows([b["row"].numpy() for b in got])
        assert sorted(everything) == list(range(ROWS))


def test_dataloader_helper_counts_batches_for_resume(store):
    pytest.importorskip("torch")
    loader = ScanLoader(store, batch_size=6, seed=9)
    want = _epoch(loader)
    dl = loader.dataloader(num_workers=2)
    it = iter(dl)
    for _ in range(11):
        next(it)
    state = loader.state_dict()
    del it
    assert state["batches"] == 11
    resumed = ScanLoader(store, batch_size=6, seed=9)
    resumed.load_state_dict(state)
    rest = [b["row"].tolist() for b in resumed.dataloader(num_workers=2)]
    assert rest == [b.tolist() for b in want[11:]]
    assert resumed.state_dict()["batches"] == len(want)


def test_spawned_and_forked_workers(store):
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    loader = ScanLoader(store, batch_size=16, seed=1, arrays=("preprocessed", "canny"))
    want = _epoch(loader)
    for context in ("fork", "spawn"):
        dl = DataLoader(
            loader.to_torch(), batch_size=None, num_workers=2, multiprocessing_context=context
        )
        got = list(dl)
        assert [b["row"].tolist() for b in got] == [b.tolist() for b in want], context
        rows = got[0]["row"].tolist()
        assert np.array_equal(got[0]["canny"].numpy(), store.read("canny", rows))


def test_dataloader_helper_refuses_what_would_break_resume(store):
    pytest.importorskip("torch")
    loader = ScanLoader(store, batch_size=6)
    with pytest.raises(ValueError, match="batch_size is the ScanLoader's"):
        loader.dataloader(batch_size=4)
    with pytest.raises(ValueError, match="persistent_workers"):
        loader.dataloader(num_workers=1, persistent_workers=True)


# -- S3 and the cache -------------------------------------------------------------
def test_s3_with_the_cache_reads_nothing_from_s3_on_the_second_epoch(
    tmp_path, moto_endpoint, monkeypatch
):
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(k, v)
    url = f"s3://loader-{uuid.uuid4().hex[:8]}/store"
    images = [phantom_chest(64, seed=i) for i in range(24)]
    s3 = build_store(
        url, png_files(tmp_path, images), PipelineSpec(size=64, outputs=("log",)), batch_size=8
    )
    reads = _counting_reads(monkeypatch)
    cache = tmp_path / "cache"
    loader = ScanLoader(url, batch_size=5, arrays=("preprocessed", "log"), cache_dir=cache)
    first = _epoch(loader)
    assert sorted(_rows(first)) == list(range(24))
    assert len(reads) == 2 * 3  # 3 shards of 8 rows, two arrays, one request each
    loader.set_epoch(1)
    batches = list(loader)
    assert len(reads) == 6  # the second epoch came from the cache
    for b in batches:
        rows = b["row"].tolist()
        assert np.array_equal(b["preprocessed"], s3.read("preprocessed", rows))
        assert np.array_equal(b["log"], s3.read("log", rows))
    # A torn cache file (a crash while writing it) is dropped and read again.
    torn = sorted(p for p in cache.rglob("*") if p.is_file())[0]
    torn.write_bytes(torn.read_bytes()[:100])
    loader.set_epoch(2)
    for b in loader:
        assert np.array_equal(b["log"], s3.read("log", b["row"].tolist()))
    assert len(reads) == 7
    # A small limit keeps the cache under it.
    small = ScanLoader(url, batch_size=5, cache_dir=tmp_path / "small", cache_bytes=1, io_threads=1)
    _epoch(small)
    files = [p for p in (tmp_path / "small").rglob("*") if p.is_file()]
    assert len(files) <= 1


def test_cache_key_changes_with_the_shards_rows(store, tmp_path):
    a = ScanLoader(store, batch_size=4, cache_dir=tmp_path)
    b = ScanLoader(store, batch_size=4, cache_dir=tmp_path, split="test")
    assert a._cache_keys[0] == b._cache_keys[0]  # the same shard, whatever is selected

    def renamed(table):
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = pc.if_else(pc.equal(table["row"], 1), "other.png", table["image_id"])
        return table.set_column(table.column_names.index("image_id"), "image_id", pa.array(ids))

    keys = dict(a._cache_keys)
    store.replace_rows(renamed, run_id="rename")
    try:
        c = ScanLoader(store, batch_size=4, cache_dir=tmp_path)
        assert c._cache_keys[0] != keys[0]
        assert c._cache_keys[1] == keys[1]
    finally:
        store.replace_rows(lambda t: t, run_id="back")


# -- bad arguments --------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"batch_size": 4, "rank": 2, "world_size": 2}, r"rank must be in 0..1, got 2"),
        ({"batch_size": 4, "world_size": 0}, "world_size must be an int >= 1"),
        ({"batch_size": 4, "seed": -1}, "seed must be an int >= 0"),
        ({"batch_size": 4, "arrays": ("sobel",)}, "unknown array 'sobel'"),
        ({"batch_size": 4, "arrays": ()}, "arrays must name at least one"),
        ({"batch_size": 4, "arrays": ("log", "log")}, "arrays has duplicates"),
        ({"batch_size": 4, "where": {"colour": "red"}}, "metadata has no column 'colour'"),
        ({"batch_size": 4, "where": ["split"]}, "where must be a dict"),
        ({"batch_size": 4, "target": "finding_y"}, "no target column 'finding_y'"),
        ({"batch_size": 4, "split": "nope"}, "no rows selected"),
        ({"batch_size": 4, "windows": 3}, r"unknown tuning keyword\(s\) \['windows'\]"),
        ({"batch_size": 4, "window": 0}, "window must be an int >= 1"),
        ({"batch_size": 4, "prefetch": -1}, "prefetch must be an int >= 0"),
        ({"batch_size": 4, "io_threads": 0}, "io_threads must be an int >= 1"),
        ({"batch_size": 4, "decode_threads": 0}, "decode_threads must be an int >= 1"),
        ({"batch_size": 4, "cache_bytes": 0}, "cache_bytes must be an int >= 1"),
    ],
)
def test_bad_arguments_are_refused(store, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScanLoader(store, **kwargs)


def test_a_bool_is_not_an_int(store):
    with pytest.raises(TypeError, match="batch_size must be an int, got True"):
        ScanLoader(store, batch_size=True)


def test_bad_epoch_and_state_are_refused(store):
    loader = ScanLoader(store, batch_size=4)
    with pytest.raises(ValueError, match="epoch must be an int >= 0, got -1"):
        loader.set_epoch(-1)
    with pytest.raises(ValueError, match="state must be a dict"):
        loader.load_state_dict([1, 2])


def test_a_store_without_splits_says_how_to_make_them(tmp_path):
    images = [phantom_chest(64, seed=i) for i in range(4)]
    plain = build_store(
        str(tmp_path / "s"), png_files(tmp_path, images), PipelineSpec(size=64), batch_size=4
    )
    with pytest.raises(ValueError, match="no splits yet"):
        ScanLoader(plain, batch_size=2, split="train")


def test_an_integer_target_keeps_its_classes_and_a_text_one_is_refused(tmp_path):
    images = [phantom_chest(64, seed=i) for i in range(6)]
    paths = png_files(tmp_path, images)
    labels = {p.name: {"grade": i % 3, "note": f"n{i}"} for i, p in enumerate(paths)}
    url = str(tmp_path / "s")
    build_store(url, paths, PipelineSpec(size=64), batch_size=4, labels=labels)
    loader = ScanLoader(url, batch_size=6, target="grade", shuffle=False)
    (batch,) = list(loader)
    assert batch["target"].dtype == np.int64
    by_id = {i: int(t) for i, t in zip(batch["image_id"], batch["target"], strict=True)}
    assert by_id == {p.name: i % 3 for i, p in enumerate(paths)}
    with pytest.raises(ValueError, match="target 'note' must be a boolean or integer column"):
        ScanLoader(url, batch_size=2, target="note")


def test_workers_start_from_a_fork_server_once_a_prefect_flow_has_run(monkeypatch):
    import sys
    import types

    from xraycore.train._torch import worker_context

    monkeypatch.delitem(sys.modules, "prefect.flow_engine", raising=False)
    assert worker_context(2, {"pin_memory": True}) == {"pin_memory": True}
    monkeypatch.setitem(sys.modules, "prefect.flow_engine", types.ModuleType("flow_engine"))
    assert worker_context(2, {})["multiprocessing_context"] == "forkserver"
    assert worker_context(0, {}) == {}  # no workers, nothing to start
    given = {"multiprocessing_context": "spawn"}
    assert worker_context(2, given) == given  # the caller's choice is kept


# -- several targets ------------------------------------------------------------
@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    from labels_files import chexpert_store

    return chexpert_store(tmp_path_factory.mktemp("chexpert"), n=21, size=32)


def _policy(value: str, uncertain: str) -> tuple[float, bool]:
    """What the CSV's ``value`` must become under ``uncertain``: (target, counted)."""
    if value == "":
        return 0.0, False
    v = int(float(value))
    if v == -1:
        return ({"ignore": 0.0, "zeros": 0.0, "ones": 1.0}[uncertain], uncertain != "ignore")
    return float(v), True


@pytest.mark.parametrize("uncertain", ["ignore", "zeros", "ones"])
def test_targets_and_masks_equal_the_labels_file(chexpert, uncertain):
    from labels_files import CHEXPERT_HEADER

    url, rows = chexpert
    loader = ScanLoader(url, batch_size=4, targets="findings", uncertain=uncertain, seed=1)
    observations = CHEXPERT_HEADER[5:]
    columns = {"finding_" + o.lower().replace(" ", "_"): o for o in observations}
    assert loader.target_names == tuple(sorted(columns))
    csv_rows = {
        row[0].split("/", 1)[1]: dict(zip(CHEXPERT_HEADER, row, strict=True)) for row in rows
    }
    seen = 0
    positives = np.zeros(len(columns), np.int64)
    for batch in loader:
        assert batch["target"].dtype == np.float32 and batch["target_mask"].dtype == bool
        assert batch["target"].shape == batch["target_mask"].shape == (len(batch["row"]), 14)
        for image_id, target, mask in zip(
            batch["image_id"], batch["target"], batch["target_mask"], strict=True
        ):
            row = csv_rows[image_id]
            want = [_policy(row[columns[name]], uncertain) for name in loader.target_names]
            assert target.tolist() == [t for t, _ in want], image_id
            assert mask.tolist() == [m for _, m in want], image_id
            positives += (target == 1) & mask
            seen += 1
    # Rows with no counted label at all are left out; every other row once.
    counted = [
        r for r in csv_rows.values() if any(_policy(r[o], uncertain)[1] for o in observations)
    ]
    assert seen == len(counted) == len(loader.rows)
    assert loader.positives.tolist() == positives.tolist()
    negatives = [
        sum(_policy(r[columns[n]], uncertain) == (0.0, True) for r in counted)
        for n in loader.target_names
    ]
    assert loader.negatives.tolist() == negatives


def test_targets_by_finding_name_in_the_order_given(chexpert):
    url, _ = chexpert
    loader = ScanLoader(url, batch_size=4, targets=["Pneumonia", "finding_edema"], shuffle=False)
    assert loader.target_names == ("finding_pneumonia", "finding_edema")
    whole = ScanLoader(url, batch_size=4, targets="findings", shuffle=False)
    index = [whole.target_names.index(n) for n in loader.target_names]
    keep = whole.target_mask[:, index].any(axis=1)
    assert np.array_equal(loader.rows, whole.rows[keep])
    assert np.array_equal(loader.targets, whole.targets[keep][:, index])
    (torch_batch, *_) = list(loader.to_torch())
    assert torch_batch["target_mask"].dtype.is_floating_point is False


def test_a_boolean_finding_is_a_target_with_every_label_counted(store):
    loader = ScanLoader(store, batch_size=5, targets=["finding_x"])
    labelled = ScanLoader(store, batch_size=5, target="finding_x")
    assert np.array_equal(np.sort(loader.rows), np.sort(labelled.rows))  # nulls left out
    assert loader.target_mask.all()
    assert loader.positives.tolist() == [int(labelled.targets.sum())]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"targets": ["finding_nope"]}, r"no target column \['finding_nope'\]"),
        ({"targets": "all"}, "targets must be 'findings' or a list"),
        ({"targets": []}, "at least one column"),
        ({"targets": ["x", "finding_x"]}, "duplicates"),
        ({"targets": ["finding_x"], "target": "finding_x"}, "not both"),
        ({"targets": ["finding_x"], "uncertain": "maybe"}, "uncertain must be one of"),
        ({"targets": ["split"]}, "must be a boolean, integer or float column"),
    ],
)
def test_bad_targets_are_refused(store, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScanLoader(store, batch_size=2, **kwargs)
