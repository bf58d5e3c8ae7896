"""Several findings at once: the masked, weighted loss; per-finding AUROC and the
best epoch exported; the transfer-learning recipe's frozen stage; checkpoints that
resume a killed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from stores import findings_store

from xraycore.store import ScanStore
from xraycore.train import cnn
from xraycore.train.cnn import TrainConfig, cnn_contract

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
sklearn_metrics = pytest.importorskip("sklearn.metrics")

SIZE = 32
FINDINGS = ("finding_basal_opacity", "finding_cardiomegaly", "finding_nodule")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return findings_store(tmp_path_factory.mktemp("findings"), n=60, size=SIZE)


@pytest.fixture(scope="module")
def trained(store):
    epochs = []
    config = TrainConfig(
        targets="findings", contract=cnn_contract(SIZE), batch_size=12, epochs=3, device="cpu"
    )
    model = cnn.train_cnn(store, config, on_epoch=epochs.append)
    return model, epochs


def test_masked_weighted_loss_is_the_formula():
    from xraycore.train._schedule import masked_bce

    rng = np.random.default_rng(0)
    logits, y = rng.normal(size=(6, 3)), (rng.random((6, 3)) < 0.4).astype(np.float32)
    mask = rng.random((6, 3)) < 0.7
    w = np.array([2.0, 0.5, 4.0])
    p = 1 / (1 + np.exp(-logits))
    each = -(w * y * np.log(p) + (1 - y) * np.log(1 - p))
    want = (each * mask).sum() / mask.sum()
    got = masked_bce(*(torch.tensor(a) for a in (logits, y, mask, w)))
    assert abs(float(got) - want) < 1e-6  # y and the mask in float32


def test_every_finding_is_scored_each_epoch(trained):
    model, epochs = trained
    assert model.contract.findings == FINDINGS and len(model.contract.thresholds) == 3
    assert [e.epoch for e in epochs] == [1, 2, 3]
    for e in epochs:
        assert tuple(e.validation_auroc) == FINDINGS
        assert e.validation_mean_auroc == pytest.approx(
            np.nanmean(list(e.validation_auroc.values()))
        )


def _validation_labels(table, name: str) -> np.ndarray:
    """A finding's labels, NaN where missing (uncertain -1 and missing do not count)."""
    return np.array([v if v is not None else np.nan for v in table[name].to_pylist()], float)


