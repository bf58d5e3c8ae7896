"""Restoration quality and cost per damage family, and the pictures in docs/restoration.md.

Every family of ``xraycore.image.synth.DAMAGE_FAMILIES`` is applied to each clean scan
(scan i with seed i), restored with ``restore_scan`` and compared with the clean
scan by SSIM; ``clean`` restores the undamaged scans and compares them with
themselves. One thread.

    .venv/bin/python benchmarks/bench_restore.py [--pictures docs/restoration]
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

from xraycore.image.metrics import ssim  # noqa: E402
from xraycore.image.restore import restore_scan  # noqa: E402
from xraycore.image.synth import DAMAGE_FAMILIES, damage_scan, phantom_chest  # noqa: E402

cv2.setNumThreads(1)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chestxray8"
PANEL = 160  # pixels per panel in the pictures: three panels, a few tens of KB each


def load_scans() -> tuple[list[np.ndarray], str]:
    files = sorted(SHARED.glob("*.png"))
    if files:
        scans = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files]
        return scans, f"{len(scans)} ChestX-ray8 scans from {SHARED}"
    return [phantom_chest(1024, seed=i) for i in range(4)], "4 generated 1024x1024 phantoms"


def picture(damaged: np.ndarray, restored: np.ndarray, clean: np.ndarray, path: Path) -> None:
    """Damaged | restored | clean, side by side, downscaled."""
    panels = []
    for image in (damaged, restored, clean):
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        panels.append(cv2.resize(image, (PANEL, PANEL), interpolation=cv2.INTER_AREA))
    from PIL import Image

    # A 64-colour palette keeps each picture at a few tens of KB.
    rgb = Image.fromarray(np.hstack(panels)[:, :, ::-1])
    rgb.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pictures", type=Path, help="write <family>.png triptychs here")
    args = ap.parse_args()
    scans, what = load_scans()
    print(f"# {what}; one thread; SSIM of restore_scan to the clean scan")
    print(f"{'family':14s} {'mean SSIM':>9s} {'worst':>7s} {'damaged':>8s} {'ms/scan':>8s}")
    if args.pictures:
        args.pictures.mkdir(parents=True, exist_ok=True)
    for name, kwargs in {**DAMAGE_FAMILIES, "clean": None}.items():
        scores, before, times = [], [], []
        for i, clean in enumerate(scans):
            damaged = clean if kwargs is None else damage_scan(clean, seed=i, **kwargs)[0]
            start = time.perf_counter()
            restored = restore_scan(damaged)
            times.append((time.perf_counter() - start) * 1000)
            scores.append(ssim(restored, clean))
            gray = damaged if damaged.ndim == 2 else cv2.cvtColor(damaged, cv2.COLOR_BGR2GRAY)
            before.append(ssim(gray, clean))
            if args.pictures and i == 0:
                picture(damaged, restored, clean, args.pictures / f"{name}.png")
        print(
            f"{name:14s} {np.mean(scores):9.3f} {np.min(scores):7.3f} {np.mean(before):8.3f} "
            f"{statistics.median(times):8.1f}"
        )


if __name__ == "__main__":
    main()
