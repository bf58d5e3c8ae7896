"""Check a store after the fact, and mark what is wrong for the next run to redo.

:func:`verify_store` re-reads a store and reports, per row and per file:

- ``missing``: an ``ok`` row whose shard object is absent (or empty) in any array;
- ``unreadable``: an ``ok`` row whose pixels cannot be decoded (a corrupt or
  half-written shard);
- ``different``: an ``ok`` row whose stored ``preprocessed`` pixels do not match
  the CRC-32 committed with it (:func:`xraycore.store.columns.checksum`);
- ``no_checksum``: an ``ok`` row committed without one (never written by format 2);
- ``orphaned``: an ``ok`` row pointing outside the arrays (no row, or past their end);
- ``shared_row``: two sources whose latest ``ok`` rows point at one array row (mixed);
- ``duplicate_source``: a (source, frame) twice in the latest version (only a
  writer other than xray-pipeline can commit that);
- ``untracked_file``: a data file of a table that no kept version reads, what a
  writer killed before its commit leaves (harmless: no reader sees it);
- ``temporary_file``: a file a writer never renamed into place (a shard, the
  lease, a picture: :func:`xraycore.store.schema.is_temporary`), left by a
  writer killed mid-write; not reported while a live run holds the store;
- ``bad_table``: a table (or a kept version of it) that cannot be read;
- ``stale_lease``: a lease whose holder is gone.

Every kept version is checked, not only the latest: the ok rows of older
versions (a row since replaced, a version before a split) must still point at
pixels whose checksum matches, since ``ScanStore.open(url, version=k)`` reads
them. Their problems are reported with the version's rows; repair marks only
the latest rows (an old version is what it was).

The shard objects of a row follow from its row number and the array's Zarr
metadata (:meth:`ScanStore.shard_key`, ``c/<row // shard>/0/0``), so they are
checked by listing each array once rather than recorded per row. The pixel
reads are independent per shard: give ``executor`` (any
``concurrent.futures.Executor``, e.g. a Dask client's ``get_executor()``) to
spread them over a cluster; :func:`check_shard` is the unit of work and opens
the store itself.

:func:`repair_store` marks the rows of row-level problems ``failed`` (so the next
run redoes them) and compacts what a killed run left behind, under the store's
lease, and removes the untracked files.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from xraycore.store import ScanStore, columns, schema, select_rows
from xraycore.store.lease import StoreLease, read_lease
from xraycore.store.schema import IMAGES, METADATA

__all__ = ["ROW_KINDS", "Problem", "VerifyReport", "check_shard", "repair_store", "verify_store"]

#: Problems of a row's pixels or place: repaired by marking the row failed.
ROW_KINDS = ("missing", "unreadable", "different", "no_checksum", "orphaned", "shared_row")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store."""

    kind: str
    detail: str
    source: str | None = None
    image_id: str | None = None
    row: int | None = None
    path: str | None = None
    frame: int | None = None

    def __str__(self) -> str:
        where = self.image_id or self.path or ""
        at = f" (row {self.row})" if self.row is not None else ""
        return f"{self.kind}: {where}{at}: {self.detail}"


@dataclass
class VerifyReport:
    """What :func:`verify_store` found."""

    store: str
    rows: int = 0
    ok_rows: int = 0
    checked: int = 0
    shards: int = 0
    versions: int = 0
    older_rows: int = 0
    seconds: float = 0.0
    writer: str | None = None
    problems: list[Problem] = field(default_factory=list)
    #: The latest metadata row of each (source, frame) that has a row-level problem.
    bad_rows: dict[tuple[str, int | None], dict[str, Any]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.problems

    def add_row_problem(self, row: dict[str, Any], kind: str, detail: str) -> None:
        """Record a row-level problem of the metadata row ``row`` (one of
        :data:`ROW_KINDS`), keeping the row for :func:`repair_store`."""
        self.problems.append(
            Problem(kind, detail, row["source"], row["image_id"], row["row"], frame=row["frame"])
        )
        self.bad_rows.setdefault(_key(row), row)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for p in self.problems:
            out[p.kind] += 1
        return dict(out)

    def summary(self) -> str:
        head = (
            f"store {self.store}: {self.rows} rows ({self.ok_rows} ok), {self.checked} checked "
            f"in {self.shards} shards, {self.versions} kept versions "
            f"({self.older_rows} rows of older ones), {self.seconds:.1f} s"
        )
        if self.clean:
            return head + ": clean"
        what = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items()))
        return f"{head}: {len(self.problems)} problems ({what})"


