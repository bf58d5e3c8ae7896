"""The dataset flow end to end, on real parts: Prefect API, Dask processes, S3 over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from commands import xray
from deltalake import DeltaTable

from flows.cluster import local_cluster
from flows.preprocess import preprocess_dataset
from flows.server import run_flow
from xraycore.image.pipeline import PipelineSpec, run_pipeline
from xraycore.sources.catalog import read_image
from xraycore.store import ScanStore, StoreConflictError

SIZE = 128


def _run(source, out, **kw):
    kw.setdefault("cluster", local_cluster(2))
    kw.setdefault("size", SIZE)
    return run_flow(preprocess_dataset, source=str(source), store=str(out), batch_size=4, **kw)


def _good_inputs(source_dir, bad_inputs):
    return sorted(
        p
        for p in source_dir.rglob("*")
        if (p.suffix in (".png", ".jpg", ".dcm") or p.name == "IM0001") and p.name not in bad_inputs
    )


def test_local_run_rows_failures_and_pixels(source_dir, labels_csv, tmp_path, bad_inputs):
    out = tmp_path / "store"
    good = _good_inputs(source_dir, bad_inputs)
    summary = _run(source_dir, out, labels=str(labels_csv))
    assert summary["ok"] == len(good) and summary["failed"] == len(bad_inputs)
    assert summary["inputs"] == len(good) + len(bad_inputs)  # README.txt is not an input

    table = DeltaTable(str(out / "metadata.delta")).to_pyarrow_table()  # any Delta reader
    assert table.num_rows == len(good) + len(bad_inputs)
    rows = {r["image_id"]: r for r in table.to_pylist()}
    for name, message in bad_inputs.items():
        assert rows[name]["status"] == "failed" and rows[name]["row"] is None
        assert rows[name]["error"].startswith("ImageDecodeError") and message in rows[name]["error"]
    assert "sub/damaged.jpg" in rows and rows["sub/damaged.jpg"]["channels"] == 3
    # DICOM with and without an extension, found by content; MONOCHROME1 inverted.
    assert rows["sub/scan.dcm"]["source_dtype"] == "uint16"
    assert rows["sub/IM0001"]["status"] == "ok"
    # Labels joined on the file name: a list column and one boolean per finding.
    p0 = rows["phantom_0.png"]
    assert p0["finding_labels"] == ["Cardiomegaly", "Effusion"]
    assert p0["finding_cardiomegaly"] and p0["finding_effusion"] and not p0["finding_pneumonia"]
    assert p0["patient_id"] == "11" and p0["patient_age"] == 58 and p0["view_position"] == "PA"
    p2 = rows["phantom_2.png"]
    assert p2["finding_pneumonia"] and p2["patient_gender"] == "F"
    assert rows["phantom_1.png"]["finding_no_finding"]
    assert rows["empty.png"]["finding_labels"] is None  # no label row for it

    store = ScanStore.open(str(out))
    spec = PipelineSpec(size=SIZE)
    assert store.info()["pipeline_hash"] == spec.hash
    for path in good:
        r = rows[str(path.relative_to(source_dir))]
        assert r["status"] == "ok" and r["error"] is None and r["pipeline_hash"] == spec.hash
        image = read_image(str(path))
        assert (r["height"], r["width"]) == image.shape[:2]
        expected = run_pipeline(image, spec)
        assert np.array_equal(store.read("preprocessed", r["row"]), expected["preprocessed"])
        assert np.array_equal(store.read("canny", r["row"]), expected["canny"])
        assert np.array_equal(store.read("histogram", r["row"]), expected["histogram"])
        # Edge maps come back as physical values; however the store encodes them,
        # within 1% of the map's range of the float32 result.
        log = store.read("log", r["row"])
        assert log.shape == expected["log"].shape
        assert np.abs(log - expected["log"]).max() <= 0.01 * np.ptp(expected["log"]) + 1e-6
        assert r["mean"] == pytest.approx(float(expected["preprocessed"].mean()))
    # Shards are written whole and rows start on shard boundaries.
    assert store.capacity() % 4 == 0
    _check_prefect_ui(summary, n_failed=len(bad_inputs))


def _check_prefect_ui(summary, *, n_failed):
    """What the Prefect UI shows of the run: task runs named by their rows, a WARNING
    naming failed inputs, the keyed progress artifact, the summary headed by the flow
    run's name with the store, and the sample sheet written next to the store."""
    import httpx

    api = os.environ["PREFECT_API_URL"]
    run = {"flow_runs": {"id": {"any_": [summary["flow_run_id"]]}}}
    with httpx.Client(base_url=api, timeout=30) as http:
        names = [t["name"] for t in http.post("/task_runs/filter", json=run).json()]
        assert "batch rows 0-3" in names and "batch rows 4-7" in names, names
        mine = {"logs": {"flow_run_id": {"any_": [summary["flow_run_id"]]}}, "limit": 200}
        deadline = time.time() + 20  # logs reach the API in batches
        while True:
            logs = http.post("/logs/filter", json=mine).json()
            warnings = [x["message"] for x in logs if x["level"] == 30]
            found = sum(m.count("ImageDecodeError") for m in warnings)
            if found >= n_failed or time.time() > deadline:
                break
            time.sleep(1)
        assert found == n_failed, warnings
        arts = {a["key"]: a for a in http.post("/artifacts/filter", json=run).json()}
    assert arts["preprocess-progress"]["data"] == 100.0
    head = arts["preprocess-summary"]["data"].splitlines()[0]
    assert head == f"# Preprocessing run {summary['flow_run']}"
    assert summary["store"] in arts["preprocess-summary"]["data"]
    assert "data:image/jpeg;base64," in arts["preprocess-summary"]["data"]
    assert len(arts["preprocess-failures"]["data"]) > 0
    assert summary["sheet"] and Path(summary["sheet"]).stat().st_size > 10_000


