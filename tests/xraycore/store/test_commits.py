"""Workers write, one committer commits (issue 29): files of the metadata table
written by batches, committed in groups exactly once, fenced, replacing only the
keys the plan names; the run's end removes what no commit lists, reading only
the commits since the runs it cleans up began; the grouping policy."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from flows.commits import GroupCommits, first_commit_s
from xraycore.image.pipeline import PipelineSpec
from xraycore.store import FencedCommitError, ScanStore, columns, schema
from xraycore.store.versions import log_lines

SPEC = PipelineSpec(size=16)


def _rows(start: int, n: int, run_id: str, *, prefix: str = "s") -> list[dict]:
    rows = []
    for i in range(start, start + n):
        row = columns.metadata_row(
            image_id=f"{prefix}{i:05d}.png", source=f"/src/{prefix}{i:05d}.png", size=1,
            mtime=0.0, pipeline_hash=SPEC.hash, run_id=run_id,
        )  # fmt: skip
        row.update(status="ok", row=i)
        rows.append(row)
    return rows


def _store(tmp_path, run_id: str = "r1") -> ScanStore:
    store = ScanStore.open(str(tmp_path / "store"))
    store.initialise(SPEC, batch_size=4)
    store.fence(run_id)
    return store


def _keys(store: ScanStore) -> list[tuple]:
    table = DeltaTable(store.metadata.uri).to_pyarrow_table()  # an outside reader
    return sorted(zip(table["source"].to_pylist(), table["frame"].to_pylist(), strict=True))


def test_a_group_of_written_files_is_one_version_committed_exactly_once(tmp_path):
    store = _store(tmp_path)
    files = [store.write_rows(_rows(b * 4, 4, "r1"), run_id="r1", part=b * 4) for b in range(5)]
    assert all(f.path.startswith("batches/r1/") and f.rows == 4 for f in files)
    assert store.metadata.rows() == 0  # written, not committed: no reader sees them
    before = store.version
    assert store.commit_row_files(files, run_id="r1", group=1, fence="r1")
    assert store.version == before + 1
    assert len(_keys(store)) == 20 == store.metadata.rows()
    # The same group again (a committer retried after its commit landed): nothing.
    assert not store.commit_row_files(files, run_id="r1", group=1, fence="r1")
    assert store.version == before + 1 and len(_keys(store)) == 20
    entry = store.history()[0]
    assert (entry["kind"], entry["run_id"], entry["rows"]) == ("batch", "r1", "20")


def test_rows_of_keys_in_the_table_are_replaced_not_duplicated(tmp_path):
    store = _store(tmp_path)
    first = [store.write_rows(_rows(b * 4, 4, "r1"), run_id="r1", part=b * 4) for b in range(4)]
    store.commit_row_files(first, run_id="r1", group=1, fence="r1")
    store.finish_run("r1")
    store.fence("r2")
    again = _rows(4, 2, "r2")  # two known keys, processed again ...
    for row in again:
        row.update(status="failed", processed_at=datetime.now(UTC))
    fresh = _rows(100, 2, "r2")  # ... and two new ones, in one batch
    written = store.write_rows(again + fresh, run_id="r2", part=100)
    replacing = [r["source"] for r in again]
    assert store.commit_row_files([written], run_id="r2", group=1, fence="r2", replacing=replacing)
    keys = _keys(store)
    assert len(keys) == len(set(keys)) == 18
    rows = {r["source"]: r for r in store.read_metadata().to_pylist()}
    assert [rows[s]["status"] for s in replacing] == ["failed", "failed"]
    assert rows["/src/s00000.png"]["status"] == "ok"


def test_a_committer_whose_run_lost_the_lease_is_fenced_and_its_files_removed(tmp_path):
    store = _store(tmp_path, "first")
    kept = store.write_rows(_rows(0, 4, "first"), run_id="first", part=0)
    store.commit_row_files([kept], run_id="first", group=1, fence="first")
    late = store.write_rows(_rows(4, 4, "first"), run_id="first", part=4)
    ScanStore.open(store.storage.url).fence("second")  # another run takes the store over
    with pytest.raises(FencedCommitError, match="run first no longer holds the lease"):
        store.commit_row_files([late], run_id="first", group=2, fence="first")
    assert len(_keys(store)) == 4
    # verify's own check of every kept version names it (once it is old enough)
    assert store.metadata.untracked_files(older_than_s=0) == [f"{schema.METADATA}/{late.path}"]
    # The second run's end removes the first run's uncommitted file, keeps its committed one.
    removed = ScanStore.open(store.storage.url).end_run("second")
    assert removed == [f"{schema.METADATA}/{late.path}"]
    assert store.storage.exists(schema.METADATA, kept.path)
    assert store.storage.ls(f"{schema.METADATA}/_xray_runs") == []  # both runs closed
    assert store.metadata.untracked_files(older_than_s=0) == []


def test_the_run_end_reads_only_the_commits_since_the_open_runs_began(tmp_path, monkeypatch):
    store = _store(tmp_path, "old")
    for g in range(1, 31):  # a long history before the run
        f = store.write_rows(_rows(g * 4, 4, "old"), run_id="old", part=g * 4)
        store.commit_row_files([f], run_id="old", group=g, fence="old")
    store.end_run("old")
    since = store.version  # the new run's marker: the version its fence starts from
    store.fence("new")
    f = store.write_rows(_rows(1000, 4, "new"), run_id="new", part=1000)
    store.commit_row_files([f], run_id="new", group=1, fence="new")
    store.write_rows(_rows(2000, 4, "new"), run_id="new", part=2000)  # a killed retry's
    read: list[str] = []
    real = type(store.storage).read_many

    def counting(self, rels):
        read.extend(rels)
        return real(self, rels)

    monkeypatch.setattr(type(store.storage), "read_many", counting)
    assert len(store.end_run("new")) == 1
    versions = sorted(int(p.rsplit("/", 1)[-1].split(".")[0]) for p in read)
    assert versions == list(range(since + 1, store.version + 1)), versions


def test_the_commit_log_is_kept_whole(tmp_path):
    store = _store(tmp_path)
    config = store.metadata.open().metadata().configuration
    assert config.get("delta.enableExpiredLogCleanup") == "false"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_groups_are_due_after_a_growing_interval_and_numbered_from_one():
    calls, clock = [], _Clock()
    commits = GroupCommits(
        lambda files, group, replacing: calls.append((len(files), group, replacing)) or True,
        first_s=5.0, growth=2.0, longest_s=12.0, clock=clock,
    )  # fmt: skip
    assert not commits.due() and commits.flush() == []
    commits.add("a", "file-a")
    clock.now = 4.9
    assert not commits.due()
    commits.add("b", "file-b", ("/src/b.png",))
    clock.now = 5.0
    assert commits.due()
    assert commits.flush() == ["a", "b"] and calls == [(2, 1, ["/src/b.png"])]
    for interval in (10.0, 12.0, 12.0):  # 5 * 2, then at most longest_s
        commits.add("c", "file-c")
        clock.now += interval - 0.1
        assert not commits.due()
        clock.now += 0.1
        assert commits.due()
        commits.flush()
    assert [c[1] for c in calls] == [1, 2, 3, 4]
    commits.add("d", None)  # a batch that wrote no file: no commit, its payload back
    assert commits.flush() == ["d"] and len(calls) == 4


def test_a_group_whose_acknowledgement_was_lost_is_retried_without_a_second_commit(
    tmp_path, monkeypatch
):
    store = _store(tmp_path)
    monkeypatch.setattr("flows.commits.time.sleep", lambda s: None)
    answers = []

    def commit(files, group, replacing):  # the commit lands, then its answer is lost
        answers.append(store.commit_row_files(files, run_id="r1", group=group, fence="r1"))
        if len(answers) == 1:
            raise ConnectionError("connection reset after the commit was written")
        return answers[-1]

    commits = GroupCommits(commit, first_s=0.0)
    commits.add(1, store.write_rows(_rows(0, 4, "r1"), run_id="r1", part=0))
    before = store.version
    assert commits.flush() == [1]
    assert answers == [True, False] and store.version == before + 1
    assert len(_keys(store)) == 4


def test_a_group_commit_that_loses_a_race_is_made_again_and_counted(tmp_path, monkeypatch):
    """Another commit lands between the committer's read of the table and its
    commit (a property change, which conflicts with every commit): the group is
    committed once, on the new version, and the lost race is counted."""
    from xraycore.store._delta import VersionedTable, commit_info

    store = _store(tmp_path)
    other = ScanStore.open(store.storage.url).metadata
    reads = VersionedTable._with_columns

    def read_then_someone_commits(self, target, files, info):
        if self.conflicts_retried == 0:
            other.set_properties({"xray.writer": "r1"}, commit_info("fence", "r1"))
        return reads(self, target, files, info)

    monkeypatch.setattr(VersionedTable, "_with_columns", read_then_someone_commits)
    files = [store.write_rows(_rows(0, 4, "r1"), run_id="r1", part=0)]
    before = store.version
    assert store.commit_row_files(files, run_id="r1", group=1, fence="r1")
    assert store.metadata.conflicts_retried == 1
    assert store.version == before + 2  # the other commit, then the group's, once
    assert len(_keys(store)) == 4


def test_first_commit_wait_from_the_environment(monkeypatch):
    monkeypatch.setenv("XRAY_COMMIT_FIRST_S", "0")
    assert first_commit_s() == 0.0 and GroupCommits(lambda *a: True).first_s == 0.0
    monkeypatch.setenv("XRAY_COMMIT_FIRST_S", "soon")
    with pytest.raises(ValueError, match="XRAY_COMMIT_FIRST_S must be a number"):
        first_commit_s()


def test_a_committer_killed_after_its_commit_is_restarted_and_commits_nothing_twice(tmp_path):
    """The drill: the committer process is SIGKILLed between writing a group's
    commit and acknowledging it; a committer restarted for the same run commits
    that group again as a no-op and the next group once; nothing lost."""
    store = _store(tmp_path)
    url = store.storage.url
    first = [store.write_rows(_rows(b * 4, 4, "r1"), run_id="r1", part=b * 4) for b in range(3)]
    second = store.write_rows(_rows(12, 4, "r1"), run_id="r1", part=12)
    script = textwrap.dedent(
        f"""
        import os, pickle, signal, sys
        from xraycore.store import ScanStore
        files = pickle.loads(bytes.fromhex(sys.argv[1]))
        store = ScanStore.open({url!r})
        store.commit_row_files(files, run_id="r1", group=1, fence="r1")
        os.kill(os.getpid(), signal.SIGKILL)  # before anyone hears of the commit
        """
    )
    import pickle

    res = subprocess.run(
        [sys.executable, "-c", script, pickle.dumps(first).hex()], capture_output=True, timeout=60
    )
    assert res.returncode == -9, res.stderr.decode()
    version = store.version
    restarted = GroupCommits(
        lambda files, group, replacing: store.commit_row_files(
            files, run_id="r1", group=group, fence="r1"
        ),
        first_s=0.0,
    )
    for f in first:  # the restarted committer did not hear of group 1: it hands it on again
        restarted.add(f.path, f)
    assert restarted.flush() == [f.path for f in first] and store.version == version
    restarted.add(second.path, second)
    restarted.flush()
    assert store.version == version + 1
    keys = _keys(store)
    assert len(keys) == len(set(keys)) == 16
    assert pa.Table.from_pylist(store.read_metadata().to_pylist()).num_rows == 16


def test_a_label_column_with_no_value_in_a_batch_is_left_out_and_reads_null(tmp_path):
    store = _store(tmp_path)
    labelled = [{**r, "follow_up": 40 + i} for i, r in enumerate(_rows(0, 2, "r1"))]
    empty = [{**r, "follow_up": None} for r in _rows(2, 2, "r1")]  # no value: no type
    files = [
        store.write_rows(labelled, run_id="r1", part=0),
        store.write_rows(empty, run_id="r1", part=2),
    ]
    assert "follow_up" not in files[1].columns
    store.commit_row_files(files, run_id="r1", group=1, fence="r1")
    table = DeltaTable(store.metadata.uri).to_pyarrow_table()
    ups = dict(zip(table["source"].to_pylist(), table["follow_up"].to_pylist(), strict=True))
    assert [ups[f"/src/s{i:05d}.png"] for i in range(4)] == [40, 41, None, None]
    # The new column is a commit of its own kind, not a group, in the run's one log line.
    kinds = [e["kind"] for e in store.history() if e["table"] == "metadata"]
    assert kinds[:2] == ["batch", "columns"], kinds
    line = log_lines(store.history())[0]
    assert "run r1" in line and "1 group, 4 rows" in line, line