def _key(row: dict[str, Any]) -> tuple:
    """The metadata key of a row: (source, frame)."""
    return tuple(row.get(k) for k in columns.METADATA_KEY)


def _read_latest(store: ScanStore, report: VerifyReport):
    """The latest metadata rows (None: none); an unreadable table is a problem."""
    try:
        return store.read_metadata()
    except Exception as exc:
        report.problems.append(Problem("bad_table", f"{type(exc).__name__}: {exc}", path=METADATA))
        return None


def _check_untracked(store: ScanStore, report: VerifyReport) -> None:
    """Data files no kept version reads (a writer killed before its commit)."""
    for table in (store.metadata, store.predictions):
        try:
            found = table.untracked_files(older_than_s=schema.TEMPORARY_GRACE_S)
        except Exception as exc:
            report.problems.append(
                Problem("bad_table", f"{type(exc).__name__}: {exc}", path=table.name)
            )
            continue
        for path in found:
            report.problems.append(
                Problem("untracked_file", "read by no kept version (killed writer?)", path=path)
            )


def _stored_objects(store: ScanStore, names) -> dict[str, int]:
    """Object path (relative to the store) -> size, for every stored object of
    the arrays ``names``: one listing per array."""
    sizes: dict[str, int] = {}
    for name in names:
        try:
            found = store.storage.find(posixpath.join(IMAGES, name))
        except FileNotFoundError:
            continue
        sizes.update({p: int(info.get("size") or 0) for p, info in found.items()})
    return sizes


def _outer(arr) -> int:
    """Rows per stored object of ``arr`` (its shard, or its chunk when unsharded)."""
    return int((arr.shards or arr.chunks)[0])


# The arrays opened by this process for the current verification (one per
# session: a later verification reopens them, the store may have grown).
_OPEN: dict[tuple[str, str, str], dict[str, Any]] = {}


def _arrays(url: str, storage_options: dict[str, Any] | None, session: str) -> dict[str, Any]:
    key = (url, json.dumps(storage_options or {}, sort_keys=True), session)
    opened = _OPEN.get(key)
    if opened is None:
        _OPEN.clear()
        store = ScanStore.open(url, storage_options)
        opened = _OPEN[key] = {name: store.zarr_array(name) for name in store.arrays()}
    return opened


def check_shard(
    url: str,
    storage_options: dict[str, Any] | None,
    rows: list[tuple[int, str | None]],
    arrays: tuple[str, ...] = ("preprocessed",),
    session: str = "",
) -> list[tuple[int, str, str]]:
    """Read the ``rows`` of one shard from ``arrays`` and compare ``preprocessed``
    with each row's recorded checksum; returns ``(row, kind, detail)`` per problem.

    Runs anywhere the store can be read (a thread, a Dask worker): it opens the
    store itself and keeps it open for the next shard of the same ``session``.
    """
    opened = _arrays(url, storage_options, session)
    lo, hi = min(r for r, _ in rows), max(r for r, _ in rows) + 1
    out = []
    for name in arrays:
        arr = opened[name]
        # An I/O error (a network hiccup, a disk error) says nothing about the
        # pixels: it fails the verification instead of condemning the rows.
        try:
            block = arr[lo:hi]
        except OSError:
            raise
        except Exception:  # find which rows: a corrupt inner chunk spoils only its own
            block = None
        for r, recorded in rows:
            try:
                value = block[r - lo] if block is not None else arr[r]
            except OSError:
                raise
            except Exception as exc:
                out.append((r, "unreadable", f"{name}: {type(exc).__name__}: {exc}"))
                continue
            if name == "preprocessed" and recorded is not None:
                got = columns.checksum(value)
                if got != recorded:
                    out.append((r, "different", f"preprocessed {got}, committed {recorded}"))
    return out


