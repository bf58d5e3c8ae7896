"""Drill: two runs on one store started at the same instant."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from harness import BATCH, SIZE, assert_store_complete, clean_reference, write_phantoms

LAUNCH = Path(__file__).with_name("launch_xray.py")


def _released_together(*argvs: list[str]) -> list[tuple[int, str]]:
    """Start one pre-imported ``xray`` per argv, wait until all are ready, release
    them with one write each, and return (exit code, output) of each."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(LAUNCH), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for argv in argvs
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("g")
    for p in procs:
        p.stdin.flush()
    outs = [p.communicate(timeout=80)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outs, strict=True)]


def test_two_runs_at_one_instant_one_writes_the_other_is_refused_or_waits(tmp_path, capsys):
    t0 = time.monotonic()
    source = tmp_path / "source"
    write_phantoms(source, 48)

    # Round 1: neither waits. Exactly one writes; the other exits 2 naming the writer.
    # Released at one instant, the two still start their flow runs at the Prefect
    # server one after the other; when the second reaches the store only after the
    # first has finished (a 48-scan run takes ~1.5 s), it rightly finds nothing to
    # do: that attempt shows no overlap, so it is made again on a new store.
    for attempt in range(1, 4):
        store = tmp_path / f"store{attempt}"
        run = ["run", str(source), "--store", str(store), "--size", str(SIZE)]
        run += ["--batch-size", str(BATCH), "--workers", "1"]
        (a, out_a), (b, out_b) = _released_together(run, run)
        wrote = ["48 ok, 0 failed" in out for out in (out_a, out_b)]
        skipped = ["0 ok, 0 failed, 48 skipped" in out for out in (out_a, out_b)]
        one_after_the_other = (a, b) == (0, 0) and sorted(wrote) == sorted(skipped) == [0, 1]
        if not one_after_the_other:
            break
    assert sorted([a, b]) == [0, 2], out_a + out_b
    refused = out_a if a == 2 else out_b
    assert "is being written by run" in refused and "--wait" in refused, refused
    assert "48 ok" in (out_a if a == 0 else out_b)
    reference = clean_reference(source, tmp_path / "reference")
    first = assert_store_complete(str(store), reference)

    # Round 2: 16 new scans, both runs with --wait: one writes them, the other
    # waits for it and then finds nothing left to do. As in round 1, the second
    # may reach the store only after the first has finished (no wait to see):
    # then the round is made again with 16 more scans.
    for again in range(3):
        done = 48 + 16 * again
        write_phantoms(source, 16, first=done)
        (a, out_a), (b, out_b) = _released_together(run + ["--wait"], run + ["--wait"])
        assert (a, b) == (0, 0), out_a + out_b
        outs = sorted([out_a, out_b], key=lambda o: "16 ok" in o)
        assert f"0 ok, 0 failed, {done + 16} skipped" in outs[0], outs[0]
        assert f"16 ok, 0 failed, {done} skipped" in outs[1], outs[1]
        if "waiting" in outs[0]:
            break
    assert "waiting" in outs[0], outs[0]
    reference = clean_reference(source, tmp_path / "reference2")
    second = assert_store_complete(str(store), reference)
    seconds = time.monotonic() - t0
    with capsys.disabled():
        print(
            f"\nDRILL concurrent runs: round 1 rows {first['rows']} (one run refused, exit 2; "
            f"attempt {attempt}); "
            f"round 2 rows {second['rows']} (one waited); lost 0, duplicated 0; {seconds:.1f} s"
        )
    assert seconds < 90
