"""Classification end to end: run, split, train, classify, report; and the trigger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from real_data import DAMAGED

from xraycore.image.synth import phantom_chest
from xraycore.store import ScanStore


def _labels_csv(path: Path, entries: list[tuple[str, bool, str]]) -> Path:
    lines = [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"
    ]
    for name, positive, patient in entries:
        lines.append(f"{name},{'Pneumonia' if positive else 'No Finding'},0,{patient},40,F,PA")
    path.write_text("\n".join(lines) + "\n")
    return path


def _invoke(*args: str) -> str:
    """Run the installed ``xray`` console script, as a user does."""
    xray = Path(sys.executable).parent / "xray"
    res = subprocess.run(
        [str(xray), *args], capture_output=True, text=True, timeout=600, env=os.environ.copy()
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _predictions(store: Path) -> dict[str, dict]:
    return {r["image_id"]: r for r in ScanStore.open(str(store)).read_predictions().to_pylist()}


def test_run_split_train_classify_report_on_phantoms(tmp_path):
    src = tmp_path / "phantoms"
    src.mkdir()
    entries = []
    for i in range(60):  # 20 patients, 3 scans each; the odd scans carry an opacity
        name = f"p{i:03d}.png"
        cv2.imwrite(str(src / name), phantom_chest(256, seed=i, opacity=i % 2 == 1))
        entries.append((name, i % 2 == 1, str(i // 3)))
    labels = _labels_csv(tmp_path / "labels.csv", entries)
    store = tmp_path / "store"
    common = ["--size", "256", "--batch-size", "8", "--workers", "2"]
    _invoke("run", str(src), "--out", str(store), "--labels", str(labels), *common)
    _invoke("split", str(store), "--fractions", "0.6,0.2,0.2")
    model = tmp_path / "model.onnx"
    _invoke("train", str(store), "--target", "Pneumonia", "--out", str(model))
    assert json.loads(Path(str(model) + ".json").read_text())["labels"] == [
        "no pneumonia",
        "pneumonia",
    ]
    out = _invoke("classify", str(store), "--model", str(model), "--workers", "2")
    assert "scored 60 rows" in out and "accuracy" in out

    meta = {r["image_id"]: r for r in ScanStore.open(str(store)).read_metadata().to_pylist()}
    patients: dict[str, set] = {}
    for r in meta.values():
        patients.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in patients.values())  # no patient in two splits

    preds = _predictions(store)
    assert len(preds) == 60
    test_rows = [k for k, r in meta.items() if r["split"] in ("validation", "test")]
    assert len(test_rows) >= 6
    accuracy = np.mean(
        [(preds[k]["label"] == "pneumonia") == meta[k]["finding_pneumonia"] for k in test_rows]
    )
    assert accuracy >= 0.8, accuracy  # chance is 0.5

    report = json.loads((store / "classification_report.json").read_text())
    assert report["headline"] == "test" and list(report["splits"]) == [
        "test",
        "validation",
        "train",
    ]
    assert sum(f["rows"] for f in report["splits"].values()) == 60
    tested = sum(r["split"] == "test" for r in meta.values())
    assert sum(map(sum, report["confusion_matrix"])) == report["rows"] == tested
    assert out.index(f"test split: {tested} rows") < out.index("precision")
    assert (store / "confusion_matrix.png").stat().st_size > 1000

    # Classifying again scores nothing (every row has a prediction from this model);
    # scoring is incremental, never duplicated.
    versions = ScanStore.open(str(store)).predictions.current_version()
    out = _invoke("classify", str(store), "--model", str(model))
    assert "scored 0 rows" in out
    assert len(ScanStore.open(str(store)).read_predictions()) == 60
    assert ScanStore.open(str(store)).predictions.current_version() == versions  # no commit
    out = _invoke("classify", str(store), "--model", str(model), "--split", "validation")
    report = json.loads((store / "classification_report.json").read_text())
    assert list(report["splits"]) == ["validation"] and report["asked_split"] == "validation"
    assert "scored 0 rows" in out and "validation split: " in out

    # Scoring inside the run, batch by batch, gives the same predictions.
    store2 = tmp_path / "store2"
    out = _invoke(
        "run",
        str(src),
        "--out",
        str(store2),
        "--labels",
        str(labels),
        "--model",
        str(model),
        *common,
    )
    # A store of no splits: its rows the model was trained on (by image id) are not counted.
    trained = sum(r["split"] == "train" for r in meta.values())
    assert "accuracy" in out and (
        f"rows of no split: {60 - trained} rows ({trained} rows the model was trained or "
        "validated on are not counted)" in out
    )
    preds2 = _predictions(store2)
    assert preds2.keys() == preds.keys()
    for k in preds:
        assert preds2[k]["score"] == pytest.approx(preds[k]["score"], abs=1e-6)
        assert preds2[k]["label"] == preds[k]["label"]


def test_report_on_real_damaged_scans_agrees_with_predictions(tmp_path):
    files = sorted(DAMAGED.glob("*.jpg"))
    if len(files) != 100:
        pytest.skip(f"real damaged scans absent from {DAMAGED} (CI provides ../shared)")
    # Labels from the file names: im001-healthy.jpg ... im100-pneumonia.jpg.
    labels = _labels_csv(
        tmp_path / "labels.csv", [(f.name, "pneumonia" in f.name, f.stem[:5]) for f in files]
    )
    store = tmp_path / "store"
    _invoke(
        "run",
        str(DAMAGED),
        "--out",
        str(store),
        "--labels",
        str(labels),
        "--size",
        "256",
        "--batch-size",
        "25",
        "--workers",
        "2",
    )
    _invoke("split", str(store), "--fractions", "0.7,0.0,0.3")
    model = tmp_path / "model.onnx"
    _invoke("train", str(store), "--target", "Pneumonia", "--out", str(model))
    _invoke("classify", str(store), "--model", str(model), "--workers", "2")
    report = json.loads((store / "classification_report.json").read_text())
    meta = {r["image_id"]: r for r in ScanStore.open(str(store)).read_metadata().to_pylist()}
    preds = _predictions(store)
    assert len(preds) == 100
    cm = np.zeros((2, 2), int)
    order = report["labels"]
    tested = {k for k, r in meta.items() if r["split"] == "test"}
    for k, p in preds.items():
        if k in tested:  # the headline: the test split's figures
            cm[int(meta[k]["finding_pneumonia"]), order.index(p["label"])] += 1
    assert cm.tolist() == report["confusion_matrix"] and report["headline"] == "test"
    assert report["accuracy"] == pytest.approx(np.trace(cm) / len(tested))
    assert report[order[1]]["support"] == sum(meta[k]["finding_pneumonia"] for k in tested)
    assert sum(f["rows"] for f in report["splits"].values()) == 100
