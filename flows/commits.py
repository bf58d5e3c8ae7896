"""The run's one committer: the files that finished batches wrote, committed in groups.

Batch tasks write their rows as files of the store's tables and return what a
commit needs (:class:`xraycore.store._files.TableFile`); the flow commits them
here, many batches in one Delta transaction, so a run adds a handful of
versions and its commits never race each other (Spark's and Ray's Delta
writers, Lance and Icechunk work the same way). A group is due when its oldest
batch has waited ``interval`` seconds; the interval starts short (the first
rows are visible, and scored, within seconds) and grows by half at each group
up to a minute, so a run of an hour adds about 70 versions and one of a few
minutes about ten.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xraycore.store._files import TableFile

__all__ = ["FIRST_S", "GROWTH", "LONGEST_S", "GroupCommits", "first_commit_s"]

#: Seconds the first group waits; each later one waits GROWTH times longer, at
#: most LONGEST_S. ``XRAY_COMMIT_FIRST_S`` sets the first (0: every batch its own
#: group, one version per batch: the drills that kill a run between two batches).
FIRST_S = 5.0
GROWTH = 1.5
LONGEST_S = 60.0
#: Tries of a group commit that failed for a reason other than the lease (a
#: network fault that outlived the client's own retries).
TRIES = 3


def first_commit_s() -> float:
    """The first group's wait: ``XRAY_COMMIT_FIRST_S``, else :data:`FIRST_S`."""
    text = os.environ.get("XRAY_COMMIT_FIRST_S", "").strip()
    try:
        value = float(text) if text else FIRST_S
    except ValueError:
        raise ValueError(f"XRAY_COMMIT_FIRST_S must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise ValueError(f"XRAY_COMMIT_FIRST_S must be >= 0, got {text!r}")
    return value


@dataclass
class GroupCommits:
    """Pending files and what to do with them once committed.

    ``commit(files, group, replacing)`` commits one group (its number counts
    from 1 in the run, and is the commit's transaction number: a group already
    committed is not committed again) and returns False when it was already.
    """

    commit: Callable[[list[TableFile], int, list[str]], bool]
    first_s: float = field(default_factory=lambda: first_commit_s())
    growth: float = GROWTH
    longest_s: float = LONGEST_S
    clock: Callable[[], float] = time.monotonic
    group: int = 0
    pending: list[tuple[Any, TableFile, tuple[str, ...]]] = field(default_factory=list)
    _interval: float = 0.0
    _oldest: float | None = None

    def __post_init__(self) -> None:
        self._interval = self.first_s

    def add(self, payload: Any, written: TableFile | None, replacing: tuple[str, ...] = ()) -> None:
        """A finished batch: its ``payload`` comes back from :meth:`flush` once
        ``written`` (None: it wrote no file) is committed."""
        if self._oldest is None:
            self._oldest = self.clock()
        self.pending.append((payload, written, tuple(replacing)))

    def due(self) -> bool:
        """Whether the oldest pending batch has waited the group's interval."""
        return self._oldest is not None and self.clock() - self._oldest >= self._interval

    def flush(self) -> list[Any]:
        """Commit every pending file in one transaction; the payloads of the
        batches committed (in the order they finished). Raises when the commit
        failed TRIES times, or at once when the run no longer holds its lease:
        the pending batches are then not committed (:attr:`pending` holds them)."""
        if not self.pending:
            return []
        files = [f for _, f, _ in self.pending if f is not None]
        replacing = sorted({s for _, _, r in self.pending for s in r})
        if files:
            self._commit_group(files, self.group + 1, replacing)
            self.group += 1
        payloads = [p for p, _, _ in self.pending]
        self.pending, self._oldest = [], None
        self._interval = min(self.longest_s, self._interval * self.growth)
        return payloads

    def _commit_group(self, files: list[TableFile], group: int, replacing: list[str]) -> None:
        from xraycore.store import FencedCommitError

        for attempt in range(TRIES):
            try:
                self.commit(files, group, replacing)  # False: committed by an earlier try
                return
            except FencedCommitError:
                raise
            except Exception:
                if attempt == TRIES - 1:
                    raise
                time.sleep(2.0 * (attempt + 1))
