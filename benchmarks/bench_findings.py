"""A learning check no one can fake: DenseNet-121 on phantoms with planted findings.

A store of ``--scans`` phantoms (:func:`xraycore.image.synth.synthetic_findings`:
a small dense nodule, a basal opacity, an enlarged heart shadow, each in 30% of
scans, 10% of labels blank and 10% uncertain) split 3:1:1 train, validation
and test; ``train_cnn`` with ``TrainConfig(targets="findings")`` for ``--epochs`` on the CPU at
``--size``; then each finding's AUROC on the test split (labelled rows only)
and their mean, with the wall time. Chance is 0.5.

    .venv/bin/python benchmarks/bench_findings.py [--scans 300] [--size 64] [--epochs 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from stores import findings_store  # noqa: E402

from xraycore.predict.roc import roc_auc  # noqa: E402
from xraycore.store import ScanStore  # noqa: E402
from xraycore.train import cnn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scans", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = findings_store(Path(tmp), n=args.scans, size=args.size, seed=args.seed)
        t0 = time.perf_counter()
        config = cnn.TrainConfig(
            targets="findings",
            contract=cnn.cnn_contract(args.size),
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            device="cpu",
        )
        model = cnn.train_cnn(
            url,
            config,
            on_epoch=lambda e: print(
                f"epoch {e.epoch}: loss {e.loss:.3f}, validation mean AUROC "
                f"{e.validation_mean_auroc:.3f} ({e.seconds:.0f} s)",
                flush=True,
            ),
        )
        seconds = time.perf_counter() - t0
        store = ScanStore.open(url)
        test = store.select(split="test")
        scores = cnn.cnn_scores(
            model.network, store.read("preprocessed", test["row"].to_pylist()), model.contract
        )
        aucs = {}
        for k, name in enumerate(model.contract.findings):
            y = np.array([-1 if v is None else v for v in test[name].to_pylist()])
            known = y >= 0
            aucs[name] = roc_auc(y[known], scores[known, k])
        each = ", ".join(f"{n.removeprefix('finding_')} {a:.3f}" for n, a in aucs.items())
        print(
            f"test mean AUROC {np.nanmean(list(aucs.values())):.3f} ({each}) on "
            f"{test.num_rows} scans; best epoch {model.best_epoch}; training {seconds:.0f} s"
        )


if __name__ == "__main__":
    main()
