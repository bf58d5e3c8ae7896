"""``xray train``: the DenseNet-121 from a store to a model ``xray classify`` and the
report take unchanged; the NumPy baseline without torch; the errors a user meets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from commands import xray as _xray
from stores import labelled_store

from xraycore.predict.contract import ModelContract
from xraycore.store import ScanStore
from xraycore.train.loader import ScanLoader

# Run as if torch were not installed: the import fails as it would. The process
# ends as the console script's does (end_process), or an Arrow thread may abort it.
WITHOUT_TORCH = (
    "import sys\n"
    "sys.modules['torch'] = None\n"
    "from xray_cli.exits import end_process\n"
    "from xray_cli.main import run_command\n"
    "code = run_command(sys.argv[1:])\n"
    "loaded = [m for m, v in sys.modules.items() if v and m.split('.')[0] in ('torch', 'monai')]\n"
    "if loaded:\n"
    "    print(f'loaded without torch: {loaded}', file=sys.stderr)\n"
    "end_process(3 if loaded else code)\n"
)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return labelled_store(tmp_path_factory.mktemp("train"), n=32, size=96)


def test_densenet121_trains_exports_and_classify_reports_on_it(store, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("monai")
    from xraycore.train.cnn import build_network, cnn_scores, load_checkpoint

    model = tmp_path / "densenet.onnx"
    res = _xray(
        "train", store, "--arch", "densenet121", "--target", "finding_pneumonia",
        "--size", "64", "--batch-size", "4", "--max-steps", "3", "--out", str(model),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert (
        lines[0].startswith("training densenet121 on split 'train'")
        and "cpu, fp32, 64x64" in lines[0]
    )
    assert lines[1].startswith("epoch 1/1: loss ") and "(3 steps," in lines[1]
    assert "validation loss" in lines[1] and "mean AUROC" in lines[1]
    assert "on 8 scans (pneumonia " in lines[1]
    assert lines[2].startswith("trained densenet121 for 3 steps on 12 scans")
    contract = json.loads(Path(f"{model}.json").read_text())
    assert contract["size"] == 64 and contract["labels"] == ["no pneumonia", "pneumonia"]
    assert model.with_suffix(".pt").is_file()
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    training = contract["training"]
    assert training["store_version"] == ScanStore.open(store).version
    assert (training["arch"], training["rows"], training["epochs"]) == ("densenet121", 24, 1)
    assert training["selection"]["split"] == "train"
    assert training["selection"]["targets"] == ["finding_pneumonia"]
    assert training["validation"]["rows"] == 8
    assert ScanLoader.from_lineage(training).image_ids.size == 24

    res = _xray("classify", store, "--model", str(model))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "scored 32 rows" in res.stdout
    for column in ("precision", "recall", "f1-score", "support", "accuracy"):
        assert column in res.stdout
    report = json.loads((Path(store) / "classification_report.json").read_text())
    assert report["target"] == "finding_pneumonia"
    assert report["labels"] == ["no pneumonia", "pneumonia"]
    assert {"precision", "recall", "f1-score"} <= report["pneumonia"].keys()
    # No test split: the validation split heads the report, each split's figures after it.
    assert (report["headline"], report["rows"]) == ("validation", 8)
    assert np.asarray(report["confusion_matrix"]).sum() == 8
    assert {g: f["rows"] for g, f in report["splits"].items()} == {"validation": 8, "train": 24}
    assert report["model_training"]["rows_sha256"] == training["rows_sha256"]
    assert report["model_training"]["store_version"] == training["store_version"]
    assert (Path(store) / "confusion_matrix.png").stat().st_size > 1000

    # What classify stored is what the trained network, loaded from its weights, gives.
    predictions = ScanStore.open(store).read_predictions().to_pylist()
    rows = [p["row"] for p in predictions]
    network = build_network()
    load_checkpoint(network, model.with_suffix(".pt"))
    scans = ScanStore.open(store).read("preprocessed", rows)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = cnn_scores(network, scans, ModelContract.from_dict(contract))
    finally:
        torch.set_num_threads(threads)
    assert {p["training_rows_sha256"] for p in predictions} == {training["rows_sha256"]}
    assert {p["training_store_version"] for p in predictions} == {training["store_version"]}
    got = np.array([p["score"] for p in predictions])
    assert np.abs(got - expected).max() < 1e-4


def test_the_cnn_flags_default_to_train_configs_defaults():
    """The command line writes TrainConfig's defaults as its own (it imports no
    xraycore module before a command runs): they must agree."""
    import dataclasses
    import inspect

    from xray_cli.train import CNN_ONLY, train
    from xraycore.train.config import TrainConfig

    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert set(CNN_ONLY) <= set(fields)
    flags = inspect.signature(train).parameters
    shared = [name for name in flags if name in fields and name != "arch"]  # logistic's default
    assert len(shared) == len(CNN_ONLY) + 3, shared  # and target, split, where
    assert {name: flags[name].default for name in shared} == {name: fields[name] for name in shared}


def test_a_missing_weights_file_is_one_clear_line(store, tmp_path):
    pytest.importorskip("torch")
    res = _xray(
        "train", store, "--arch", "densenet121", "--target", "Pneumonia",
        "--weights", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "m.onnx"),
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"error: weights file {tmp_path / 'absent.pt'} does not exist"
    ]
    assert not (tmp_path / "m.onnx").exists()


def test_without_torch_densenet121_says_what_to_install_and_the_baseline_trains(store, tmp_path):
    res = _xray(
        "train", store, "--arch", "densenet121", "--target", "Pneumonia",
        "--out", str(tmp_path / "cnn.onnx"), code=WITHOUT_TORCH,
    )  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith("error: ") and line.endswith("pip install 'xray-pipeline[torch]'")
    assert not (tmp_path / "cnn.onnx").exists()

    res = _xray(
        "train", store, "--target", "finding_pneumonia", "--size", "64",
        "--out", str(tmp_path / "baseline.onnx"), code=WITHOUT_TORCH,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "trained on 24 scans (12 positive)" in res.stdout
    contract = json.loads((tmp_path / "baseline.onnx.json").read_text())
    assert contract["size"] == 64 and contract["labels"] == ["no pneumonia", "pneumonia"]


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--epochs", "2"], "--epochs only apply to a CNN"),
        (["--max-steps", "1", "--weights", "w.pt"], "--max-steps, --weights only apply to a CNN"),
        (["--split", "test"], "single class|at least two images"),
    ],
)
def test_baseline_refuses_what_it_cannot_use(store, tmp_path, flags, match):
    res = _xray(
        "train", store, "--target", "Pneumonia", "--out", str(tmp_path / "m.onnx"), *flags,
        code=WITHOUT_TORCH,
    )  # fmt: skip
    assert res.returncode == 2
    assert len(res.stderr.splitlines()) == 1
    assert re.search(match, res.stderr), res.stderr


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--arch", "resnet50"], "--arch must be logistic or one of densenet121, got 'resnet50'"),
        (["--arch", "densenet121", "--device", "tpu"], "device must be one of"),
        (["--arch", "densenet121", "--precision", "fp8"], "precision must be one of"),
    ],
)
def test_unknown_names_are_refused_before_any_work(store, tmp_path, flags, match):
    res = _xray(
        "train", store, "--target", "Pneumonia", "--out", str(tmp_path / "m.onnx"), *flags,
        code=WITHOUT_TORCH,
    )  # fmt: skip
    assert res.returncode == 2
    (line,) = res.stderr.splitlines()
    assert match in line, line
    assert res.stdout == ""


def test_a_two_word_finding_names_its_column(tmp_path):
    """The labels catalog and ``--target`` name a finding's column with one function:
    "Pleural Thickening" is ``finding_pleural_thickening`` on both sides."""
    from stores import build_store, png_files

    from xraycore.image.pipeline import PipelineSpec
    from xraycore.image.synth import phantom_chest
    from xraycore.sources.catalog import read_labels
    from xraycore.train.baseline import write_splits

    images = [phantom_chest(64, seed=i) // 2 + (128 if i % 2 else 0) for i in range(16)]
    (tmp_path / "scans").mkdir()
    paths = png_files(tmp_path / "scans", [image.astype(np.uint8) for image in images])
    csv = tmp_path / "Data_Entry_2017.csv"
    lines = ["Image Index,Finding Labels,Patient ID"]
    lines += [
        f"{p.name},{'Pleural Thickening|Effusion' if i % 2 else 'No Finding'},{i}"
        for i, p in enumerate(paths)
    ]
    csv.write_text("\n".join(lines) + "\n")
    labels = read_labels(str(csv))
    assert labels[paths[1].name]["finding_pleural_thickening"] is True
    assert labels[paths[0].name]["finding_no_finding"] is True
    url = str(tmp_path / "store")
    store = build_store(url, paths, PipelineSpec(size=64, enhance=(), outputs=()), batch_size=16,
                        labels=labels)  # fmt: skip
    write_splits(store, ["train"] * 16, "split")
    for target, column in (("Pleural Thickening", "pleural_thickening"),
                           ("No Finding", "no_finding")):  # fmt: skip
        out = tmp_path / f"{column}.onnx"
        res = _xray("train", url, "--target", target, "--size", "64", "--out", str(out))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "trained on 16 scans (8 positive)" in res.stdout
        contract = json.loads(out.with_name(out.name + ".json").read_text())
        assert contract["labels"] == [f"no {column}", column]


def test_where_selects_any_of_its_values_and_the_lineage_records_it(store, tmp_path):
    out = tmp_path / "frontal.onnx"
    res = _xray(
        "train", store, "--target", "Pneumonia", "--out", str(out),
        "--where", "view_position=PA,AP", code=WITHOUT_TORCH,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    training = json.loads(Path(f"{out}.json").read_text())["training"]
    assert training["selection"]["where"] == {"view_position": ["PA", "AP"]}
    st = ScanStore.open(store)
    frontal = st.select(split="train", where={"view_position": ["PA", "AP"]})
    assert training["rows"] == frontal.num_rows
    assert 0 < frontal.num_rows < st.select(split="train").num_rows
    assert set(frontal["view_position"].to_pylist()) == {"PA", "AP"}
    bad = _xray("train", store, "--target", "Pneumonia", "--out", str(out), "--where", "PA",
                code=WITHOUT_TORCH)  # fmt: skip
    assert bad.returncode == 2 and "COLUMN=VALUE" in bad.stderr
