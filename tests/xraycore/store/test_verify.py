"""verify_store finds what a crash, a bad disk or a second writer can do to a store;
repair_store marks it for the next run to redo."""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from stores import build_store, source_files

from xraycore.batch import Batch, process_batch
from xraycore.image.pipeline import PipelineSpec, run_pipeline
from xraycore.image.synth import phantom_chest
from xraycore.store import ScanStore, schema
from xraycore.store.lease import LeaseHeldError, StoreLease
from xraycore.store.verify import ROW_KINDS, repair_store, verify_store

SPEC = PipelineSpec.from_dict({"size": 48})
BATCH = 16
N = 20  # two shards: rows 0-15 and 16-19


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("verify")
    folder = root / "source"
    folder.mkdir()
    for i in range(N):
        cv2.imwrite(str(folder / f"scan{i:03d}.png"), phantom_chest(64, seed=i))
    build_store(root / "store", folder, SPEC, batch_size=BATCH, run_id="clean")
    return folder, root / "store"


@pytest.fixture
def store(clean_store, tmp_path) -> tuple[Path, ScanStore]:
    """A private copy of the clean store, and the source it was made from."""
    folder, original = clean_store
    shutil.copytree(original, tmp_path / "store")
    return folder, ScanStore.open(str(tmp_path / "store"))


def _kinds(report) -> dict[str, set[int | None]]:
    out: dict[str, set] = {}
    for p in report.problems:
        out.setdefault(p.kind, set()).add(p.row)
    return out


def _shard(store: ScanStore, array: str, index: int) -> Path:
    return Path(store.storage.path("images.zarr", array, "c", str(index), "0", "0"))


def test_clean_store_is_clean(store):
    _, st = store
    report = verify_store(st)
    assert report.clean, report.problems
    assert (report.rows, report.ok_rows, report.checked, report.shards) == (N, N, N, 2)
    assert "clean" in report.summary()


def test_a_changed_pixel_is_different_and_only_its_row(store):
    _, st = store
    arr = st.group("a")["preprocessed"]
    row = arr[3]
    row[10, 10] ^= 1
    arr[3] = row  # a well-formed shard holding other bytes than were committed
    report = verify_store(st)
    assert _kinds(report) == {"different": {3}}
    assert "committed crc32:" in str(report.problems[0])


