"""A model's predictions against the labels in a store's metadata."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from xraycore.predict.contract import (
    ModelContract,
    classification_report,
    confusion_matrix_figure,
    model_sha256,
)
from xraycore.predict.roc import operating_point, roc_auc, roc_curve
from xraycore.store import ScanStore, select_rows
from xraycore.store.columns import finding_column, finding_name
from xraycore.store.schema import CONFUSION, REPORT, ROC

# model_sha256 is the contract's (where the model is read), named here too for the
# callers that evaluate: predictions are found by it.
__all__ = [
    "CONFUSION",
    "REPORT",
    "ROC",
    "evaluate_store",
    "findings_report",
    "model_sha256",
    "roc_figure",
]


def evaluate_store(
    store: ScanStore,
    model: str,
    contract: ModelContract,
    *,
    target: str | None = None,
    split: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict | None:
    """Compare a model's predictions with the labels in the metadata.

    Writes ``classification_report.json`` and ``confusion_matrix.png`` into the
    store; for a model of several findings (its contract's ``findings``), the
    report of :func:`findings_report` and ``roc_curves.png`` instead.

    Parameters
    ----------
    store : ScanStore
    model : str
        The model's URL; its predictions are found by the file's SHA-256.
    contract : ModelContract
        Gives the label names; the default target is ``finding_<positive label>``.
    target : str, optional
        Boolean metadata column holding the truth.
    split : str, optional
        Only rows of this split (``train``, ``validation``, ``test``).

    Returns
    -------
    report : dict or None
        None when the metadata has no target column or no labelled prediction.
    """
    meta = store.read_metadata()
    preds = store.read_predictions()
    if contract.findings:
        return _evaluate_findings(store, meta, preds, model, contract, split, storage_options)
    target = target or finding_column(contract.labels[1])
    if meta is None or preds is None or target not in meta.column_names:
        return None
    if split and "split" not in meta.column_names:
        return None  # no row is of a split yet: nothing labelled to compare
    sha = model_sha256(model, storage_options)
    labelled = select_rows(
        meta, url=store.storage.url, split=split or None, target=target, empty_ok=True
    )
    truth = {r["image_id"]: r for r in labelled.to_pylist()}
    y_true, y_pred = [], []
    for p in preds.to_pylist():
        if p["model_sha256"] != sha:
            continue
        t = truth.get(p["image_id"])
        # A prediction counts only for the image's current pixels: an image since
        # failed, or processed again into another row, has a stale one.
        if t is None or t["row"] != p["row"]:
            continue
        y_true.append(contract.labels[1] if t[target] else contract.labels[0])
        y_pred.append(p["label"])
    if not y_true:
        return None
    report = classification_report(y_true, y_pred, tuple(contract.labels))
    report["target"] = target
    report["model"] = model
    report["split"] = split
    report["store_version"] = store.version  # what was scored against
    lineage = contract.training or {}
    # What the model was trained on: with the scores' version, which data it had seen.
    report["model_training"] = (
        {k: lineage.get(k) for k in ("store", "store_version", "rows", "rows_sha256")}
        if lineage
        else None
    )
    store.storage.write_bytes_atomic(REPORT, json.dumps(report, indent=2).encode())
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / CONFUSION
        confusion_matrix_figure(report, png)
        store.storage.write_bytes_atomic(CONFUSION, png.read_bytes())
    return report


def _evaluate_findings(store, meta, preds, model, contract, split, storage_options):
    """:func:`evaluate_store` for a model of several findings."""
    if meta is None or preds is None or (split and "split" not in meta.column_names):
        return None
    present = [f for f in contract.findings if f in meta.column_names]
    if not present:
        return None
    sha = model_sha256(model, storage_options)
    chosen = select_rows(meta, url=store.storage.url, split=split or None, empty_ok=True)
    truth = {r["image_id"]: r for r in chosen.to_pylist()}
    scores: dict[str, tuple[list, list]] = {f: ([], []) for f in present}
    for p in preds.to_pylist():
        t = truth.get(p["image_id"])
        if p["model_sha256"] != sha or p["finding"] not in scores or t is None:
            continue
        value = t[p["finding"]]
        # Only the image's current pixels; a missing or uncertain (-1) label is no truth.
        if t["row"] != p["row"] or value is None or int(value) not in (0, 1):
            continue
        scores[p["finding"]][0].append(int(value))
        scores[p["finding"]][1].append(p["score"])
    if not any(y for y, _ in scores.values()):
        return None
    thresholds = {f: contract.threshold_of(contract.findings.index(f)) for f in present}
    report = findings_report(
        {f: (np.array(y), np.array(s)) for f, (y, s) in scores.items()}, thresholds
    )
    report.update(model=model, split=split)
    store.storage.write_bytes_atomic(REPORT, json.dumps(report, indent=2).encode())
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / ROC
        roc_figure({f: (np.array(y), np.array(s)) for f, (y, s) in scores.items()}, png)
        store.storage.write_bytes_atomic(ROC, png.read_bytes())
    return report


def findings_report(scores: dict[str, tuple], thresholds: dict[str, float]) -> dict:
    """Per finding AUROC, the threshold, sensitivity and specificity at it and the
    support; the mean AUROC over the findings where it is defined.

    Parameters
    ----------
    scores : dict
        Finding column -> (labels (N,) of 0/1, scores (N,)).
    thresholds : dict
        Finding column -> the model's threshold (``score > threshold`` is positive).

    Returns
    -------
    report : dict
        ``{"kind": "findings", "findings": {column: {...}}, "mean_auroc": float}``;
        NaN (JSON null) where a finding's labels hold one class.
    """
    per = {}
    for finding, (y, s) in scores.items():
        point = operating_point(y, s, thresholds[finding])
        auc = roc_auc(y, s) if len(y) else float("nan")
        per[finding] = {
            "auroc": None if np.isnan(auc) else auc,
            "threshold": thresholds[finding],
            "sensitivity": None if np.isnan(point["sensitivity"]) else point["sensitivity"],
            "specificity": None if np.isnan(point["specificity"]) else point["specificity"],
            "support": point["positives"] + point["negatives"],
            "positives": point["positives"],
            "negatives": point["negatives"],
        }
    defined = [r["auroc"] for r in per.values() if r["auroc"] is not None]
    return {
        "kind": "findings",
        "findings": per,
        "mean_auroc": float(np.mean(defined)) if defined else None,
    }


def roc_figure(scores: dict[str, tuple], path) -> Path:
    """The ROC curves of ``scores`` (finding -> (labels, scores)), one line per
    finding with its AUROC in the legend, as the ChestX-ray8 paper draws them."""
    from xraycore.image.viz import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for finding, (y, s) in scores.items():
        if len(y) == 0 or y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        name = finding_name(finding)
        ax.plot(fpr, tpr, label=f"{name} ({roc_auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
