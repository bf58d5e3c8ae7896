"""Held-out accuracy of the baseline classifier on the 100 real damaged scans,
with raw inputs (plain BGR->gray) against restored inputs (restore_scan), on the
same splits, measured in one run.

    .venv/bin/python benchmarks/bench_classify.py [--splits 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from xraycore.image.pipeline import PipelineSpec, run_pipeline
from xraycore.predict.contract import ModelContract, prepare_batch
from xraycore.sources.catalog import read_image
from xraycore.train.baseline import train_logistic

DAMAGED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "damaged"


def accuracy(scans: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    model = train_logistic(scans[train], y[train])
    x = prepare_batch(scans[~train], model["contract"]).mean(axis=1)
    n = len(x)
    feats = x.reshape(n, 32, 8, 32, 8).mean(axis=(2, 4)).reshape(n, -1)
    scores = 1 / (1 + np.exp(-(feats @ model["weights"] + model["bias"])))
    return float(np.mean((scores > 0.5) == y[~train]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", type=int, default=10)
    args = ap.parse_args()
    files = sorted(DAMAGED.glob("*.jpg"))
    if len(files) != 100:
        raise SystemExit(f"needs the 100 damaged scans in {DAMAGED}")
    y = np.array(["pneumonia" in f.name for f in files])
    images = [read_image(str(f)) for f in files]
    raw = PipelineSpec(size=256, restore="never", outputs=())
    restored = PipelineSpec(size=256, restore="auto", outputs=())
    sets = {
        "raw": np.stack([run_pipeline(im, raw)["preprocessed"] for im in images]),
        "restored": np.stack([run_pipeline(im, restored)["preprocessed"] for im in images]),
    }
    results = {k: [] for k in sets}
    for seed in range(args.splits):
        rng = np.random.default_rng(seed)
        train = np.zeros(100, bool)
        # Stratified 70/30: 35 of each class for training.
        for cls in (False, True):
            idx = np.flatnonzero(y == cls)
            train[rng.choice(idx, 35, replace=False)] = True
        for k, scans in sets.items():
            results[k].append(accuracy(scans, y, train))
    print(
        f"# 100 damaged scans, {args.splits} stratified 70/30 splits, baseline logistic "
        f"regression on 8x8-pooled 256x256 inputs ({ModelContract().size}px contract)"
    )
    for k, acc in results.items():
        print(
            f"{k:9s}: held-out accuracy {np.mean(acc):.3f} +- {np.std(acc):.3f} "
            f"(min {min(acc):.2f}, max {max(acc):.2f})"
        )


if __name__ == "__main__":
    main()
