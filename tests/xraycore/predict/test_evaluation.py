"""The model hash, evaluation against the labels and the comparison sheet, on real
small stores written by the batch kernel."""

from __future__ import annotations

import hashlib
import json
import re

import cv2
import numpy as np
import pytest
from onnx_models import mean_model
from stores import build_store, findings_store

import xraycore.predict
from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.predict import contract, evaluation
from xraycore.predict.contract import ModelContract, OnnxClassifier, model_sha256
from xraycore.predict.evaluation import evaluate_store
from xraycore.predict.report import comparison_sheet, report_text
from xraycore.store import ScanStore, columns, schema
from xraycore.train.baseline import write_splits
from xraycore.train.lineage import loader_settings, training_lineage
from xraycore.train.loader import ScanLoader, lineage_image_ids


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
    assert list(report["splits"]) == ["test"] and report["asked_split"] == "test"
    # No split asked: each split's figures, the test split's at the top level.
    report = evaluate_store(labelled, model, contract_)
    assert (report["headline"], report["split"], report["rows"]) == ("test", "test", 2)
    assert report["confusion_matrix"] == [[1, 0], [1, 0]]
    assert {g: f["rows"] for g, f in report["splits"].items()} == {"test": 2, "train": 4}
    picture = cv2.imdecode(
        np.frombuffer(labelled.storage.read_bytes(schema.CONFUSION), np.uint8), 1
    )
    assert picture.shape[1] == 2 * 400  # a panel per split, 4 inches at 100 dpi each
    assert report["splits"]["train"]["confusion_matrix"] == [[2, 0], [2, 0]]
    text = report_text(report)
    assert text.startswith("test split: 2 rows\n") and "precision" in text
    assert re.search(r"test split +2 +0\.500\n +train split +4 +0\.500", text), text


def test_a_row_the_model_was_trained_on_is_never_a_test_row(labelled, tmp_path):
    model = mean_model(tmp_path / "m.onnx", channels=1, size=32)
    _predict(labelled, model_sha256(model), {f"p{i}.png": "healthy" for i in range(6)})
    ids = labelled.read_metadata().column("image_id").to_pylist()
    write_splits(labelled, ["test" if i in ("p1.png", "p2.png") else "train" for i in ids], "s")
    trained = ModelContract(training={"store": "elsewhere", "rows_sha256": "0" * 64})
    with pytest.raises(ValueError, match=r"has a training lineage: give seen= its rows"):
        evaluate_store(labelled, model, trained)
    report = evaluate_store(labelled, model, trained, seen={"p1.png", "p3.png"})
    assert report["rows"] == 1 and report["confusion_matrix"] == [[1, 0], [0, 0]]  # p2 only
    assert report["splits"]["train"]["rows"] == 4  # p3 is a training row: counted there
    assert report["seen"] == {"rows": 2, "not_counted": {"test": 1}}
    assert "(1 rows the model was trained or validated on are not counted)" in report_text(report)


FINDINGS = ("finding_basal_opacity", "finding_cardiomegaly", "finding_nodule")


