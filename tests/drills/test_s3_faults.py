"""Drill: source and store on S3 behind a proxy that answers 503 SlowDown and resets
connections (before and after S3 acted) on a fixed fraction of requests, then heals."""

from __future__ import annotations

import time
import uuid

from faulty_proxy import FaultyProxy
from harness import AWS_ENV, BATCH, SIZE, assert_store_complete, clean_reference, write_phantoms
from harness import xray as run_xray

N = 48


def test_s3_faults_are_retried_and_the_store_completes(
    tmp_path, moto_endpoint, capsys, monkeypatch
):
    import s3fs

    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    t0 = time.monotonic()
    folder = tmp_path / "source"
    write_phantoms(folder, N)
    direct = s3fs.S3FileSystem(
        endpoint_url=moto_endpoint, key="testing", secret="testing", skip_instance_cache=True
    )
    bucket = f"drill-{uuid.uuid4().hex[:8]}"
    direct.mkdir(bucket)
    for path in sorted(folder.iterdir()):
        direct.pipe_file(f"{bucket}/source/{path.name}", path.read_bytes())
    source, store = f"s3://{bucket}/source", f"s3://{bucket}/store"

    # One request in five is a fault: 503, reset before S3 sees it, 503, reset after
    # S3 carried it out (the client never hears the answer). At most 60 faults.
    with FaultyProxy(moto_endpoint, period=5, max_faults=60) as proxy:
        env = {**AWS_ENV, "AWS_ENDPOINT_URL": proxy.url}
        args = ["run", source, "--store", store, "--size", str(SIZE), "--batch-size", str(BATCH)]
        args += ["--workers", "2"]
        runs = [run_xray(*args, env=env, timeout=85)]
        if runs[-1].returncode != 0:  # a fault that outlived every retry: rerun after healing
            proxy.heal()
            runs.append(run_xray(*args, env=env, timeout=85))
        faults, requests = dict(proxy.injected), proxy.requests
    assert runs[-1].returncode == 0, runs[-1].stdout + runs[-1].stderr
    assert sum(faults.values()) >= 20, faults  # the drill did inject faults
    assert set(faults) == {"503", "reset-before", "reset-after"}

    direct_env = {**AWS_ENV, "AWS_ENDPOINT_URL": moto_endpoint}
    reference = clean_reference(folder, tmp_path / "reference")
    figures = assert_store_complete(
        store, reference, env=direct_env, options={"endpoint_url": moto_endpoint}
    )
    seconds = time.monotonic() - t0
    with capsys.disabled():
        print(
            f"\nDRILL S3 faults: {sum(faults.values())} faults injected in {requests} requests "
            f"({faults}), all retried; {len(runs)} run(s); rows {figures['rows']}/{N}, "
            f"lost 0, duplicated 0; {seconds:.1f} s"
        )
    assert seconds < 90
