"""``xray inspect``, ``verify``, ``sheet`` and ``split``: reading a store, checking
and repairing it, drawing a few of its rows, and writing its splits."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from xray_cli.exits import fail
from xray_cli.options import StorageOptions, cluster_value, parse_storage_options

__all__ = ["PROBLEMS_SHOWN", "inspect", "open_store", "sheet", "split", "verify"]

#: Problems ``xray verify`` prints before "... and N more".
PROBLEMS_SHOWN = 20


def open_store(store: str, storage_options: str | None, version: int | None = None):
    """The store at ``store`` (at ``version``) and its attributes; exit 2 when
    there is none, when it is of another format, when that version is not kept,
    or when it cannot be opened (one ``error:`` line)."""
    from xraycore.store import ScanStore
    from xraycore.store.schema import IMAGES

    try:
        st = ScanStore.open(store, parse_storage_options(storage_options), version=version)
        info = st.info()
    except ValueError as exc:  # another format (with how to rebuild), bad options
        fail(str(exc), 2)
    if info is None:
        fail(f"{store} is not a store (no {IMAGES})", 2)
    return st, info


def inspect(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    version: Annotated[
        int | None, typer.Option(help="Read the store as it was at this version (xray log).")
    ] = None,
    storage_options: StorageOptions = None,
) -> None:
    """Print a store's summary and its failed rows."""
    from xraycore.store import select_rows

    st, info = open_store(store, storage_options, version)
    meta = st.read_metadata()  # read once: the ok rows and the others come from it
    ok = 0 if meta is None else select_rows(meta, url=store, empty_ok=True).num_rows
    failed = [] if meta is None else [r for r in meta.to_pylist() if r["status"] != "ok"]
    typer.echo(
        f"store {store}: pipeline {info['pipeline_hash']}, size {info['size']}, "
        f"shards of {info['shard_size']}, arrays {', '.join(info['arrays'])}"
    )
    rows = 0 if meta is None else meta.num_rows
    typer.echo(f"version: {st.version}" + (" (read-only)" if st.read_only else " (latest)"))
    typer.echo(f"rows: {rows} ({ok} ok, {len(failed)} failed), array capacity {st.capacity()}")
    if meta is not None:
        for line in _who_and_what(meta):
            typer.echo(line)
    for r in failed:
        typer.echo(f"  failed {r['image_id']}: {r['error']}")


def _who_and_what(meta) -> list[str]:
    """The patients (by pseudonym or a labels file's id) and views of the rows,
    counted: never a header's own identifier, which the store does not hold."""
    from collections import Counter

    lines = []
    patients = Counter(v for v in meta.column("patient_id").to_pylist() if v is not None)
    if patients:
        shown = ", ".join(f"{p} ({n})" for p, n in patients.most_common(3))
        more = f", ... ({len(patients) - 3} more)" if len(patients) > 3 else ""
        lines.append(f"patients: {len(patients)}, most scans: {shown}{more}")
    views = Counter(meta.column("view_position").to_pylist())
    if any(v is not None for v in views):
        lines.append(
            "views: " + ", ".join(f"{v or 'none'} {n}" for v, n in sorted(views.items(), key=str))
        )
    return lines


@contextlib.contextmanager
def _executor(scheduler: str | None, workers: int | None):
    """Where verify reads shards: a Dask cluster's executor, or threads here (None)."""
    if not (scheduler or workers):
        yield None
        return
    from flows.cluster import DaskCluster, resolve_cluster

    with DaskCluster(resolve_cluster(cluster_value(None, scheduler, workers))) as cluster:
        yield cluster.client().get_executor()


