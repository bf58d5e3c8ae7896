"""Drill: the store's disk fills up in the middle of a run; space is freed; a rerun completes."""

from __future__ import annotations

import subprocess
import time

import pytest
from harness import BATCH, SIZE, assert_store_complete, clean_reference, write_phantoms, xray

N = 48
#: tmpfs sizes: the full store of 48 scans at 64x64 takes ~1.1 MB in small files
#: (tmpfs counts whole 4 KiB pages), so 400 KiB fills up after a batch or two.
SMALL, ROOMY = "400k", "16m"


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 400 KiB mounted for the test (needs root or CAP_SYS_ADMIN)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_fails_the_run_with_its_cause_and_a_rerun_completes(tmp_path, small_disk, capsys):
    t0 = time.monotonic()
    source, store = tmp_path / "source", small_disk / "store"
    write_phantoms(source, N)
    args = ["run", str(source), "--store", str(store), "--size", str(SIZE)]
    args += ["--batch-size", str(BATCH), "--workers", "1"]
    full = xray(*args, timeout=85)
    out = full.stdout + full.stderr
    assert full.returncode == 1, out
    error = next(line for line in out.splitlines() if line.startswith("error: run failed"))
    assert "No space left on device" in error and "rerun" in error.lower(), out

    subprocess.run(["mount", "-o", f"remount,size={ROOMY}", str(small_disk)], check=True)
    again = xray(*args, timeout=85)
    assert again.returncode == 0, again.stdout + again.stderr
    reference = clean_reference(source, tmp_path / "reference")
    figures = assert_store_complete(str(store), reference)
    seconds = time.monotonic() - t0
    with capsys.disabled():
        print(
            f"\nDRILL full disk: first run exit 1 ({error[:170]}); after "
            f"remount to {ROOMY}: rows {figures['rows']}/{N}, lost 0, duplicated 0; "
            f"{seconds:.1f} s"
        )
    assert seconds < 90
