"""What a run shows a person: the classification report as text, the comparison sheet."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .store import ScanStore

__all__ = ["comparison_sheet", "report_markdown", "report_text"]


def report_text(report: dict) -> str:
    """The report as seed 004 prints it (scikit-learn's layout)."""
    buf = io.StringIO()
    buf.write(f"{'':>14}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}\n\n")
    for label in report["labels"]:
        r = report[label]
        buf.write(
            f"{label:>14}{r['precision']:>10.2f}{r['recall']:>10.2f}"
            f"{r['f1-score']:>10.2f}{r['support']:>10}\n"
        )
    total = report["macro avg"]["support"]
    buf.write(f"\n{'accuracy':>14}{'':>20}{report['accuracy']:>10.2f}{total:>10}\n")
    for avg in ("macro avg", "weighted avg"):
        r = report[avg]
        buf.write(
            f"{avg:>14}{r['precision']:>10.2f}{r['recall']:>10.2f}"
            f"{r['f1-score']:>10.2f}{r['support']:>10}\n"
        )
    return buf.getvalue()


def report_markdown(report: dict) -> str:
    """:func:`report_text` in a markdown document with the confusion matrix."""
    return (
        f"# Classification report ({report['target']})\n\n```\n{report_text(report)}```\n\n"
        f"Confusion matrix (rows true, columns predicted): {report['confusion_matrix']}\n"
    )


def comparison_sheet(
    store: ScanStore,
    rows: list[int],
    path: str | Path,
    *,
    source_options: dict[str, Any] | None = None,
) -> Path:
    """The comparison picture (original + each stored output) of some ok rows.

    Parameters
    ----------
    store : ScanStore
    rows : list of int
        Array rows to show, each an ``ok`` row of the metadata.
    path : str or Path
        PNG to write.
    source_options : dict, optional
        fsspec options for reading the original scans.

    Returns
    -------
    path : Path
    """
    from . import viz
    from .io import read_image
    from .pipeline import fit_to_size
    from .restore import fuse_channels

    info = store.info()
    if info is None:
        raise ValueError(f"{store.storage.url} is not a store (no images.zarr)")
    meta = store.read_metadata()
    ok = {r["row"]: r for r in (meta.to_pylist() if meta else []) if r["status"] == "ok"}
    panels, titles = [], []
    for row in rows:
        if row not in ok:
            raise ValueError(f"row {row} is not an ok row of {store.storage.url}")
        entry = {name: store.read(name, row) for name in info["arrays"] if name != "histogram"}
        original = read_image(
            ok[row]["source"], frame=ok[row].get("frame"), **(source_options or {})
        )
        entry["original"] = fit_to_size(fuse_channels(original), info["size"])
        panels.append(entry)
        titles.append(ok[row]["image_id"])
    return viz.comparison_figure(panels, path, titles=titles)
