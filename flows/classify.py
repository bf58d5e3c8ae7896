"""``classify_store``: score a store's scans with an ONNX model, report if labelled."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact

from flows.runner import task_runner
from tasks.classify import classify_batch, commit_predictions
from xraycore.classify import ModelContract, classification_report, confusion_matrix_figure
from xraycore.storage import Storage
from xraycore.store import ScanStore

REPORT = "classification_report.json"
CONFUSION = "confusion_matrix.png"


def shard_groups(items: list[tuple[int, str]], shard_size: int) -> list[list[tuple[int, str]]]:
    """(row, image_id) pairs grouped by the shard the row lives in: one task
    reads whole shards."""
    groups: dict[int, list[tuple[int, str]]] = {}
    for row, image_id in sorted(items):
        groups.setdefault(row // shard_size, []).append((row, image_id))
    return list(groups.values())


@flow(name="classify-store", log_prints=True, task_runner=task_runner())
def classify_store(
    store: str,
    model: str,
    contract: dict | None = None,
    target: str | None = None,
    rows: list[int] | str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the ok rows of a store (or ``rows``), commit predictions, and write
    the evaluation report when the metadata holds the target labels.

    ``rows`` may be JSON text, as an event trigger renders a list."""
    if isinstance(rows, str):
        rows = [int(r) for r in json.loads(rows)] if rows.strip() else None
    logger = get_run_logger()
    run_id = uuid.uuid4().hex[:12]
    st = ScanStore.open(store, storage_options)
    info = st.info()
    if info is None:
        raise ValueError(f"{store} is not a store (no images.zarr)")
    c = ModelContract.for_model(model, storage_options, **(contract or {}))
    meta = st.read_metadata()
    ok = (
        [(r["row"], r["image_id"]) for r in meta.to_pylist() if r["status"] == "ok"] if meta else []
    )
    if rows is not None:
        wanted = set(rows)
        ok = [item for item in ok if item[0] in wanted]
    groups = shard_groups(ok, int(info["shard_size"]))
    logger.info("classifying %d rows in %d batches with %s", len(ok), len(groups), model)
    futures = classify_batch.map(
        groups,
        store=unmapped(store),
        model=unmapped(model),
        contract=unmapped(c.to_dict()),
        run_id=unmapped(run_id),
        storage_options=unmapped(storage_options),
    )
    scored = sum(f.result()["rows"] for f in futures)
    commit_predictions(store, run_id, storage_options)
    report = evaluate_store(st, model, c, target=target, storage_options=storage_options)
    if report is not None:
        create_markdown_artifact(
            key="classification-report",
            markdown=report_markdown(report),
            description=f"{model} on {store}",
        )
    return {"run_id": run_id, "scored": scored, "report": report}


def evaluate_store(
    st: ScanStore,
    model: str,
    contract: ModelContract,
    target: str | None = None,
    split: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict | None:
    """Compare a model's predictions with the labels in the metadata; writes
    ``classification_report.json`` and ``confusion_matrix.png`` into the store.
    Returns None when the metadata has no target column."""
    meta = st.read_metadata()
    preds = st.read_predictions()
    target = target or f"finding_{contract.labels[1].lower()}"
    if meta is None or preds is None or target not in meta.column_names:
        return None
    sha = model_sha256(model, storage_options)
    truth = {r["image_id"]: r for r in meta.to_pylist()}
    y_true, y_pred = [], []
    for p in preds.to_pylist():
        if p["model_sha256"] != sha:
            continue
        t = truth.get(p["image_id"])
        if t is None or t.get(target) is None or (split and t.get("split") != split):
            continue
        y_true.append(contract.labels[1] if t[target] else contract.labels[0])
        y_pred.append(p["label"])
    if not y_true:
        return None
    report = classification_report(y_true, y_pred, tuple(contract.labels))
    report["target"] = target
    report["model"] = model
    report["split"] = split
    st.storage.write_bytes_atomic(REPORT, json.dumps(report, indent=2).encode())
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / CONFUSION
        confusion_matrix_figure(report, png)
        st.storage.write_bytes_atomic(CONFUSION, png.read_bytes())
    return report


def model_sha256(model: str, storage_options: dict[str, Any] | None = None) -> str:
    storage = Storage.from_url(model, storage_options)
    return hashlib.sha256(storage.read_bytes(storage.root)).hexdigest()


def report_markdown(report: dict) -> str:
    """The report as seed 004 prints it (scikit-learn's layout), in markdown."""
    buf = io.StringIO()
    buf.write(f"# Classification report ({report['target']})\n\n```\n")
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
    buf.write(
        f"```\n\nConfusion matrix (rows true, columns predicted): {report['confusion_matrix']}\n"
    )
    return buf.getvalue()
