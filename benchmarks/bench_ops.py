"""Per-operation cost on 1024x1024 scans, one core, and the speed ratio of the
default edge set against the tutorial's scipy calls in float64, same process.

    .venv/bin/python benchmarks/bench_ops.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from xraycore.image import (
    edges,
    exposure,
    measure,
    restore,  # noqa: E402
)
from xraycore.image.synth import DAMAGE_FAMILIES, damage_scan, phantom_chest  # noqa: E402

cv2.setNumThreads(1)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chestxray8"


def timed(fn, scans, repeat, clock=time.perf_counter):
    runs = []
    for _ in range(repeat):
        t = clock()
        for s in scans:
            fn(s)
        runs.append((clock() - t) / len(scans) * 1000)
    return statistics.median(runs)


def scipy_default_set(x):
    f = x.astype(np.float64)
    ndimage.gaussian_laplace(f, sigma=1)
    ndimage.gaussian_gradient_magnitude(f, sigma=2)
    np.hypot(ndimage.sobel(f, axis=0), ndimage.sobel(f, axis=1))
    ndimage.histogram(x, min=0, max=255, bins=256)


def ours_default_set(x):
    edges.gaussian_laplace(x)
    edges.gaussian_gradient_magnitude(x)
    edges.sobel(x)
    edges.canny(x)
    measure.histogram(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    files = sorted(SHARED.glob("*.png"))
    if files:
        scans = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files]
        what = f"{len(scans)} ChestX-ray8 scans from {SHARED}"
    else:
        scans = [phantom_chest(1024, seed=i) for i in range(4)]
        what = "4 generated 1024x1024 phantoms (../shared absent)"
    print(f"# {what}; one thread; median of {args.repeat} repeats; ms per scan")
    rows = [
        (
            "LoG sigma=1",
            lambda x: ndimage.gaussian_laplace(x.astype(float), 1),
            edges.gaussian_laplace,
        ),
        (
            "GGM sigma=2",
            lambda x: ndimage.gaussian_gradient_magnitude(x.astype(float), 2),
            edges.gaussian_gradient_magnitude,
        ),
        (
            "Sobel magnitude",
            lambda x: np.hypot(
                ndimage.sobel(x.astype(float), 0), ndimage.sobel(x.astype(float), 1)
            ),
            edges.sobel,
        ),
        (
            "histogram 256",
            lambda x: ndimage.histogram(x, min=0, max=255, bins=256),
            measure.histogram,
        ),
        ("Canny (ours only; the seed's is Prewitt)", None, edges.canny),
        (
            "Prewitt (seed's 'Canny')",
            lambda x: np.hypot(
                ndimage.prewitt(x.astype(float), 0), ndimage.prewitt(x.astype(float), 1)
            ),
            edges.prewitt,
        ),
        ("threshold mask", lambda x: np.where(x > 150, 1, 0), measure.threshold_mask),
        ("white balance", None, exposure.white_balance),
        ("CLAHE", None, exposure.clahe),
    ]
    print(f"{'operation':44s} {'scipy f64':>10s} {'ours':>8s} {'ratio':>7s}")
    for name, ref, ours in rows:
        t_ours = timed(ours, scans, args.repeat)
        if ref is None:
            print(f"{name:44s} {'-':>10s} {t_ours:8.2f} {'-':>7s}")
            continue
        t_ref = timed(ref, scans, args.repeat)
        print(f"{name:44s} {t_ref:10.2f} {t_ours:8.2f} {t_ref / t_ours:6.1f}x")
    # restore_scan per damage family (the goal is < 120 ms per scan on one core),
    # and on clean scans, which it must pass through. The CPU time of this thread
    # is printed too: on a shared machine wall time also counts waiting for a core.
    print(f"\n{'restore_scan, ms per scan':44s} {'wall':>10s} {'cpu':>8s}")
    for family in ("warp", "jet", "rotate-crop", "jet-rotate", None):
        if family is None:
            inputs, label = scans, "clean scans"
        else:
            kwargs = DAMAGE_FAMILIES[family]
            inputs = [damage_scan(s, seed=i, **kwargs)[0] for i, s in enumerate(scans)]
            label = family
        t_wall = timed(restore.restore_scan, inputs, max(1, args.repeat // 2))
        t_cpu = timed(
            restore.restore_scan, inputs, max(1, args.repeat // 2), clock=time.thread_time
        )
        print(f"{'  ' + label:44s} {t_wall:10.2f} {t_cpu:8.2f}")
    t_ref = timed(scipy_default_set, scans, args.repeat)
    t_ours = timed(ours_default_set, scans, args.repeat)
    print(
        f"\ndefault edge set (LoG, GGM, Sobel, Canny, histogram): scipy float64 {t_ref:.1f} ms "
        f"(without any Canny), ours {t_ours:.1f} ms -> {t_ref / t_ours:.1f}x faster"
    )


if __name__ == "__main__":
    main()
