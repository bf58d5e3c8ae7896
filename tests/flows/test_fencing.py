"""A batch that outlasts its run's lease cannot commit once a second run holds the
store: the second run fences it off (xraycore.store._delta), on real parts (the
preprocess flow on Prefect and Dask processes, the lease's own staleness)."""

from __future__ import annotations

import threading
import time

import cv2

from flows.cluster import local_cluster
from flows.preprocess import preprocess_dataset
from flows.server import run_flow
from xraycore import batch as batch_module
from xraycore.batch import plan_batches, process_batch
from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.sources.catalog import list_sources
from xraycore.store import FencedCommitError, ScanStore
from xraycore.store.lease import StoreLease
from xraycore.store.storage import Storage
from xraycore.store.verify import verify_store

SIZE, BATCH, N = 64, 4, 8


def test_a_batch_that_outlasts_its_runs_lease_is_fenced_off(tmp_path, monkeypatch):
    source, url = tmp_path / "source", str(tmp_path / "store")
    source.mkdir()
    for i in range(N):
        cv2.imwrite(str(source / f"scan{i}.png"), phantom_chest(96, seed=i))
    spec = PipelineSpec(size=SIZE)

    # Run A takes the lease and is never heard of again (its host died): no
    # renewals, so its lease goes stale after its TTL. One of its batches lives on.
    store = ScanStore.open(url)
    store.initialise(spec, batch_size=BATCH)
    StoreLease.acquire(store.storage, "run-a", ttl_s=0.5)
    plan = plan_batches(
        list_sources(Storage.from_url(str(source))),
        store.read_metadata(),
        pipeline_hash=spec.hash,
        first_free_row=store.capacity(),
        batch_size=BATCH,
    )
    store.ensure_capacity(plan.end_row)
    store.fence("run-a")

    inside, release, outcome = threading.Event(), threading.Event(), {}
    decode = batch_module.decode_image

    def slow_decode(*args, **kwargs):  # run A's batch only: it outlasts the lease
        if threading.current_thread().name == "late-batch":
            inside.set()
            release.wait(120)
        return decode(*args, **kwargs)

    monkeypatch.setattr(batch_module, "decode_image", slow_decode)

    def late_batch():
        try:
            outcome["result"] = process_batch(
                plan.batches[0], store=url, spec=spec, run_id="run-a", fence="run-a"
            )
        except Exception as exc:  # noqa: BLE001 - the test reads it below
            outcome["error"] = exc

    thread = threading.Thread(target=late_batch, name="late-batch")
    thread.start()
    assert inside.wait(60)
    time.sleep(0.6)  # past run A's TTL

    # Run B: the real flow takes the stale lease over and processes everything.
    summary = run_flow(
        preprocess_dataset,
        source=str(source),
        store=url,
        size=SIZE,
        batch_size=BATCH,
        cluster=local_cluster(1),
        sheet=False,
    )
    assert (summary["ok"], summary["failed"]) == (N, 0)
    release.set()
    thread.join(60)
    assert isinstance(outcome.get("error"), FencedCommitError), outcome
    assert "run run-a no longer holds the lease" in str(outcome["error"])

    rows = ScanStore.open(url).read_metadata().to_pylist()
    assert len(rows) == N and {r["run_id"] for r in rows} == {summary["run_id"]}
    assert len({(r["source"], r["frame"]) for r in rows}) == N
    history = ScanStore.open(url).history()
    assert {e["run_id"] for e in history if e.get("kind") == "batch"} == {summary["run_id"]}
    assert verify_store(url).clean
