"""The metadata commit path: workers write, one committer commits (issue 29), against
every batch merging its own rows (the path before it).

N worker processes (``--workers``, spawned once and kept, as a run's Dask workers
are) each hand batches of 64 rows with keys of their own to the store:

- new path: the worker writes its rows as a file of the table
  (:meth:`~xraycore.store.ScanStore.write_rows`) and sends the small ``TableFile``
  through a queue to the committer in this process, which groups them with the
  flow's policy (:class:`flows.commits.GroupCommits`: 5 s, growing by half, at
  most 60 s; ``--group-s`` for a fixed interval) and commits each group in one
  version (:meth:`~xraycore.store.ScanStore.commit_row_files`);
- old path (``--old``, ``--old-workers``, ``--old-batches`` batches): each worker
  merges its own batch (:meth:`~xraycore.store.ScanStore.commit_rows`), retried on
  conflicting commits inside delta-rs's caller.

On local disk and on a moto S3 server (its own process, loopback), into a table of
``--table-rows`` rows (filled by writing them as files, committed in one version,
then compacted by ``finish_run``). Per configuration: batches/s accepted (batches
committed over the time from the first hand-off to the last commit), versions
added, group commits (new path: they must equal the versions), the commits
that lost a race to another and were made again (``conflicts``), the worker's
median seconds per batch (``write_rows``; ``commit_rows`` in the old path), the
95th percentile of a batch's seconds from hand-off to committed, and the files a
run's end found uncommitted. Ratios: new path at the most workers over the old
path at one (goal >= 4x); worker seconds per batch at the largest table over the
empty one (goal <= 1.2x).

    .venv/bin/python benchmarks/bench_commit.py [--batches 320] [--workers 1,2,4,8,16]
        [--backends local,s3] [--table-rows 0,100000] [--old] [--old-batches 64]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as queues
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from servers import AWS_ENV, free_port  # noqa: E402

#: Rows per batch, as the flow's default batch size.
BATCH_ROWS = 64
#: Rows per file when the table is filled before a measurement.
FILL_FILE_ROWS = 10_000
BUCKET = "bench-commit"


@dataclass(frozen=True)
class Target:
    """Where a configuration's store lives: a URL and its storage options."""

    backend: str
    url: str
    options: dict | None = None


@dataclass(frozen=True)
class Job:
    """One worker's share of a configuration: the batches numbered ``numbers``."""

    path: str  # "new" or "old"
    target: Target
    run_id: str
    pipeline_hash: str
    numbers: tuple[int, ...]


@dataclass
class Result:
    """What one configuration measured."""

    backend: str
    table_rows: int
    path: str
    workers: int
    batches: int = 0
    wall_s: float = 0.0
    versions: int = 0
    groups: int | None = None
    conflicts: int = 0
    worker_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    uncommitted: int = 0

    @property
    def rate(self) -> float:
        return self.batches / self.wall_s

    @property
    def worker_median(self) -> float:
        return statistics.median(self.worker_s)

    @property
    def p95(self) -> float:
        ordered = sorted(self.latency_s)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def batch_rows(prefix: str, start: int, n: int, run_id: str, pipeline_hash: str) -> list[dict]:
    """``n`` ok metadata rows from row ``start``, their keys made of ``prefix``."""
    from xraycore.store.columns import metadata_row

    rows = []
    for i in range(start, start + n):
        row = metadata_row(
            image_id=f"{prefix}{i:08d}",
            source=f"s3://sources/{prefix}{i:08d}.png",
            size=4096,
            mtime=1.7e9,
            pipeline_hash=pipeline_hash,
            run_id=run_id,
        )
        row.update(status="ok", row=i)
        rows.append(row)
    return rows


