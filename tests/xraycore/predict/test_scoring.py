"""Which rows a model still has to score: real stores written by the batch kernel."""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
import pytest
from stores import build_store

from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.predict.scoring import batch_groups, unscored_rows
from xraycore.store import ScanStore, columns


def test_batch_groups_split_on_batch_boundaries_in_row_order():
    items = [(9, "j"), (0, "a"), (3, "d"), (4, "e"), (8, "i")]
    assert batch_groups(items, 4) == [[(0, "a"), (3, "d")], [(4, "e")], [(8, "i"), (9, "j")]]
    assert batch_groups([], 4) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        batch_groups(items, 0)


@pytest.fixture
def store(tmp_path) -> ScanStore:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        cv2.imwrite(str(src / f"p{i}.png"), phantom_chest(64, seed=i))
    (src / "bad.png").write_bytes(b"not an image")
    return build_store(tmp_path / "store", src, PipelineSpec(size=32), batch_size=4, run_id="r1")


def _predict(store: ScanStore, items, sha: str, part: str) -> None:
    now = datetime.now(UTC)
    store.commit_predictions(
        [
            columns.prediction_row(image_id=i, row=r, score=0.5, label="x", model="m.onnx",
                                  model_sha256=sha, run_id=part, classified_at=now)
            for r, i in items
        ],
        run_id=part,
    )  # fmt: skip


def test_unscored_rows_are_ok_rows_without_a_prediction_from_this_model(store):
    meta = store.read_metadata().to_pylist()
    ok = sorted((r["row"], r["image_id"]) for r in meta if r["status"] == "ok")
    assert len(ok) == 6 and all(r["image_id"] != "bad.png" for r in meta if r["row"] is not None)
    assert unscored_rows(store, "a" * 64) == ok  # nothing scored: every ok row, failed none

    _predict(store, ok[:4], "a" * 64, "first")
    assert unscored_rows(store, "a" * 64) == ok[4:]
    assert unscored_rows(store, "b" * 64) == ok  # another model has scored nothing
    assert unscored_rows(store, "a" * 64, rows=[ok[0][0], ok[5][0]]) == [ok[5]]

    # Scoring again (a repeated trigger) replaces, and nothing is left.
    _predict(store, ok, "a" * 64, "second")
    assert unscored_rows(store, "a" * 64) == []
    store.finish_classification("c")
    assert unscored_rows(store, "a" * 64) == []
    assert store.read_predictions().num_rows == 6
