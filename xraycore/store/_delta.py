"""A table of the store (metadata, predictions) in Delta Lake: every commit a version.

The rows are Parquet files; the table's transaction log (``_delta_log/``) says
which files make each version, so a reader (delta-rs, polars, DuckDB, Spark)
sees exactly the committed rows of one version, never a batch that did not
commit and never a key twice. Writers commit through delta-rs: a batch's rows
are *merged* by key (a row processed again replaces its key's row), and
conflicting commits are retried on the new version.

Every commit carries the store's own commit info (:data:`COMMIT_KEYS`: what
kind of commit, which run, the pipeline hash). Batches of a preprocessing run
are *fenced*: the run that holds the store's lease records itself as the
table's writer (a table property) before its first batch, and a batch commits
only while that property names its own run. A batch of a run that lost the
lease either reads another writer there and stops, or had read its own and
loses the commit race: a property change conflicts with every concurrent
commit in Delta's protocol (``Metadata changed since last commit``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from xraycore.store._files import TableFile
from xraycore.store.storage import Storage

__all__ = [
    "COMMIT_KEYS",
    "FencedCommitError",
    "VersionRemovedError",
    "VersionedTable",
    "latest_rows",
]

#: The commit info every commit of the store carries (Delta ``commitInfo``).
COMMIT_KEYS = {
    "kind": "xray.kind",
    "run_id": "xray.run_id",
    "pipeline_hash": "xray.pipeline_hash",
    "rows": "xray.rows",
    "detail": "xray.detail",
}
#: Kinds of commit, as ``xray log`` lists them.
KINDS = (
    "create",
    "fence",
    "batch",
    "columns",
    "header",
    "run-end",
    "split",
    "classification",
    "classification-end",
    "repair",
    "upgrade",
    "overwrite",
    "vacuum",
)

#: Table property naming the run allowed to commit batches (the lease holder).
WRITER = "xray.writer"
#: Table properties saying where the kept history starts, and what removed the rest.
HISTORY_START = "xray.history_start"
HISTORY_REASON = "xray.history_reason"

#: The folder of a table that holds a marker per run whose batches may still
#: write files into it (Delta readers and VACUUM skip names starting "_").
RUNS = "_xray_runs"
#: Properties of every table the store writes: the log is kept whole, so every
#: version stays loadable until ``xray vacuum`` removes it (delta-rs would
#: otherwise delete log entries older than 30 days after a checkpoint, and with
#: them the versions that models name as their training data).
TABLE_PROPERTIES = {"delta.enableExpiredLogCleanup": "false"}

_ATTEMPTS = 200
_MAX_BACKOFF_S = 0.5


class FencedCommitError(RuntimeError):
    """A batch's run no longer holds the store's lease: its rows were not committed."""


class VersionRemovedError(ValueError):
    """The version asked for is no longer kept (``--overwrite`` or ``xray vacuum``)."""


def latest_rows(table, key: tuple[str, ...], time_column: str):
    """The latest row of each ``key`` in ``table``, the store's rule for one key's rows.

    Parameters
    ----------
    table : pyarrow.Table
    key : tuple of str
        The columns that name a row (:data:`~xraycore.store.columns.METADATA_KEY`).
    time_column : str
        The row with the greatest value here wins; of equal times, the first.

    Returns
    -------
    latest : pyarrow.Table
        One row per key, sorted by ``key``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    order = pc.sort_indices(table, [*((k, "ascending") for k in key), (time_column, "descending")])
    table = table.take(order)
    keys = list(zip(*(table.column(k).to_pylist() for k in key), strict=True))
    keep = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
    return table.take(pa.array(keep, pa.int64()))


def commit_info(kind: str, run_id: str, **extra: Any) -> dict[str, str]:
    """The custom commit metadata of a commit of ``kind`` by ``run_id``."""
    if kind not in KINDS:
        raise ValueError(f"unknown commit kind {kind!r}; one of {', '.join(KINDS)}")
    info = {COMMIT_KEYS["kind"]: kind, COMMIT_KEYS["run_id"]: run_id}
    for name, value in extra.items():
        if value is not None:
            info[COMMIT_KEYS[name]] = str(value)
    return info


