"""Zarr's own writes to a local store go through the durable write; the store
pickles (it travels to DataLoader and Dask workers) and stays read-only when asked."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr

import xraycore.store._zarr_local as zarr_local
from xraycore.store.storage import Storage


def test_zarr_writes_go_through_the_durable_write(tmp_path, monkeypatch):
    written = []
    real = zarr_local.write_durably

    def recording(path, parts):
        written.append(path)
        real(path, parts)

    monkeypatch.setattr(zarr_local, "write_durably", recording)
    store = Storage.from_url(str(tmp_path)).zarr_store("images.zarr")
    arr = zarr.create_array(store, name="h", shape=(4, 3), chunks=(2, 3), dtype="int64")
    arr[:] = np.arange(12).reshape(4, 3)
    names = sorted(p.removeprefix(str(tmp_path / "images.zarr") + "/") for p in written)
    assert "h/zarr.json" in names and "h/c/0/0" in names and "h/c/1/0" in names, names
    again = zarr.open_array(Storage.from_url(str(tmp_path)).zarr_store("images.zarr"), path="h")
    assert np.array_equal(again[:], np.arange(12).reshape(4, 3))


def test_the_store_pickles_and_a_read_only_one_refuses_writes(tmp_path):
    store = Storage.from_url(str(tmp_path)).zarr_store("images.zarr")
    zarr.create_array(store, name="a", shape=(2,), dtype="uint8")[:] = [1, 2]
    copy = pickle.loads(pickle.dumps(store))
    assert np.array_equal(zarr.open_array(copy, path="a")[:], [1, 2])
    read_only = store.with_read_only(True)
    with pytest.raises(ValueError, match="read-only"):
        zarr.open_array(read_only, path="a", mode="r+")[:] = [3, 4]
