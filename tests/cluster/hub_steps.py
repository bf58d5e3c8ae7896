"""What the share-nothing drill does from the hub (the test's side of the bridge):
``python hub_steps.py STEP ARGS...``, one JSON line out.

upload FOLDER URL        put FOLDER's PNGs under s3 URL (bucket created)
in-batch SCHEDULER ADDR  wait until a batch is committed and the worker at
                         ADDR (an IP) is inside one; print its tasks
parts STORE [K]          the store's committed batch metadata parts (first
                         waiting, polling fast, until there are K)
lease STORE              the store's lease, or null
health URL               wait until URL answers 200 (a server starting)
probe SCHEDULER PATH     each worker's host name, pid and whether it sees PATH
check STORE FOLDER SIZE  the store complete and equal to a clean run of FOLDER
                         (harness.assert_store_complete, `xray verify` included):
                         its figures, or {"failed": the assertion's message}

S3 is AWS_ENDPOINT_URL; the harness comes from tests/drills.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drills"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: servers, stores


def s3():
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], skip_instance_cache=True)


def upload(folder: str, url: str) -> dict:
    fs = s3()
    bucket = url.removeprefix("s3://").split("/")[0]
    deadline = time.monotonic() + 60
    while True:  # the S3 host may still be starting
        try:
            fs.mkdir(bucket)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    files = sorted(Path(folder).glob("*.png"))
    fs.pipe({f"{url}/{p.name}": p.read_bytes() for p in files})
    return {"uploaded": len(files)}


def committed_batches(store: str) -> list[str]:
    """The commits of a batch in the store's metadata log so far."""
    fs = s3()
    try:
        names = [n for n in fs.ls(f"{store}/metadata.delta/_delta_log") if n.endswith(".json")]
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        for line in fs.cat(name).decode().splitlines():
            info = json.loads(line).get("commitInfo") if line.strip() else None
            if info and info.get("xray.kind") == "batch":
                found.append(name)
    return found


def in_batch(scheduler: str, address: str, store: str) -> dict:
    from distributed import Client

    with Client(scheduler, timeout=30) as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = {w: keys for w, keys in client.processing().items() if keys}
            mine = [k for w, keys in busy.items() if f"//{address}:" in w for k in keys]
            if mine and committed_batches(store):
                return {"worker": address, "tasks": [str(k) for k in mine]}
            time.sleep(0.01)
    raise SystemExit(f"no batch on {address} after a committed one within 120 s")


def health(url: str) -> dict:
    import urllib.request

    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return {"status": answer.status}
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def probe(scheduler: str, path: str) -> dict:
    import socket

    from distributed import Client

    def look(path=path):
        return [socket.gethostname(), os.getpid(), os.path.exists(path)]

    with Client(scheduler, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
        return client.run(look)


def lease(store: str) -> dict | None:
    from xraycore.store.lease import read_lease
    from xraycore.store.storage import Storage

    info = read_lease(Storage.from_url(store, {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}))
    return None if info is None else json.loads(info.to_bytes())


def check(store: str, folder: str, size: str) -> dict:
    from harness import assert_store_complete, clean_reference

    with tempfile.TemporaryDirectory() as reference:
        ref = clean_reference(Path(folder), Path(reference) / "store", size=int(size))
        try:
            return assert_store_complete(
                store, ref, options={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
            )
        except AssertionError as exc:
            return {"failed": str(exc)}


def wait_batches(store: str, count: str = "0") -> dict:
    deadline = time.monotonic() + 120
    while len(found := committed_batches(store)) < int(count):
        if time.monotonic() > deadline:
            raise SystemExit(f"{store}: fewer than {count} committed batches after 120 s")
        time.sleep(0.01)
    return {"batches": len(found)}


if __name__ == "__main__":
    step, *args = sys.argv[1:]
    steps = {"upload": upload, "in-batch": in_batch, "lease": lease, "check": check}
    steps["health"] = health
    steps["probe"] = probe
    steps["batches"] = wait_batches
    print(json.dumps(steps[step](*args), default=str), flush=True)
