"""The store's versions: every commit one, each readable as it was; fenced batch
commits; outside readers; retention; the upgrade of a format-3 store."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import pyarrow as pa
import pytest
from stores import build_store

from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.store import (
    FencedCommitError,
    ScanStore,
    StoreFormatError,
    VersionRemovedError,
    columns,
)
from xraycore.store.upgrade import upgrade_store
from xraycore.store.verify import verify_store
from xraycore.store.versions import log_lines, vacuum_store
from xraycore.train.baseline import assign_splits, write_splits
from xraycore.train.loader import ScanLoader

SPEC = PipelineSpec(size=32)
FORMAT3 = Path(__file__).resolve().parents[2] / "data" / "format3_store"


def _scans(folder: Path, names, seed0: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        cv2.imwrite(str(folder / name), phantom_chest(48, seed=seed0 + k))


def _predict(store: ScanStore, run_id: str) -> None:
    now = datetime.now(UTC)
    rows = store.select().to_pylist()
    store.commit_predictions(
        [
            columns.prediction_row(
                image_id=r["image_id"], row=r["row"], score=0.5, label="x",
                model="m.onnx", model_sha256="a" * 64, run_id=run_id, classified_at=now,
            )
            for r in rows
        ],
        run_id=run_id,
    )  # fmt: skip
    store.finish_classification(run_id)


def _snapshot(store: ScanStore) -> dict[str, bytes]:
    """image_id -> hash of its stored pixels, for the ok rows of the latest version."""
    return {
        r["image_id"]: hashlib.sha256(store.read("preprocessed", r["row"]).tobytes()).hexdigest()
        for r in store.select().to_pylist()
    }


def _loaded(url: str, version: int) -> dict[str, bytes]:
    """image_id -> hash of the pixels a loader at ``version`` yields; each row once."""
    loader = ScanLoader(url, batch_size=3, version=version, shuffle=False)
    assert loader.version == version and loader.store.read_only
    yielded = [
        (str(image_id), hashlib.sha256(pixels.tobytes()).hexdigest())
        for batch in loader
        for image_id, pixels in zip(batch["image_id"], batch["preprocessed"], strict=True)
    ]
    ids = [image_id for image_id, _ in yielded]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    assert not twice, f"the loader at version {version} yielded {twice} more than once"
    return dict(yielded)


def _predicted(store: ScanStore) -> set[tuple[str, int, str]]:
    """(image_id, row, run_id) of each prediction ``store`` reads at its version."""
    table = store.read_predictions()
    rows = table.to_pylist() if table is not None else []
    return {(p["image_id"], p["row"], p["run_id"]) for p in rows}


def test_three_runs_splits_and_classifications_each_version_reads_as_it_was(tmp_path):
    src, url = tmp_path / "src", str(tmp_path / "store")
    kept: dict[int, dict[str, bytes]] = {}
    splits: dict[int, dict[str, str | None]] = {}
    predicted: dict[int, set] = {}  # the predictions each kept version reads
    for run in range(3):
        _scans(src, [f"r{run}_{i}.png" for i in range(3)], seed0=10 * run)
        if run == 2:  # a file changed since run 0: processed again, a new row
            cv2.imwrite(str(src / "r0_1.png"), phantom_chest(48, seed=99))
            os.utime(src / "r0_1.png", (time.time() + 5, time.time() + 5))
        store = build_store(url, src, SPEC, batch_size=4, run_id=f"run{run}")
        meta = store.read_metadata()
        write_splits(store, assign_splits(meta, fractions=(0.5, 0.25, 0.25), seed=run), f"s{run}")
        splits[store.version] = {r["image_id"]: r["split"] for r in store.select().to_pylist()}
        kept[store.version] = _snapshot(store)
        predicted[store.version] = _predicted(store)  # the runs before this one's
        _predict(store, f"c{run}")

    history = store.history()
    kinds = [(e["table"], e["kind"], e["run_id"]) for e in reversed(history)]
    for run in range(3):
        assert ("metadata", "batch", f"run{run}") in kinds
        assert ("metadata", "split", f"s{run}") in kinds
        assert ("predictions", "classification", f"c{run}") in kinds
    assert [e["timestamp"] for e in history] == sorted(
        (e["timestamp"] for e in history), reverse=True
    )
    assert any("batch" in line for line in log_lines(history))

    assert len(kept) == 3 and len(kept[max(kept)]) == 9
    for version, pixels in kept.items():
        old = ScanStore.open(url, version=version)
        assert old.version == version and old.read_only
        assert {r["image_id"]: r["split"] for r in old.select().to_pylist()} == splits[version]
        assert _loaded(url, version) == pixels  # exactly that version's ok rows, its pixels
    first = min(kept)
    assert kept[first]["r0_1.png"] != kept[max(kept)]["r0_1.png"]  # the changed file
    # The predictions a version reads are those committed by then: none at the
    # first, run 0's (3) at the middle one, run 1's (6) at the last kept, run 2's now.
    assert ScanStore.open(url, version=first).read_predictions() is None
    middle = sorted(kept)[1]
    assert {run for _, _, run in predicted[middle]} == {"c0"} and len(predicted[middle]) == 3
    assert {run for _, _, run in predicted[max(kept)]} == {"c1"}
    for version, expected in predicted.items():
        assert _predicted(ScanStore.open(url, version=version)) == expected, version
    assert ScanStore.open(url).read_predictions().num_rows == 9
    assert verify_store(url).clean


def test_a_version_is_read_only_and_one_not_kept_is_refused(tmp_path):
    _scans(tmp_path / "src", ["a.png", "b.png"])
    url = str(tmp_path / "store")
    store = build_store(url, tmp_path / "src", SPEC, batch_size=4)
    old = ScanStore.open(url, version=0)
    with pytest.raises(ValueError, match="version 0, read-only"):
        old.commit_rows(store.read_metadata().to_pylist(), run_id="x")
    with pytest.raises(VersionRemovedError, match="has no version 99"):
        ScanStore.open(url, version=99)
    with pytest.raises(ValueError, match="version must be an int >= 0"):
        ScanStore.open(url, version=-1)


def test_outside_readers_see_exactly_the_committed_rows(tmp_path):
    import duckdb
    import polars as pl
    from deltalake import DeltaTable

    _scans(tmp_path / "src", [f"s{i}.png" for i in range(6)])
    url = str(tmp_path / "store")
    store = build_store(url, tmp_path / "src", SPEC, batch_size=4, compact=False)
    again = {**store.read_metadata().to_pylist()[0], "processed_at": datetime.now(UTC)}
    store.commit_rows([again], run_id="again")  # the same key once more: replaced, not added
    path = store.metadata.uri
    ours = store.read_metadata()
    theirs = DeltaTable(path).to_pyarrow_table()
    frame = pl.read_delta(path)
    con = duckdb.connect()
    con.register("meta", DeltaTable(path).to_pyarrow_dataset())  # read in place, by Arrow
    counted = con.sql("select count(*), count(distinct image_id) from meta").fetchall()[0]
    assert theirs.num_rows == frame.height == ours.num_rows == 6
    assert counted == (6, 6)
    assert sorted(theirs.column("image_id").to_pylist()) == ours.column("image_id").to_pylist()


def test_a_batch_of_a_run_that_lost_the_lease_cannot_commit(tmp_path):
    _scans(tmp_path / "src", ["a.png"])
    url = str(tmp_path / "store")
    store = build_store(url, tmp_path / "src", SPEC, batch_size=4)
    row = store.read_metadata().to_pylist()[0]
    store.fence("first")
    store.commit_rows([row], run_id="first", fence="first")  # the holder commits
    late = ScanStore.open(url)
    held = late.metadata.open()  # the late batch read the table while it was the writer
    store.fence("second")  # a second run takes the store over
    newer = {**row, "processed_at": datetime.now(UTC), "run_id": "first"}
    with pytest.raises(FencedCommitError, match="run first no longer holds the lease"):
        late.commit_rows([newer], run_id="first", fence="first")
    # Also the commit race itself: a merge from the table as the late batch read it.
    from deltalake.exceptions import CommitFailedError

    with pytest.raises(CommitFailedError, match="Metadata changed"):
        held.merge(
            pa.Table.from_pylist([newer], schema=columns.arrow_schema([newer])),
            "t.source = s.source", source_alias="s", target_alias="t",
        ).when_matched_update_all().execute()  # fmt: skip
    assert store.read_metadata().to_pylist()[0]["processed_at"] == row["processed_at"]
    store.commit_rows([newer], run_id="second", fence="second")


def test_concurrent_batches_of_one_run_all_commit(tmp_path):
    url = str(tmp_path / "store")
    ScanStore.open(url).storage.makedirs()
    now = datetime.now(UTC)
    errors = []

    def batch(k: int) -> None:
        rows = [
            {"image_id": f"{k}-{i}", "source": f"{k}-{i}", "processed_at": now} for i in range(5)
        ]
        try:
            ScanStore.open(url).commit_rows(rows, run_id="r")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=batch, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = ScanStore.open(url)
    assert store.read_metadata().num_rows == 30 and store.version == 5
    assert store.finish_run("r") == 30 and store.version == 6


def test_vacuum_keeps_exactly_what_kept_versions_read(tmp_path):
    src, url = tmp_path / "src", str(tmp_path / "store")
    _scans(src, ["a.png", "b.png"])
    build_store(url, src, SPEC, batch_size=4, run_id="one")  # version 0
    _scans(src, ["c.png"], seed0=5)
    store = build_store(url, src, SPEC, batch_size=4, run_id="two")  # 1: batch, 2: run-end
    write_splits(store, assign_splits(store.read_metadata(), seed=1), "split")  # 3
    latest = store.version
    assert latest == 3
    before = {v: ScanStore.open(url, version=v).select().num_rows for v in (2, 3)}
    files = {v: store.metadata.files(v) for v in range(4)}
    assert not vacuum_store(store, keep=2, dry_run=True)["metadata"]["removed"]
    done = vacuum_store(store, keep=2)
    # The two batches' files went (version 2 compacted them); 2's and 3's stay.
    gone = {Path(p).name for p in done["metadata"]["removed"]}
    assert gone == {Path(p).name for p in (files[0] | files[1]) - files[2] - files[3]}
    assert len(gone) == 2
    for v, n in before.items():
        assert ScanStore.open(url, version=v).select().num_rows == n == 3
    with pytest.raises(VersionRemovedError, match=r"removed by xray vacuum --keep 2.*starts at"):
        ScanStore.open(url, version=1)
    assert store.history()[0]["kind"] == "vacuum"
    history = store.metadata.history()
    assert [e["version"] for e in history][-2:] == [3, 2]  # 0 and 1 are no longer listed
    assert {e["kind"] for e in history[:-2]} == {"vacuum"}
    assert verify_store(url).clean


def test_overwrite_starts_a_new_history_and_refuses_the_old_versions(tmp_path):
    _scans(tmp_path / "src", ["a.png"])
    url = str(tmp_path / "store")
    store = build_store(url, tmp_path / "src", SPEC, batch_size=4)
    old = store.version
    store.initialise(PipelineSpec(size=48), batch_size=4, overwrite=True)
    assert store.read_metadata() is None
    with pytest.raises(VersionRemovedError, match=r"removed by --overwrite"):
        ScanStore.open(url, version=old)
    build_store(url, tmp_path / "src", PipelineSpec(size=48), batch_size=4)
    assert store.select().num_rows == 1 and verify_store(url).clean


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def test_upgrade_moves_a_format_3_store_built_by_main_without_touching_a_pixel(tmp_path):
    """tests/data/format3_store was written by the landed format-3 code (its
    tests/data/make_format3_store.py): a labelled run, a split, predictions, and a
    killed run's leftover part that makes p0.png's latest row a failed one."""
    import pyarrow.parquet as pq

    store_dir = tmp_path / "old"
    shutil.copytree(FORMAT3, store_dir)
    url = str(store_dir)
    with pytest.raises(StoreFormatError, match=rf"format 3.*xray upgrade {url}"):
        ScanStore.open(url).info()
    parts = [pq.read_table(p) for p in sorted((store_dir / "metadata.parquet").glob("part-*"))]
    assert sum(t.num_rows for t in parts) == 8  # a source twice: the killed run's row
    pixels = _files(store_dir / "images.zarr")

    done = upgrade_store(url)
    assert (done["from_format"], done["to_format"], done["upgraded"]) == (3, 4, True)
    assert (done["rows"], done["predictions"], done["version"]) == (7, 6, 0)
    assert _files(store_dir / "images.zarr") == pixels
    assert not (store_dir / "metadata.parquet").exists()
    store = ScanStore.open(url)
    rows = {r["image_id"]: r for r in store.read_metadata().to_pylist()}
    assert rows["p0.png"]["status"] == "failed" and rows["p1.png"]["status"] == "ok"
    assert {r["split"] for r in rows.values() if r["status"] == "ok"} <= {
        "train",
        "validation",
        "test",
    }
    assert rows["p3.png"]["finding_pneumonia"] is True
    assert store.read_predictions().num_rows == 6
    assert store.history()[-1]["kind"] == "upgrade"
    assert verify_store(url).clean
    assert upgrade_store(url)["upgraded"] is False  # once is enough


def _cli(*args: str):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "xray_cli", *args], capture_output=True, text=True, env=env,
        timeout=120, cwd=root,
    )  # fmt: skip


def test_the_command_line_lists_inspects_upgrades_and_vacuums(tmp_path):
    import json

    shutil.copytree(FORMAT3, tmp_path / "old")
    url = str(tmp_path / "old")
    res = _cli("inspect", url)
    assert res.returncode == 2 and f"xray upgrade {url}" in res.stderr, res.stderr
    res = _cli("upgrade", url)
    assert res.returncode == 0 and "from format 3 to 4" in res.stdout, res.stdout + res.stderr
    assert "7 metadata rows and 6 predictions are version 0" in res.stdout
    _scans(tmp_path / "src", ["n0.png", "n1.png"])
    store = build_store(url, tmp_path / "src", SPEC, batch_size=4, run_id="after")
    assert store.version >= 1

    res = _cli("log", url, "--json")
    assert res.returncode == 0, res.stderr
    entries = json.loads(res.stdout)
    assert {"version", "kind", "run_id", "timestamp", "table"} <= set(entries[0])
    assert [e["kind"] for e in entries if e["table"] == "metadata"][-1] == "upgrade"
    assert any(e["kind"] == "batch" and e["run_id"] == "after" for e in entries)
    text = _cli("log", url).stdout.splitlines()
    assert len(text) < len(entries) + 1 and any("upgrade" in line for line in text)

    res = _cli("inspect", url, "--version", "0")
    assert res.returncode == 0 and "version: 0 (read-only)" in res.stdout, res.stdout
    assert "rows: 7 (5 ok, 2 failed)" in res.stdout
    res = _cli("inspect", url, "--version", "999")
    assert res.returncode == 2 and "has no version 999" in res.stderr
    res = _cli("vacuum", url, "--keep", "1")
    assert res.returncode == 0 and "metadata: history starts at version" in res.stdout
    res = _cli("inspect", url, "--version", "0")
    assert res.returncode == 2 and "removed by xray vacuum --keep 1" in res.stderr
    assert _cli("vacuum", url).returncode == 2  # neither --keep nor --older-than
