"""One writer per store: a lease that a run takes before planning and renews while it runs.

Two runs on one store at once would both read the arrays' capacity, grow them
and plan the same rows (Zarr is safe for concurrent writes to distinct chunks
only, zarr-python #3514, #3169). So a run first takes ``STORE/_lease.json``:

- it is *created* with a conditional write that fails when the file exists
  (:meth:`xraycore.store.storage.Storage.create_exclusive`: ``If-None-Match: *`` on
  S3; on a local or network disk a check and a renamed write under an
  exclusive ``flock``);
- it is *renewed* every ``ttl_s / 4`` by a background thread, conditionally
  (``If-Match`` on the lease's ETag on S3; on disk a comparison of its bytes
  under the lock),
  so a run that lost its lease finds out instead of overwriting the new
  holder's;
- it is *stale* when it was not renewed for ``ttl_s`` seconds, or when its
  holder is a process on this host that is no longer running: a later run
  takes a stale lease over (again conditionally, so of two runs racing for it
  one wins) and says so;
- an operator can break it (``xray run --break-lease``); that is for a holder
  known to be dead on another host, before its lease goes stale.

Requests lost on the wire are handled: a conditional create whose response was
lost and whose retry then fails with "precondition failed" reads the lease
back and recognises its own nonce.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from xraycore.store.schema import LEASE
from xraycore.store.storage import ConditionFailed, Storage

__all__ = [
    "DEFAULT_TTL_S",
    "LEASE",
    "LeaseHeldError",
    "LeaseInfo",
    "LeaseLostError",
    "StoreLease",
    "break_lease",
    "read_lease",
]

logger = logging.getLogger(__name__)


#: A lease not renewed for this long is stale. Renewed every quarter of it, so
#: three renewals in a row can fail (a slow or faulty object store) before a
#: live run loses its lease.
DEFAULT_TTL_S = 120.0


class LeaseHeldError(ValueError):
    """Another run holds the store's lease.

    A ValueError like every refused store, so the command line exits 2.
    """

    def __init__(self, url: str, info: LeaseInfo, *, waited_s: float | None = None):
        self.url, self.info = url, info
        waited = f" (waited {waited_s:.0f} s)" if waited_s else ""
        super().__init__(
            f"store {url} is being written by run {info.run_id} ({info.holder}) since "
            f"{_stamp(info.acquired_at)}, last renewed {_stamp(info.renewed_at)}{waited}; "
            f"wait, or pass --wait (the lease goes stale at {_stamp(info.expires_at)} "
            "if that run stops renewing it); if that run is known to be dead, pass "
            "--break-lease"
        )


class LeaseLostError(RuntimeError):
    """This run's lease was broken or taken over: it must stop committing."""


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """This process's PID namespace (``pid:[inode]``), or None where unknown."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _running(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if started is None:
        return True
    now = _process_start(pid)
    return now is None or now == started  # another process reusing the pid is not the holder


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease records: who holds it, since when, until when."""

    run_id: str
    nonce: str
    host: str
    pid: int
    pid_started: int | None
    boot_id: str | None
    acquired_at: datetime
    renewed_at: datetime
    ttl_s: float
    description: str = ""
    pid_namespace: str | None = None

    @classmethod
    def of_this_process(cls, run_id: str, *, ttl_s: float, description: str = "") -> LeaseInfo:
        """A new lease for ``run_id`` held by this process, acquired now."""
        now = datetime.now(UTC)
        pid = os.getpid()
        return cls(
            run_id=run_id,
            nonce=uuid.uuid4().hex,
            host=socket.gethostname(),
            pid=pid,
            pid_started=_process_start(pid),
            boot_id=_boot_id(),
            pid_namespace=_pid_namespace(),
            acquired_at=now,
            renewed_at=now,
            ttl_s=float(ttl_s),
            description=description,
        )

    @property
    def holder(self) -> str:
        what = f"{self.description}, " if self.description else ""
        return f"{what}pid {self.pid} on {self.host}"

    @property
    def expires_at(self) -> datetime:
        return self.renewed_at + timedelta(seconds=self.ttl_s)

    def stale(self, now: datetime | None = None) -> str | None:
        """Why this lease may be taken over, or None while its holder keeps it."""
        now = now or datetime.now(UTC)
        if now > self.expires_at:
            return f"not renewed since {_stamp(self.renewed_at)} (stale after {self.ttl_s:.0f} s)"
        # A pid means something only in its own PID namespace: containers that
        # share the host's network (and so its host name and boot id) do not
        # see each other's processes.
        same_machine = (
            self.host == socket.gethostname()
            and self.boot_id == _boot_id()
            and self.pid_namespace is not None
            and self.pid_namespace == _pid_namespace()
        )
        if same_machine and self.boot_id and not _running(self.pid, self.pid_started):
            return f"its process (pid {self.pid} on {self.host}) is not running"
        return None

    def to_bytes(self) -> bytes:
        d = asdict(self)
        d["acquired_at"] = self.acquired_at.isoformat()
        d["renewed_at"] = self.renewed_at.isoformat()
        return json.dumps(d, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseInfo:
        d = json.loads(data)
        d["acquired_at"] = datetime.fromisoformat(d["acquired_at"])
        d["renewed_at"] = datetime.fromisoformat(d["renewed_at"])
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class _LeaseFile:
    """The lease file through the storage's conditional writes: compared under
    an exclusive ``flock`` on local or network disk, by S3 on its ETag."""

    def __init__(self, storage: Storage):
        if not storage.conditional_writes:
            raise ValueError(
                f"store {storage.url}: leases need a local path or s3:// (conditional writes); "
                f"{storage.protocol}:// has none here"
            )
        self.storage = storage

    def create(self, data: bytes) -> Any:
        return self.storage.create_exclusive(LEASE, data)

    def read(self) -> tuple[bytes, Any] | None:
        return self.storage.read_versioned(LEASE)

    def replace(self, token: Any, data: bytes) -> Any:
        """Take over (or renew) the lease whose version was ``token``."""
        return self.storage.replace_if(LEASE, data, token)

    renew = replace

    def delete(self, token: Any | None) -> None:
        self.storage.remove_if(LEASE, token)


_backend = _LeaseFile
_Conflict = ConditionFailed


def read_lease(storage: Storage) -> LeaseInfo | None:
    """The lease on a store, or None when nobody holds it."""
    found = _backend(storage).read()
    return None if found is None else LeaseInfo.from_bytes(found[0])


def break_lease(storage: Storage) -> LeaseInfo | None:
    """Remove a store's lease whoever holds it; returns what it recorded.

    For an operator who knows the holder is dead. A holder that is in fact
    alive finds out at its next renewal and stops committing.
    """
    backend = _backend(storage)
    found = backend.read()
    if found is None:
        return None
    backend.delete(None)
    info = LeaseInfo.from_bytes(found[0])
    logger.warning("broke the lease of run %s (%s) on %s", info.run_id, info.holder, storage.url)
    return info


class StoreLease:
    """The lease this process holds on one store.

    Take it with :meth:`acquire`; use it as a context manager to renew it in a
    background thread and release it on the way out (failures included).
    :meth:`check` raises :class:`LeaseLostError` once a renewal found it gone.
    """

    def __init__(self, storage: Storage, info: LeaseInfo, token: Any, *, taken_over=None):
        self.storage = storage
        self.info = info
        self._token = token
        self._backend = _backend(storage)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: LeaseLostError | None = None
        #: The stale lease this one replaced (and why it was stale), or None.
        self.taken_over: tuple[LeaseInfo, str] | None = taken_over

    @classmethod
    def acquire(
        cls,
        storage: Storage,
        run_id: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        wait: bool = False,
        wait_timeout_s: float | None = None,
        break_existing: bool = False,
        description: str = "",
        poll_s: float = 2.0,
        on_wait: Callable[[LeaseInfo], None] | None = None,
    ) -> StoreLease:
        """Take the lease of ``storage`` for ``run_id``.

        Parameters
        ----------
        storage : Storage
            The store's root.
        run_id : str
            Names the holder in messages.
        ttl_s : float, optional
            The lease is stale when not renewed for this long. Default 120 s.
        wait : bool, optional
            Wait for a held lease to be released or go stale, polling every
            ``poll_s`` (``on_wait`` is called once, with the holder), instead of
            raising :class:`LeaseHeldError` at once.
        wait_timeout_s : float or None, optional
            Give up waiting after this long (LeaseHeldError).
        break_existing : bool, optional
            Remove whatever lease is there first (see :func:`break_lease`).
        description : str, optional
            What the holder is, e.g. a Prefect flow run's name, for messages.
        """
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        backend = _backend(storage)
        if break_existing:
            break_lease(storage)
        mine = LeaseInfo.of_this_process(run_id, ttl_s=ttl_s, description=description)
        started, told = time.monotonic(), False
        while True:
            mine = replace(mine, acquired_at=datetime.now(UTC), renewed_at=datetime.now(UTC))
            try:
                return cls(storage, mine, backend.create(mine.to_bytes()))
            except _Conflict:
                pass
            found = backend.read()
            if found is None:  # released between our create and read: try again
                continue
            held, token = LeaseInfo.from_bytes(found[0]), found[1]
            if held.nonce == mine.nonce:  # our create landed; its response was lost
                return cls(storage, held, token)
            why = held.stale()
            if why:
                try:
                    token = backend.replace(token, mine.to_bytes())
                except _Conflict:
                    continue  # someone renewed or took it first: look again
                logger.warning(
                    "took over the stale lease of run %s on %s: %s",
                    held.run_id,
                    storage.url,
                    why,
                )
                return cls(storage, mine, token, taken_over=(held, why))
            waited = time.monotonic() - started
            if not wait or (wait_timeout_s is not None and waited >= wait_timeout_s):
                raise LeaseHeldError(storage.url, held, waited_s=waited if wait else None)
            if not told and on_wait is not None:
                on_wait(held)
                told = True
            time.sleep(poll_s)

    # -- holding ------------------------------------------------------------
    def renew(self) -> None:
        """Extend the lease by its TTL; :class:`LeaseLostError` if it is not ours any more."""
        with self._lock:
            if self._lost:
                raise self._lost
            new = replace(self.info, renewed_at=datetime.now(UTC))
            try:
                self._token = self._backend.renew(self._token, new.to_bytes())
            except _Conflict:
                found = self._backend.read()
                if found is not None and LeaseInfo.from_bytes(found[0]) == new:
                    self._token = found[1]  # our renewal landed; its response was lost
                else:
                    holder = LeaseInfo.from_bytes(found[0]) if found else None
                    self._lost = LeaseLostError(
                        f"run {self.info.run_id} lost its lease on {self.storage.url}: "
                        + (
                            f"run {holder.run_id} ({holder.holder}) holds it now"
                            if holder
                            else "it was broken (--break-lease)"
                        )
                    )
                    raise self._lost from None
            self.info = new

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if a renewal found the lease gone."""
        if self._lost:
            raise self._lost

    def release(self) -> None:
        """Remove the lease if it is still ours (never someone else's)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self._lost:
                return
            try:
                self._backend.delete(self._token)
            except _Conflict:
                logger.warning("lease on %s was not ours any more at release", self.storage.url)

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.info.ttl_s / 4):
            try:
                self.renew()
            except LeaseLostError as exc:
                logger.error("%s", exc)
                return
            except Exception as exc:  # a transient storage fault: the next renewal may work
                logger.warning("renewing the lease on %s failed: %s", self.storage.url, exc)

    def __enter__(self) -> StoreLease:
        self._thread = threading.Thread(
            target=self._renew_forever, name="store-lease-renewal", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
