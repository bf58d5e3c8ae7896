"""The store lease on a local disk and on S3 (a real moto server over HTTP, loopback)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace

import pytest

from xraycore.store.lease import (
    LEASE,
    LeaseHeldError,
    LeaseInfo,
    LeaseLostError,
    StoreLease,
    break_lease,
    read_lease,
)
from xraycore.store.storage import Storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage.from_url(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_server")  # the AWS environment, for this test
    bucket = f"lease-{uuid.uuid4().hex[:8]}"
    st = Storage.from_url(f"s3://{bucket}/store", {"endpoint_url": endpoint})
    st.makedirs()
    return st


def test_second_run_is_refused_with_who_and_since(storage):
    first = StoreLease.acquire(storage, "run-a", description="flow run 'calm-fox'")
    with pytest.raises(LeaseHeldError) as caught:
        StoreLease.acquire(storage, "run-b")
    message = str(caught.value)
    assert f"store {storage.url} is being written by run run-a" in message
    assert "calm-fox" in message and "since" in message
    assert "--wait" in message and "--break-lease" in message
    assert isinstance(caught.value, ValueError)  # a refused store: the CLI exits 2
    assert read_lease(storage).run_id == "run-a"
    first.release()
    assert read_lease(storage) is None
    StoreLease.acquire(storage, "run-b").release()


def test_conditional_create_is_exclusive_on_the_server(storage):
    """Proves the backend honours the condition (moto 5.2.5: If-None-Match: *)."""
    from xraycore.store.lease import _backend, _Conflict

    backend = _backend(storage)
    backend.create(b'{"first": 1}')
    with pytest.raises(_Conflict):
        backend.create(b'{"second": 2}')
    assert backend.read()[0] == b'{"first": 1}'


def _contend(storage: Storage, n: int) -> tuple[list[StoreLease], list[LeaseHeldError]]:
    """``n`` threads released by one barrier, each trying to take the lease."""
    barrier = threading.Barrier(n)
    won, refused = [], []

    def contend(i: int) -> None:
        barrier.wait()
        try:
            won.append(StoreLease.acquire(storage, f"run-{i}"))
        except LeaseHeldError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


def test_runs_released_at_one_instant_get_one_lease(storage):
    """8 contenders behind a barrier, 5 rounds: exactly one winner each round."""
    for _ in range(5):
        won, refused = _contend(storage, 8)
        assert len(won) == 1 and len(refused) == 7
        assert {e.info.run_id for e in refused} == {won[0].info.run_id}
        won[0].release()


def test_stale_lease_is_taken_over_by_one_of_several(storage):
    StoreLease.acquire(storage, "dead-run", ttl_s=0.3)  # never renewed nor released
    time.sleep(0.4)
    won, refused = _contend(storage, 6)
    assert len(won) == 1 and len(refused) == 5
    won[0].release()
    # On its own, a run says whose stale lease it took over, and why.
    StoreLease.acquire(storage, "dead-run", ttl_s=0.3)
    time.sleep(0.4)
    taker = StoreLease.acquire(storage, "rerun")
    held, why = taker.taken_over
    assert held.run_id == "dead-run" and "not renewed" in why
    taker.release()


def test_lease_of_a_dead_process_on_this_host_is_stale_at_once(storage):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    lease = StoreLease.acquire(storage, "killed-run")
    dead = LeaseInfo(**{**lease.info.__dict__, "pid": int(proc.stdout), "pid_started": None})
    lease._backend.renew(lease._token, dead.to_bytes())
    assert "is not running" in dead.stale()
    taker = StoreLease.acquire(storage, "rerun")
    assert taker.taken_over[0].run_id == "killed-run"
    assert "not running" in taker.taken_over[1]
    taker.release()


def test_a_pid_from_another_pid_namespace_proves_nothing(storage):
    """Containers sharing the host's network share its name and boot id, not its pids."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    lease = StoreLease.acquire(storage, "run-in-another-container")
    other = {"pid": int(proc.stdout), "pid_started": None, "pid_namespace": "pid:[1]"}
    elsewhere = LeaseInfo(**{**lease.info.__dict__, **other})
    assert elsewhere.stale() is None  # live until its TTL runs out
    unknown = LeaseInfo(**{**lease.info.__dict__, **other, "pid_namespace": None})
    assert unknown.stale() is None  # a lease written before namespaces were recorded
    lease.release()


