"""Model contract, ONNX scoring against a known function, report, splits, training."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from onnx_models import mean_model

from xraycore.image.synth import phantom_chest
from xraycore.predict.contract import (
    ModelContract,
    OnnxClassifier,
    classification_report,
    prepare_batch,
)
from xraycore.train.baseline import assign_splits, export_logistic_onnx, train_logistic


def test_contract_defaults_are_seed_000():
    c = ModelContract()
    assert (c.size, c.channels, c.threshold, c.output) == (256, 3, 0.5, "sigmoid")
    assert c.scale == pytest.approx(1 / 255) and c.labels == ("healthy", "pneumonia")


def test_prepare_batch_known_answer():
    scans = np.stack([np.full((512, 512), 255, np.uint8), np.zeros((512, 512), np.uint8)])
    x = prepare_batch(scans, ModelContract())
    assert x.shape == (2, 3, 256, 256) and x.dtype == np.float32
    assert np.allclose(x[0], 1.0) and np.allclose(x[1], 0.0)
    c = ModelContract(channels=1, mean=(0.5,), std=(0.25,), layout="NHWC", size=64)
    y = prepare_batch(scans, c)
    assert y.shape == (2, 64, 64, 1) and np.allclose(y[0], 2.0) and np.allclose(y[1], -2.0)


@pytest.mark.parametrize("softmax", [False, True])
def test_onnx_scores_equal_known_function(tmp_path, softmax):
    model = mean_model(tmp_path / "mean.onnx", softmax=softmax)
    contract = ModelContract(output="softmax2" if softmax else "sigmoid")
    clf = OnnxClassifier(model, contract)
    scans = np.stack([phantom_chest(300, seed=i) for i in range(3)])
    expected = prepare_batch(scans, contract).mean(axis=(1, 2, 3))
    assert np.allclose(clf.scores(scans), expected, atol=1e-6)
    labels = clf.labels(np.array([0.2, 0.7]))
    assert labels == ["healthy", "pneumonia"]


def test_sidecar_contract_and_errors(tmp_path):
    model = mean_model(tmp_path / "m.onnx", channels=1, size=64)
    (tmp_path / "m.onnx.json").write_text(json.dumps({"channels": 1, "size": 64, "threshold": 0.3}))
    c = ModelContract.for_model(model)
    assert (c.channels, c.size, c.threshold) == (1, 64, 0.3)
    assert ModelContract.for_model(model, threshold=0.9).threshold == 0.9
    with pytest.raises(ValueError, match="does not exist"):
        OnnxClassifier(str(tmp_path / "nope.onnx"))
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="cannot be loaded"):
        OnnxClassifier(str(tmp_path / "bad.onnx"), ModelContract())
    with pytest.raises(ValueError, match="contract says 2"):
        OnnxClassifier(
            model, ModelContract(channels=1, size=64, mean=(0,), std=(1,), output="softmax2")
        ).scores(np.zeros((1, 64, 64), np.uint8))
    for bad, match in [
        ({"channels": 2}, "channels"),
        ({"threshold": 2}, "threshold"),
        ({"output": "relu"}, "output"),
        ({"colour": 1}, "unknown keys"),
    ]:
        with pytest.raises(ValueError, match=match):
            ModelContract.from_dict(bad)


def test_classification_report_known_answer():
    y_true = ["a"] * 4 + ["b"] * 6
    y_pred = ["a", "a", "a", "b"] + ["b"] * 4 + ["a", "a"]
    r = classification_report(y_true, y_pred, ("a", "b"))
    assert r["confusion_matrix"] == [[3, 1], [2, 4]]
    assert r["accuracy"] == pytest.approx(0.7)
    assert r["a"]["precision"] == pytest.approx(3 / 5) and r["a"]["recall"] == pytest.approx(0.75)
    assert r["b"]["f1-score"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert r["weighted avg"]["recall"] == pytest.approx(0.7)
    assert r["macro avg"]["support"] == 10


def test_splits_group_patients_and_are_stable():
    n = 300
    table = pa.table(
        {
            "image_id": [f"{i:05d}.png" for i in range(n)],
            "patient_id": [str(i // 3) for i in range(n)],
            "status": ["ok"] * (n - 1) + ["failed"],
        }
    )
    splits = assign_splits(table, seed=1)
    by_patient: dict[str, set] = {}
    for p, s in zip(table.column("patient_id").to_pylist(), splits, strict=True):
        if s:
            by_patient.setdefault(p, set()).add(s)
    assert all(len(v) == 1 for v in by_patient.values())
    assert splits[-1] is None
    counts = {s: splits.count(s) for s in ("train", "validation", "test")}
    assert 180 < counts["train"] < 270 and counts["validation"] > 5 and counts["test"] > 5
    assert assign_splits(table, seed=1) == splits
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(table, fractions=(0.5, 0.5, 0.5))


def test_baseline_learns_opacity_and_onnx_matches_numpy(tmp_path):
    scans = np.stack([phantom_chest(256, seed=i, opacity=i % 2 == 1) for i in range(80)])
    y = np.array([i % 2 == 1 for i in range(80)])
    model = train_logistic(scans[:60], y[:60])
    path = tmp_path / "baseline.onnx"
    export_logistic_onnx(model, path)
    clf = OnnxClassifier(str(path))
    held_out = clf.scores(scans[60:])
    accuracy = np.mean((held_out > 0.5) == y[60:])
    assert accuracy >= 0.9, accuracy
    x = prepare_batch(scans[60:], model["contract"]).mean(axis=1)
    feats = x.reshape(20, 32, 8, 32, 8).mean(axis=(2, 4)).reshape(20, -1)
    numpy_scores = 1 / (1 + np.exp(-(feats @ model["weights"] + model["bias"])))
    assert np.allclose(held_out, numpy_scores, atol=1e-4)
    with pytest.raises(ValueError, match="single class"):
        train_logistic(scans[:4], np.zeros(4, bool))
