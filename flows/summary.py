"""What a preprocessing run did: :class:`RunSummary`, the flow's return value
(as a dict) and its markdown artifact.

The flow owns the summary's fields and draws it; the predict package only
draws the pictures it shows (:mod:`xraycore.predict.report`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["FAILURES_LISTED", "RunSummary"]

#: Rows of failed inputs listed in a run summary; the failures table holds them all.
FAILURES_LISTED = 200


@dataclass
class RunSummary:
    """One run of ``preprocess_dataset``: what it read, wrote, failed and scored."""

    run_id: str
    #: The Prefect flow run's name and id (None outside a flow run).
    flow_run: str | None
    flow_run_id: str | None
    store: str
    pipeline_hash: str
    #: Inputs listed, with the later frames of files found to hold several.
    inputs: int
    ok: int
    failed: int
    skipped: int
    batches: int
    #: (first row, error) of each batch that failed after its retries.
    broken_batches: list[tuple[int, str]]
    rows_in_store: int
    seconds: float
    images_per_s: float
    #: (image id, error) of each failed input.
    failures: list[tuple[str, str]]
    #: The Dask dashboard while the run's cluster was up.
    dashboard: str | None
    #: The classification report when the run scored with a model.
    report: dict | None
    scored: int
    #: Where the comparison sheet was written (None: not drawn).
    sheet: str | None = None
    store_version: int | None = None
    headers_refreshed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The summary as the flow returns it (and the CLI prints it)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def markdown(self, *, thumbnail: str | None = None) -> str:
        """The summary as markdown: headed by the flow run's name, linking the store.

        Parameters
        ----------
        thumbnail : str, optional
            The sample sheet as an image URI
            (:func:`xraycore.predict.report.sheet_thumbnail`), shown inline.

        Returns
        -------
        markdown : str
        """
        store = self.store
        link = store if "://" in store else f"file://{os.path.abspath(store)}"
        lines = [
            f"# Preprocessing run {self.flow_run or self.run_id}",
            "",
            f"Store: [{store}]({link}) (pipeline `{self.pipeline_hash}`, "
            f"{self.rows_in_store} rows; run id `{self.run_id}`)",
            "",
            "| inputs | ok | failed | skipped | batches | seconds | images/s |",
            "|---|---|---|---|---|---|---|",
            f"| {self.inputs} | {self.ok} | {self.failed} | {self.skipped} | {self.batches} | "
            f"{self.seconds:.1f} | {self.images_per_s:.1f} |",
        ]
        if self.dashboard:
            lines += ["", f"Dask dashboard (while the run's cluster was up): {self.dashboard}"]
        if self.sheet:
            lines += ["", "## Sample of this run's outputs", ""]
            if thumbnail:
                lines.append(f"![comparison sheet]({thumbnail})")
            lines += ["", f"Full-size picture: `{self.sheet}`"]
        if self.failures:
            lines += ["", "## Failed inputs", "", "| image | error |", "|---|---|"]
            lines += [f"| {i} | {e} |" for i, e in self.failures[:FAILURES_LISTED]]
        return "\n".join(lines)
