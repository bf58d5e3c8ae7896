"""A shard writer SIGKILLed mid-write leaves a ``.partial`` file: ``xray verify``
names it (exit 1), ``--repair`` removes it, the next ``verify`` is clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
from commands import xray
from stores import build_store

from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.store import schema

ROOT = Path(__file__).resolve().parents[3]
SPEC = PipelineSpec(size=64)

# Runs in a child process: writes rows 4-7 of the store, and stops for good
# inside the durable write of the first shard, after its bytes reached the
# temporary file and before the rename (where a SIGKILL, an OOM kill or a power
# cut can catch any writer).
_WRITER = """
import os, sys, time
import xraycore.store.durable as durable
from xraycore.image.pipeline import PipelineSpec, run_pipeline
from xraycore.store import ScanStore
from xraycore.image.synth import phantom_chest

store_url, marker = sys.argv[1], sys.argv[2]

def fsync_then_hang(fd):
    open(marker, "w").close()
    time.sleep(120)

durable.os.fsync = fsync_then_hang
store = ScanStore.open(store_url)
outputs = run_pipeline(phantom_chest(64, seed=5), PipelineSpec(size=64))
with store.writer(4, 4) as writer:
    for slot in range(4):
        writer.put(slot, outputs)
"""


def test_a_writer_killed_mid_shard_is_found_by_verify_and_removed_by_repair(tmp_path):
    url = str(tmp_path / "store")
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"scan{i}.png")
        cv2.imwrite(str(paths[-1]), phantom_chest(64, seed=i))
    store = build_store(url, paths, SPEC, batch_size=4, run_id="r1")
    store.ensure_capacity(8)
    assert store.temporary_files() == []

    marker = tmp_path / "in-the-middle"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_WRITER), url, str(marker)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the writer never reached its write (exit {child.poll()})"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    # Just killed, the file is as young as a live writer's: neither reported nor removed.
    assert store.temporary_files() == []
    assert xray("verify", url).returncode == 0
    # Once it is older than the grace period, nobody can still be writing it.
    (path,) = (tmp_path / "store").rglob(f"*{schema.TEMPORARY_SUFFIX}")
    aged = time.time() - schema.TEMPORARY_GRACE_S - 1
    os.utime(path, (aged, aged))
    left = store.temporary_files()
    assert len(left) == 1 and left[0].startswith(f"{schema.IMAGES}/"), left
    assert (
        left[0].endswith(schema.TEMPORARY_SUFFIX) and (tmp_path / "store" / left[0]).stat().st_size
    )

    res = xray("verify", url)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"temporary_file: {left[0]}" in res.stdout, res.stdout
    res = xray("verify", url, "--repair")
    assert res.returncode == 1 and "1 temporary or untracked files removed" in res.stdout, (
        res.stdout
    )
    assert not (tmp_path / "store" / left[0]).exists()
    res = xray("verify", url)
    assert res.returncode == 0 and "clean" in res.stdout, res.stdout + res.stderr
    # The committed batch is untouched: its four rows are ok and read back.
    assert [r["status"] for r in store.read_metadata().to_pylist()] == ["ok"] * 4
