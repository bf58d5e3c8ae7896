"""What a trained model saw: the store, its version, the selection and its rows.

``xray train`` writes :func:`training_lineage` into the model's contract
(``model.onnx.json``, key ``training``); :meth:`ScanLoader.from_lineage
<xraycore.train.loader.ScanLoader.from_lineage>` rebuilds the same rows in the
same order from it, however the store has moved on since (more runs, new
splits, files processed again): the version pins the rows, and the rows pin
the pixels (a row is never rewritten while a version reads it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

__all__ = ["LINEAGE_KEYS", "loader_settings", "rows_sha256", "training_lineage"]

#: The keys every lineage has (outside checks read them).
LINEAGE_KEYS = (
    "store",
    "store_version",
    "pipeline_hash",
    "selection",
    "rows",
    "rows_sha256",
    "seed",
    "epochs",
    "arch",
    "loader",
)


def rows_sha256(image_ids: Iterable[str]) -> str:
    """SHA-256 of the ``image_id``s, sorted, joined by newlines, UTF-8 (hex)."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in image_ids)).encode()).hexdigest()


def loader_settings(loader) -> dict[str, Any]:
    """What fixes a :class:`~xraycore.train.loader.ScanLoader`'s order, besides its rows."""
    return {
        "batch_size": loader.batch_size,
        "shuffle": loader.shuffle,
        "window": loader.tuning["window"],
        "drop_last": loader.drop_last,
        "world_size": loader.world_size,
    }


def training_lineage(
    store,
    image_ids,
    *,
    selection: dict[str, Any],
    arch: str,
    epochs: int | None,
    seed: int,
    loader: dict[str, Any],
    validation=None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``training`` object of a model trained on the rows ``image_ids``.

    Parameters
    ----------
    store : ScanStore
        The store, opened at the version the rows were read from.
    image_ids : sequence of str
        The selected rows' ids.
    selection : dict
        ``split``, ``where``, ``target`` (or ``targets``): what selected them.
    arch : str
        ``logistic``, ``densenet121``...
    epochs : int or None
    seed : int
    loader : dict
        What fixes the order the rows were read in (:func:`loader_settings`).
    validation : ScanLoader, optional
        The validation loader, recorded as its selection and rows.
    **extra
        More keys to record (``lr``...).

    Returns
    -------
    training : dict
        :data:`LINEAGE_KEYS` and ``extra``; JSON-serialisable.
    """
    ids = [str(i) for i in image_ids]
    out = {
        "store": store.storage.uri(),
        "store_version": store.version,
        "pipeline_hash": store.info_or_raise().get("pipeline_hash"),
        "selection": dict(selection),
        "rows": len(ids),
        "rows_sha256": rows_sha256(ids),
        "seed": int(seed),
        "epochs": epochs,
        "arch": arch,
        "loader": dict(loader),
        **extra,
    }
    if validation is not None:
        out["validation"] = {
            "selection": dict(validation.selection),
            "rows": int(len(validation.image_ids)),
            "rows_sha256": rows_sha256(validation.image_ids.tolist()),
        }
    return out