def test_the_exported_model_is_the_best_epoch_when_the_last_is_worse(store, tmp_path):
    """Two epochs of the head at 1e-2, then every layer at 10 (the transfer-learning
    recipe's schedule made to blow up): the last epoch is ruined, an earlier one is
    not. The exported ONNX file, run by onnxruntime, scores the validation split as
    the best epoch did (scikit-learn's AUROC), not as the last did."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from xraycore.predict.contract import ModelContract, prepare_batch

    epochs = []
    config = TrainConfig(
        targets="findings",
        contract=cnn_contract(SIZE),
        batch_size=12,
        epochs=3,
        lr=1e-2,
        freeze_epochs=2,
        finetune_lr=10.0,
        device="cpu",
    )
    model = cnn.train_cnn(store, config, on_epoch=epochs.append)
    means = [e.validation_mean_auroc for e in epochs]
    # Measured once: 0.703, 0.472, 0.500 (after the blow-up every score is NaN,
    # which xraycore's AUROC counts as ties).
    assert means[-1] < max(means[:-1]) - 0.1, means
    assert model.best_epoch == int(np.argmax(means)) + 1 < 3, (model.best_epoch, means)
    path = cnn.export_cnn_onnx(model, tmp_path / "best.onnx")

    s = ScanStore.open(store)
    rows = s.select(split="validation")
    scans = s.read("preprocessed", rows["row"].to_pylist())
    contract = ModelContract.for_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (scores,) = session.run(["score"], {"input": prepare_batch(scans, contract)})
    assert scores.shape == (rows.num_rows, 3)
    # The blown-up epoch's network scores NaN: the exported one must not be it.
    assert np.isfinite(scores).all(), "the exported model scores NaN: the last epoch's weights"
    best, last = epochs[model.best_epoch - 1], epochs[-1]
    got = {}
    for k, name in enumerate(FINDINGS):
        labels = _validation_labels(rows, name)
        known = labels >= 0
        got[name] = sklearn_metrics.roc_auc_score(labels[known], scores[known, k])
    assert got == pytest.approx(best.validation_auroc, abs=1e-6)
    assert got != pytest.approx(last.validation_auroc, abs=1e-3)


def test_positives_are_weighted_by_the_train_splits_negatives(store):
    from xraycore.train.loader import ScanLoader

    loader = ScanLoader(store, batch_size=4, split="train", targets="findings")
    table = ScanStore.open(store).select(split="train")
    for k, name in enumerate(loader.target_names):
        values = table[name].to_pylist()
        assert loader.positives[k] == values.count(1) and loader.negatives[k] == values.count(0)


def test_stage_one_moves_only_the_head(store):
    initial = cnn.build_network(seed=0, outputs=3).state_dict()
    config = TrainConfig(
        targets="findings",
        contract=cnn_contract(SIZE),
        batch_size=12,
        epochs=1,
        freeze_epochs=1,
        device="cpu",
    )
    model = cnn.train_cnn(store, config)
    after = model.network.state_dict()
    backbone = [k for k in after if k.startswith("features.")]
    head = [k for k in after if k.startswith("class_layers.")]
    assert backbone and head
    # Weights and batch-norm statistics alike, as Keras's trainable = False keeps them.
    assert all(torch.equal(after[k], initial[k]) for k in backbone)
    assert any(not torch.equal(after[k], initial[k]) for k in head)


def _train_command(store: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "xray_cli",
        "train",
        store,
        "--arch",
        "densenet121",
        "--targets",
        "all",
        "--size",
        str(SIZE),
        "--batch-size",
        "6",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--checkpoint-steps",
        "1",
        *extra,
    ]


def _steps(folder: Path) -> int:
    try:
        return int(torch.load(folder / "last.pt", weights_only=True)["step"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def test_a_killed_run_resumed_ends_with_the_uninterrupted_weights(store, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    whole = tmp_path / "whole" / "model.onnx"
    whole.parent.mkdir()
    subprocess.run(_train_command(store, whole), check=True, env=env, capture_output=True)
    # 36 training scans in batches of 6: 6 steps an epoch. Kill the second run for
    # real (SIGKILL, no cleanup) once it has checkpointed step 3, inside epoch 1.
    cut = tmp_path / "cut" / "model.onnx"
    cut.parent.mkdir()
    proc = subprocess.Popen(
        _train_command(store, cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while _steps(cut.parent / "checkpoints") < 3 and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _steps(cut.parent / "checkpoints")
    assert 3 <= killed_at < 12, killed_at
    assert not (cut.parent / "model.pt").exists()  # it never finished
    done = subprocess.run(
        _train_command(store, cut, "--resume"), env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    # Training is deterministic: a resume that ignored last.pt and trained from step 0
    # would end with the same weights. What shows it went on from the killed step:
    # it says it resumed at that step, and its 12 steps in all are that many before
    # plus 12 - killed_at of its own (from step 0, or from the wrong batch, they are not).
    summary = done.stdout.splitlines()[-1]
    assert summary.startswith(
        f"trained densenet121 for 12 steps ({12 - killed_at} in this run, resumed at step "
        f"{killed_at})"
    ), done.stdout
    a = torch.load(whole.with_suffix(".pt"), weights_only=True)
    b = torch.load(cut.with_suffix(".pt"), weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][
        :3
    ]
    last = torch.load(cut.parent / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 12 and last["loader"]["epoch"] == 2 and last["loader"]["batches"] == 0


def test_resume_refuses_a_checkpoint_of_other_settings(store, tmp_path):
    folder = tmp_path / "checkpoints"
    args = dict(targets="findings", contract=cnn_contract(SIZE), batch_size=12, device="cpu")
    cnn.train_cnn(store, TrainConfig(**args, max_steps=1, checkpoints=folder, checkpoint_steps=1))
    assert (folder / "last.pt").is_file()
    with pytest.raises(ValueError, match=r"other settings: .*lr 0.001 \(now 0.01\)"):
        cnn.train_cnn(store, TrainConfig(**args, lr=0.01, checkpoints=folder, resume=True))
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        cnn.train_cnn(store, TrainConfig(**args, checkpoints=tmp_path / "none", resume=True))
    resume = TrainConfig(**args, checkpoints=folder, resume=True)
    # Rows of another store version (the lineage beside the configuration).
    state = torch.load(folder / "last.pt", weights_only=True)
    version = state["lineage"]["store_version"]
    moved = {**state["lineage"], "store_version": version + 1}
    torch.save({**state, "lineage": moved}, folder / "last.pt")
    with pytest.raises(ValueError, match=rf"store_version {version + 1} \(now {version}\)$"):
        cnn.train_cnn(store, resume)
    # A checkpoint written before TrainConfig (format 1: a dict of some settings).
    old = {k: v for k, v in state.items() if k not in ("format", "lineage")}
    torch.save({**old, "config": {"arch": "densenet121", "lr": 0.001}}, folder / "last.pt")
    with pytest.raises(ValueError, match="format 1, written by an earlier xray train") as info:
        cnn.train_cnn(store, resume)
    assert "train again without --resume" in str(info.value) and "\n" not in str(info.value)


def test_classify_stores_a_score_per_finding_and_the_report_is_sklearns(trained, store, tmp_path):
    import json

    from xraycore.batch import classify_rows
    from xraycore.predict.contract import ModelContract
    from xraycore.predict.evaluation import evaluate_store
    from xraycore.predict.report import report_text
    from xraycore.train.loader import lineage_image_ids

    model, _ = trained
    path = cnn.export_cnn_onnx(model, tmp_path / "findings.onnx")
    contract = ModelContract.for_model(str(path))
    assert contract.findings == FINDINGS and contract.thresholds == model.contract.thresholds
    s = ScanStore.open(store)
    ok = s.select()
    items = list(zip(ok["row"].to_pylist(), ok["image_id"].to_pylist(), strict=True))
    assert classify_rows(items, store=store, model=str(path), run_id="r")["rows"] == len(items)
    preds = s.read_predictions()
    assert preds.num_rows == 3 * len(items)
    assert sorted(set(preds["finding"].to_pylist())) == list(FINDINGS)
    seen = lineage_image_ids(contract.training)  # the training and validation splits
    report = evaluate_store(s, str(path), contract, seen=seen)
    saved = json.loads((Path(store) / "classification_report.json").read_text())
    assert saved["kind"] == "findings" and saved["findings"] == report["findings"]
    assert (Path(store) / "roc_curves.png").stat().st_size > 1000
    # The training split's 36 scans hold both classes of every finding (the test
    # split's 12 no nodule); tests/xraycore/predict/test_evaluation.py checks the test split's.
    figures = report["splits"]["train"]
    test = {r["image_id"]: r for r in ok.to_pylist() if r["split"] == "train"}
    aucs = []
    for k, name in enumerate(FINDINGS):
        pairs = [
            (test[p["image_id"]][name], p["score"])
            for p in preds.to_pylist()
            if p["finding"] == name and p["image_id"] in test
        ]
        y = np.array([v for v, _ in pairs if v in (0, 1)])
        score = np.array([sc for v, sc in pairs if v in (0, 1)])
        got = figures["findings"][name]
        assert got["support"] == len(y) and got["positives"] == int(y.sum())
        auc = sklearn_metrics.roc_auc_score(y, score)
        assert got["auroc"] == pytest.approx(auc, abs=1e-12)
        called = score > contract.thresholds[k]
        assert got["threshold"] == contract.thresholds[k]
        assert got["sensitivity"] == pytest.approx(called[y == 1].mean())
        assert got["specificity"] == pytest.approx((~called[y == 0]).mean())
        aucs.append(auc)
    assert figures["mean_auroc"] == pytest.approx(np.mean(aucs))
    assert "mean AUROC" in report_text(report) and "cardiomegaly" in report_text(report)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_roc_curve_equal_sklearn_with_ties(seed):
    from xraycore.predict.roc import roc_auc, roc_curve

    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.2
    scores = np.round(rng.random(300) + 0.3 * y, 1)  # rounded: many ties
    assert roc_auc(y, scores) == pytest.approx(sklearn_metrics.roc_auc_score(y, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, scores)
    want_fpr, want_tpr, _ = sklearn_metrics.roc_curve(y, scores, drop_intermediate=False)
    assert np.allclose(fpr, want_fpr) and np.allclose(tpr, want_tpr)
    assert np.isnan(roc_auc(np.zeros(4), np.arange(4.0)))


def test_densenet_learns_planted_findings_well_above_chance(tmp_path):
    """The shortened benchmarks/bench_findings.py: 200 phantoms at 64x64, 4 epochs.
    The benchmark (300 scans, 4 epochs) reaches a test mean AUROC of 0.999."""
    from xraycore.predict.roc import roc_auc

    url = findings_store(tmp_path, n=200, size=64, seed=1)
    config = TrainConfig(
        targets="findings", contract=cnn_contract(64), epochs=4, batch_size=16, device="cpu"
    )
    model = cnn.train_cnn(url, config)
    s = ScanStore.open(url)
    test = s.select(split="test")
    scores = cnn.cnn_scores(
        model.network, s.read("preprocessed", test["row"].to_pylist()), model.contract
    )
    aucs = []
    for k, name in enumerate(model.contract.findings):
        y = np.array([-1 if v is None else v for v in test[name].to_pylist()])
        aucs.append(roc_auc(y[y >= 0], scores[y >= 0, k]))
    # Measured once (seed 1): 0.944, 0.968, 1.000, mean 0.971, in 20 s on one thread;
    # 2 epochs of 150 scans were not enough (basal opacity 0.30).
    assert np.mean(aucs) > 0.7, aucs