def test_a_corrupted_shard_is_found(store):
    """Bytes overwritten in the middle of a shard object: its rows are unreadable or
    different, the other shard's rows are fine."""
    _, st = store
    path = _shard(st, "preprocessed", 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    report = verify_store(st)
    kinds = _kinds(report)
    assert set(kinds) <= {"unreadable", "different"} and kinds
    assert set().union(*kinds.values()) <= set(range(16, N))


def test_a_half_written_shard_is_unreadable(store):
    _, st = store
    path = _shard(st, "preprocessed", 0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    report = verify_store(st)
    assert _kinds(report) == {"unreadable": set(range(16))}


def test_a_missing_shard_of_any_array_is_missing(store):
    _, st = store
    _shard(st, "log", 1).unlink()
    report = verify_store(st)
    assert _kinds(report) == {"missing": set(range(16, N))}
    assert "log/c/1/0/0" in report.problems[0].detail


def test_deep_reads_every_array(store):
    _, st = store
    path = _shard(st, "sobel", 1)
    path.write_bytes(path.read_bytes()[:40])
    assert verify_store(st).clean  # present (not empty): other arrays are read only when deep
    report = verify_store(st, deep=True)
    assert _kinds(report)["unreadable"] == set(range(16, N))


def _untracked(st: ScanStore, name: str, *, aged: bool = True) -> Path:
    """A data file in the metadata table that no version reads: what a writer
    killed between writing its file and committing it leaves."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(st.storage.path(schema.METADATA, name))
    pq.write_table(pa.table({"image_id": ["x"]}), path)
    if aged:
        then = time.time() - schema.TEMPORARY_GRACE_S - 1
        os.utime(path, (then, then))
    return path


def test_an_orphaned_row_and_a_file_left_by_a_killed_writer(store):
    """An ok row pointing past the arrays; a data file no version reads."""
    _, st = store
    meta = st.read_metadata().to_pylist()
    ghost = {**meta[0], "source": "/nowhere/ghost.png", "image_id": "ghost.png", "row": 999}
    st.commit_rows([ghost], run_id="ghostrun")
    killed = _untracked(st, "part-00000-killed.parquet")
    _untracked(st, "part-00000-young.parquet", aged=False)  # a live writer's, maybe
    report = verify_store(st)
    assert {(p.kind, p.row) for p in report.problems} >= {("orphaned", 999)}
    untracked = [p.path for p in report.problems if p.kind == "untracked_file"]
    assert untracked == [f"{schema.METADATA}/{killed.name}"]


def test_two_sources_on_one_row_and_a_source_twice_from_another_writer(store):
    """Rows this project commits are merged by key; a key twice can only come from
    another writer of the table (a plain Delta append here)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    _, st = store
    meta = st.read_metadata()
    rows = meta.to_pylist()
    intruder = {**rows[5], "source": "/elsewhere/other.png", "image_id": "other.png", "row": 2}
    st.commit_rows([intruder], run_id="otherrun")
    write_deltalake(
        st.metadata.uri, pa.Table.from_pylist([rows[7]], schema=meta.schema), mode="append"
    )
    kinds = _kinds(verify_store(st))
    assert kinds["shared_row"] == {2, 7}  # row 7: the same source's two rows claim it
    assert "duplicate_source" in kinds


def test_stale_and_live_leases(store):
    _, st = store
    StoreLease.acquire(st.storage, "gone", ttl_s=0.05)
    time.sleep(0.1)
    report = verify_store(st)
    assert _kinds(report) == {"stale_lease": {None}}
    live = StoreLease.acquire(st.storage, "busy")  # takes over the stale one
    meta = st.read_metadata().to_pylist()
    st.commit_rows(meta[:2], run_id="busy")  # a batch of the live run
    _untracked(st, "part-00000-busy.parquet")  # a file of its that is not committed yet
    report = verify_store(st)
    assert report.clean and "run busy" in report.writer
    with pytest.raises(LeaseHeldError):
        repair_store(st, report, run_id="repair")
    live.release()


def test_repair_marks_bad_rows_failed_and_the_next_run_redoes_them(store):
    folder, st = store
    _shard(st, "preprocessed", 1).write_bytes(b"garbage")
    killed = _untracked(st, "part-00000-killedrun.parquet")  # left by a killed run
    shard = str(_shard(st, "log", 1))
    tmp = Path(schema.temporary_path(shard))
    tmp.write_bytes(b"")  # a shard write cut short (a full disk, SIGKILL), a while ago
    aged = time.time() - schema.TEMPORARY_GRACE_S - 1
    os.utime(tmp, (aged, aged))
    report = verify_store(st)
    assert _kinds(report)["unreadable"] == set(range(16, N))
    assert [p.path for p in report.problems if p.kind == "untracked_file"] == [
        f"{schema.METADATA}/{killed.name}"
    ]
    assert [p.path for p in report.problems if p.kind == "temporary_file"] == [
        os.path.relpath(tmp, st.storage.path())
    ]
    before = st.version
    counts = repair_store(st, report, run_id="fix")
    assert counts == {"rows": N - 16, "files": 2}
    assert not tmp.exists() and not killed.exists()
    assert st.version == before + 1 and st.history()[0]["kind"] == "repair"
    after = verify_store(st)
    # The rows marked failed are gone from the latest version, not from the one
    # before the repair, which still points at the garbage shard: reported, not marked.
    assert {p.kind for p in after.problems} == {"unreadable"}, after.problems
    assert all("older kept version" in p.detail for p in after.problems)
    assert not after.bad_rows
    failed = [r for r in st.read_metadata().to_pylist() if r["status"] == "failed"]
    assert len(failed) == N - 16 and all(
        r["error"].startswith("verify: unreadable") for r in failed
    )
    # The next run redoes exactly the failed rows, in a new shard.
    build_store(st.storage.url, folder, SPEC, batch_size=BATCH, run_id="rerun")
    rows = st.read_metadata().to_pylist()
    assert len(rows) == N and all(r["status"] == "ok" for r in rows)
    assert sorted(r["row"] for r in rows if r["run_id"] == "rerun") == list(range(32, 32 + N - 16))
    final = verify_store(st, executor=ThreadPoolExecutor(2))
    assert final.checked == N and not final.bad_rows, [str(p) for p in final.problems]
    for r in rows:
        source = cv2.imread(r["source"], cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(
            st.read("preprocessed", r["row"]), run_pipeline(source, SPEC)["preprocessed"]
        )


def test_row_kinds_and_not_a_store(tmp_path):
    assert set(ROW_KINDS) == {
        "missing",
        "unreadable",
        "different",
        "no_checksum",
        "orphaned",
        "shared_row",
    }
    with pytest.raises(ValueError, match="is not a store"):
        verify_store(str(tmp_path / "nothing"))


def test_a_batch_written_by_process_batch_records_the_checksum_verify_reads(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), phantom_chest(64, seed=1))
    st = ScanStore.open(str(tmp_path / "s"))
    st.initialise(SPEC, batch_size=BATCH)
    st.ensure_capacity(BATCH)
    batch = Batch(start=0, items=tuple(source_files([tmp_path / "a.png"])))
    process_batch(batch, store=str(tmp_path / "s"), spec=SPEC, run_id="one")
    report = verify_store(st)
    assert report.clean, report.problems  # committed as it was written: nothing to compact
    assert report.checked == 1


def test_a_missing_chunk_of_an_unsharded_array_is_missing(store):
    """The histogram is stored unsharded (one chunk of a shard's rows per object):
    its objects are named by ScanStore.shard_key like every other array's."""
    _, st = store
    key = st.shard_key("histogram", 1)
    assert key == "images.zarr/histogram/c/1/0"
    Path(st.storage.path(key)).unlink()
    report = verify_store(st)
    assert _kinds(report) == {"missing": set(range(16, N))}
    assert "histogram/c/1/0" in report.problems[0].detail


def test_an_older_versions_row_is_checked_but_never_marked(store):
    """A source processed again and failed: its old ok row is no longer the latest,
    but the version before still reads it, so its pixels are checked (and their
    problem reported as that version's); repair marks only the latest rows."""
    _, st = store
    meta = st.read_metadata().to_pylist()
    failed = {**meta[4], "status": "failed", "row": None, "checksum": None,
              "error": "ValueError: no", "processed_at": datetime.now(UTC)}  # fmt: skip
    st.commit_rows([failed], run_id="later")
    _shard(st, "preprocessed", 0).unlink()
    report = verify_store(st)
    assert (report.rows, report.ok_rows, report.older_rows) == (N, N - 1, 1)
    assert _kinds(report)["missing"] == set(range(16))
    old = [p for p in report.problems if p.row == 4]
    assert len(old) == 1 and "older kept version" in old[0].detail
    assert sorted(r["row"] for r in report.bad_rows.values()) == sorted(set(range(16)) - {4})