def test_each_splits_auroc_is_sklearns_and_lineage_rows_are_no_test_rows(tmp_path):
    """A model's lineage names the training and validation splits at one version; the
    store is split again since, 5 of those rows (3 trained on, 2 validation) now saying
    test: the test split's AUROC per finding is scikit-learn's on the test rows that
    the model never saw, and each other split's on its rows."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    url = findings_store(tmp_path, n=80, size=32)
    train, validation = (
        ScanLoader(url, split=s, targets=list(FINDINGS), batch_size=8, shuffle=False)
        for s in ("train", "validation")
    )
    training = training_lineage(
        train.store, train.image_ids, selection=train.selection, validation=validation,
        loader=loader_settings(train), arch="test", epochs=1, seed=0,
    )  # fmt: skip
    assert lineage_image_ids(None) == frozenset()
    seen = lineage_image_ids(training)
    assert seen == {*train.image_ids.tolist(), *validation.image_ids.tolist()}
    store = ScanStore.open(url)
    moved = {*train.image_ids[:3].tolist(), *validation.image_ids[:2].tolist()}
    meta = store.read_metadata().to_pylist()
    write_splits(store, ["test" if r["image_id"] in moved else r["split"] for r in meta], "again")
    assert lineage_image_ids(training) == seen  # the lineage's version, not the latest

    model = mean_model(tmp_path / "m.onnx", channels=1, size=32)
    rng = np.random.default_rng(3)
    ok = store.select().to_pylist()
    scores = {(r["image_id"], f): float(rng.random()) for r in ok for f in FINDINGS}
    store.commit_predictions(
        [
            columns.prediction_row(
                image_id=r["image_id"], row=r["row"], score=scores[r["image_id"], f],
                label="x", model="m.onnx", model_sha256=model_sha256(model), run_id="t",
                finding=f,
            )
            for r in ok
            for f in FINDINGS
        ],
        run_id="t",
    )  # fmt: skip
    thresholds = (0.3, 0.5, 0.7)
    contract_ = ModelContract(findings=FINDINGS, thresholds=thresholds, training=training)
    report = evaluate_store(store, model, contract_, seen=seen)

    def rows_of(split, *, unseen=False):
        return [r for r in ok if r["split"] == split and not (unseen and r["image_id"] in seen)]

    test_rows = rows_of("test", unseen=True)
    assert len(rows_of("test")) - len(test_rows) == 5
    expected = {"test": test_rows, "validation": rows_of("validation"), "train": rows_of("train")}
    assert report["headline"] == "test" and list(report["splits"]) == list(expected)
    for split, rows in expected.items():
        figures = report["splits"][split]
        for k, f in enumerate(FINDINGS):
            y = np.array([int(r[f]) for r in rows if r[f] in (0, 1)])
            s = np.array([scores[r["image_id"], f] for r in rows if r[f] in (0, 1)])
            got = figures["findings"][f]
            assert (got["support"], got["positives"]) == (len(y), int(y.sum())), (split, f)
            if len(set(y.tolist())) < 2:  # scikit-learn's is undefined; ours is null
                assert split != "test" and got["auroc"] is None, (split, f)
                continue
            assert got["auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)
            called = s > thresholds[k]
            assert got["sensitivity"] == pytest.approx(called[y == 1].mean())
            assert got["specificity"] == pytest.approx((~called[y == 0]).mean())
    assert report["findings"] == report["splits"]["test"]["findings"]
    assert report["mean_auroc"] == report["splits"]["test"]["mean_auroc"]

    def counted(rows):  # the rows with a label (0 or 1) in a finding: those counted
        return sum(any(r[f] in (0, 1) for f in FINDINGS) for r in rows)

    assert {g: f["rows"] for g, f in report["splits"].items()} == {
        g: counted(rows) for g, rows in expected.items()
    }
    moved_rows = [r for r in ok if r["image_id"] in moved]
    assert report["seen"] == {"rows": len(seen), "not_counted": {"test": counted(moved_rows)}}
    saved = json.loads(store.storage.read_bytes(schema.REPORT))
    assert saved == report and saved["format"] == 2 and "format 2" in saved["changes"]
    picture = cv2.imread(str(tmp_path / "store" / schema.ROC))
    assert picture.shape[1] == 3 * 500  # a panel per split, 5 inches at 100 dpi each
    text = report_text(report)
    assert text.startswith(f"test split: {counted(test_rows)} rows (") and "mean AUROC" in text
    assert "validation split" in text and "train split" in text


def test_comparison_sheet_shows_ok_rows_only(labelled, tmp_path):
    ok = [r["row"] for r in labelled.read_metadata().to_pylist() if r["status"] == "ok"]
    path = comparison_sheet(labelled, ok[:2], tmp_path / "sheet.png")
    assert cv2.imread(str(path)) is not None
    unused = labelled.capacity() - 1
    assert unused not in ok
    with pytest.raises(ValueError, match=rf"row {unused} is not an ok row of"):
        comparison_sheet(labelled, [ok[0], unused], tmp_path / "other.png")