def test_rerun_is_noop_then_increment_retries_and_refuses_changed_spec(
    source_dir, tmp_path, bad_inputs
):
    out = tmp_path / "store"
    first = _run(source_dir, out)
    before = {r["image_id"]: r for r in ScanStore.open(str(out)).read_metadata().to_pylist()}

    again = _run(source_dir, out)
    assert again["ok"] == 0 and again["failed"] == len(bad_inputs)  # failed inputs are retried
    assert again["skipped"] == first["ok"]
    after = {r["image_id"]: r for r in ScanStore.open(str(out)).read_metadata().to_pylist()}
    for k, r in before.items():
        if r["status"] == "ok":
            assert after[k]["processed_at"] == r["processed_at"] and after[k]["row"] == r["row"]

    # Fix one bad file, add a new one: only those two are processed.
    shutil.copy(source_dir / "phantom_1.png", source_dir / "empty.png")
    shutil.copy(source_dir / "phantom_2.png", source_dir / "new.png")
    third = _run(source_dir, out)
    assert third["ok"] == 2 and third["failed"] == len(bad_inputs) - 1
    meta = ScanStore.open(str(out)).read_metadata().to_pylist()
    assert len(meta) == len(after) + 1  # one row per input, no duplicates
    fixed = next(r for r in meta if r["image_id"] == "empty.png")
    assert fixed["status"] == "ok" and fixed["row"] >= first["batches"] * 4

    with pytest.raises(StoreConflictError, match="--overwrite"):
        _run(source_dir, out, size=SIZE * 2)
    replaced = _run(source_dir, out, size=SIZE * 2, overwrite=True)
    assert replaced["skipped"] == 0 and replaced["ok"] == len(meta) - (len(bad_inputs) - 1)


def test_existing_dask_scheduler_runs_the_batches(source_dir, tmp_path, dask_cluster, bad_inputs):
    address, worker_pids = dask_cluster
    out = tmp_path / "store"
    result = preprocess_dataset(
        source=str(source_dir), store=str(out), size=SIZE, batch_size=2, cluster=address
    )
    assert result["failed"] == len(bad_inputs) and result["ok"] > 0
    # The batches ran in the dask worker processes, not in this one, and the
    # workers never imported Prefect: its task engine stays in the flow process.
    from distributed import Client

    with Client(address) as client:
        pids = set(client.run(os.getpid).values())
        imported = client.run(
            lambda: sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "xraycore"))
        )
    assert pids == worker_pids
    for modules in imported.values():
        assert "xraycore.batch" in modules and not any(m.startswith("prefect") for m in modules)
    meta = ScanStore.open(str(out)).read_metadata()
    assert meta.num_rows == result["ok"] + result["failed"]


def test_s3_to_s3_through_moto_server(source_dir, tmp_path, s3_server, bad_inputs):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    fs.mkdir("scans")
    fs.mkdir("stores")
    for p in source_dir.rglob("*"):
        if p.is_file():
            fs.put_file(str(p), f"scans/in/{p.relative_to(source_dir)}")
    summary = _run("s3://scans/in", "s3://stores/run1")
    assert summary["failed"] == len(bad_inputs) and summary["ok"] == len(
        _good_inputs(source_dir, bad_inputs)
    )
    assert fs.exists("stores/run1/images.zarr/zarr.json")
    parts = {p.rsplit("/", 1)[1] for p in fs.ls("stores/run1/metadata.delta")}
    store = ScanStore.open("s3://stores/run1")
    (compacted,) = store.metadata.files()  # the latest version reads one file, in the bucket
    assert compacted in parts and "_delta_log" in parts
    assert store.history()[0]["kind"] == "run-end" and summary["store_version"] == store.version
    table = store.read_metadata()
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert rows["phantom_0.png"]["source"] == "s3://scans/in/phantom_0.png"
    r = rows["phantom_0.png"]
    expected = run_pipeline(read_image(str(source_dir / "phantom_0.png")), PipelineSpec(size=SIZE))
    assert np.array_equal(store.read("preprocessed", r["row"]), expected["preprocessed"])
    assert _run("s3://scans/in", "s3://stores/run1")["skipped"] == summary["ok"]


