"""A model's predictions against the labels in a store's metadata."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from xraycore.predict.contract import (
    ModelContract,
    classification_report,
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
    "HEADLINE_ORDER",
    "REPORT",
    "REPORT_FORMAT",
    "ROC",
    "UNSPLIT",
    "confusion_matrix_figure",
    "evaluate_store",
    "findings_report",
    "model_sha256",
    "roc_figure",
    "split_title",
]


#: The group of the rows that no split names (a store never split, or rows added since).
UNSPLIT = "unsplit"
#: Which group's figures head a report when no split is asked for: the test split's,
#: else the rows of no split, else the validation split's, else the training split's.
HEADLINE_ORDER = ("test", UNSPLIT, "validation", "train")
#: The layout of ``classification_report.json``. Format 1 (no ``format`` key) had
#: every row's figures at the top level.
REPORT_FORMAT = 2
FORMAT_NOTE = (
    "format 2: the top-level figures are the headline split's ('headline'; 'split' is "
    "null for rows of no split), the test split's when there is one, no longer every "
    "row's; 'splits' holds each split's ('unsplit': rows of no split); a row of the "
    "model's lineage (its training and validation rows) is never counted in 'test' or "
    "'unsplit' ('seen')"
)


def evaluate_store(
    store: ScanStore,
    model: str,
    contract: ModelContract,
    *,
    target: str | None = None,
    split: str | None = None,
    seen: Collection[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict | None:
    """Compare a model's predictions with the labels in the metadata, split by split.

    Writes ``classification_report.json`` and ``confusion_matrix.png`` (the
    headline split's) into the store; for a model of several findings (its
    contract's ``findings``), the per-finding figures of :func:`findings_report`
    and ``roc_curves.png`` (one panel per split) instead.

    Parameters
    ----------
    store : ScanStore
    model : str
        The model's URL; its predictions are found by the file's SHA-256.
    contract : ModelContract
        Gives the label names; the default target is ``finding_<positive label>``.
    target : str, optional
        Boolean metadata column holding the truth (a model of one output).
    split : str, optional
        Only rows of this split (``train``, ``validation``, ``test``); the headline.
    seen : collection of str, optional
        The ``image_id``s of the model's training lineage
        (:func:`xraycore.train.loader.lineage_image_ids`): never counted as test
        rows, nor as rows of no split, whatever their split column says.
        Required when the contract has a ``training`` lineage.

    Returns
    -------
    report : dict or None
        Format :data:`REPORT_FORMAT`: the headline split's figures at the top
        level (as format 1 had every row's), each split's under ``splits``.
        None when the metadata has no target column or no labelled prediction.

    Notes
    -----
    The headline is ``split`` when given, else the first group of
    :data:`HEADLINE_ORDER` with a labelled prediction.
    """
    if contract.training and seen is None:
        raise ValueError(
            f"model {model} has a training lineage: give seen= its rows "
            "(xraycore.train.loader.lineage_image_ids(contract.training)), so that none "
            "is counted as a test row"
        )
    meta = store.read_metadata()
    preds = store.read_predictions()
    if meta is None or preds is None or (split and "split" not in meta.column_names):
        return None  # no prediction, or no row is of a split yet: nothing to compare
    columns = contract.findings or (target or finding_column(contract.labels[1]),)
    present = [c for c in columns if c in meta.column_names]
    if not present:
        return None
    sha = model_sha256(model, storage_options)
    chosen = select_rows(meta, url=store.storage.url, split=split or None, empty_ok=True)
    groups, rows, skipped = _groups(chosen, preds, sha, present, frozenset(seen or ()), contract)
    figures = {g: {**_figures(found, contract), "rows": rows[g]} for g, found in groups.items()}
    if not figures:
        return None
    headline = split or next((g for g in HEADLINE_ORDER if g in figures), min(figures))
    report = _report(figures, headline, split, model, contract, store.version)
    report["seen"] = {"rows": len(seen or ()), "not_counted": skipped}
    if not contract.findings:
        report["target"] = present[0]
    store.storage.write_bytes_atomic(REPORT, json.dumps(report, indent=2).encode())
    with tempfile.TemporaryDirectory() as tmp:
        name = ROC if contract.findings else CONFUSION
        png = Path(tmp) / name
        if contract.findings:
            roc_figure({g: groups[g] for g in _ordered(figures, headline)}, png)
        else:
            confusion_matrix_figure(report, png)  # each split's, the headline first
        store.storage.write_bytes_atomic(name, png.read_bytes())
    return report


def _groups(chosen, preds, sha, columns, seen, contract):
    """Each group's (split's) labels and model outputs per column, from the current
    predictions of ``sha``; the images each group counts, and how many rows of
    ``seen`` it did not count."""
    truth = {r["image_id"]: r for r in chosen.to_pylist()}
    groups: dict[str, dict[str, tuple[list, list]]] = {}
    counted: dict[str, set[str]] = {}
    skipped: dict[str, set[str]] = {}
    for p in preds.to_pylist():
        t = truth.get(p["image_id"])
        column = p["finding"] if contract.findings else columns[0]
        # A prediction counts only for the image's current pixels: an image since
        # failed, or processed again into another row, has a stale one.
        if p["model_sha256"] != sha or column not in columns or t is None or t["row"] != p["row"]:
            continue
        value = t[column]
        if value is None or int(value) not in (0, 1):  # missing or uncertain (-1): no truth
            continue
        group = t.get("split") or UNSPLIT
        if group in ("test", UNSPLIT) and p["image_id"] in seen:
            skipped.setdefault(group, set()).add(p["image_id"])
            continue
        y, out = groups.setdefault(group, {c: ([], []) for c in columns})[column]
        y.append(int(value))
        out.append(p["score"] if contract.findings else p["label"])
        counted.setdefault(group, set()).add(p["image_id"])
    rows = {g: len(ids) for g, ids in counted.items()}
    return groups, rows, {g: len(ids) for g, ids in sorted(skipped.items())}


def _figures(found: dict[str, tuple[list, list]], contract: ModelContract) -> dict:
    """One group's figures: :func:`findings_report`'s, or (one output) the
    classification report."""
    if contract.findings:
        thresholds = {f: contract.threshold_of(contract.findings.index(f)) for f in found}
        return findings_report(
            {f: (np.array(y), np.array(s)) for f, (y, s) in found.items()}, thresholds
        )
    [(y, label)] = found.values()
    names = tuple(contract.labels)
    return classification_report([names[v] for v in y], label, names)


def _report(figures, headline, split, model, contract, version) -> dict:
    """The report: the headline group's figures at the top level, every group's
    under ``splits`` (the headline first), what the model was trained on."""
    lineage = contract.training or {}
    return {
        **figures[headline],
        "format": REPORT_FORMAT,
        "changes": FORMAT_NOTE,
        "headline": headline,
        "split": None if headline == UNSPLIT else headline,
        "asked_split": split,
        "splits": {g: figures[g] for g in _ordered(figures, headline)},
        "model": model,
        "store_version": version,  # what was scored against
        # What the model was trained on: with the scores' version, which data it had seen.
        "model_training": (
            {k: lineage.get(k) for k in ("store", "store_version", "rows", "rows_sha256")}
            if lineage
            else None
        ),
    }


def _ordered(figures: dict, headline: str) -> list[str]:
    """The groups of ``figures``: the headline first, then as :data:`HEADLINE_ORDER`
    has them, then any other split by name."""
    rank = {g: k for k, g in enumerate(HEADLINE_ORDER)}
    rest = sorted((g for g in figures if g != headline), key=lambda g: (rank.get(g, 99), g))
    return [headline, *rest]


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


def split_title(group: str) -> str:
    """How a report names a group of rows: ``test split``, ``rows of no split``."""
    return "rows of no split" if group == UNSPLIT else f"{group} split"


def confusion_matrix_figure(report: dict, path) -> Path:
    """The confusion matrix of a one-output report as a PNG; of a report of several
    splits (its ``splits``), one panel per split in its order (the headline first)."""
    from xraycore.image.viz import pyplot

    plt = pyplot()
    panels = report.get("splits") or {None: report}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for k, (ax, (group, figures)) in enumerate(zip(axes[0], panels.items(), strict=True)):
        cm = np.asarray(figures["confusion_matrix"])
        labels = figures["labels"]
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            color = "white" if v > cm.max() / 2 else "black"
            ax.text(j, i, str(v), ha="center", va="center", color=color)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        title = f"accuracy {figures['accuracy']:.2f}"
        if group is not None:
            title = f"{split_title(group)}{' (headline)' if k == 0 else ''}: {title}"
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def roc_figure(groups: dict[str, dict[str, tuple]], path) -> Path:
    """The ROC curves of each group (split name -> finding -> (labels, scores)), one
    panel per group in the given order (the headline first), one line per finding
    with its AUROC in the legend, as the ChestX-ray8 paper draws them."""
    from xraycore.image.viz import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 5), squeeze=False)
    for k, (ax, (group, scores)) in enumerate(zip(axes[0], groups.items(), strict=True)):
        for finding, (y, s) in scores.items():
            y, s = np.asarray(y), np.asarray(s)
            if len(y) == 0 or y.all() or not y.any():
                continue
            fpr, tpr, _ = roc_curve(y, s)
            name = finding_name(finding)
            ax.plot(fpr, tpr, label=f"{name} ({roc_auc(y, s):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{split_title(group)} (headline)" if k == 0 else split_title(group))
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
