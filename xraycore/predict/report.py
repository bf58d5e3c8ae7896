"""What a run shows a person: the classification report as text, the comparison
sheet and its thumbnail (a preprocessing run's summary is the flow's:
:mod:`flows.summary`).

Data in, text or bytes out: where the result is written is the caller's business.
"""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path
from typing import Any

from xraycore.predict.evaluation import split_title
from xraycore.store import ScanStore, columns, schema, select_rows

__all__ = [
    "comparison_sheet",
    "report_markdown",
    "report_text",
    "sheet_png",
    "sheet_thumbnail",
]


def _findings_text(report: dict) -> str:
    """A multi-output report: one line per finding, then the mean AUROC."""

    def num(v):
        return f"{v:>12.3f}" if v is not None else f"{'-':>12}"

    buf = io.StringIO()
    buf.write(f"{'':>28}{'AUROC':>12}{'threshold':>12}{'sensitivity':>12}")
    buf.write(f"{'specificity':>12}{'support':>10}\n\n")
    for finding, r in report["findings"].items():
        buf.write(f"{columns.finding_name(finding):>28}{num(r['auroc'])}")
        buf.write(f"{num(r['threshold'])}{num(r['sensitivity'])}{num(r['specificity'])}")
        buf.write(f"{r['support']:>10}\n")
    buf.write(f"\n{'mean AUROC':>28}{num(report['mean_auroc'])}\n")
    return buf.getvalue()


def report_text(report: dict) -> str:
    """The report as the DenseNet-121 report prints it (scikit-learn's layout); a multi-output
    model's as one line per finding (AUROC, threshold, sensitivity, specificity,
    support) and the mean AUROC. A report of several splits (format 2) is headed
    by the split its figures are of, and ends with one line per split."""
    body = _findings_text(report) if report.get("kind") == "findings" else _classes_text(report)
    if "splits" not in report:  # format 1: every row's figures
        return body
    return f"{_headline(report)}\n\n{body}\n{_splits_text(report)}"


def _headline(report: dict) -> str:
    """Which rows the figures are of, and the training rows left out of them."""
    line = f"{split_title(report['headline'])}: {report['rows']} rows"
    left_out = (report.get("seen") or {}).get("not_counted", {}).get(report["headline"])
    if left_out:
        line += f" ({left_out} rows the model was trained or validated on are not counted)"
    elif report["headline"] in ("train", "validation") and not report.get("asked_split"):
        line += " (no test split: rows that may have trained or chosen the model)"
    return line


def _splits_text(report: dict) -> str:
    """One line per split: its rows and its mean AUROC (or accuracy)."""
    findings = report.get("kind") == "findings"
    measure = "mean AUROC" if findings else "accuracy"
    buf = io.StringIO()
    buf.write(f"{'by split':>28}{'rows':>12}{measure:>12}\n")
    for group, figures in report["splits"].items():
        value = figures["mean_auroc"] if findings else figures["accuracy"]
        shown = f"{value:>12.3f}" if value is not None else f"{'-':>12}"
        buf.write(f"{split_title(group):>28}{figures['rows']:>12}{shown}\n")
    return buf.getvalue()


def _classes_text(report: dict) -> str:
    """A one-output report: precision, recall, F1 and support per label."""
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
    if report.get("kind") == "findings":
        return f"# Classification report (findings)\n\n```\n{report_text(report)}```\n"
    return (
        f"# Classification report ({report['target']})\n\n```\n{report_text(report)}```\n\n"
        f"Confusion matrix (rows true, columns predicted): {report['confusion_matrix']}\n"
    )


#: What a panel needs of its row: which scan (and frame), that it is ok, its title.
_SHEET_COLUMNS = ["row", "status", "source", "frame", "image_id", "patient_id", "view_position"]


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
    from xraycore.image import viz
    from xraycore.image.pipeline import fit_to_size
    from xraycore.image.restore import fuse_channels
    from xraycore.sources.catalog import read_image

    info = store.info()
    if info is None:
        raise ValueError(f"{store.storage.url} is not a store (no {schema.IMAGES})")
    # The rows asked for only: a large store's whole table (or a dict per row) is
    # not what a picture of three rows should cost.
    meta = store.read_metadata(rows=rows, columns=_SHEET_COLUMNS)
    ok: dict[int, dict[str, Any]] = {}
    if meta is not None:  # a store with no rows yet: no row asked for is ok
        chosen = select_rows(meta, url=store.storage.url, empty_ok=True)
        ok = {r["row"]: r for r in chosen.to_pylist()}
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
        titles.append(_title(ok[row]))
    return viz.comparison_figure(panels, path, titles=titles)


def _title(row: dict[str, Any]) -> str:
    """A panel's title: the image id, and its patient's pseudonym and view when known."""
    known = [
        f"patient {row['patient_id']}" if row.get("patient_id") else None,
        row.get("view_position"),
    ]
    return " | ".join([row["image_id"], *(k for k in known if k)])


def sheet_png(
    store: ScanStore, rows: list[int], *, source_options: dict[str, Any] | None = None
) -> bytes:
    """:func:`comparison_sheet` of ``rows`` as PNG bytes, written nowhere."""
    with tempfile.TemporaryDirectory() as tmp:
        path = comparison_sheet(
            store, rows, Path(tmp) / schema.SHEET, source_options=source_options
        )
        return path.read_bytes()


def sheet_thumbnail(png: bytes, *, width: int = 960) -> str | None:
    """A picture as a data URI of a small JPEG (a markdown artifact holds no files).

    Parameters
    ----------
    png : bytes
        An encoded image (the comparison sheet).
    width : int, optional
        Largest width in pixels; narrower pictures keep their size.

    Returns
    -------
    uri : str or None
        ``data:image/jpeg;base64,...``, or None when ``png`` is not a picture.
    """
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    if image.shape[1] > width:
        height = round(image.shape[0] * width / image.shape[1])
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None
