"""`xray verify` finds a corrupted shard and an orphaned metadata part that the test
plants; `--repair` marks the rows failed and the next `xray run` redoes them."""

from __future__ import annotations

from pathlib import Path

from harness import BATCH, SIZE, clean_reference, write_phantoms, xray

from xraycore.store import ScanStore


def test_verify_finds_a_corrupted_shard_and_an_orphaned_part_then_repair_and_rerun(tmp_path):
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
    st.write_metadata_part([ghost], "0000004000-killedrun")  # a killed run's, pointing nowhere

    res = xray("verify", str(store))
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert "orphaned: ghost.png (row 4000)" in out, out
    assert "leftover_part" in out and "part-0000004000-killedrun.parquet" in out, out
    assert "unreadable" in out or "different" in out, out

    res = xray("verify", str(store), "--repair")
    assert res.returncode == 1 and "repaired:" in res.stdout, res.stdout + res.stderr
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