# -- the worker processes ---------------------------------------------------------
def _worker(inbox, outbox) -> None:
    """A worker process: for each job, open the store, say ready, wait for go, then
    hand its batches over and say which it did; None ends it."""
    import pyarrow.parquet  # noqa: F401  imports are a fixed cost, not a per-batch one

    from xraycore.store import ScanStore

    while (job := inbox.get()) is not None:
        store = ScanStore.open(job.target.url, job.target.options)
        store.metadata.open()  # the first delta-rs call (its runtime, its client)
        outbox.put(("ready", None, 0.0, 0.0))
        inbox.get()  # go
        for number in job.numbers:
            _hand_over(store, job, number, outbox)
        # The commits of this worker that lost a race and were made again (old path).
        outbox.put(("end", store.metadata.conflicts_retried, 0.0, 0.0))


def _hand_over(store, job: Job, number: int, outbox) -> None:
    """One batch: its file written and sent (new path), or merged (old path)."""
    start = number * BATCH_ROWS
    rows = batch_rows(f"{job.run_id}/", start, BATCH_ROWS, job.run_id, job.pipeline_hash)
    began = time.monotonic()
    if job.path == "new":
        written = store.write_rows(rows, run_id=job.run_id, part=start)
        outbox.put(("file", written, time.monotonic() - began, began))
    else:
        store.commit_rows(rows, run_id=job.run_id, fence=job.run_id)
        outbox.put(("merged", None, time.monotonic() - began, began))


class Workers:
    """``n`` spawned worker processes, kept for every configuration."""

    def __init__(self, n: int):
        context = mp.get_context("spawn")
        self.outbox = context.Queue()
        self.inboxes = [context.Queue() for _ in range(n)]
        self.procs = [
            context.Process(target=_worker, args=(inbox, self.outbox), daemon=True)
            for inbox in self.inboxes
        ]
        for proc in self.procs:
            proc.start()

    def start(self, jobs: list[Job]) -> float:
        """Hand each job to a worker, wait until all are ready, say go; the time of go."""
        for inbox, job in zip(self.inboxes, jobs, strict=False):
            inbox.put(job)
        for _ in jobs:
            self._next(600)
        began = time.monotonic()
        for inbox in self.inboxes[: len(jobs)]:
            inbox.put("go")
        return began

    def _next(self, timeout_s: float = 600):
        try:
            return self.outbox.get(timeout=timeout_s)
        except queues.Empty:
            dead = [p.pid for p in self.procs if not p.is_alive()]
            raise RuntimeError(
                f"no word from the workers in {timeout_s} s (dead: {dead})"
            ) from None

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.terminate()


# -- the stores -----------------------------------------------------------------
def _moto(port: int) -> subprocess.Popen:
    """A moto S3 server in its own process on 127.0.0.1:``port``, once it answers."""
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def _fill(target: Target, rows: int, spec) -> None:
    """A store whose table holds ``rows`` rows: written as files by a run, committed
    in one version, compacted by its end."""
    from xraycore.store import ScanStore

    store = ScanStore.open(target.url, target.options)
    store.initialise(spec, batch_size=BATCH_ROWS)
    if not rows:
        return
    store.fence("fill")
    files = [
        store.write_rows(
            batch_rows("fill/", start, min(FILL_FILE_ROWS, rows - start), "fill", spec.hash),
            run_id="fill",
            part=start,
        )
        for start in range(0, rows, FILL_FILE_ROWS)
    ]
    store.commit_row_files(files, run_id="fill", group=1, fence="fill")
    store.finish_run("fill")
    store.end_run("fill")


def _clone(template: Target, target: Target) -> None:
    """Copy every file of the store ``template`` to ``target`` (a fresh store per
    configuration, its table as the template's)."""
    from xraycore.store.storage import Storage

    source = Storage.from_url(template.url, template.options)
    copy = Storage.from_url(target.url, target.options)
    for rel in source.find():
        copy.write_bytes_atomic(rel, source.read_bytes(rel))


# -- one configuration ------------------------------------------------------------
def _jobs(path: str, target: Target, run_id: str, spec, batches: int, n: int) -> list[Job]:
    """The batches 0..``batches`` dealt round-robin to ``n`` workers."""
    return [Job(path, target, run_id, spec.hash, tuple(range(w, batches, n))) for w in range(n)]


