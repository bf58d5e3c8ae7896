"""Phantoms, the damage simulator's ground truth, SSIM, and the pictures."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from xraycore import metrics, synth, viz
from xraycore.pipeline import run_pipeline


def test_phantom_is_deterministic_and_anatomical():
    a = synth.phantom_chest(256, seed=5)
    assert np.array_equal(a, synth.phantom_chest(256, seed=5))
    assert not np.array_equal(a, synth.phantom_chest(256, seed=6))
    lung = a[110:150, 70:100].mean()
    spine = a[110:150, 122:134].mean()
    assert spine > lung + 60  # bone bright, air dark
    assert synth.phantom_chest(256, seed=5, opacity=True)[135:145, 75:90].mean() > lung + 40


def test_damage_ground_truth():
    clean = synth.phantom_chest(256, seed=0)
    damaged, truth = synth.damage_scan(clean, seed=3, noise=0.0)
    cx, cy, r = truth.circle
    assert damaged[cy, cx].max() == 0 and r > 0
    tl = truth.corners[0].astype(int)
    assert damaged[: max(tl[1] - 3, 1), :3].max() == 0  # black margin outside the frame
    b, g, r_ = cv2.split(damaged)
    inside = b > 40
    assert g[inside].mean() > 1.3 * b[inside].mean()  # boosted green
    with pytest.raises(ValueError, match="noise"):
        synth.damage_scan(clean, noise=1.5)
    with pytest.raises(ValueError, match="size"):
        synth.phantom_chest(8)


def test_ssim_known_answers():
    img = synth.phantom_chest(128, seed=0)
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    assert metrics.ssim(img, 255 - img) < 0
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.ssim(img, img[:64])


def test_comparison_figure_histogram_and_gif(tmp_path):
    scan = synth.phantom_chest(128, seed=0)
    out = run_pipeline(scan)
    sheet = viz.comparison_figure(
        [dict(original=scan, **out)], tmp_path / "sheet.png", titles=["phantom"]
    )
    picture = cv2.imread(str(sheet))
    assert picture is not None and picture.shape[1] > 4 * picture.shape[0]
    hist = cv2.imread(str(viz.histogram_plot(out["histogram"], tmp_path / "hist.png")))
    assert hist is not None
    gif = viz.stack_gif(np.stack([scan, 255 - scan]), tmp_path / "stack.gif")
    import imageio.v3 as iio

    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == 2
    with pytest.raises(ValueError, match="rows"):
        viz.comparison_figure([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="stack must be"):
        viz.stack_gif(np.zeros((4, 4)), tmp_path / "x.gif")
