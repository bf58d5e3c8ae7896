"""The drills' harness: inputs, a clean reference, the ``xray`` script, checks.

Ports, the AWS environment and small stores come from the tests' own modules
(``servers``, ``stores``), shared with the other tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from servers import AWS_ENV  # noqa: F401 (the S3 drill imports it from here)
from stores import build_store

from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.store import ScanStore, schema
from xraycore.store.verify import verify_store

#: Every drill runs this pipeline (``xray run --size 64``) with batches of 16.
SIZE = 64
BATCH = 16
BIN = Path(sys.executable).parent


def write_phantoms(folder: Path, n: int, *, size: int = SIZE, first: int = 0) -> list[Path]:
    """``n`` phantom radiographs as PNG files (seeded, so every run has the same)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first, first + n):
        path = folder / f"phantom_{i:04d}.png"
        cv2.imwrite(str(path), phantom_chest(size, seed=i))
        paths.append(path)
    return paths


@dataclass
class Reference:
    """A clean store of the same inputs, written in this process by the same code."""

    store: ScanStore
    row_of: dict[str, int]  # image_id -> row


def clean_reference(folder: Path, out: Path, *, size: int = SIZE) -> Reference:
    """The store a clean run of ``folder`` at ``size`` makes, with its row per image."""
    spec = PipelineSpec.from_dict({"size": size})
    store = build_store(
        out, sorted(folder.glob("*.png")), spec, batch_size=BATCH, run_id="reference"
    )
    meta = store.read_metadata().to_pylist()
    assert all(r["status"] == "ok" for r in meta)
    return Reference(store, {r["image_id"]: r["row"] for r in meta})


def assert_store_complete(
    url: str, reference: Reference, *, env: dict[str, str] | None = None, options=None
) -> dict[str, int]:
    """Every input once, ``ok``, on its own row, with every array's stored values
    equal to the clean reference's; ``xray verify`` (and verify_store) clean."""
    store = ScanStore.open(url, options)
    meta = store.read_metadata().to_pylist()
    ids = [r["image_id"] for r in meta]
    assert sorted(ids) == sorted(reference.row_of), "rows lost or unexpected"
    assert len(ids) == len(set(ids)), "a source has two rows"
    assert all(r["status"] == "ok" for r in meta), [r["error"] for r in meta if r["error"]]
    rows = [r["row"] for r in meta]
    assert len(rows) == len(set(rows)), "two sources share an array row"
    for name in store.arrays():
        got = store.read(name, rows, decode=False)
        want = reference.store.read(name, [reference.row_of[i] for i in ids], decode=False)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} differs from a clean run")
    report = verify_store(store)
    assert report.clean, [str(p) for p in report.problems]
    res = xray("verify", url, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "clean" in res.stdout
    return {"rows": len(meta), "capacity": store.capacity()}


def xray(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run the installed ``xray`` console script, as an operator does."""
    return subprocess.run(
        [str(BIN / "xray"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def xray_popen(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """Start ``xray`` in its own process group (so the whole run can be killed)."""
    return subprocess.Popen(
        [str(BIN / "xray"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        **kwargs,
    )


def wait_for(predicate, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def worker_inside_a_batch(client, store: Path) -> str | None:
    """The address of a Dask worker of ``client`` that is running a batch task
    once ``store`` has committed a first batch (so a kill lands mid-run), else None."""
    if not committed_batches(store):
        return None
    for address, keys in client.processing().items():
        if any("process_batch" in str(k) for k in keys):
            return address
    return None


def committed_batches(store: Path) -> list[int]:
    """The metadata versions that committed a batch so far (from the table's log,
    as any Delta reader sees it)."""
    log = store / schema.METADATA / "_delta_log"
    found = []
    for path in sorted(log.glob("*.json")) if log.is_dir() else []:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            info = json.loads(line).get("commitInfo") if line.strip() else None
            if info and info.get("xray.kind") == "batch":
                found.append(int(path.stem))
    return found


def assert_outside_readers_agree(url: str) -> int:
    """Delta's own readers (deltalake, polars) see exactly the rows ``xray inspect``
    counts, each (source, frame) once; returns that count."""
    import polars as pl
    from deltalake import DeltaTable

    path = str(Path(url) / schema.METADATA)
    table = DeltaTable(path).to_pyarrow_table()
    frame = pl.read_delta(path)
    keys = list(zip(table["source"].to_pylist(), table["frame"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)), "a (source, frame) twice in the committed rows"
    res = xray("inspect", url)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"rows: {table.num_rows} (" in res.stdout, res.stdout
    assert frame.height == table.num_rows
    return table.num_rows


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started by :func:`xray_popen` and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()
