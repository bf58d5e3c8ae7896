"""Drill: a Dask worker killed with SIGKILL in the middle of a batch."""

from __future__ import annotations

import os
import signal
import time

from harness import (
    BATCH,
    assert_store_complete,
    clean_reference,
    committed_batches,
    wait_for,
    worker_inside_a_batch,
    write_phantoms,
    xray_popen,
)

#: Full-size scans to 512: a batch of 16 takes ~0.6 s of a worker, long enough to
#: be caught in the middle.
SOURCE_SIZE, SIZE = 1024, 512
N = 64


def test_worker_killed_mid_batch_is_replaced_and_every_row_lands_once(
    tmp_path, dask_processes, capsys
):
    from distributed import Client

    t0 = time.monotonic()
    source, store = tmp_path / "source", tmp_path / "store"
    write_phantoms(source, N, size=SOURCE_SIZE)
    proc = xray_popen(
        "run", str(source), "--store", str(store), "--size", str(SIZE),
        "--batch-size", str(BATCH), "--scheduler", dask_processes,
    )  # fmt: skip
    with Client(dask_processes, timeout=30) as client:
        pids = client.run(os.getpid)

        victim = wait_for(
            lambda: worker_inside_a_batch(client, store),
            60,
            "a worker inside a batch",
            poll=0.005,
        )
        time.sleep(0.1)  # into the batch, not at its first line
        in_flight = client.processing()[victim]
        os.kill(pids[victim], signal.SIGKILL)
        killed_at = len(committed_batches(store))
        output, _ = proc.communicate(timeout=80)
        assert proc.returncode == 0, output
        client.wait_for_workers(2, timeout=30)  # the nanny started a new one
        restarted = set(client.run(os.getpid).values()) - set(pids.values())
    assert restarted, "the nanny did not restart the killed worker"
    assert any("process_batch" in str(k) for k in in_flight)
    reference = clean_reference(source, tmp_path / "reference", size=SIZE)
    figures = assert_store_complete(str(store), reference)
    seconds = time.monotonic() - t0
    with capsys.disabled():
        print(
            f"\nDRILL killed worker: SIGKILL to pid {pids[victim]} inside a batch after "
            f"{killed_at} of {N // BATCH} batches committed; rows {figures['rows']}/{N}, "
            f"lost 0, duplicated 0; {seconds:.1f} s"
        )
    assert seconds < 90
