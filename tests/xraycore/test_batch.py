"""plan_batches against real small stores: what a rerun skips, retries and adds,
where its rows start, and the labels that reach the metadata."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import cv2
import pytest
from onnx_models import mean_model
from stores import build_store

from xraycore.batch import Plan, classify_rows, plan_batches
from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.predict.contract import ModelContract, model_sha256
from xraycore.sources.catalog import SourceFile, list_sources, read_labels
from xraycore.store import ScanStore, columns
from xraycore.store.storage import Storage

SPEC = PipelineSpec(size=32)
BATCH = 4


def _scans(folder: Path, n: int, *, first: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        cv2.imwrite(str(folder / f"p{i}.png"), phantom_chest(48, seed=i))


def _listing(folder: Path) -> list[SourceFile]:
    return list_sources(Storage.from_url(str(folder)))


def _replan(store: ScanStore, folder: Path, spec: PipelineSpec = SPEC) -> Plan:
    """The plan the next run over ``folder`` makes for ``store``."""
    return plan_batches(
        _listing(folder),
        store.read_metadata(),
        pipeline_hash=spec.hash,
        first_free_row=store.capacity(),
        batch_size=BATCH,
    )


def _planned(plan: Plan) -> list[str]:
    return [s.image_id for b in plan.batches for s in b.items]


@pytest.fixture
def done(tmp_path) -> tuple[Path, ScanStore]:
    """Six scans and one bad file, processed: six ok rows, one failed, capacity 8."""
    src = tmp_path / "src"
    _scans(src, 6)
    (src / "bad.png").write_bytes(b"not an image")
    store = build_store(tmp_path / "store", src, SPEC, batch_size=BATCH)
    status = {r["image_id"]: r["status"] for r in store.read_metadata().to_pylist()}
    assert status == {**{f"p{i}.png": "ok" for i in range(6)}, "bad.png": "failed"}
    assert store.capacity() == 8
    return src, store


def test_a_fresh_plan_takes_every_source_in_order_in_batches_from_row_zero(tmp_path):
    _scans(tmp_path / "src", 6)
    sources = _listing(tmp_path / "src")
    plan = plan_batches(sources, None, pipeline_hash=SPEC.hash, first_free_row=0, batch_size=4)
    assert [b.start for b in plan.batches] == [0, 4]
    assert [len(b.items) for b in plan.batches] == [4, 2]
    assert _planned(plan) == [s.image_id for s in sources]
    assert (plan.new, plan.retried, plan.skipped, plan.end_row) == (6, 0, 0, 8)
    assert all(b.labels == () for b in plan.batches)  # no labels given, none joined


def test_a_second_plan_after_processing_skips_every_ok_source(done):
    src, store = done
    (src / "bad.png").unlink()
    plan = _replan(store, src)
    assert plan.batches == [] and plan.skipped == 6
    assert (plan.new, plan.retried) == (0, 0)
    assert plan.end_row == store.capacity()  # nothing to do: the store does not grow


def test_a_failed_row_is_planned_again_and_counted_as_retried(done):
    src, store = done
    plan = _replan(store, src)
    assert _planned(plan) == ["bad.png"]
    assert (plan.skipped, plan.retried, plan.new) == (6, 1, 0)
    # Fixed in the source, the next run writes it on a fresh row and it is ok.
    cv2.imwrite(str(src / "bad.png"), phantom_chest(48, seed=99))
    build_store(store.storage.url, src, SPEC, batch_size=BATCH, run_id="fix")
    row = {r["image_id"]: r for r in store.read_metadata().to_pylist()}["bad.png"]
    assert row["status"] == "ok" and row["row"] == 8 and row["run_id"] == "fix"


def test_a_changed_pipeline_plans_every_ok_row_again(done):
    src, store = done
    other = PipelineSpec(size=40)
    assert other.hash != SPEC.hash
    plan = _replan(store, src, other)
    assert sorted(_planned(plan)) == sorted(s.image_id for s in _listing(src))
    assert (plan.skipped, plan.retried, plan.new) == (0, 7, 0)


@pytest.mark.parametrize("change", ["size", "mtime"])
def test_a_source_whose_size_or_mtime_changed_is_planned_again(done, change):
    src, store = done
    (src / "bad.png").unlink()
    path = src / "p3.png"
    if change == "size":
        cv2.imwrite(str(path), phantom_chest(64, seed=3))  # another scan under the same name
    else:
        st = path.stat()
        os.utime(path, (st.st_atime, st.st_mtime + 60))  # touched, bytes the same
    plan = _replan(store, src)
    assert _planned(plan) == ["p3.png"]
    assert (plan.skipped, plan.retried, plan.new) == (5, 1, 0)


def test_new_sources_start_at_the_batch_boundary_after_the_first_free_row(done):
    src, store = done
    (src / "bad.png").unlink()
    _scans(src, 5, first=6)
    plan = _replan(store, src)
    assert [b.start for b in plan.batches] == [8, 12]
    assert _planned(plan) == sorted(f"p{i}.png" for i in range(6, 11))  # listing order
    assert (plan.skipped, plan.retried, plan.new, plan.end_row) == (6, 0, 5, 16)


@pytest.mark.parametrize(("first_free_row", "start"), [(0, 0), (1, 4), (4, 4), (5, 8), (7, 8)])
def test_the_first_batch_is_rounded_up_to_a_multiple_of_the_batch_size(
    tmp_path, first_free_row, start
):
    _scans(tmp_path / "src", 5)
    plan = plan_batches(
        _listing(tmp_path / "src"),
        None,
        pipeline_hash=SPEC.hash,
        first_free_row=first_free_row,
        batch_size=BATCH,
    )
    assert [b.start for b in plan.batches] == [start, start + BATCH]
    assert plan.end_row == start + 2 * BATCH


def test_a_run_killed_before_its_commit_resumes_from_the_parts_it_left(tmp_path):
    """Batch parts written but never compacted count as done for the next plan."""
    _scans(tmp_path / "src", 6)
    store = build_store(tmp_path / "store", tmp_path / "src", SPEC, batch_size=BATCH, compact=False)
    plan = _replan(store, tmp_path / "src")
    assert plan.batches == [] and plan.skipped == 6


def test_labels_keyed_by_file_name_reach_the_metadata_rows(tmp_path):
    src = tmp_path / "src"
    _scans(src, 2)
    _scans(src / "sub", 1, first=2)  # id sub/p2.png, labelled by its file name p2.png
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position\n"
        "p0.png,Cardiomegaly|Effusion,0,11,58,M,PA\n"
        "p2.png,No Finding,3,12,33,F,AP\n"
    )
    labels = read_labels(str(csv))
    plan = plan_batches(
        _listing(src), None, pipeline_hash=SPEC.hash, first_free_row=0, batch_size=BATCH,
        labels=labels,
    )  # fmt: skip
    assert [s.image_id for s in plan.batches[0].items] == ["p0.png", "p1.png", "sub/p2.png"]
    assert plan.batches[0].labels == (labels["p0.png"], None, labels["p2.png"])

    store = build_store(tmp_path / "store", src, SPEC, batch_size=BATCH, labels=labels)
    rows = {r["image_id"]: r for r in store.read_metadata().to_pylist()}
    assert rows["p0.png"]["finding_labels"] == ["Cardiomegaly", "Effusion"]
    assert rows["p0.png"]["finding_cardiomegaly"] is True
    assert rows["p0.png"]["finding_no_finding"] is False
    assert rows["p0.png"]["patient_id"] == "11" and rows["p0.png"]["view_position"] == "PA"
    assert rows["sub/p2.png"]["finding_labels"] == ["No Finding"]
    assert rows["sub/p2.png"]["follow_up"] == 3 and rows["sub/p2.png"]["patient_age"] == 33
    assert rows["sub/p2.png"]["patient_gender"] == "F"
    assert not rows["p1.png"]["finding_labels"]  # no label row: nothing joined
    assert all(r["status"] == "ok" for r in rows.values())


def test_a_prediction_row_has_every_column_of_the_schema():
    row = columns.prediction_row(
        image_id="p0.png", row=3, score=0.75, label="pneumonia", model="m.onnx",
        model_sha256="a" * 64, run_id="r",
    )  # fmt: skip
    assert list(row) == list(columns.PREDICTION_COLUMNS)
    assert (row["row"], row["score"], row["label"]) == (3, 0.75, "pneumonia")
    assert row["classified_at"].tzinfo is not None
    then = datetime(2026, 1, 1, tzinfo=UTC)
    assert columns.prediction_row(**{**row, "classified_at": then})["classified_at"] == then


def test_classify_rows_commits_schema_rows_keyed_by_the_model_file(done, tmp_path):
    _, store = done
    model = mean_model(tmp_path / "m.onnx", channels=1, size=32)
    contract = ModelContract(channels=1, size=32, mean=(0.0,), std=(1.0,), threshold=0.0)
    items = [(r["row"], r["image_id"]) for r in store.select().to_pylist()]
    counts = classify_rows(
        items, store=store.storage.url, model=model, contract=contract.to_dict(), run_id="c1"
    )
    assert counts == {"rows": 6, "positive": 6}  # every mean is above a threshold of 0
    preds = store.read_predictions()
    assert preds.column_names == list(columns.PREDICTION_COLUMNS)
    scored = zip(preds["row"].to_pylist(), preds["image_id"].to_pylist(), strict=True)
    assert sorted(scored) == sorted(items)
    assert set(preds["model_sha256"].to_pylist()) == {model_sha256(model)}
    assert set(preds["label"].to_pylist()) == {"pneumonia"}
