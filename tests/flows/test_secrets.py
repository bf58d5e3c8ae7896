"""Secrets never reach Prefect: an S3 run with credentials from the environment
leaves no trace of them in the Prefect database, logs, events or artifacts, and
credentials given as storage options are refused before any flow run exists."""

from __future__ import annotations

import os
import time
import uuid
from functools import partial
from pathlib import Path

import cv2
import httpx
import pytest
from commands import xray

from flows.preprocess import preprocess_dataset
from flows.server import run_flow
from xraycore.image.synth import phantom_chest
from xraycore.store.storage import CredentialsRefusedError, refuse_credentials

#: The installed console script, as a user runs it.
_xray = partial(xray, installed=True)


def _api_dump(api: str) -> str:
    """Everything the API serves about runs: flow runs (with parameters), task
    runs, logs, artifacts and events, as one text."""
    chunks = []
    with httpx.Client(base_url=api, timeout=30) as http:
        for route in ("flow_runs", "task_runs", "logs", "artifacts"):
            res = http.post(f"/{route}/filter", json={"limit": 200})
            res.raise_for_status()
            chunks.append(res.text)
        page = http.post("/events/filter", json={"limit": 50})
        page.raise_for_status()
        while True:
            body = page.json()
            chunks.append(page.text)
            if not body.get("next_page"):
                break
            page = http.get(body["next_page"])
            page.raise_for_status()
    return "\n".join(chunks)


def _wait_for_event(api: str, name: str, store: str, timeout: float = 60) -> None:
    """Events are written to the database asynchronously: wait for the run's last."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        res = httpx.post(
            f"{api}/events/filter",
            json={"filter": {"event": {"name": [name]}}, "limit": 50},
            timeout=30,
        )
        if store in res.text:
            return
        time.sleep(1)
    raise AssertionError(f"event {name} for {store} never reached the server")


def test_credentials_from_the_environment_never_reach_prefect(
    tmp_path, s3_server, prefect_server, monkeypatch
):
    import s3fs

    key_id = f"AKIAXRAY{uuid.uuid4().hex[:12].upper()}"
    secret = f"xray-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    bucket = f"secrets-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    for i in range(3):
        ok, buf = cv2.imencode(".png", phantom_chest(96, seed=i))
        fs.pipe_file(f"{bucket}/in/p{i}.png", buf.tobytes())
    store = f"s3://{bucket}/store"
    env = os.environ.copy()

    res = _xray(
        "run", f"s3://{bucket}/in", "--store", store, "--size", "64", "--batch-size", "2",
        "--workers", "1", env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 ok" in res.stdout
    assert fs.exists(f"{bucket}/store/images.zarr/zarr.json")  # the credentials did work

    # Given as storage options they are refused, before a flow run exists.
    other = f"xray-refused-{uuid.uuid4().hex}"
    refused = _xray(
        "run", f"s3://{bucket}/in", "--store", store,
        "--storage-options", f'{{"key": "{key_id}", "secret": "{other}"}}', env=env,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "AWS_SECRET_ACCESS_KEY" in refused.stderr and "secret" in refused.stderr
    assert other not in refused.stdout + refused.stderr
    with pytest.raises(CredentialsRefusedError, match="environment"):
        run_flow(
            preprocess_dataset,
            source=f"s3://{bucket}/in",
            store=store,
            storage_options={"client_kwargs": {"aws_secret_access_key": other}},
        )

    # The control: called directly, the flow still refuses (the run fails), but
    # Prefect has already recorded the parameter. The grep below must see it.
    canary = f"xray-canary-{uuid.uuid4().hex}"
    with pytest.raises(CredentialsRefusedError):
        preprocess_dataset(
            source=f"s3://{bucket}/in", store=store, storage_options={"secret": canary}
        )

    _wait_for_event(prefect_server, "xray.run.committed", store)
    dump = _api_dump(prefect_server)
    assert store in dump and "xray.batch.committed" in dump  # the dump holds the run
    assert canary in dump
    for value in (secret, other):
        assert value not in dump
        assert value not in res.stdout + res.stderr
    # The server's database and every other file under PREFECT_HOME.
    home = Path(os.environ["PREFECT_HOME"])
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name.startswith("prefect.db") for p in files), files
    assert any(canary.encode() in p.read_bytes() for p in files)
    for path in files:
        data = path.read_bytes()
        for value in (secret, other):
            assert value.encode() not in data, path
    assert key_id.encode() not in b"".join(p.read_bytes() for p in files)


@pytest.mark.parametrize(
    "options",
    [
        {"key": "AKIA...", "secret": "x"},
        {"token": "x"},
        {"client_kwargs": {"aws_secret_access_key": "x"}},
        {"password": "x"},
        {"account_key": "x"},
    ],
)
def test_credential_options_are_refused_with_what_to_do(options):
    with pytest.raises(CredentialsRefusedError, match="AWS_PROFILE"):
        refuse_credentials(options)


def test_options_without_credentials_pass():
    refuse_credentials(None)
    refuse_credentials({"endpoint_url": "http://x", "profile": "lab", "anon": False})
    refuse_credentials({"client_kwargs": {"region_name": "eu-west-1"}, "key": None})
    with pytest.raises(TypeError, match="mapping"):
        refuse_credentials(["secret"])
