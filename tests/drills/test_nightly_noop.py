"""Drill: the nightly run over a DICOM bucket, counted by a proxy in front of the S3
server. The first run reads each DICOM once, whole, where it is processed (its
listing reads no DICOM header; a multi-frame file is read again for its later
frames); a rerun with nothing to do sends no GET for any source object (no DICOM
header, no pixel); a DICOM replaced by one of another frame count is re-listed
and reprocessed, and is the only source object read."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import numpy as np
import pytest
from dicom_files import make_dicom
from faulty_proxy import FaultyProxy
from harness import AWS_ENV, BATCH, SIZE
from harness import xray as run_xray

from xraycore.image.synth import phantom_chest
from xraycore.store import ScanStore

pytest.importorskip("pydicom")


def _dicom(frames: int, seed: int) -> bytes:
    scans = [phantom_chest(48, seed=seed + k).astype(np.uint16) * 60 for k in range(frames)]
    return make_dicom(np.stack(scans) if frames > 1 else scans[0])


def _sources() -> dict[str, bytes]:
    files = {f"dcm/{i:03d}.dcm": _dicom(1, i) for i in range(12)}
    files["dcm/series.dcm"] = _dicom(3, 50)
    files["raw/IM0001"] = _dicom(1, 60)  # DICOM by its magic bytes
    files["LICENSE"] = b"no extension and not DICOM"
    return files


def _run(args: list[str], proxy: FaultyProxy) -> dict:
    """One ``xray run`` through the proxy; its summary."""
    env = {**AWS_ENV, "AWS_ENDPOINT_URL": proxy.url}
    res = run_xray(*args, "--log-format", "json", env=env, timeout=110)
    assert res.returncode == 0, res.stdout + res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return next(e for e in events if e["event"] == "summary")


def test_a_nightly_noop_reads_no_source_object(tmp_path, moto_endpoint, monkeypatch):
    import s3fs

    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    direct = s3fs.S3FileSystem(
        endpoint_url=moto_endpoint, key="testing", secret="testing", skip_instance_cache=True
    )
    bucket = f"nightly-{uuid.uuid4().hex[:8]}"
    direct.mkdir(bucket)
    for rel, data in _sources().items():
        direct.pipe_file(f"{bucket}/source/{rel}", data)
    source, store = f"s3://{bucket}/source", f"s3://{bucket}/store"
    args = ["run", source, "--store", store, "--size", str(SIZE), "--batch-size", str(BATCH)]
    args += ["--workers", "1"]
    under = f"/{bucket}/source/"

    with FaultyProxy(moto_endpoint, faults=()) as proxy:
        first = _run(args, proxy)
        assert (first["ok"], first["failed"]) == (16, 0)  # 12 + 3 frames + IM0001
        gets = [(e[1].removeprefix(under), e[2]) for e in proxy.gets(under)]
        # The listing read no .dcm, and only the first 8 KiB of the files without an
        # extension, to tell DICOM (IM0001) from the rest (LICENSE).
        heads = sorted(rel for rel, rng in gets if rng == "bytes=0-8191")
        assert heads == ["LICENSE", "raw/IM0001"], gets
        # The batches read each DICOM whole: once, the series again for its frames 1 and 2;
        # the run's comparison sheet reads the sources of the store's first three rows.
        whole = Counter(rel for rel, rng in gets if rng != "bytes=0-8191")
        dicoms = Counter(r for r in _sources() if r != "LICENSE")
        assert whole == dicoms + Counter(
            ["dcm/series.dcm", "dcm/000.dcm", "dcm/001.dcm", "dcm/002.dcm"]
        ), gets

        proxy.log.clear()
        noop = _run(args, proxy)
        assert (noop["ok"], noop["skipped"], noop["batches"]) == (0, 16, 0)
        # LICENSE is no image: nothing records it, so its magic is read again.
        assert [e[1] for e in proxy.gets(under)] == [f"{under}LICENSE"]

        direct.pipe_file(f"{bucket}/source/dcm/series.dcm", _dicom(2, 70))
        proxy.log.clear()
        changed = _run(args, proxy)
        read = {e[1].removeprefix(under) for e in proxy.gets(under)}
        assert read == {"LICENSE", "dcm/series.dcm"}, read
        assert (changed["ok"], changed["skipped"]) == (2, 13)  # 12 + IM0001 unchanged

    options = {"endpoint_url": moto_endpoint}
    rows = {r["image_id"]: r for r in ScanStore.open(store, options).read_metadata().to_pylist()}
    series = [rows[f"dcm/series.dcm#{k}"] for k in range(2)]
    assert [(r["source_frames"], r["status"]) for r in series] == [(2, "ok"), (2, "ok")]
    assert rows["dcm/series.dcm#0"]["run_id"] == rows["dcm/series.dcm#1"]["run_id"]
    assert rows["raw/IM0001"]["source_frames"] == 1
