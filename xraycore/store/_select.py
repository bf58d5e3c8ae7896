"""The ok rows of a selection: the one place that reads "which rows" out of the
metadata for every reader (the loader, the dataset, scoring, evaluation, reports,
verify and the CLI)."""

from __future__ import annotations

from typing import Any

from xraycore.store.columns import FINDING_PREFIX

__all__ = ["select_rows"]


def select_rows(
    table,
    *,
    url: str,
    split: str | None = None,
    where: dict[str, Any] | None = None,
    target: str | None = None,
    status: str | None = "ok",
    empty_ok: bool = False,
):
    """The rows of ``table`` (the metadata) a selection names, in row order.

    Parameters
    ----------
    table : pyarrow.Table or None
        The store's metadata (one row per image, latest wins).
    url : str
        The store's URL, named in the messages.
    split : str, optional
        Keep the rows of this split (``xray split`` writes them).
    where : dict, optional
        Column -> value, or a list of values (any of them:
        ``{"view_position": ["PA", "AP"]}``); None matches a missing value.
    target : str, optional
        Keep the rows that have a value in this column.
    status : str or None, optional
        Keep the rows of this status; default ``"ok"`` (rows whose pixels are
        stored); None keeps every status.
    empty_ok : bool, optional
        Return an empty table instead of raising when nothing is selected.

    Returns
    -------
    rows : pyarrow.Table
        Sorted by ``row``.
    """
    import pyarrow.compute as pc

    if table is None:
        raise ValueError(f"store {url} has no metadata")
    columns = table.column_names
    mask = pc.equal(table["status"], status) if status is not None else None

    def both(test):
        return test if mask is None else pc.and_(mask, test)

    if split is not None:
        if "split" not in columns:
            raise ValueError("the store has no splits yet: run `xray split STORE` first")
        mask = both(pc.equal(table["split"], split))
    if where is not None and not isinstance(where, dict):
        raise ValueError(f"where must be a dict of column -> value, got {where!r}")
    for col, value in (where or {}).items():
        if col not in columns:
            raise ValueError(f"metadata has no column {col!r}; columns: {columns}")
        mask = both(_matches(table[col], col, value))
    if target is not None:
        if target not in columns:
            raise ValueError(
                f"metadata has no target column {target!r}; label columns: "
                f"{[c for c in columns if c.startswith(FINDING_PREFIX)]}"
            )
        mask = both(pc.is_valid(table[target]))
    chosen = table if mask is None else table.filter(pc.fill_null(mask, False))
    chosen = chosen.sort_by([("row", "ascending")])
    if chosen.num_rows == 0 and not empty_ok:
        raise ValueError(
            f"no rows selected from store {url} "
            f"(split={split!r}, where={where!r}, target={target!r})"
        )
    return chosen


def _matches(column, name: str, value):
    """Where ``column`` holds ``value`` (None: is null), or any of a list of values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
    if not values:
        raise ValueError(f"where {name!r}: an empty list of values selects nothing")
    given = [v for v in values if v is not None]
    try:
        wanted = pa.array(given).cast(column.type) if given else None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise ValueError(
            f"where {name!r}: {given!r} cannot be compared with the column's {column.type} values"
        ) from None
    found = pc.is_in(column, value_set=wanted) if given else None
    if None in values:
        missing = pc.is_null(column)
        found = missing if found is None else pc.or_(found, missing)
    return found
