"""Phantoms, the damage simulator's ground truth, SSIM, and the pictures."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from xraycore.image import metrics, synth, viz
from xraycore.image.pipeline import run_pipeline


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


def test_damage_rotate_geometry_crops_the_corners():
    clean = synth.phantom_chest(256, seed=0)
    damaged, truth = synth.damage_scan(
        clean, seed=2, geometry="rotate", angle=5.0, colour="gray", circle="none", noise=0.0
    )
    assert truth.angle == 5.0
    # The scan's corners leave the image, and black wedges fill its corners.
    outside = (truth.corners < 0) | (truth.corners > 255)
    assert outside.any(axis=1).all()
    for corner in (damaged[:4, :4], damaged[:4, -4:], damaged[-4:, :4], damaged[-4:, -4:]):
        assert corner.max() == 0
    assert damaged[128, 128].min() > 0
    b, g, r = cv2.split(damaged)
    assert np.array_equal(b, g) and np.array_equal(g, r)  # colour="gray"
    # The centre is rotated, not shifted: rotating back matches the clean scan there.
    back = cv2.warpAffine(b, cv2.getRotationMatrix2D((127.5, 127.5), -5.0, 1.0), (256, 256))
    assert metrics.ssim(back[64:192, 64:192], clean[64:192, 64:192]) > 0.9


def test_damage_jet_colour_and_lung_circle():
    clean = synth.phantom_chest(256, seed=0)
    damaged, truth = synth.damage_scan(
        clean, seed=5, colour="jet", geometry="none", circle="lung", noise=0.0
    )
    jet = cv2.applyColorMap(clean, cv2.COLORMAP_JET)
    cx, cy, r = truth.circle
    away = np.ones(clean.shape, np.uint8)
    cv2.circle(away, (cx, cy), r + 2, 0, -1)
    assert np.array_equal(damaged[away > 0], jet[away > 0])
    assert damaged[cy, cx].max() == 0 and truth.angle == 0.0
    # "lung": inside either lung field, not only the upper image-right one.
    assert 0.25 * 256 <= cx <= 0.75 * 256 and 0.3 * 256 <= cy <= 0.65 * 256


def test_damage_green_noise_and_no_circle():
    clean = synth.phantom_chest(256, seed=0)
    quiet, _ = synth.damage_scan(clean, seed=1, geometry="none", circle="none", noise=0.0)
    noisy, truth = synth.damage_scan(
        clean, seed=1, geometry="none", circle="none", noise=0.0, green_noise=20.0
    )
    assert truth.circle == (0, 0, 0)
    assert np.array_equal(quiet[:, :, 0], clean)  # blue is the scan
    diff = noisy[:, :, 1].astype(float) - quiet[:, :, 1]
    unclipped = (quiet[:, :, 1] > 60) & (quiet[:, :, 1] < 195)
    assert 17 < diff[unclipped].std() < 23


def test_damage_families_are_valid_arguments():
    clean = synth.phantom_chest(64, seed=0)
    for name, kwargs in synth.DAMAGE_FAMILIES.items():
        damaged, _ = synth.damage_scan(clean, seed=0, **kwargs)
        assert damaged.shape == (64, 64, 3) and damaged.dtype == np.uint8, name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(colour="red"), "colour must be one of"),
        (dict(geometry="shear"), "geometry must be one of"),
        (dict(circle="anywhere"), "circle must be one of"),
    ],
)
def test_damage_scan_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synth.damage_scan(synth.phantom_chest(64, seed=0), **kwargs)


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
