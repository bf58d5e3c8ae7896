"""The model hash, evaluation against the labels and the comparison sheet, on real
small stores written by the batch kernel."""

from __future__ import annotations

import hashlib
import json

import cv2
import pytest
from onnx_models import mean_model
from stores import build_store

import xraycore.predict
from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.predict import contract, evaluation
from xraycore.predict.contract import ModelContract, OnnxClassifier, model_sha256
from xraycore.predict.evaluation import evaluate_store
from xraycore.predict.report import comparison_sheet
from xraycore.store import ScanStore, columns, schema
from xraycore.train.baseline import write_splits


def test_model_sha256_is_the_files_and_the_classifiers_key(tmp_path):
    model = mean_model(tmp_path / "m.onnx", channels=1, size=32)
    expected = hashlib.sha256((tmp_path / "m.onnx").read_bytes()).hexdigest()
    assert model_sha256(model) == expected
    assert OnnxClassifier(
        model, ModelContract(channels=1, size=32, mean=(0,), std=(1,))
    ).sha256 == (expected)
    # One function, named where predictions are evaluated and by the package too.
    assert evaluation.model_sha256 is contract.model_sha256 is xraycore.predict.model_sha256
    with pytest.raises(ValueError, match=r"model .*nope\.onnx does not exist"):
        model_sha256(str(tmp_path / "nope.onnx"))


@pytest.fixture
def labelled(tmp_path) -> ScanStore:
    """Six phantoms (the odd ones labelled pneumonia) and one bad file, labelled too."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        cv2.imwrite(str(src / f"p{i}.png"), phantom_chest(48, seed=i))
    (src / "bad.png").write_bytes(b"not an image")
    labels = {f"p{i}.png": {"finding_pneumonia": bool(i % 2)} for i in range(6)}
    labels["bad.png"] = {"finding_pneumonia": True}
    return build_store(tmp_path / "store", src, PipelineSpec(size=32), batch_size=4, labels=labels)


def _predict(store: ScanStore, sha: str, labels: dict[str, str], *, rows=None) -> None:
    meta = {r["image_id"]: r for r in store.read_metadata().to_pylist()}
    store.commit_predictions(
        [
            columns.prediction_row(
                image_id=i,
                row=(rows or {}).get(i, meta[i]["row"] if meta[i]["row"] is not None else 0),
                score=0.9 if label == "pneumonia" else 0.1,
                label=label,
                model="m.onnx",
                model_sha256=sha,
                run_id="test",
            )
            for i, label in labels.items()
        ],
        run_id="test",
    )


def test_evaluation_counts_current_predictions_of_ok_labelled_rows(labelled, tmp_path):
    model = mean_model(tmp_path / "m.onnx", channels=1, size=32)
    sha = model_sha256(model)
    truth = {f"p{i}.png": "pneumonia" if i % 2 else "healthy" for i in range(6)}
    wrong = {**truth, "p0.png": "pneumonia"}  # one mistake
    # bad.png failed (its prediction is nobody's pixels); p5's is for another row (stale).
    unused = labelled.capacity() - 1  # no source's row
    assert unused not in {r["row"] for r in labelled.read_metadata().to_pylist()}
    _predict(labelled, sha, {**wrong, "bad.png": "pneumonia"}, rows={"p5.png": unused})
    _predict(labelled, "f" * 64, {i: "healthy" for i in truth})  # another model's
    report = evaluate_store(labelled, model, ModelContract())
    assert sum(map(sum, report["confusion_matrix"])) == 5  # p0..p4
    assert report["confusion_matrix"] == [[2, 1], [0, 2]]
    assert report["target"] == "finding_pneumonia" and report["split"] is None
    assert json.loads(labelled.storage.read_bytes(schema.REPORT)) == report
    assert labelled.storage.exists(schema.CONFUSION)


def test_evaluation_of_one_split_and_of_a_store_without_splits(labelled, tmp_path):
    model = mean_model(tmp_path / "m.onnx", channels=1, size=32)
    _predict(labelled, model_sha256(model), {f"p{i}.png": "healthy" for i in range(6)})
    contract_ = ModelContract()
    assert evaluate_store(labelled, model, contract_, split="test") is None  # no splits yet
    assert evaluate_store(labelled, model, contract_, target="finding_nodule") is None
    ids = labelled.read_metadata().column("image_id").to_pylist()
    write_splits(labelled, ["test" if i in ("p1.png", "p2.png") else "train" for i in ids], "s")
    report = evaluate_store(labelled, model, contract_, split="test")
    assert report["confusion_matrix"] == [[1, 0], [1, 0]] and report["split"] == "test"
    assert sum(map(sum, evaluate_store(labelled, model, contract_)["confusion_matrix"])) == 6


def test_comparison_sheet_shows_ok_rows_only(labelled, tmp_path):
    ok = [r["row"] for r in labelled.read_metadata().to_pylist() if r["status"] == "ok"]
    path = comparison_sheet(labelled, ok[:2], tmp_path / "sheet.png")
    assert cv2.imread(str(path)) is not None
    unused = labelled.capacity() - 1
    assert unused not in ok
    with pytest.raises(ValueError, match=rf"row {unused} is not an ok row of"):
        comparison_sheet(labelled, [ok[0], unused], tmp_path / "other.png")