def verify_store(
    store: ScanStore | str,
    *,
    storage_options: dict[str, Any] | None = None,
    executor: Executor | None = None,
    deep: bool = False,
) -> VerifyReport:
    """Re-read a store and report every row and file that is wrong.

    Parameters
    ----------
    store : ScanStore or str
        The store, or its URL (with ``storage_options``).
    executor : concurrent.futures.Executor, optional
        Runs :func:`check_shard` per shard; default 4 threads here. A Dask
        client's ``get_executor()`` spreads a big store over the cluster.
    deep : bool, optional
        Also read every other array (they are otherwise checked for presence);
        ``preprocessed`` is always read and compared with its checksum.

    Returns
    -------
    report : VerifyReport
    """
    t0 = time.perf_counter()
    if isinstance(store, str):
        store = ScanStore.open(store, storage_options)
    info = store.info()
    if info is None:
        raise ValueError(f"{store.storage.url} is not a store (no {IMAGES})")
    report = VerifyReport(store=store.storage.url)
    live_run = _check_lease(store, report)
    if live_run is None:  # a live writer's temporaries are its work in progress
        for path in store.temporary_files():
            report.problems.append(
                Problem("temporary_file", "left by a writer killed mid-write", path=path)
            )
        _check_untracked(store, report)
    latest = _read_latest(store, report)
    if latest is not None:
        _check_duplicate_sources(latest, report)
        ok = _ok_rows(store, latest, report)
        arrays = {name: store.zarr_array(name) for name in info["arrays"]}
        placed = _check_rows(ok, arrays, report)
        whole = _check_shards(store, arrays, placed, report)
        names = tuple(arrays) if deep else ("preprocessed",)
        _check_pixels(store, whole, names, executor, report)
        _check_older_versions(store, ok, arrays, executor, report)
    report.seconds = time.perf_counter() - t0
    return report


def _check_lease(store: ScanStore, report: VerifyReport) -> str | None:
    """The run id of the live writer of ``store``, or None; a stale lease is a problem."""
    lease = read_lease(store.storage)
    if lease is None:
        return None
    why = lease.stale()
    if why:
        report.problems.append(
            Problem("stale_lease", f"run {lease.run_id} ({lease.holder}): {why}", path=schema.LEASE)
        )
        return None
    report.writer = f"run {lease.run_id} ({lease.holder}) is writing this store"
    return lease.run_id


def _check_duplicate_sources(latest, report: VerifyReport) -> None:
    """A (source, frame) twice in the latest version is a problem."""
    counts = Counter(_key(r) for r in latest.select(list(columns.METADATA_KEY)).to_pylist())
    for (s, frame), n in sorted(
        ((k, n) for k, n in counts.items() if n > 1), key=lambda kv: (kv[0][0], kv[0][1] or 0)
    ):
        report.problems.append(
            Problem("duplicate_source", f"{n} rows in the latest version", s, frame=frame)
        )


def _ok_rows(store: ScanStore, latest, report: VerifyReport) -> list[dict[str, Any]]:
    """The ok rows of the latest version, counted in ``report``, in row order."""
    report.rows = latest.num_rows
    ok = select_rows(latest, url=store.storage.url, empty_ok=True).to_pylist()
    report.ok_rows = len(ok)
    return ok


def _kept_rows(store: ScanStore) -> list[dict[str, Any]]:
    """The ok rows of every data file a kept version reads (each file once)."""
    import io

    import pyarrow.parquet as pq

    columns = ["image_id", "source", "frame", "row", "status", "checksum"]
    out = []
    for path in sorted(store.metadata.kept_files()):
        data = store.storage.read_bytes(posixpath.join(METADATA, path))
        table = pq.read_table(io.BytesIO(data), columns=columns, use_threads=False)
        out += [r for r in table.to_pylist() if r["status"] == "ok" and r["row"] is not None]
    return out


def _check_older_versions(
    store: ScanStore,
    latest_ok: list[dict],
    arrays: dict[str, Any],
    executor: Executor | None,
    report: VerifyReport,
) -> None:
    """The ok rows that only older kept versions read: their pixels must still
    be there, with their checksum (reported, never marked: a version is what it was)."""
    report.versions = store.metadata.current_version() - store.metadata.history_start() + 1
    try:
        kept = _kept_rows(store)
    except Exception as exc:
        report.problems.append(Problem("bad_table", f"kept version: {exc}", path=METADATA))
        return
    seen = {(r["row"], r.get("checksum")) for r in latest_ok}
    older = {}
    for r in kept:
        older.setdefault((r["row"], r["checksum"]), r)
    rows = [r for k, r in sorted(older.items(), key=lambda kv: kv[0][0]) if k not in seen]
    report.older_rows = len(rows)
    if not rows:
        return
    sink = VerifyReport(store=report.store)
    placed = _check_rows(rows, arrays, sink)
    _check_pixels(
        store, _check_shards(store, arrays, placed, sink), ("preprocessed",), executor, sink
    )
    for p in sink.problems:
        if p.kind in ("shared_row", "no_checksum"):  # rows of different versions may share
            continue
        report.problems.append(
            Problem(
                p.kind,
                f"{p.detail} (a row of an older kept version; `xray vacuum` drops old versions)",
                p.source,
                p.image_id,
                p.row,
                frame=p.frame,
            )
        )


