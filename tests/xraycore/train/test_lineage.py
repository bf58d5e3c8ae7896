"""A trained model's lineage rebuilds its training rows exactly, however the store
has moved on since: grown by a run, re-split, a source file changed and processed
again."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from commands import xray as _xray
from stores import build_store, labelled_store

from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.store import ScanStore, VersionRemovedError
from xraycore.store.versions import vacuum_store
from xraycore.train.baseline import write_splits
from xraycore.train.lineage import LINEAGE_KEYS, rows_sha256
from xraycore.train.loader import ScanLoader


def _order(loader: ScanLoader, epochs: int = 2) -> list[list[str]]:
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out.append([str(i) for b in loader for i in b["image_id"]])
    return out


def test_rows_sha256_is_the_sorted_ids_joined_by_newlines():
    import hashlib

    assert rows_sha256(["b.png", "a.png#1"]) == hashlib.sha256(b"a.png#1\nb.png").hexdigest()


def test_a_model_trained_at_version_k_gets_its_rows_back_after_the_store_moved_on(tmp_path):
    url = labelled_store(tmp_path / "s", n=16, size=64)
    model = tmp_path / "model.onnx"
    res = _xray("train", url, "--target", "finding_pneumonia", "--size", "64", "--out", str(model))
    assert res.returncode == 0, res.stdout + res.stderr
    training = json.loads(Path(f"{model}.json").read_text())["training"]
    assert set(LINEAGE_KEYS) <= set(training)
    version = ScanStore.open(url).version
    assert training["store_version"] == version and training["arch"] == "logistic"
    assert training["selection"] == {"split": "train", "where": None, "target": "finding_pneumonia"}
    at_k = ScanLoader(url, batch_size=4, split="train", target="finding_pneumonia", seed=3)
    seen = _order(at_k)
    ids = sorted(at_k.image_ids.tolist())
    assert training["rows"] == len(ids) == 12 and training["rows_sha256"] == rows_sha256(ids)
    pixels = {i: ScanStore.open(url).read("preprocessed", int(r)) for i, r in zip(
        at_k.image_ids, at_k.rows, strict=True)}  # fmt: skip

    # The store moves on: a run adds files and processes a changed one again,
    # and the splits are written anew (every row moves to train).
    scans = Path(url).parent / "scans"
    changed = sorted(scans.iterdir())[0]
    cv2.imwrite(str(changed), phantom_chest(64, seed=77))
    os.utime(changed, (time.time() + 10, time.time() + 10))
    for i in range(4):
        cv2.imwrite(str(scans / f"new{i}.png"), phantom_chest(64, seed=50 + i))
    spec = PipelineSpec(size=64, enhance=(), outputs=())
    store = build_store(url, scans, spec, batch_size=16, run_id="later")
    write_splits(store, ["train"] * store.read_metadata().num_rows, "resplit")
    assert store.version > version
    now = ScanLoader(url, batch_size=4, split="train", target="finding_pneumonia", seed=3)
    assert rows_sha256(now.image_ids.tolist()) != training["rows_sha256"]

    # The baseline read its rows in row order: the lineage says so (no shuffle).
    again = ScanLoader.from_lineage(training)
    assert again.version == version and not again.shuffle
    assert sorted(again.image_ids.tolist()) == ids
    for batch in again:
        for i, image in zip(batch["image_id"], batch["preprocessed"], strict=True):
            np.testing.assert_array_equal(image, pixels[str(i)])  # the pixels it trained on

    # A shuffled loader's lineage gives the same order, epoch by epoch.
    from xraycore.train.lineage import loader_settings, training_lineage

    shuffled = training_lineage(
        at_k.store, at_k.image_ids, selection=at_k.selection, loader=loader_settings(at_k),
        arch="densenet121", epochs=2, seed=3,
    )  # fmt: skip
    assert _order(ScanLoader.from_lineage(shuffled)) == seen

    # Once the version is vacuumed away, the lineage is refused, saying why.
    vacuum_store(store, keep=1)
    with pytest.raises(VersionRemovedError, match="removed by xray vacuum"):
        ScanLoader.from_lineage(training)


def _first_loss(loader: ScanLoader, contract, *, seed: int) -> float:
    """The untrained network's (seeded as training seeds it) loss on the first batch
    of ``loader``'s epoch 0, in train mode as a training step computes it."""
    import torch

    from xraycore.train._run import prepare_tensors
    from xraycore.train._schedule import masked_bce
    from xraycore.train.cnn import build_network

    loader.set_epoch(0)
    x, y, mask = prepare_tensors(next(iter(loader)), contract=contract)
    network = build_network(seed=seed, outputs=1)
    network.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return float(masked_bce(network(x).float(), y, mask, None))
    finally:
        torch.set_num_threads(threads)


def test_the_lineage_xray_train_wrote_gives_the_order_it_trained_in(tmp_path):
    """The CNN's lineage, as ``xray train`` wrote it, rebuilds the order its rows
    were read in: a loader made from the command's flags (seed 7, batches of 5, not
    the defaults) reads that order, and the first step learnt from its first batch
    (that step's loss, kept in last.pt, is the untrained network's on it)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("monai")
    from xraycore.predict.contract import ModelContract

    url = labelled_store(tmp_path / "s", n=16, size=64)
    model = tmp_path / "model.onnx"
    cnn = ["--arch", "densenet121", "--size", "32", "--device", "cpu", "--no-balance"]
    flags = ["--batch-size", "5", "--seed", "7", "--max-steps", "1", "--out", str(model)]
    res = _xray("train", url, "--target", "finding_pneumonia", *cnn, *flags)
    assert res.returncode == 0, res.stdout + res.stderr
    contract = ModelContract.from_dict(json.loads(Path(f"{model}.json").read_text()))
    training = contract.training

    recorded = ScanLoader.from_lineage(training)
    seen = _order(recorded)
    args = dict(batch_size=5, split="train", targets=["finding_pneumonia"])
    assert seen == _order(ScanLoader(url, **args, seed=7))
    other = ScanLoader(url, **args, seed=0)
    assert seen != _order(other)  # the seed decides the order: this check can fail
    assert training["rows"] == len(seen[0]) == 12
    assert training["rows_sha256"] == rows_sha256(seen[0]) == rows_sha256(seen[1])

    losses = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["losses"]
    assert len(losses) == 1
    assert _first_loss(recorded, contract, seed=7) == pytest.approx(losses[0], abs=1e-5)
    assert _first_loss(other, contract, seed=7) != pytest.approx(losses[0], abs=1e-3)