#: The installed console script, as a user runs it.
_xray = partial(xray, installed=True)


def test_cli_run_inspect_sheet_and_errors(source_dir, tmp_path, bad_inputs):
    out = tmp_path / "store"
    res = _xray(
        "run",
        str(source_dir),
        "--out",
        str(out),
        "--size",
        str(SIZE),
        "--batch-size",
        "4",
        "--workers",
        "2",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(bad_inputs)} failed" in res.stdout and "images/s" in res.stdout
    # Quiet by default: phase lines, progress lines (not a terminal), the summary;
    # Dask's and Prefect's INFO logging only with -v.
    lines = res.stdout.splitlines()
    assert len(lines) <= 15, res.stdout
    assert [
        w
        for w in ("listed", "planned", "cluster:", "progress", "done:")
        if any(line.startswith(w) for line in lines)
    ] == ["listed", "planned", "cluster:", "progress", "done:"]
    assert "distributed." not in res.stdout + res.stderr and "INFO" not in res.stderr
    # A WARNING per batch with failures, naming the failed inputs.
    assert "WARNING" in res.stderr and "truncated.png" in res.stderr
    res = _xray(
        "run", str(source_dir), "--store", str(out), "--size", str(SIZE), "--batch-size", "4",
        "--log-format", "json", "-v",
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    events = [json.loads(line)["event"] for line in res.stdout.splitlines()]
    assert events[:3] == ["start", "listed", "planned"] and events[-1] == "summary"
    assert "Beginning flow run" in res.stderr  # -v: Prefect's own INFO lines
    res = _xray("inspect", str(out))
    assert res.returncode == 0 and "truncated PNG" in res.stdout
    meta = ScanStore.open(str(out)).read_metadata().to_pylist()
    ok_rows = sorted(r["row"] for r in meta if r["status"] == "ok")[:2]  # failed inputs hold none
    rows = ",".join(map(str, ok_rows))
    res = _xray("sheet", str(out), "--rows", rows, "--out", str(tmp_path / "s.png"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "s.png").stat().st_size > 10_000
    res = _xray("run", str(source_dir), "--out", str(out), "--size", "64")
    assert res.returncode == 2 and "--overwrite" in res.stderr
    res = _xray("run", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = _xray("run", str(source_dir), "--out", str(out), "--storage-options", "[1")
    assert res.returncode == 2 and "not valid JSON" in res.stderr
    res = _xray("inspect", str(tmp_path / "nothing"))
    assert res.returncode == 2 and "not a store" in res.stderr


def test_the_flow_body_is_a_list_of_calls():
    """CONTRIBUTING.md: the flow body is the story of a run, at most 80 lines."""
    import ast
    import inspect

    source = inspect.getsource(preprocess_dataset.fn)
    body = ast.parse(source).body[0].body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    assert body[-1].end_lineno - body[0].lineno + 1 <= 80


def test_the_cluster_is_one_parameter():
    import inspect

    from flows.classify import classify_store

    for flow in (preprocess_dataset, classify_store):
        params = inspect.signature(flow.fn).parameters
        assert "cluster" in params, flow.name
        assert not {"scheduler", "workers", "cluster_class", "cluster_kwargs"} & set(params)


def test_a_run_commits_its_batches_in_groups_one_log_line(source_dir, tmp_path, bad_inputs):
    """Workers write, the flow's one committer commits (issue 29): a run of many
    batches adds its fence, a few group commits and its end, not a version per
    batch; every batch file it wrote is committed (none left), and ``xray log``
    shows the run in one line."""
    from xraycore.store import schema
    from xraycore.store.versions import log_lines

    out = tmp_path / "store"
    summary = run_flow(
        preprocess_dataset, source=str(source_dir), store=str(out), size=SIZE, batch_size=1,
        cluster=local_cluster(1), sheet=False,
    )  # fmt: skip
    store = ScanStore.open(str(out))
    batches = summary["batches"]
    history = [e for e in store.history() if e["table"] == "metadata"]
    groups = [e for e in history if e.get("kind") == "batch"]
    assert batches >= 10 and 1 <= len(groups) < batches / 2, (batches, len(groups))
    assert sum(int(e["rows"]) for e in groups) == summary["ok"] + summary["failed"]
    assert {e["run_id"] for e in groups} == {summary["run_id"]}
    written = store.storage.find(f"{schema.METADATA}/batches")
    assert len(written) == batches and store.metadata.untracked_files(older_than_s=0) == []
    line = log_lines(store.history())[0]
    said = f"{len(groups)} group" + ("" if len(groups) == 1 else "s") + ","
    assert f"run {summary['run_id']}" in line and said in line, line
    assert f"{summary['ok'] + summary['failed']} rows, compacted" in line, line