def verify(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    repair: Annotated[
        bool,
        typer.Option(help="Mark bad rows failed (the next run redoes them); merge leftovers."),
    ] = False,
    deep: Annotated[bool, typer.Option(help="Read every array, not only preprocessed.")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Check shards on a LocalCluster of N processes.")
    ] = None,
    scheduler: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    storage_options: StorageOptions = None,
) -> None:
    """Re-read STORE and report rows whose pixels are missing, unreadable or differ
    from their checksum, orphaned or shared rows, duplicate sources, and parts or a
    lease left by a killed run. Exit 1 when anything is wrong."""
    from xraycore.store.verify import verify_store

    st, _ = open_store(store, storage_options)
    try:
        with _executor(scheduler, workers) as executor:
            report = verify_store(st, executor=executor, deep=deep)
    except ValueError as exc:
        fail(str(exc), 2)
    typer.echo(report.summary())
    if report.writer:
        typer.echo(f"note: {report.writer}; its batches not yet committed are not checked")
    for problem in report.problems[:PROBLEMS_SHOWN]:
        typer.echo(f"  {problem}")
    if len(report.problems) > PROBLEMS_SHOWN:
        typer.echo(f"  ... and {len(report.problems) - PROBLEMS_SHOWN} more")
    if report.clean:
        return
    if repair:
        _repair(st, report)
    raise typer.Exit(1)


def _repair(st, report) -> None:
    """``verify --repair``: mark the bad rows failed, remove leftovers."""
    import uuid

    from xraycore.store.lease import LeaseHeldError
    from xraycore.store.verify import repair_store

    try:
        done = repair_store(st, report, run_id=f"verify-{uuid.uuid4().hex[:8]}")
    except LeaseHeldError as exc:
        fail(str(exc), 2)
    typer.echo(
        f"repaired: {done['rows']} rows marked failed (the next `xray run` redoes them), "
        f"{done['files']} temporary or untracked files removed"
    )


def sheet(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    rows: Annotated[
        str | None,
        typer.Option(help="Comma-separated row numbers (default: the first 3 ok rows)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("sheet.png"),
    storage_options: StorageOptions = None,
) -> None:
    """Write the comparison picture (original + filters) for a few rows."""
    from xraycore.predict.report import comparison_sheet

    st, _ = open_store(store, storage_options)
    if rows is None:
        try:
            ok = st.select(empty_ok=True)["row"].to_pylist()  # in row order
        except ValueError:  # no metadata yet
            ok = []
        if not ok:
            fail(f"{store} has no ok rows to show", 2)
        wanted = ok[:3]
    else:
        try:
            wanted = [int(r) for r in rows.split(",") if r.strip()]
        except ValueError:
            raise typer.BadParameter(
                f"--rows must be comma-separated integers, got {rows!r}"
            ) from None
    try:
        path = comparison_sheet(
            st, wanted, out, source_options=parse_storage_options(storage_options)
        )
    except ValueError as exc:
        fail(str(exc), 2)
    typer.echo(f"picture: {path.resolve()}")


def split(
    store: Annotated[str, typer.Argument(help="Store URL.")],
    fractions: Annotated[str, typer.Option(help="train,validation,test")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seed of the patient assignment.")] = 0,
    storage_options: StorageOptions = None,
) -> None:
    """Write patient-grouped train/validation/test splits into the metadata."""
    import uuid

    from xraycore.store.lease import LeaseHeldError, StoreLease
    from xraycore.train.baseline import assign_splits, write_splits

    try:
        parts = tuple(float(f) for f in fractions.split(","))
    except ValueError:
        raise typer.BadParameter(f"--fractions must be three numbers, got {fractions!r}") from None
    st, _ = open_store(store, storage_options)
    meta = st.read_metadata()
    if meta is None:
        fail(f"{store} has no metadata", 2)
    run_id = uuid.uuid4().hex[:12]
    try:
        with StoreLease.acquire(st.storage, run_id, description="xray split"):
            meta = st.read_metadata()  # under the lease: no run changes it now
            splits = assign_splits(meta, fractions=parts, seed=seed)
            write_splits(st, splits, run_id)
    except (ValueError, LeaseHeldError) as exc:
        fail(str(exc), 2)
    counts = {k: splits.count(k) for k in ("train", "validation", "test")}
    typer.echo(f"splits written to {store}: {counts}")