def _conflict(exc: Exception) -> bool:
    from deltalake.exceptions import CommitFailedError

    return isinstance(exc, CommitFailedError)


#: Commit files :meth:`VersionedTable.kept_files` reads at once (concurrently on an
#: object store): its memory is bounded whatever the length of the history.
_COMMITS_AT_ONCE = 256


@dataclass
class VersionedTable:
    """The Delta table ``name`` under ``storage``; rows unique per ``key``.

    ``version`` pins the table at one version (read-only); None reads the latest.
    """

    storage: Storage
    name: str
    key: tuple[str, ...]
    time_column: str
    nullable_key: tuple[str, ...] = ()
    version: int | None = None
    #: Commits of this object that lost a race (a conflicting commit, or a table
    #: made meanwhile) and were made again on the new version.
    conflicts_retried: int = field(default=0, compare=False)

    @property
    def uri(self) -> str:
        return self.storage.uri(self.name)

    def exists(self) -> bool:
        return self.storage.exists(self.name, "_delta_log")

    def open(self, version: int | None = None):
        """The ``deltalake.DeltaTable`` (at ``version``, else this table's own),
        or None when there is no table yet."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        version = self.version if version is None else version
        if not self.exists():
            if version is not None:
                raise VersionRemovedError(f"{self.uri} has no version {version}: no table")
            return None
        try:
            latest = DeltaTable(self.uri, storage_options=self.storage.table_options())
        except TableNotFoundError:
            return None
        if version is None:
            return latest
        self._check_kept(latest, version)
        latest.load_as_version(version)
        return latest

    def _check_kept(self, latest, version: int) -> None:
        if version < 0 or version > latest.version():
            raise VersionRemovedError(
                f"{self.uri} has no version {version} (its latest is {latest.version()})"
            )
        config = latest.metadata().configuration
        start = int(config.get(HISTORY_START, 0))
        if version < start:
            raise VersionRemovedError(
                f"version {version} of {self.uri} was removed by "
                f"{config.get(HISTORY_REASON, 'xray vacuum')}: the kept history starts "
                f"at version {start}"
            )

    def current_version(self) -> int | None:
        table = self.open()
        return None if table is None else table.version()

    def read(self, filters=None, columns: list[str] | None = None):
        """The rows of this table's version as a pyarrow Table (None: no table);
        with ``filters`` (delta-rs's: a pyarrow Expression or DNF tuples), those
        rows only, reading the files whose statistics can hold them; with
        ``columns``, those of them the table has, in that order."""
        table = self.open()
        if table is None:
            return None
        if columns is not None:
            have = {field.name for field in table.schema().fields}
            columns = [name for name in columns if name in have]
        return table.to_pyarrow_table(columns=columns, filters=filters)

    def rows(self) -> int:
        """Rows of this version, from the log's file statistics (no data read)."""
        table = self.open()
        if table is None:
            return 0
        import pyarrow.compute as pc

        actions = _add_actions(table)
        if actions.num_rows == 0:
            return 0
        return int(pc.sum(actions.column("num_records")).as_py() or 0)

    def files(self, version: int | None = None) -> set[str]:
        """The data files (relative to the table) a version reads."""
        table = self.open(version)
        if table is None:
            return set()
        return {str(p) for p in _add_actions(table).column("path").to_pylist()}

    def history_start(self) -> int:
        """The first kept version (0 unless ``--overwrite`` or a vacuum removed some)."""
        table = self.open()
        return 0 if table is None else int(table.metadata().configuration.get(HISTORY_START, 0))

    def kept_files(self) -> set[str]:
        """Every data file (relative to the table) that some kept version reads:
        the files of the first kept version, and every file a later commit added
        (from the log's commit files, read once each). Its cost grows with the
        history: ``xray verify`` uses it, a run's end does not
        (:meth:`remove_uncommitted`)."""
        table = self.open()
        if table is None:
            return set()
        start, latest = self.history_start(), table.version()
        kept = self.files(start) if start < latest else self.files()
        return kept | self.added_since(start, latest)

    def added_since(self, version: int, latest: int | None = None) -> set[str]:
        """The data files that the commits after ``version`` (up to ``latest``)
        added, from the log's commit files, read 256 at a time (concurrently on an
        object store): the cost follows the commits read, not the history."""
        import json

        if latest is None:
            latest = self.current_version()
            if latest is None:
                return set()
        added: set[str] = set()
        for first in range(version + 1, latest + 1, _COMMITS_AT_ONCE):
            last = min(first + _COMMITS_AT_ONCE, latest + 1)
            logs = self.storage.read_many(
                [f"{self.name}/_delta_log/{v:020d}.json" for v in range(first, last)]
            )
            for log in logs:  # None: cleaned up after a checkpoint, its files are live
                for line in (log or b"").splitlines():
                    action = json.loads(line) if line.strip() else {}
                    if "add" in action:
                        added.add(action["add"]["path"])
        return added

    def untracked_files(self, *, older_than_s: float) -> list[str]:
        """Data files of the table (relative to the store) that no kept version
        reads and that are older than ``older_than_s``: what a writer killed
        before its commit left (younger ones may be a live writer's)."""
        now = time.time()
        if not self.exists():
            return []
        kept = self.kept_files()
        out = []
        for path, info in self.storage.find(self.name).items():
            rel = path[len(self.name) + 1 :] if path.startswith(self.name + "/") else path
            if rel.startswith("_delta_log/") or not rel.endswith(".parquet") or rel in kept:
                continue
            mtime = info.get("mtime") or info.get("LastModified")
            age = now - (mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime or 0))
            if age >= older_than_s:
                out.append(path)
        return sorted(out)

    def _writable(self) -> None:
        if self.version is not None:
            raise ValueError(
                f"{self.uri} is opened at version {self.version}, read-only: "
                "open the store without version= to write"
            )

    def create(self, arrow_schema, info: dict[str, str]) -> None:
        """The table, empty with ``arrow_schema``, unless it exists already."""
        from deltalake import CommitProperties, DeltaTable

        self._writable()
        if self.exists():
            return
        DeltaTable.create(
            self.uri,
            schema=arrow_schema,
            mode="ignore",
            storage_options=self.storage.table_options(),
            configuration=TABLE_PROPERTIES,
            commit_properties=CommitProperties(custom_metadata=info),
        )

    def set_properties(self, properties: dict[str, str], info: dict[str, str]) -> None:
        from deltalake import CommitProperties

        self._writable()
        table = self.open()
        table.alter.set_table_properties(
            properties,
            raise_if_not_exists=False,
            commit_properties=CommitProperties(custom_metadata=info),
            post_commithook_properties=_hooks(),
        )

    def fence(self, run_id: str, arrow_schema, info: dict[str, str]) -> None:
        """Make ``run_id`` the only run whose batches may commit (see the module)."""
        self.create(arrow_schema, commit_info("create", run_id))
        self.set_properties({WRITER: run_id, **TABLE_PROPERTIES}, info)

    def merge(self, table, info: dict[str, str], *, fence: str | None = None) -> dict:
        """Commit ``table``'s rows, replacing the rows of their keys (a row
        replaces an older one only); retried on conflicting commits. Returns
        delta-rs's merge metrics.

        With ``fence``, the commit is made only while the table's writer is
        that run (:class:`FencedCommitError` otherwise).
        """
        from deltalake import CommitProperties, write_deltalake

        self._writable()
        table = latest_rows(table, self.key, self.time_column)
        on = " AND ".join(self._key_terms())
        for attempt in range(_ATTEMPTS):
            target = self.open()
            try:
                if target is None:  # the first commit of a table made by none
                    write_deltalake(
                        self.uri,
                        table,
                        mode="error",
                        storage_options=self.storage.table_options(),
                        configuration=TABLE_PROPERTIES,
                        commit_properties=CommitProperties(custom_metadata=info),
                        post_commithook_properties=_hooks(),
                    )
                    return {"num_target_rows_inserted": table.num_rows}
                self._check_fence(target, fence)
                return (
                    target.merge(
                        table,
                        on,
                        source_alias="s",
                        target_alias="t",
                        merge_schema=True,
                        commit_properties=CommitProperties(custom_metadata=info),
                        post_commithook_properties=_hooks(),
                    )
                    .when_matched_update_all(
                        predicate=f"s.`{self.time_column}` >= t.`{self.time_column}`"
                    )
                    .when_not_matched_insert_all()
                    .execute()
                )
            except Exception as exc:
                if not (_conflict(exc) or _exists(exc)) or attempt == _ATTEMPTS - 1:
                    raise
                self._lost_race(attempt)
        raise AssertionError("unreachable")

    def commit_files(
        self,
        files: list[TableFile],
        info: dict[str, str],
        *,
        transaction: tuple[str, int],
        fence: str | None = None,
        replacing: tuple[str, list[str]] | None = None,
    ) -> bool:
        """Commit the data files that workers wrote (:mod:`xraycore.store._files`)
        in one transaction; False when ``transaction`` was committed already.

        ``transaction`` is (application id, sequence number), recorded in the same
        commit (Delta's ``txn`` action): a committer retried or restarted after a
        crash checks it first and never commits a group twice. New keys are a
        blind append; with ``replacing`` (a key column and the values in the
        table that the files' rows replace), the files' rows are merged instead,
        on a predicate that names those values, so the merge reads the files that
        can hold them, not the whole table. With ``fence``, only while that run is
        the table's writer (:class:`FencedCommitError` otherwise). A commit that
        loses a race is retried on the new version.
        """
        from deltalake import CommitProperties, Transaction

        self._writable()
        app_id, seq = transaction
        props = CommitProperties(
            custom_metadata=info, app_transactions=[Transaction(app_id=app_id, version=seq)]
        )
        for attempt in range(_ATTEMPTS):
            target = self.open()
            if target is None:
                raise ValueError(f"{self.uri} has no table yet: create it before committing files")
            done = target.transaction_version(app_id)
            if done is not None and done >= seq:
                return False
            self._check_fence(target, fence)
            try:
                target = self._with_columns(target, files, info)
                if replacing:
                    self._merge_files(target, files, replacing, props)
                else:
                    target.create_write_transaction(
                        [f.add_action() for f in files],
                        mode="append",
                        schema=target.schema(),
                        commit_properties=props,
                        post_commithook_properties=_hooks(),
                    )
                return True
            except Exception as exc:
                if not _conflict(exc) or attempt == _ATTEMPTS - 1:
                    raise
                self._lost_race(attempt)
        raise AssertionError("unreachable")

    def _lost_race(self, attempt: int) -> None:
        """Count a commit that lost a race, and wait a random backoff before the next."""
        self.conflicts_retried += 1
        time.sleep(random.uniform(0, min(_MAX_BACKOFF_S, 0.01 * 2**attempt)))

    def _with_columns(self, target, files: list[TableFile], info: dict[str, str]):
        """``target``, with the columns of ``files`` it lacks added first (label
        columns of a first run with labels): a commit of its own."""
        from deltalake import CommitProperties, Schema

        known = {f.name for f in target.schema().fields}
        new = next((f for f in files if set(f.columns) - known), None)
        if new is None:
            return target
        import pyarrow.parquet as pq

        arrow = pq.read_schema(self._file(new))
        fields = [f for f in Schema.from_arrow(arrow).fields if f.name not in known]
        # A commit of its own kind: no rows, and not one of the run's groups.
        info = {k: v for k, v in info.items() if k != COMMIT_KEYS["rows"]}
        info[COMMIT_KEYS["kind"]] = "columns"
        target.alter.add_columns(
            fields,
            commit_properties=CommitProperties(custom_metadata=info),
            post_commithook_properties=_hooks(),
        )
        return self.open()

    def _merge_files(self, target, files: list[TableFile], replacing, props) -> None:
        """Merge the rows of ``files`` by key, on a predicate that also names the
        values of ``replacing`` (column, values) the target's matched rows hold."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = [pq.read_table(self._file(f)) for f in files]
        rows = latest_rows(
            pa.concat_tables(parts, promote_options="default"), self.key, self.time_column
        )
        column, values = replacing
        listed = ", ".join("'" + str(v).replace("'", "''") + "'" for v in sorted(set(values)))
        on = " AND ".join([*self._key_terms(), f"(t.`{column}` IN ({listed}))"])
        (
            target.merge(
                rows,
                on,
                source_alias="s",
                target_alias="t",
                merge_schema=True,
                streamed_exec=False,
                commit_properties=props,
                post_commithook_properties=_hooks(),
            )
            .when_matched_update_all(predicate=f"s.`{self.time_column}` >= t.`{self.time_column}`")
            .when_not_matched_insert_all()
            .execute()
        )

    def _file(self, written: TableFile):
        """A written file's bytes, to read with pyarrow: one whole GET (a file
        object would trust a size the filesystem's listing cache may hold from
        before the file was written, and read nothing)."""
        import pyarrow as pa

        return pa.BufferReader(self.storage.read_bytes(f"{self.name}/{written.path}"))

    def _key_terms(self) -> list[str]:
        # Each term in parentheses: delta-rs's parser binds IS NOT DISTINCT FROM
        # looser than AND ("Int64 AND Boolean") when another term follows it.
        return [
            f"(t.`{k}` IS NOT DISTINCT FROM s.`{k}`)"
            if k in self.nullable_key
            else f"(t.`{k}` = s.`{k}`)"
            for k in self.key
        ]

    def open_run(self, run_id: str) -> None:
        """Record that ``run_id``'s batches may write files into this table from
        now on (a marker under ``_xray_runs/``, which Delta readers skip), and
        the version they start from: the run's end, or the next run's, removes
        its files that no commit since lists (:meth:`remove_uncommitted`)."""
        import json

        since = self.current_version()
        marker = json.dumps({"run_id": run_id, "since": -1 if since is None else since})
        self.storage.write_bytes_atomic(f"{self.name}/{RUNS}/{run_id}.json", marker.encode())

    def remove_uncommitted(self, run_ids: list[str] | None = None) -> list[str]:
        """Delete the files that the open runs (``run_ids``, else every one with a
        marker) wrote and no commit since their start lists, then their markers;
        returns the deleted paths (relative to the store). Its cost follows the
        runs' own files and commits, never the table's history."""
        import json

        from xraycore.store._files import run_folder

        if not self.storage.exists(self.name, RUNS):
            return []
        if run_ids is None:
            run_ids = [n.removesuffix(".json") for n in self.storage.ls(f"{self.name}/{RUNS}")]
        removed: list[str] = []
        for run_id in run_ids:
            marker = f"{self.name}/{RUNS}/{run_id}.json"
            try:
                since = int(json.loads(self.storage.read_bytes(marker))["since"])
            except FileNotFoundError:
                continue
            folder = f"{self.name}/{run_folder(run_id)}"
            written = self.storage.find(folder) if self.storage.exists(folder) else {}
            if written:
                committed = self.added_since(since)
                for path in sorted(written):
                    if path[len(self.name) + 1 :] not in committed:
                        self.storage.remove(path)
                        removed.append(path)
            self.storage.remove(marker)
        return removed

    def _check_fence(self, target, fence: str | None) -> None:
        if fence is None:
            return
        writer = target.metadata().configuration.get(WRITER)
        if writer != fence:
            raise FencedCommitError(
                f"run {fence} no longer holds the lease of {self.storage.url} "
                f"(run {writer} writes it now): its rows were not committed"
            )

    def replace(self, table, info: dict[str, str]) -> None:
        """Commit ``table`` as every row of the table (a split, an overwrite)."""
        from deltalake import CommitProperties, write_deltalake

        self._writable()
        write_deltalake(
            self.uri,
            table,
            mode="overwrite",
            schema_mode="overwrite",
            storage_options=self.storage.table_options(),
            commit_properties=CommitProperties(custom_metadata=info),
            post_commithook_properties=_hooks(),
        )

    def optimize(self, info: dict[str, str]) -> bool:
        """Compact the small files of a run into few (a commit only when there
        were several); True when it committed."""
        from deltalake import CommitProperties

        self._writable()
        target = self.open()
        if target is None or len(target.file_uris()) < 2:
            return False
        metrics = target.optimize.compact(
            commit_properties=CommitProperties(custom_metadata=info),
            post_commithook_properties=_hooks(),
        )
        return bool(metrics.get("numFilesRemoved"))

    def history(self) -> list[dict[str, Any]]:
        """Every kept commit, newest first: version, timestamp, operation and
        the commit info (:data:`COMMIT_KEYS`, without their prefix)."""
        # The latest table's log: a table loaded at an old version numbers its
        # history from there (delta-rs), and every kept version is listed anyway.
        target = VersionedTable(self.storage, self.name, self.key, self.time_column).open()
        if target is None:
            return []
        start = int(target.metadata().configuration.get(HISTORY_START, 0))
        out = []
        for entry in target.history():
            version = int(entry.get("version", -1))
            if version < start:
                continue
            stamp = datetime.fromtimestamp(entry["timestamp"] / 1000, UTC)
            out.append(
                {
                    "version": version,
                    "timestamp": stamp.isoformat(),
                    "operation": entry.get("operation"),
                    "metrics": entry.get("operationMetrics") or {},
                    **{n: entry[k] for n, k in COMMIT_KEYS.items() if k in entry},
                }
            )
        return sorted(out, key=lambda e: -e["version"])

    def commit_time(self, version: int) -> datetime:
        """When ``version`` was committed."""
        for entry in self.history():
            if entry["version"] == version:
                return datetime.fromisoformat(entry["timestamp"])
        raise VersionRemovedError(f"{self.uri} has no version {version}")

    def vacuum(self, keep: list[int], info: dict[str, str], reason: str) -> list[str]:
        """Delete the data files no version in ``keep`` reads (files an older
        version removed); the history then starts at ``min(keep)``. Returns the
        deleted files."""
        self._writable()
        target = self.open()
        if target is None:
            return []
        from deltalake import CommitProperties

        removed = target.vacuum(  # delta-rs logs it as two commits, start and end
            retention_hours=0,
            enforce_retention_duration=False,
            dry_run=False,
            keep_versions=sorted(keep),
            commit_properties=CommitProperties(custom_metadata=info),
        )
        start = min(keep)
        if start > int(target.metadata().configuration.get(HISTORY_START, 0)):
            self.set_properties({HISTORY_START: str(start), HISTORY_REASON: reason}, info)
        return list(removed)


def _hooks():
    """After every commit: a checkpoint when one is due (every 100 versions, so a
    reader replays at most 100 commit files), and no log clean-up, which lists the
    whole log (:data:`TABLE_PROPERTIES`)."""
    from deltalake import PostCommitHookProperties

    return PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)


def _add_actions(table):
    """The table version's files (path, size, records...) as a pyarrow Table."""
    import pyarrow as pa

    return pa.table(table.get_add_actions(flatten=True))


def _exists(exc: Exception) -> bool:
    # Two first commits raced: the loser's table exists now, so it merges.
    return "already exists" in str(exc).lower()
