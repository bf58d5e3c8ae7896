"""Drill: the whole run (flow process and its Dask cluster) killed with SIGKILL, then rerun."""

from __future__ import annotations

import time

from harness import (
    BATCH,
    assert_outside_readers_agree,
    assert_store_complete,
    clean_reference,
    committed_batches,
    kill_group,
    wait_for,
    write_phantoms,
    xray,
    xray_popen,
)

SOURCE_SIZE, SIZE = 1024, 512
N = 64


def test_run_killed_then_rerun_completes_without_loss_or_duplicates(tmp_path, capsys):
    from xraycore.store.lease import read_lease
    from xraycore.store.storage import Storage

    t0 = time.monotonic()
    source, store = tmp_path / "source", tmp_path / "store"
    write_phantoms(source, N, size=SOURCE_SIZE)
    args = ["run", str(source), "--store", str(store), "--size", str(SIZE)]
    args += ["--batch-size", str(BATCH), "--workers", "2"]
    proc = xray_popen(*args)
    wait_for(lambda: committed_batches(store), 60, "the first committed batch", poll=0.005)
    kill_group(proc)  # SIGKILL to the flow process, its workers and their nannies
    kept = len(committed_batches(store))
    assert kept < N // BATCH, "the run finished before it was killed"
    dead = read_lease(Storage.from_url(str(store)))
    assert dead is not None and dead.pid == proc.pid  # the killed run's lease is left behind
    # What the killed run committed is what every Delta reader sees: its batches, once.
    assert assert_outside_readers_agree(str(store)) == kept * BATCH

    res = xray(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert f"took over the lease of run {dead.run_id}" in out and "not running" in out, out
    assert f"{N - kept * BATCH} ok, 0 failed, {kept * BATCH} skipped" in out, out
    reference = clean_reference(source, tmp_path / "reference", size=SIZE)
    figures = assert_store_complete(str(store), reference)
    assert assert_outside_readers_agree(str(store)) == N
    seconds = time.monotonic() - t0
    with capsys.disabled():
        print(
            f"\nDRILL killed run: SIGKILL after {kept} of {N // BATCH} batches committed; "
            f"rerun kept {kept * BATCH} rows, processed {N - kept * BATCH}; rows "
            f"{figures['rows']}/{N}, lost 0, duplicated 0; {seconds:.1f} s"
        )
    assert seconds < 90
