"""A store's history: its versions as ``xray log`` shows them, and their retention.

A store's version is its metadata table's (:mod:`xraycore.store._delta`): every
batch of a run, the run's end, a split, a repair is one. Classifications
commit to the predictions table, whose versions are listed beside them (with
``table: predictions``); a store opened at a version reads the predictions
committed by then.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from xraycore._validate import check_int
from xraycore.store._delta import commit_info
from xraycore.store._scans import ScanStore

__all__ = ["log_lines", "vacuum_store"]


def _span(entries: list[dict[str, Any]]) -> str:
    lo, hi = entries[-1]["version"], entries[0]["version"]
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _rows(entry: dict[str, Any]) -> str:
    metrics = entry.get("metrics") or {}
    added = metrics.get("num_target_rows_inserted")
    changed = metrics.get("num_target_rows_updated")
    if added is not None:
        return f"+{added} rows, {changed or 0} replaced"
    if entry.get("rows") is not None:
        return f"{entry['rows']} rows"
    return ""


#: The commits of one run, shown as one line: a preprocessing run's fence,
#: group commits and end; a classification's groups and end.
_RUN_KINDS = {
    "fence": "run",
    "columns": "run",
    "batch": "run",
    "run-end": "run",
    "classification": "classification",
    "classification-end": "classification",
}


def log_lines(history: list[dict[str, Any]]) -> list[str]:
    """``xray log``'s lines for ``history`` (:meth:`ScanStore.history`, newest
    first): a run's consecutive commits (its fence, the groups of batches its
    committer committed, its end) in one line, every other version in one."""
    groups: list[list[dict[str, Any]]] = []
    for entry in history:
        run = _run_of(entry)
        if groups and run is not None and run == _run_of(groups[-1][0]):
            groups[-1].append(entry)
        else:
            groups.append([entry])
    lines = []
    for group in groups:
        head = group[0]
        kind = head.get("kind") or (head.get("operation") or "?").lower()
        table = "" if head["table"] == "metadata" else f" [{head['table']}]"
        if len(group) > 1:
            kind = _RUN_KINDS[kind]
            what = _run_rows(group)
        else:
            what = _rows(head)
        stamp = head["timestamp"][:19].replace("T", " ")
        run = head.get("run_id") or "-"
        lines.append(f"{_span(group):>9}{table}  {stamp}  {kind:<18} run {run:<14} {what}".rstrip())
    return lines


def _run_of(entry: dict[str, Any]) -> tuple | None:
    """Which run's commits ``entry`` is one of (None: a version of its own)."""
    kind = _RUN_KINDS.get(entry.get("kind"))
    return None if kind is None else (kind, entry.get("run_id"), entry["table"])


def _run_rows(commits: list[dict[str, Any]]) -> str:
    """``3 groups, 192 rows, compacted``: what one run's commits did (compacted:
    the run's end committed; a run of one file has nothing to compact)."""
    parts = [e for e in commits if e.get("kind") in ("batch", "classification")]
    rows = sum(int(e.get("rows") or 0) for e in parts)
    ended = any(e.get("kind", "").endswith("end") for e in commits)
    groups = f"{len(parts)} group" + ("" if len(parts) == 1 else "s")
    return f"{groups}, {rows} rows" + (", compacted" if ended else "")


def vacuum_store(
    store: ScanStore,
    *,
    keep: int | None = None,
    older_than: timedelta | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Remove the table files that no kept version reads, under the store's lease.

    Parameters
    ----------
    store : ScanStore
    keep : int, optional
        Keep the ``keep`` latest versions of each table.
    older_than : timedelta, optional
        Keep every version younger than this (and always the latest).
    dry_run : bool
        Say which versions would go, remove nothing.

    Returns
    -------
    summary : dict
        Per table: the first kept version and the files removed.
    """
    from xraycore.store.lease import StoreLease

    if (keep is None) == (older_than is None):
        raise ValueError("give one of keep (versions) or older_than (a time)")
    if keep is not None:
        check_int(keep, "keep", minimum=1)
    run_id = f"vacuum-{uuid.uuid4().hex[:8]}"
    reason = f"xray vacuum --keep {keep}" if keep else f"xray vacuum --older-than {older_than}"
    out: dict[str, Any] = {}
    with StoreLease.acquire(store.storage, run_id, description="xray vacuum"):
        for name, table in (("metadata", store.metadata), ("predictions", store.predictions)):
            history = table.history()
            if not history:
                continue
            if keep is not None:
                kept = [e["version"] for e in history[:keep]]
            else:
                cutoff = datetime.now(UTC) - older_than
                kept = [
                    e["version"]
                    for i, e in enumerate(history)
                    if i == 0 or datetime.fromisoformat(e["timestamp"]) >= cutoff
                ]
            start = min(kept)
            if dry_run:
                out[name] = {
                    "first_kept": start,
                    "removed": [],
                    "versions_removed": len(history) - len(kept),
                }
                continue
            removed = table.vacuum(kept, commit_info("vacuum", run_id), reason)
            out[name] = {
                "first_kept": start,
                "removed": removed,
                "versions_removed": len(history) - len(kept),
            }
    return out