def _committer(store, run_id: str, group_s: float | None):
    """The flow's grouping policy, or one of a fixed ``group_s``, over commit_row_files."""
    from flows.commits import GroupCommits

    def commit(files, group, replacing) -> bool:
        return store.commit_row_files(
            files, run_id=run_id, group=group, fence=run_id, replacing=replacing
        )

    if group_s is None:
        return GroupCommits(commit)
    return GroupCommits(commit, first_s=group_s, growth=1.0, longest_s=group_s)


def _collect(workers: Workers, n: int, result: Result, commits=None) -> float:
    """Receive the workers' batches until all ``n`` end (new path: committing the
    due groups as the flow does, and the rest at the end); the time of the last commit."""
    ended, last = 0, time.monotonic()
    while ended < n:
        kind, written, seconds, began = workers._next()
        if kind == "end":
            ended += 1
            result.conflicts += written
            continue
        result.worker_s.append(seconds)
        if commits is None:  # merged by the worker: committed when it returned
            last = time.monotonic()
            result.latency_s.append(last - began)
            continue
        commits.add(began, written)
        if commits.due():
            last = _flush(commits, result)
    if commits is not None:
        last = _flush(commits, result)
    return last


def _flush(commits, result: Result) -> float:
    """Commit the pending group; each batch's seconds from hand-off to committed."""
    done = commits.flush()
    now = time.monotonic()
    result.latency_s += [now - began for began in done]
    return now


def measure(workers: Workers, target: Target, spec, args, path: str, n: int) -> Result:
    """One configuration on a fresh store at ``target``: ``path`` with ``n`` workers."""
    from xraycore.store import ScanStore

    batches = args.batches if path == "new" else args.old_batches
    run_id = f"{path}{n}"
    store = ScanStore.open(target.url, target.options)
    store.fence(run_id)
    first = store.metadata.current_version()
    result = Result(target.backend, store.metadata.rows(), path, n, batches)
    commits = _committer(store, run_id, args.group_s) if path == "new" else None
    began = workers.start(_jobs(path, target, run_id, spec, batches, n))
    result.wall_s = _collect(workers, n, result, commits) - began
    result.versions = store.metadata.current_version() - first
    result.groups = None if commits is None else commits.group
    result.conflicts += store.metadata.conflicts_retried  # the committer's (new path)
    result.uncommitted = len(store.end_run(run_id))
    return result


def _target(backend: str, folder: Path, endpoint: str | None, rows: int, name: str) -> Target:
    options = {"endpoint_url": endpoint} if backend == "s3" else None
    url = f"s3://{BUCKET}/{name}-{rows}" if backend == "s3" else str(folder / f"{name}-{rows}")
    return Target(backend, url, options)


def run_backend(workers: Workers, backend: str, folder: Path, endpoint, spec, args) -> list:
    """Every configuration of one backend, each on a copy of its table size's template."""
    results = []
    for rows in args.table_rows:
        template = _target(backend, folder, endpoint, rows, "template")
        _fill(template, rows, spec)
        configs = [("new", n) for n in args.workers]
        configs += [("old", n) for n in args.old_workers] if args.old else []
        for path, n in configs:
            target = _target(backend, folder, endpoint, rows, f"{path}{n}")
            _clone(template, target)
            result = measure(workers, target, spec, args, path, n)
            print(_line(result), flush=True)
            results.append(result)
    return results


# -- the report -------------------------------------------------------------------
HEADER = (
    "backend table_rows path workers batches  wall_s batches/s versions groups"
    " conflicts worker_med_s p95_to_commit_s uncommitted"
)


def _line(r: Result) -> str:
    groups = "-" if r.groups is None else str(r.groups)
    return (
        f"{r.backend:7s} {r.table_rows:10d} {r.path:4s} {r.workers:7d} {r.batches:7d}"
        f" {r.wall_s:7.2f} {r.rate:9.1f} {r.versions:8d} {groups:>6s} {r.conflicts:9d}"
        f" {r.worker_median:12.4f} {r.p95:15.3f} {r.uncommitted:11d}"
    )


