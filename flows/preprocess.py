"""``preprocess_dataset``: a folder or bucket of scans -> a Zarr + Parquet store."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event

from flows.classify import evaluation_report
from flows.cluster import DaskCluster, resolve_cluster
from flows.commits import GroupCommits
from flows.credentials import pseudonyms_from, with_block_credentials
from flows.dispatch import in_waves
from flows.progress import LOG_EVERY_S, notify
from flows.summary import RunSummary
from tasks.classify import commit_predictions, score_batch
from tasks.preprocess import commit_metadata, preprocess_batch
from xraycore.batch import Batch, Plan, plan_batches, plan_later_frames
from xraycore.image.pipeline import PipelineSpec
from xraycore.predict.contract import ModelContract
from xraycore.predict.report import sheet_png, sheet_thumbnail
from xraycore.sources.catalog import SourceFile, list_sources, read_labels
from xraycore.sources.header import Pseudonyms, refresh_headers
from xraycore.store import ScanStore
from xraycore.store.lease import DEFAULT_TTL_S, StoreLease
from xraycore.store.schema import SHEET
from xraycore.store.storage import Storage

__all__ = ["SHEET_ROWS", "Batches", "preprocess_dataset", "store_resource"]

SHEET_ROWS = 3


@flow(name="preprocess-dataset", log_prints=True)
def preprocess_dataset(
    source: str,
    store: str,
    labels: str | None = None,
    size: int | None = None,
    pipeline: str | dict | None = None,
    batch_size: int | None = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    model: str | None = None,
    contract: dict | None = None,
    cluster: str | dict[str, Any] | None = None,
    aws_credentials: str | None = None,
    sheet: bool = True,
    wait_for_lease: bool = False,
    break_lease: bool = False,
    lease_ttl_s: float = DEFAULT_TTL_S,
    pseudonym_key_block: str | None = None,
    refresh_header: bool = False,
) -> dict[str, Any]:
    """List the source, plan shard-aligned batches, process them on a Dask
    cluster, commit the metadata and publish a summary.

    First the run takes the store's lease (:mod:`xraycore.store.lease`): a store held
    by another run is refused (a ``LeaseHeldError`` naming it) unless
    ``wait_for_lease``; ``break_lease`` removes a lease whose holder is known to
    be dead. The lease is renewed while the run lasts and released when it ends.

    The cluster starts while the source is listed and planned. ``cluster`` is a
    scheduler address (``tcp://host:8786``), the name of a spec in
    ``deploy/clusters`` or a path to one, a mapping with ``address`` or
    ``cluster_class`` + ``cluster_kwargs`` (+ ``adapt_kwargs``), or None: the
    spec named by ``XRAY_DASK_CLUSTER``, else a LocalCluster of one worker
    process per core. With ``model`` (ONNX) each batch is scored as soon as it
    is committed. Credentials come from the environment, an AWS profile or the
    prefect-aws block named ``aws_credentials``, never from ``storage_options``.

    A DICOM's patient, study and series are stored as keyed pseudonyms
    (:mod:`xraycore.sources.header`): the key is the Prefect Secret block named
    ``pseudonym_key_block``, loaded inside the run, or each worker's
    ``XRAY_PSEUDONYM_KEY``; without one they are not stored, and the run says so.
    ``refresh_header`` fills the header columns of the DICOM rows stored before
    them from their headers (ranged reads; no pixel read or written).
    """
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:12]
    options = with_block_credentials(storage_options, aws_credentials)
    pseudonyms = pseudonyms_from(pseudonym_key_block)
    spec = PipelineSpec.load(pipeline, size=size)
    where = resolve_cluster(cluster)
    target = ScanStore.open(store, options)
    # One writer per store: taken before planning (two runs would plan the same rows).
    lease = _take_lease(target, run_id, lease_ttl_s, wait=wait_for_lease, force=break_lease)
    with lease:  # renewed while the run lasts, released however it ends
        batch_size = target.initialise(spec, batch_size=batch_size, overwrite=overwrite)
        with DaskCluster(where, delay_s=1.0) as dask_cluster:  # starts while we list and plan
            previous = target.read_metadata()  # read once: for the listing and the plan
            _check_key(previous, pseudonyms)
            sources = _list_sources(source, previous, options, started)
            table = read_labels(labels, options) if labels else None
            plan = _plan(target, sources, previous, spec, batch_size, labels=table)
            refreshed = _refresh(target, run_id, plan, pseudonyms, options) if refresh_header else 0
            if plan.batches:  # from here on only this run's committer may commit rows
                target.fence(run_id)
            # read once: every batch's scoring task gets the same contract
            scoring = ModelContract.for_model(model, options, **(contract or {})) if model else None
            if model and plan.batches:
                target.open_classification(run_id)
            client, dashboard = _connect(dask_cluster, plan)
            run = Batches(
                store=store,
                spec=spec.to_dict(),
                run_id=run_id,
                options=options,
                commits=_committer(target, run_id, spec.hash),
                pseudonyms=pseudonyms if pseudonym_key_block else None,
            )
            work = {"client": client, "lease": lease, "batch_size": batch_size, "model": model}
            run.process(plan, contract=scoring, **work)
            # the files that the batches found to hold several frames: their later frames
            later = _plan_later_frames(target, run, batch_size, labels=table, previous=previous)
            if later.batches:
                run.process(later, contract=scoring, **work)
            lease.check()  # a run that lost its lease (broken, taken over) must not compact
            rows = _commit(target, store, run_id, options, spec.hash, client)
        report = _evaluate(target, run, model, scoring) if model else None
        summary = _summary(run, [plan, later], spec, sources, rows, started, dashboard, report)
        summary.store_version = target.version
        summary.headers_refreshed = refreshed
        _publish(summary, target, run.sample(SHEET_ROWS) if sheet else [], options)
        run.raise_for_broken()
        return summary.to_dict()


def _list_sources(
    source: str, previous: Any, options: dict[str, Any] | None, started: float
) -> list:
    """The scans under ``source``, announced with the seconds since the run started;
    files the store's metadata (``previous``) knows unchanged are not read, and
    a new DICOM file's frames are counted by the batch that reads it."""
    sources = list_sources(Storage.from_url(source, options), previous, count_frames=False)
    notify("listed", inputs=len(sources), seconds=time.perf_counter() - started)
    return sources


def _plan(
    target: ScanStore,
    sources: list,
    previous: Any,
    spec: PipelineSpec,
    batch_size: int,
    *,
    labels: dict | None,
) -> Plan:
    """The shard-aligned batches of the scans the store does not hold yet (or
    failed before), with room for them in the store's arrays."""
    plan = plan_batches(
        sources,
        previous,
        pipeline_hash=spec.hash,
        first_free_row=target.capacity(),
        batch_size=batch_size,
        labels=labels,
    )
    if plan.batches:
        target.check_columns(previous)
    target.ensure_capacity(plan.end_row)
    images = sum(len(b.items) for b in plan.batches)
    notify(
        "planned",
        new=plan.new,
        retried=plan.retried,
        skipped=plan.skipped,
        batches=len(plan.batches),
        images=images,
    )
    return plan


def _check_key(previous: Any, pseudonyms: Pseudonyms | None) -> None:
    """Say (once, a warning) when the store's pseudonyms were made with another
    key than this run's: new scans of its patients would not join them."""
    if previous is None or pseudonyms is None:
        return
    import pyarrow.compute as pc

    stored = set(pc.unique(previous["pseudonym_key"]).drop_null().to_pylist())
    if stored and pseudonyms.key_id not in stored:
        notify("other_key", key_id=pseudonyms.key_id, stored=sorted(stored))


def _refresh(
    target: ScanStore,
    run_id: str,
    plan: Plan,
    pseudonyms: Pseudonyms | None,
    options: dict[str, Any] | None,
) -> int:
    """Fill the header columns of the stored DICOM rows that this run does not
    process again (a version of kind ``header``); the rows filled."""
    processed = {s.uri for b in plan.batches for s in b.items}
    filled, unkeyed = refresh_headers(
        target,
        run_id=run_id,
        pseudonyms=pseudonyms,
        source_options=options,
        skip=processed,
    )
    if unkeyed:
        notify("unkeyed")
    notify("headers", rows=filled)
    return filled


def _plan_later_frames(
    target: ScanStore, run: Batches, batch_size: int, *, labels: dict | None, previous: Any
) -> Plan:
    """The batches of the later frames of the files the run's batches found to
    hold several (their frame 0 is stored), with room for them in the store's
    arrays."""
    plan = plan_later_frames(
        run.found_frames,
        first_free_row=target.capacity(),
        batch_size=batch_size,
        labels=labels,
        previous=previous,
    )
    if plan.batches:
        target.ensure_capacity(plan.end_row)
        images = sum(len(b.items) for b in plan.batches)
        notify("later_frames", files=len(run.found_frames), images=images)
    return plan


def _committer(target: ScanStore, run_id: str, pipeline_hash: str) -> GroupCommits:
    """The run's one committer of its batches' metadata files, fenced by its lease."""

    def commit(files: list, group: int, replacing: list[str]) -> bool:
        return target.commit_row_files(
            files,
            run_id=run_id,
            group=group,
            fence=run_id,
            replacing=replacing,
            pipeline_hash=pipeline_hash,
        )

    return GroupCommits(commit)


def _connect(dask_cluster: DaskCluster, plan: Plan) -> tuple[Any, str | None]:
    """The cluster's client and dashboard once it has a worker; (None, None) for a
    plan with nothing to do (its workers never start)."""
    if not plan.batches:
        return None, None
    client = dask_cluster.client()
    dashboard = dask_cluster.dashboard_link
    notify("cluster", workers=dask_cluster.workers, dashboard=dashboard)
    return client, dashboard


def _commit(
    target: ScanStore,
    store: str,
    run_id: str,
    options: dict[str, Any] | None,
    pipeline_hash: str,
    client: Any,
) -> int:
    """Commit the run's end and remove what killed writers left (on the cluster:
    the steps whose memory grows with the run and its history), and announce it
    (a Prefect event); the store's rows."""
    rows = commit_metadata(store, run_id, options, pipeline_hash, client=client)
    notify("committed", rows=rows)
    emit_event(
        event="xray.run.committed",
        resource=store_resource(store),
        payload={"store": store, "run_id": run_id, "rows": rows, "version": target.version},
    )
    return rows


def _summary(
    run: Batches,
    plans: list[Plan],
    spec: PipelineSpec,
    sources: list,
    rows: int,
    started: float,
    dashboard: str | None,
    report: dict | None,
) -> RunSummary:
    """What the run did, as the flow returns it (and the CLI prints)."""
    elapsed = time.perf_counter() - started
    return RunSummary(
        run_id=run.run_id,
        flow_run=_flow_run("name"),
        flow_run_id=_flow_run("id"),
        store=run.store,
        pipeline_hash=spec.hash,
        inputs=len(sources) + sum(p.new for p in plans[1:]),  # + the later frames
        ok=run.ok,
        failed=run.failed,
        skipped=plans[0].skipped,
        batches=sum(len(p.batches) for p in plans),
        broken_batches=run.broken,
        rows_in_store=rows,
        seconds=elapsed,
        images_per_s=(run.ok + run.failed) / elapsed if elapsed > 0 else 0.0,
        failures=run.failures,
        dashboard=dashboard,
        report=report,
        scored=run.scored,
    )


def store_resource(store: str) -> dict[str, str]:
    """The Prefect event resource of a store."""
    return {"prefect.resource.id": f"xray.store.{store}", "prefect.resource.name": store}


def _take_lease(
    target: ScanStore, run_id: str, ttl_s: float, *, wait: bool, force: bool
) -> StoreLease:
    """The store's lease for this run, waiting for (``wait``) or breaking (``force``)
    another run's."""
    name = _flow_run("name")
    lease = StoreLease.acquire(
        target.storage,
        run_id,
        ttl_s=ttl_s,
        wait=wait,
        break_existing=force,
        description=f"flow run {name!r}" if name else "",
        on_wait=lambda held: notify(
            "waiting", run_id=held.run_id, holder=held.holder, since=held.acquired_at.isoformat()
        ),
    )
    if lease.taken_over:
        held, why = lease.taken_over
        notify("lease_taken_over", run_id=held.run_id, holder=held.holder, reason=why)
    return lease


@dataclass
class Batches:
    """The batches of one run on the cluster, and what came back from them."""

    store: str
    spec: dict[str, Any]
    run_id: str
    options: dict[str, Any] | None
    #: The run's one committer of the files its batches write.
    commits: GroupCommits
    #: The key of the DICOM headers' pseudonyms when a block gave it (else each
    #: worker's environment's).
    pseudonyms: Pseudonyms | None = None
    #: Rows whose header named a patient, study or series no key pseudonymised.
    unkeyed: int = 0
    ok: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    broken: list[tuple[int, str]] = field(default_factory=list)
    scored: int = 0
    committed: int = 0  # batches
    #: The first rows this run wrote (for the comparison sheet), at most SHEET_ROWS.
    first_rows: list[int] = field(default_factory=list)
    #: Files listed without a frame count that hold several: (input, frames).
    found_frames: list[tuple[SourceFile, int]] = field(default_factory=list)
    prediction_groups: int = 0

    def sample(self, n: int) -> list[int]:
        """The first ``n`` rows this run wrote (``n`` <= :data:`SHEET_ROWS`)."""
        return self.first_rows[:n]

    def _count(self, batch: Batch, result: dict[str, Any]) -> None:
        """Keep what the summary needs of a committed batch's result, and drop the
        rest: a run of a million inputs holds counters, not every batch's rows."""
        self.found_frames += [(batch.items[slot], n) for slot, n in result.get("frames", ())]
        self.ok += result["ok"]
        self.failed += result["failed"]
        self.failures += result["failures"]
        self.committed += 1
        if result.get("unkeyed") and not self.unkeyed:
            notify("unkeyed")
        self.unkeyed += result.get("unkeyed", 0)
        self.first_rows = sorted([*self.first_rows, *result["rows"]])[:SHEET_ROWS]

    def process(
        self,
        plan: Plan,
        client: Any,
        *,
        lease: StoreLease,
        batch_size: int,
        model: str | None,
        contract: ModelContract | None,
    ) -> None:
        """Run the plan's batches in waves (a few per worker in flight); the run's
        committer (:attr:`commits`) commits the files they write in groups, and
        each committed batch is announced (a Prefect event) and, with a model,
        scored on the same cluster. The predictions are committed once the
        scoring is done."""
        total = sum(len(b.items) for b in plan.batches)
        progress = create_progress_artifact(
            progress=0.0,
            key="preprocess-progress",
            description=f"Images processed (% of {total}) into {self.store}",
        )
        workers = len(client.scheduler_info(n_workers=-1)["workers"]) if client else 1
        done, t0, shown = 0, time.perf_counter(), 0.0
        scoring: list[tuple[Any, Batch, list]] = []

        def submit(batch: Batch) -> Any:
            return preprocess_batch.submit(
                batch,
                store=self.store,
                spec=self.spec,
                run_id=self.run_id,
                storage_options=self.options,
                source_options=self.options,
                pseudonyms=self.pseudonyms,
                client=client,
            )

        def committed() -> None:  # the group of pending batches, committed now
            lease.check()  # a run that lost its lease commits nothing more
            for batch, result in self.commits.flush():
                self._count(batch, result)
                emit_event(
                    event="xray.batch.committed",
                    resource=store_resource(self.store),
                    payload={"store": self.store, "start": batch.start, "rows": result["rows"]},
                )
                if model and result["items"]:
                    future = self._score(
                        result["items"], batch.start // batch_size, model, contract, client
                    )
                    scoring.append((future, batch, result["items"]))

        # lease.check: stop handing out rows once another run holds the store
        waves = in_waves(
            plan.batches, submit, window=max(4, 2 * workers), before_submit=lease.check
        )
        for batch, result, error in waves:
            if error is not None:
                self.broken.append((batch.start, f"{type(error).__name__}: {error}"))
                get_run_logger().error(
                    "batch from row %d failed after retries: %s", batch.start, error
                )
            else:
                self.commits.add((batch, result), result.pop("table_file"), batch.replacing)
            if self.commits.due():
                committed()
            done += len(batch.items)
            elapsed = max(time.perf_counter() - t0, 1e-9)
            notify(
                "batch",
                done=done,
                total=total,
                failed=self.failed,
                batches_done=self.committed + len(self.commits.pending) + len(self.broken),
                batches=len(plan.batches),
                rate=done / elapsed,
            )
            if elapsed - shown >= LOG_EVERY_S or done == total:  # one API call per 2 s at most
                shown = elapsed
                update_progress_artifact(progress, progress=100.0 * done / max(total, 1))
        committed()
        self._commit_predictions(scoring)

    def _commit_predictions(self, scoring: list[tuple[Any, Batch, list]]) -> None:
        """Wait for the scoring tasks and commit the prediction files they wrote
        in one version (merged on the images of batches that replaced rows)."""
        files, replacing = [], []
        for future, batch, items in scoring:
            try:
                result = future.result()
            except Exception as exc:  # unscored rows are picked up by the next scoring run
                get_run_logger().error("scoring failed: %s", exc)
                continue
            if result.get("table_file") is not None:
                files.append(result["table_file"])
                if batch.replacing:
                    replacing += [image_id for _, image_id in items]
            self.scored += result["rows"]
        if files:
            self.prediction_groups += 1
            ScanStore.open(self.store, self.options).commit_prediction_files(
                files, run_id=self.run_id, group=self.prediction_groups, replacing=replacing
            )

    def _score(
        self, items: list, batch: int, model: str, contract: ModelContract, client: Any
    ) -> Any:
        """Submit the scoring of a committed batch's rows (on the same cluster)."""
        return score_batch.submit(
            items,
            batch=batch,
            store=self.store,
            model=model,
            contract=contract.to_dict(),
            run_id=self.run_id,
            storage_options=self.options,
            commit=False,
            client=client,
        )

    def raise_for_broken(self) -> None:
        """Fail the run when a batch failed after its retries: a rerun resumes it."""
        if self.broken:
            start, error = self.broken[0]
            raise RuntimeError(
                f"{len(self.broken)} batch(es) failed after retries (first: rows from {start}: "
                f"{error}); their inputs have no rows yet. Rerun the same command to resume."
            )


def _evaluate(target: ScanStore, run: Batches, model: str, contract: ModelContract) -> dict | None:
    """Commit the run's predictions and write the classification report."""
    commit_predictions(run.store, run.run_id, run.options)
    report = evaluation_report(target, model, contract, options=run.options)
    notify("scored", rows=run.scored)
    return report


def _publish(
    summary: RunSummary, target: ScanStore, sample: list[int], options: dict | None
) -> None:
    """The run's artifacts: the sample sheet beside the store, failures, the summary."""
    thumbnail = None
    if sample:
        try:
            png = sheet_png(target, sample, source_options=options)
            target.storage.write_bytes_atomic(SHEET, png)
        except Exception as exc:  # a picture is a nicety: never fail a run for it
            get_run_logger().warning(
                "comparison sheet not written: %s: %s", type(exc).__name__, exc
            )
        else:
            summary.sheet = target.storage.uri(SHEET)
            thumbnail = sheet_thumbnail(png)
    if summary.failures:
        create_table_artifact(
            key="preprocess-failures",
            table=[{"image_id": i, "error": e} for i, e in summary.failures],
            description="Inputs that could not be processed (retried on the next run)",
        )
    create_markdown_artifact(
        key="preprocess-summary",
        markdown=summary.markdown(thumbnail=thumbnail),
        description=f"preprocess_dataset into {summary.store}",
    )


def _flow_run(attribute: str) -> str | None:
    try:
        from prefect.runtime import flow_run

        value = getattr(flow_run, attribute)
        return str(value) if value else None
    except Exception:  # outside a flow run
        return None
