"""Which stored rows a model still has to score: incremental, idempotent scoring.

A row needs scoring when it is ``ok`` in the metadata and has no prediction for
the model's SHA-256. Work is handed out in whole batches of the store (a whole
number of its Zarr shards), so a scoring task reads each shard of
``preprocessed`` once. Scoring the same rows twice replaces
(predictions are keyed by image and model), so a repeated or concurrent call
costs time, never correctness.
"""

from __future__ import annotations

from typing import Any

from xraycore.store import ScanStore, select_rows

__all__ = ["batch_groups", "rescored_images", "unscored_rows"]


def batch_groups(items: list[tuple[int, str]], batch_size: int) -> list[list[tuple[int, str]]]:
    """(row, image_id) pairs grouped by the batch their row lives in, in row order.

    Parameters
    ----------
    items : list of (int, str)
    batch_size : int
        Rows per batch (the store's ``batch_size``, a whole number of its shards).

    Returns
    -------
    groups : list of list of (int, str)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    groups: dict[int, list[tuple[int, str]]] = {}
    for row, image_id in sorted(items):
        groups.setdefault(row // batch_size, []).append((row, image_id))
    return list(groups.values())


def unscored_rows(
    store: ScanStore,
    model_sha256: str,
    *,
    rows: list[int] | None = None,
    where: dict[str, Any] | None = None,
) -> list[tuple[int, str]]:
    """The ok rows of ``store`` with no prediction from the model ``model_sha256``.

    Parameters
    ----------
    store : ScanStore
    model_sha256 : str
        SHA-256 of the model file.
    rows : list of int, optional
        Only these rows (an event's batch); default all.
    where : dict, optional
        Only the rows whose columns hold these values (see
        :func:`~xraycore.store.select_rows`: a list is any of its values).

    Returns
    -------
    items : list of (row, image_id), sorted by row
    """
    import pyarrow.compute as pc

    meta = store.read_metadata()
    if meta is None:
        return []
    ok = select_rows(meta, url=store.storage.url, where=where, empty_ok=True)
    ok = ok.select(["row", "image_id"])
    preds = store.read_predictions()
    done: set[tuple[int, str]] = set()
    if preds is not None:
        mine = preds.filter(pc.equal(preds.column("model_sha256"), model_sha256))
        done = set(
            zip(mine.column("row").to_pylist(), mine.column("image_id").to_pylist(), strict=True)
        )
    wanted = set(rows) if rows is not None else None
    return sorted(
        (r, i)
        for r, i in zip(
            ok.column("row").to_pylist(), ok.column("image_id").to_pylist(), strict=True
        )
        if (r, i) not in done and (wanted is None or r in wanted)
    )


def rescored_images(store: ScanStore, model_sha256: str, items: list[tuple[int, str]]) -> list[str]:
    """The image ids among ``items`` (row, image_id) that have a prediction of
    the model ``model_sha256`` already (at another row: an image processed again):
    the commit that adds their new predictions replaces those."""
    import pyarrow as pa
    import pyarrow.compute as pc

    preds = store.read_predictions()
    if preds is None or not items:
        return []
    mine = preds.filter(pc.equal(preds.column("model_sha256"), model_sha256))
    ids = pa.array(sorted({i for _, i in items}), pa.string())
    return ids.filter(pc.is_in(ids, mine.column("image_id"))).to_pylist()
