"""``flows.progress.notify``: one call per milestone reaches the flow run's log
(progress at most every 2 s) and the in-process observers (every event)."""

from __future__ import annotations

import os
import time

import httpx
from prefect import flow
from prefect.runtime import flow_run

from flows.progress import log_line, notify, observe

BATCHES = 50


@flow
def _milestones() -> str:
    notify("listed", inputs=BATCHES, seconds=0.5)
    for done in range(1, BATCHES + 1):
        notify("batch", done=done, total=BATCHES, failed=0, batches_done=done,
               batches=BATCHES, rate=100.0)  # fmt: skip
    notify("committed", rows=BATCHES)
    return str(flow_run.id)


def _logs(flow_run_id: str, expected: int) -> list[str]:
    query = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    deadline = time.time() + 30  # logs reach the API in batches
    with httpx.Client(base_url=os.environ["PREFECT_API_URL"], timeout=30) as http:
        while True:
            messages = [x["message"] for x in http.post("/logs/filter", json=query).json()]
            if sum("committed" in m for m in messages) >= expected or time.time() > deadline:
                return messages


def test_notify_logs_once_per_milestone_and_reaches_the_observer(prefect_server):
    seen: list[tuple[str, dict]] = []
    with observe(lambda event, fields: seen.append((event, fields))):
        run_id = _milestones()
    events = [e for e, _ in seen]
    assert events == ["listed", *["batch"] * BATCHES, "committed"]
    assert seen[0][1] == {"inputs": BATCHES, "seconds": 0.5}

    messages = _logs(run_id, expected=1)
    assert f"listed {BATCHES} inputs in 0.5 s" in messages
    assert f"committed {BATCHES} rows" in messages
    progress = [m for m in messages if m.startswith("progress:")]
    # The first and the last, not one per batch (50 batches in well under 2 s).
    assert (
        progress[-1]
        == f"progress: {BATCHES}/{BATCHES} images (100%), {BATCHES}/{BATCHES} batches, "
        "100.0 images/s"
    )
    assert 2 <= len(progress) < 5, progress


def test_every_event_kind_reads_as_one_line():
    assert log_line("planned", {"new": 3, "retried": 1, "skipped": 2, "batches": 1,
                                "images": 4}) == (
        "planned 4 images in 1 batch (3 new, 1 to retry, 2 already done)"
    )  # fmt: skip
    assert log_line("cluster", {"workers": 2, "dashboard": None}) == "cluster: 2 Dask workers"
    assert log_line("prefect_server", {"url": "http://127.0.0.1:4200"}) is None  # terminal only
    assert log_line("unknown", {}) is None


def test_outside_a_flow_run_notify_still_reaches_the_observer():
    seen = []
    with observe(lambda event, fields: seen.append(event)):
        notify("scored", rows=3)
    assert seen == ["scored"]