def _check_rows(ok: list[dict], arrays: dict[str, Any], report: VerifyReport) -> list[dict]:
    """Orphaned, shared and checksum-less ok rows become problems; returns the
    rows inside the arrays."""
    capacity = min(a.shape[0] for a in arrays.values())
    by_row: dict[int, list[dict]] = defaultdict(list)
    placed = []
    for r in ok:
        if r["row"] is None or not 0 <= r["row"] < capacity:
            report.add_row_problem(r, "orphaned", f"points outside the arrays' {capacity} rows")
            continue
        by_row[r["row"]].append(r)
        placed.append(r)
        if r.get("checksum") is None:
            report.add_row_problem(r, "no_checksum", "committed without a checksum of its pixels")
    for row, claimants in by_row.items():
        if len(claimants) > 1:
            names = ", ".join(c["image_id"] for c in claimants)
            for c in claimants:
                report.add_row_problem(c, "shared_row", f"array row {row} is claimed by {names}")
    return placed


def _check_shards(
    store: ScanStore, arrays: dict[str, Any], placed: list[dict], report: VerifyReport
) -> list[list[dict]]:
    """Presence: one listing per array, then each shard object a row needs
    (:meth:`ScanStore.shard_key`); rows of an absent or empty one are missing.
    Returns the rows of each shard whose objects are all there."""
    objects = _stored_objects(store, arrays)
    by_shard: dict[int, list[dict]] = defaultdict(list)
    outer = _outer(arrays["preprocessed"])
    for r in placed:
        by_shard[r["row"] // outer].append(r)
    whole = []
    for shard, rows in sorted(by_shard.items()):
        absent = []
        for name, arr in arrays.items():
            n = _outer(arr)
            for k in range(shard * outer // n, ((shard + 1) * outer - 1) // n + 1):
                key = store.shard_key(name, k)
                if objects.get(key, 0) == 0:
                    absent.append(posixpath.relpath(key, IMAGES))
        if absent:
            for r in rows:
                detail = f"shard object(s) absent or empty: {', '.join(absent)}"
                report.add_row_problem(r, "missing", detail)
        else:
            whole.append(rows)
    report.shards = len(by_shard)
    return whole


def _check_pixels(
    store: ScanStore,
    shards: list[list[dict]],
    names: tuple[str, ...],
    executor: Executor | None,
    report: VerifyReport,
) -> None:
    """Read the rows of each of ``shards`` from the arrays ``names`` with
    :func:`check_shard` on ``executor`` (4 threads of this process by default)."""
    rows_of = {r["row"]: r for rows in shards for r in rows}
    jobs = [[(r["row"], r.get("checksum")) for r in rows] for rows in shards]
    url, options = store.storage.url, store.storage.storage_options
    own = executor is None
    pool = ThreadPoolExecutor(4, thread_name_prefix="verify") if own else executor
    try:
        n, session = len(jobs), uuid.uuid4().hex
        results = pool.map(check_shard, [url] * n, [options] * n, jobs, [names] * n, [session] * n)
        for found in results:
            for row, kind, detail in found:
                report.add_row_problem(rows_of[row], kind, detail)
    finally:
        if own:
            pool.shutdown()
    report.checked = sum(len(j) for j in jobs)


def repair_store(
    store: ScanStore | str,
    report: VerifyReport,
    *,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Mark the rows of ``report``'s row-level problems failed, so the next
    run redoes them (a commit of kind ``repair``), and remove what killed
    writers left; under the store's lease.

    Raises :class:`~xraycore.store.lease.LeaseHeldError` while a run writes the store.
    Returns counts: ``rows`` marked failed, ``files`` removed (temporary and
    untracked).
    """
    if isinstance(store, str):
        store = ScanStore.open(store, storage_options)
    with StoreLease.acquire(store.storage, run_id, description="xray verify --repair"):
        now = datetime.now(UTC)
        kinds: dict[tuple, list[str]] = defaultdict(list)
        for p in report.problems:
            if p.kind in ROW_KINDS and p.source is not None:
                kinds[(p.source, p.frame)].append(f"{p.kind}: {p.detail}")
        marked = []
        for key, row in report.bad_rows.items():
            marked.append(
                {
                    **row,
                    "status": "failed",
                    "error": "verify: " + "; ".join(dict.fromkeys(kinds[key])),
                    "row": None,
                    "checksum": None,
                    "run_id": run_id,
                    "processed_at": now,
                }
            )
        store.commit_rows(marked, run_id=run_id, kind="repair")
        removed = len(store.remove_leftovers())
    return {"rows": len(marked), "files": removed}
