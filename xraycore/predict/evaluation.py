"""A model's predictions against the labels in a store's metadata."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from xraycore.predict.contract import (
    ModelContract,
    classification_report,
    confusion_matrix_figure,
    model_sha256,
)
from xraycore.store import ScanStore, select_rows
from xraycore.store.schema import CONFUSION, REPORT, finding_column

# model_sha256 is the contract's (where the model is read), named here too for the
# callers that evaluate: predictions are found by it.
__all__ = ["CONFUSION", "REPORT", "evaluate_store", "model_sha256"]


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
    store.

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
