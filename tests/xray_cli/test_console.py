"""The CLI's run output without a terminal: phase lines, periodic progress, JSON."""

from __future__ import annotations

import io
import json

import pytest

from flows.progress import log_line
from xray_cli.console import RunConsole


def _feed(console: RunConsole, total: int = 1000, step: int = 10) -> None:
    console("listed", {"inputs": total, "seconds": 0.5})
    console("planned", {"new": total, "retried": 0, "skipped": 0, "batches": total // step,
                        "images": total})  # fmt: skip
    console("cluster", {"workers": 2, "dashboard": "http://127.0.0.1:8787/status"})
    for done in range(step, total + 1, step):
        console("batch", {"done": done, "total": total, "failed": 1, "rate": 50.0})
    console("committed", {"rows": total})


def test_without_a_terminal_progress_is_a_line_every_tenth():
    out = io.StringIO()
    console = RunConsole(stream=out, interactive=False)
    _feed(console)
    lines = out.getvalue().splitlines()
    assert lines[0] == "listed 1000 inputs in 0.5 s"
    assert lines[1].startswith("planned 1000 images in 100 batches")
    assert lines[2] == "cluster: 2 Dask workers (dashboard http://127.0.0.1:8787/status)"
    progress = [line for line in lines if line.startswith("progress")]
    assert 10 <= len(progress) <= 11, progress  # 100 batches, a line per 10%
    assert progress[-1] == "progress: 1000/1000 images (100%), 50.0 images/s"


def test_the_console_words_each_event_as_the_flow_log_does():
    """One wording per event (flows.progress): the terminal line of an event is
    its line in the flow run's log."""
    fields = {
        "listed": {"inputs": 3, "seconds": 0.5},
        "planned": {"new": 3, "retried": 0, "skipped": 1, "batches": 1, "images": 4},
        "cluster": {"workers": 2, "dashboard": None},
        "workers_pending": {"pending": "2 of 2", "waited_s": 5},
        "waiting": {"run_id": "r1", "holder": "host:1", "since": "10:00"},
        "lease_taken_over": {"run_id": "r1", "holder": "host:1", "reason": "expired"},
        "headers": {"rows": 3},
        "unkeyed": {},
        "later_frames": {"files": 1, "images": 2},
    }
    for event, f in fields.items():
        out = io.StringIO()
        RunConsole(stream=out, interactive=False)(event, f)
        assert out.getvalue() == log_line(event, f) + "\n", event


def test_json_lines_one_object_per_event():
    out = io.StringIO()
    console = RunConsole(log_format="json", stream=out)
    _feed(console, total=40, step=20)
    console.line("done", "summary", ok=40)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == [
        "listed", "planned", "cluster", "progress", "progress", "summary"
    ]  # fmt: skip
    assert events[-2]["done"] == 40 and events[-1]["ok"] == 40


def test_bad_log_format():
    with pytest.raises(ValueError, match="log_format must be 'text' or 'json', got 'xml'"):
        RunConsole(log_format="xml")