def _find(results, backend, rows, path, n):
    return next(
        (
            r
            for r in results
            if (r.backend, r.table_rows, r.path, r.workers) == (backend, rows, path, n)
        ),
        None,
    )


def report_ratios(results: list[Result], args) -> None:
    """The derived ratios, each with its goal, and the versions = groups check."""
    most = max(args.workers)
    small, large = min(args.table_rows), max(args.table_rows)
    for backend in args.backends:
        for rows in args.table_rows:
            new = _find(results, backend, rows, "new", most)
            old = _find(results, backend, rows, "old", 1)
            if new and old:
                print(
                    f"{backend} at {rows} rows: new path {most} workers / old path 1 worker:"
                    f" {new.rate / old.rate:.1f}x batches/s (goal >= 4x)"
                )
        if small == large:
            continue
        for path in ("new", "old") if args.old else ("new",):
            counts = sorted({r.workers for r in results if r.path == path})
            parts = []
            for n in counts:
                a, b = (_find(results, backend, rows, path, n) for rows in (large, small))
                if a and b:
                    parts.append(f"{n}w {a.worker_median / b.worker_median:.2f}x")
            goal = " (goal <= 1.2x)" if path == "new" else " (reference)"
            print(
                f"{backend} {path} path worker s/batch at {large} rows / at {small}: "
                f"{', '.join(parts)}{goal}"
            )
    for path in ("new", "old") if args.old else ("new",):
        mine = [r for r in results if r.path == path]
        print(
            f"{path} path: {sum(r.conflicts for r in mine)} commit conflicts retried in"
            f" {sum(r.batches for r in mine)} batches (the most in one configuration:"
            f" {max((r.conflicts for r in mine), default=0)})"
        )
    bad = [r for r in results if r.path == "new" and r.versions != r.groups]
    print(
        "new path: versions = group commits in every configuration"
        if not bad
        else f"new path: versions != group commits in {[_line(r) for r in bad]}"
    )


def _machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores, load average {load}"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=320, help="per new-path configuration")
    parser.add_argument("--workers", type=_ints, default=[1, 2, 4, 8, 16])
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["local", "s3"])
    parser.add_argument("--table-rows", type=_ints, default=[0, 100_000])
    parser.add_argument("--old", action="store_true", help="include the old path (merges)")
    parser.add_argument("--old-workers", type=_ints, default=[1, 4])
    parser.add_argument("--old-batches", type=int, default=64, help="per old-path configuration")
    parser.add_argument(
        "--group-s", type=float, default=None, help="a fixed group interval (default: the flow's)"
    )
    args = parser.parse_args()
    for name in ("batches", "old_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    unknown = set(args.backends) - {"local", "s3"}
    if unknown:
        parser.error(f"--backends must be local and/or s3, got {sorted(unknown)}")
    return args


def main() -> None:
    args = parse_args()
    from xraycore.image.pipeline import PipelineSpec

    spec = PipelineSpec(size=16)
    port = free_port()
    os.environ.update(AWS_ENV)  # inherited by the spawned workers
    moto = _moto(port) if "s3" in args.backends else None
    endpoint = f"http://127.0.0.1:{port}"
    most = max([*args.workers, *(args.old_workers if args.old else [])])
    print(f"{_machine()}; {most} worker processes (spawned), batches of {BATCH_ROWS} rows")
    workers = Workers(most)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-commit-") as tmp:
            if moto:
                from xraycore.store.storage import Storage

                Storage.from_url(f"s3://{BUCKET}", {"endpoint_url": endpoint}).makedirs()
            print(HEADER)
            for backend in args.backends:
                results += run_backend(workers, backend, Path(tmp), endpoint, spec, args)
        report_ratios(results, args)
    finally:
        workers.close()
        if moto:
            moto.terminate()
            moto.wait(30)


if __name__ == "__main__":
    main()
