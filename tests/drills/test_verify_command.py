"""`xray verify` finds a corrupted shard, an orphaned row and a table file a killed
writer left, which the test plants; `--repair` marks the rows failed, `xray vacuum`
drops the versions that still read the corrupted pixels, and the next `xray run`
redoes the rows."""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness import BATCH, SIZE, clean_reference, write_phantoms, xray

from xraycore.store import ScanStore, schema


def test_verify_finds_a_corrupted_shard_and_an_orphaned_row_then_repair_vacuum_and_rerun(
    tmp_path,
):
    source, store = tmp_path / "source", tmp_path / "store"
    write_phantoms(source, 40)
    run = ["run", str(source), "--store", str(store), "--size", str(SIZE)]
    run += ["--batch-size", str(BATCH), "--workers", "1"]
    assert xray(*run).returncode == 0

    st = ScanStore.open(str(store))
    shard = Path(st.storage.path("images.zarr", "preprocessed", "c", "1", "0", "0"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 256] = bytes(256)  # rows 16-31
    shard.write_bytes(bytes(data))
    ghost = {**st.read_metadata().to_pylist()[0], "source": "/gone/ghost.png", "row": 4000}
    ghost["image_id"] = "ghost.png"
    st.commit_rows([ghost], run_id="ghostrun")  # another writer's row, pointing nowhere
    left = store / schema.METADATA / "part-00000-killedrun.parquet"  # written, never committed
    left.write_bytes((store / schema.METADATA / st.metadata.files().pop()).read_bytes())
    then = time.time() - schema.TEMPORARY_GRACE_S - 1
    os.utime(left, (then, then))

    res = xray("verify", str(store))
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert "orphaned: ghost.png (row 4000)" in out, out
    assert "untracked_file" in out and "part-00000-killedrun.parquet" in out, out
    assert "unreadable" in out or "different" in out, out

    res = xray("verify", str(store), "--repair")
    assert res.returncode == 1 and "repaired:" in res.stdout, res.stdout + res.stderr
    assert not left.exists()
    # The versions before the repair still read the corrupted pixels: verify says so.
    res = xray("verify", str(store))
    assert res.returncode == 1 and "older kept version" in res.stdout, res.stdout
    assert "untracked_file" not in res.stdout, res.stdout
    res = xray("vacuum", str(store), "--keep", "1")
    assert res.returncode == 0 and "history starts at version" in res.stdout, res.stdout
    res = xray("verify", str(store))
    assert res.returncode == 0 and "clean" in res.stdout, res.stdout

    res = xray(*run)  # redoes the rows verify marked failed (and tries the ghost again)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {r["image_id"]: r for r in st.read_metadata().to_pylist()}
    assert rows.pop("ghost.png")["status"] == "failed"  # its source is gone: a failed row
    reference = clean_reference(source, tmp_path / "reference")
    assert sorted(rows) == sorted(reference.row_of)
    assert all(r["status"] == "ok" for r in rows.values())
    res = xray("verify", str(store), "--workers", "1", "--deep")  # shards read on a Dask worker
    assert res.returncode == 0 and "40 ok" in res.stdout and "clean" in res.stdout, res.stdout
