"""Every ``xray`` command ends its process with its own exit code (issue 34).

A command that read a Delta table used to abort now and then at interpreter exit
(``terminate called without an active exception``, exit 134): Arrow tore the
scan down on one of its threads after the interpreter had begun finalizing
(:func:`xray_cli.exits.end_process`). The race is rare (2 in 80 one at a time, 13
in 200 two at a time, on two cores): 30 invocations of a broken exit miss it
about half the time, so the mechanism is also checked deterministically, with a
native exit handler that aborts whenever the process finalizes as usual.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from commands import ENTRY, xray
from stores import labelled_store

# A native handler that exit() runs once the interpreter is finalized, where Arrow's
# thread pools are torn down: it aborts, as a late pool teardown does.
ABORT_AT_EXIT = (
    "import ctypes\n"
    "libc = ctypes.CDLL(None)\n"
    "libc.on_exit(ctypes.cast(libc.abort, ctypes.c_void_p), None)\n"
)


def _main(prelude: str = "") -> dict:
    """``xray`` through the console script's ``main``, after ``prelude``."""
    return {"code": ENTRY.format(prelude=prelude), "timeout": 300}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return labelled_store(tmp_path_factory.mktemp("exits"), n=16, size=64)


def _commands(store: str, out: Path) -> list[tuple[tuple[str, ...], int]]:
    """The commands that read a table and then end, each with its own exit code."""
    refused_train = ("train", store, "--target", "Pneumonia", "--out", str(out), "--split", "test")
    return [(refused_train, 2), (("inspect", store), 0), (("log", store), 0)]


def test_thirty_commands_that_read_a_table_end_with_their_own_code(store, tmp_path):
    runs = _commands(store, tmp_path / "m.onnx") * 10
    with ThreadPoolExecutor(2) as pool:  # two at a time: the race needs busy cores
        results = list(pool.map(lambda run: xray(*run[0], **_main()), runs))
    got = [(run[0][0], res.returncode) for run, res in zip(runs, results, strict=True)]
    assert got == [(run[0][0], run[1]) for run in runs]
    assert not [res.stderr for res in results if "terminate called" in res.stderr]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_the_process_ends_before_native_exit_handlers_run(store, tmp_path, which):
    args, code = _commands(store, tmp_path / "m.onnx")[which]
    res = xray(*args, **_main(ABORT_AT_EXIT))
    assert res.returncode == code, res.stderr


def test_a_usage_error_and_an_unexpected_error_keep_their_codes(store):
    assert xray("inspect", **_main(ABORT_AT_EXIT)).returncode == 2  # missing STORE
    broken = "import xray_cli.store\nxray_cli.store.open_store = None\n"  # a TypeError
    res = xray("inspect", store, **_main(broken + ABORT_AT_EXIT))
    assert res.returncode == 1
    assert "TypeError" in res.stderr


def test_exit_handlers_run_and_output_is_flushed(store, tmp_path):
    """What Python's own exit does first still happens: threads joined, atexit
    handlers run, buffered output written."""
    marks = tmp_path / "marks"
    prelude = (
        "import atexit, threading, time\n"
        f"marks = open({str(marks)!r}, 'a', buffering=1)\n"
        "def late():  # runs once the interpreter's exit has begun\n"
        "    threading.main_thread().join()\n"
        "    time.sleep(0.2)\n"
        "    marks.write('thread joined\\n')\n"
        "threading.Thread(target=late).start()\n"
        "atexit.register(marks.write, 'atexit ran\\n')\n"
        "sys.stdout.write('no newline, not flushed')\n"
    )
    res = xray("log", store, **_main(prelude))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("no newline, not flushed")
    assert marks.read_text().splitlines() == ["thread joined", "atexit ran"]