def test_wait_returns_once_the_holder_releases(storage):
    holder = StoreLease.acquire(storage, "run-a")
    seen = []
    timer = threading.Timer(0.6, holder.release)
    timer.start()
    t0 = time.monotonic()
    second = StoreLease.acquire(storage, "run-b", wait=True, poll_s=0.05, on_wait=seen.append)
    assert time.monotonic() - t0 >= 0.5
    assert [i.run_id for i in seen] == ["run-a"]
    assert read_lease(storage).run_id == "run-b"
    second.release()
    timer.join()


def test_wait_timeout_gives_up_with_the_holder_named(storage):
    holder = StoreLease.acquire(storage, "run-a")
    with pytest.raises(LeaseHeldError, match=r"run run-a .*waited"):
        StoreLease.acquire(storage, "run-b", wait=True, wait_timeout_s=0.2, poll_s=0.05)
    holder.release()


def test_renewal_keeps_a_live_lease_fresh(storage):
    with StoreLease.acquire(storage, "run-a", ttl_s=0.4) as lease:
        first = lease.info.renewed_at
        for _ in range(4):  # 1.2 s: three TTLs
            time.sleep(0.3)
            with pytest.raises(LeaseHeldError):
                StoreLease.acquire(storage, "run-b")
        assert lease.info.renewed_at > first
        lease.check()
    assert read_lease(storage) is None  # released on the way out


def test_lease_is_released_when_the_run_fails(storage):
    with pytest.raises(RuntimeError, match="boom"):
        with StoreLease.acquire(storage, "run-a"):
            raise RuntimeError("boom")
    assert read_lease(storage) is None


def test_broken_lease_is_lost_and_never_deleted_from_the_new_holder(storage):
    lease = StoreLease.acquire(storage, "run-a")
    assert break_lease(storage).run_id == "run-a"
    newcomer = StoreLease.acquire(storage, "run-b")
    with pytest.raises(LeaseLostError, match="run run-b"):
        lease.renew()
    with pytest.raises(LeaseLostError):
        lease.check()
    lease.release()
    assert read_lease(storage).run_id == "run-b"
    newcomer.release()


def test_break_existing_takes_a_live_lease(storage):
    StoreLease.acquire(storage, "run-a")
    lease = StoreLease.acquire(storage, "run-b", break_existing=True)
    assert read_lease(storage).run_id == "run-b"
    lease.release()
    assert break_lease(storage) is None


def test_lease_file_name_and_bad_options(tmp_path):
    st = Storage.from_url(str(tmp_path / "s"))
    StoreLease.acquire(st, "r").release()
    with StoreLease.acquire(st, "r"):
        assert (tmp_path / "s" / LEASE).is_file()
    with pytest.raises(ValueError, match="ttl_s must be > 0, got 0"):
        StoreLease.acquire(st, "r", ttl_s=0)
    with pytest.raises(ValueError, match="leases need a local path or s3://"):
        StoreLease.acquire(Storage.from_url("memory://x"), "r")


def test_a_new_lease_records_this_process_and_round_trips(tmp_path):
    import os
    import socket

    info = LeaseInfo.of_this_process("r", ttl_s=30, description="a test")
    other = LeaseInfo.of_this_process("r", ttl_s=30)
    assert (info.run_id, info.pid, info.host, info.ttl_s) == (
        "r",
        os.getpid(),
        socket.gethostname(),
        30.0,
    )
    assert info.acquired_at == info.renewed_at and info.acquired_at.tzinfo is not None
    assert info.nonce != other.nonce  # tells a lost create's own lease from another's
    assert info.stale() is None and info.holder == f"a test, pid {os.getpid()} on {info.host}"
    assert LeaseInfo.from_bytes(info.to_bytes()) == info
    with StoreLease.acquire(
        Storage.from_url(str(tmp_path / "s")), "r", description="a test"
    ) as held:
        assert replace(held.info, nonce=info.nonce, acquired_at=info.acquired_at,
                       renewed_at=info.renewed_at, ttl_s=30.0) == info  # fmt: skip
