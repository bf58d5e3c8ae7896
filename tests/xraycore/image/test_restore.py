"""Restoration steps: known answers on synthetic damage, seed formulas, real scans."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from xraycore.image import exposure, restore
from xraycore.image.metrics import format_scores, restoration_scores, ssim
from xraycore.image.synth import DAMAGE_FAMILIES, damage_scan, phantom_chest

PHANTOM = phantom_chest(256, seed=1)


def test_rebalance_channel_is_seed_000_formula():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    out = restore.rebalance_channel(image)
    expected = cv2.convertScaleAbs(cv2.GaussianBlur(image[:, :, 1], (5, 5), 0), alpha=0.9)
    assert np.array_equal(out[:, :, 1], expected)
    assert np.array_equal(out[:, :, [0, 2]], image[:, :, [0, 2]])


def test_denoise_median_removes_salt_and_pepper():
    noisy = PHANTOM.copy()
    rng = np.random.default_rng(0)
    hit = rng.random(noisy.shape) < 0.05
    noisy[hit] = rng.choice([0, 255], hit.sum())
    assert ssim(restore.denoise_median(noisy), PHANTOM) > ssim(noisy, PHANTOM) + 0.2


def test_decode_colormap_inverts_jet_exactly():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    coloured = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)
    assert np.abs(restore.decode_colormap(coloured).astype(int) - ramp).max() <= 3


def test_fuse_channels_auto_picks_method():
    jet = cv2.applyColorMap(PHANTOM, cv2.COLORMAP_JET)
    assert ssim(restore.fuse_channels(jet), PHANTOM) > 0.9
    # A linear, green-boosted imbalance is fused with weights, not as a colour map.
    damaged = np.dstack([PHANTOM, np.clip(PHANTOM * 1.5 + 30, 0, 255), PHANTOM * 0.8])
    fused = restore.fuse_channels(damaged.astype(np.uint8))
    assert np.corrcoef(fused.ravel(), PHANTOM.ravel())[0, 1] > 0.98


def test_fuse_channels_downweights_noisy_channel():
    rng = np.random.default_rng(0)
    noisy = np.clip(PHANTOM + rng.normal(0, 60, PHANTOM.shape), 0, 255).astype(np.uint8)
    image = np.dstack([PHANTOM, noisy, PHANTOM])
    fused = restore.fuse_channels(image, method="weighted")
    equal = exposure.percentile_stretch(image.astype(np.float32).mean(axis=2))
    assert ssim(fused, PHANTOM) > ssim(equal, PHANTOM) + 0.05


def test_frame_corners_and_dewarp_recover_geometry():
    damaged, truth = damage_scan(PHANTOM, seed=4, noise=0.0, circle_radius=0.0)
    corners = restore.frame_corners(damaged)
    assert corners is not None
    # Edge lines fitted along the whole frame: well under a pixel (the hull alone: ~1).
    assert np.abs(corners - truth.corners).max() < 0.6
    assert restore.estimate_skew(damaged) == pytest.approx(truth.angle, abs=1.0)
    back = restore.dewarp(damaged[:, :, 0], corners=corners)
    assert ssim(back, PHANTOM) > 0.85


def test_frame_corners_none_on_clean_scan():
    assert restore.frame_corners(PHANTOM) is None
    assert restore.estimate_skew(PHANTOM) == 0.0
    assert np.array_equal(restore.dewarp(PHANTOM), PHANTOM)


def test_rotate_then_back_is_near_identity():
    there = restore.rotate_scan(PHANTOM, angle=5.0)
    back = restore.rotate_scan(there, angle=-5.0)
    assert ssim(back[40:-40, 40:-40], PHANTOM[40:-40, 40:-40]) > 0.9
    assert ssim(there, PHANTOM) < 0.9


def test_circle_mask_finds_the_hole_and_nothing_else():
    image = PHANTOM.copy()
    cv2.circle(image, (170, 80), 14, 0, -1)
    mask = restore.circle_mask(image)
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - 170) < 1.5 and abs(ys.mean() - 80) < 1.5
    assert 0.9 < mask.sum() / (np.pi * 16**2) < 1.3  # circle plus the 2 px margin
    assert not restore.circle_mask(PHANTOM).any()


def test_inpaint_fills_the_hole():
    image = PHANTOM.copy()
    cv2.circle(image, (170, 80), 14, 0, -1)
    mask = restore.circle_mask(image)
    for method in ("ns", "telea"):
        filled = restore.inpaint(image, mask, method=method)
        hole = cv2.circle(np.zeros(PHANTOM.shape, np.uint8), (170, 80), 14, 1, -1) > 0
        assert filled[hole].min() > 0
        err = np.abs(filled[hole].astype(int) - PHANTOM[hole]).mean()
        assert err < np.abs(image[hole].astype(int) - PHANTOM[hole]).mean() / 2


def test_restore_scan_improves_ssim_on_synthetic_damage():
    # Known ground truth: damage a clean phantom, restore, compare.
    clean = phantom_chest(512, seed=7)
    for seed in range(3):
        damaged, _ = damage_scan(clean, seed=seed)
        before = ssim(cv2.cvtColor(damaged, cv2.COLOR_BGR2GRAY), clean)
        after = ssim(restore.restore_scan(damaged), clean)
        # The phantom's fine film grain is lost to the median: lower than real scans.
        assert after >= 0.75, f"seed {seed}: SSIM {after:.3f}"
        assert after > before + 0.4


def test_restore_scan_per_damage_family_on_real_scans(chestxray8_files):
    # Every family synth makes, on the real ChestX-ray8 scans; `pytest -s` prints the table.
    scans = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in chestxray8_files]
    scores = restoration_scores(scans)
    table = format_scores(scores)
    print(f"\nrestore_scan SSIM to the clean scan, {len(scans)} real scans\n{table}")
    assert set(scores) == {*DAMAGE_FAMILIES, "clean"}
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    assert all(means[name] >= 0.88 for name in DAMAGE_FAMILIES), table
    # The family of the real damaged scans does as well as before generalising.
    assert means["jet"] >= 0.90 and means["warp"] >= 0.90, table
    # restore="always" must not hurt a clean scan.
    assert min(scores["clean"]) >= 0.97, table


def test_restore_scan_returns_clean_grayscale_unchanged(chestxray8_files):
    for path in chestxray8_files:
        clean = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(restore.restore_scan(clean), clean), path.name
        # A grey scan stored as three equal channels is the same scan.
        assert np.array_equal(restore.restore_scan(cv2.merge([clean] * 3)), clean), path.name


def test_estimate_skew_zero_on_real_clean_scans(chestxray8_files):
    for path in chestxray8_files:
        clean = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert restore.estimate_skew(clean) == 0.0, path.name


def test_restore_scan_runs_on_all_real_damaged_scans(damaged_files):
    assert len(damaged_files) == 100
    for path in damaged_files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        out = restore.restore_scan(image)
        assert out.shape == image.shape[:2] and out.dtype == np.uint8
        # The circle is found in every damaged scan, and no hole of its size is left.
        before = restore.circle_mask(restore.fuse_channels(restore.denoise_median(image, ksize=5)))
        assert before.sum() > 0.002 * before.size, path.name
        assert restore.circle_mask(out).sum() < 0.5 * before.sum(), path.name


@pytest.mark.parametrize("angle", [-5.5, -2.0, 3.0, 6.0])
def test_estimate_skew_from_wedges_when_frame_corners_are_cropped(angle):
    clean = phantom_chest(512, seed=2)
    damaged, truth = damage_scan(
        clean, seed=1, geometry="rotate", angle=angle, colour="gray", circle="none", noise=0.0
    )
    assert restore.frame_corners(damaged) is None  # no whole quadrilateral to de-warp
    assert restore.estimate_skew(damaged) == pytest.approx(truth.angle, abs=0.1)
    # Undoing it restores the scan away from the lost corners.
    back = restore.rotate_scan(damaged[:, :, 0], angle=-restore.estimate_skew(damaged))
    inner = (slice(80, -80), slice(80, -80))
    assert ssim(back[inner], clean[inner]) > 0.95


def test_estimate_skew_ignores_straight_but_unrotated_edges():
    # A letterbox on two sides is not a rotation (nor a warped frame). The
    # phantom is lifted so that only the letterbox is black.
    image = cv2.add(PHANTOM, 40)
    image[:, :20] = 0
    image[:30, :] = 0
    assert restore.estimate_skew(image) == 0.0


def _dark_field(scale: float = 0.15) -> np.ndarray:
    # The phantom at a fraction of its brightness: lungs at ~9 grey levels.
    return np.clip(PHANTOM.astype(np.float32) * scale, 1, 255).astype(np.uint8)


def test_circle_mask_finds_a_hole_over_dark_lung():
    image = _dark_field()
    cv2.circle(image, (85, 130), 14, 0, -1, cv2.LINE_AA)
    assert np.median(_dark_field()[110:150, 70:100]) < 12  # little contrast to the surround
    mask = restore.circle_mask(image)
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - 85) < 1.5 and abs(ys.mean() - 130) < 1.5
    assert 0.9 < mask.sum() / (np.pi * 16**2) < 1.4
    assert not restore.circle_mask(_dark_field()).any()


def test_circle_mask_by_shape_not_by_darkness():
    image = PHANTOM.copy()
    cv2.rectangle(image, (60, 60), (90, 90), 0, -1)  # black, but a square
    assert not restore.circle_mask(image).any()
    # A hole that touches a black band is still cut out as a disc.
    cv2.rectangle(image, (100, 120), (200, 126), 0, -1)
    cv2.circle(image, (150, 140), 16, 0, -1)
    mask = restore.circle_mask(image)
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - 150) < 3 and abs(ys.mean() - 140) < 3
    assert mask.sum() < 1.6 * np.pi * 18**2


def test_restore_scan_repairs_only_what_is_damaged():
    clean = phantom_chest(512, seed=7)
    out = restore.restore_scan(clean)
    assert np.array_equal(out, clean) and out is not clean
    holed = clean.copy()
    cv2.circle(holed, (180, 250), 24, 0, -1)
    out = restore.restore_scan(holed)
    far = np.full(clean.shape, 255, np.uint8)
    cv2.circle(far, (180, 250), 40, 0, -1)
    assert np.array_equal(out[far > 0], clean[far > 0])  # nothing but the hole changed
    assert out[250, 180] > 20


@pytest.mark.parametrize("family", sorted(DAMAGE_FAMILIES))
def test_restore_scan_improves_every_family_on_phantoms(family):
    # Runs without the real data; the phantom's film grain is lost to the median,
    # so the bar is lower than on real scans.
    clean = phantom_chest(512, seed=7)
    damaged, _ = damage_scan(clean, seed=3, **DAMAGE_FAMILIES[family])
    before = ssim(exposure.percentile_stretch(damaged.astype(np.float32).mean(axis=2)), clean)
    after = ssim(restore.restore_scan(damaged), clean)
    assert after >= 0.75, f"{family}: SSIM {after:.3f}"
    assert after > before, f"{family}: {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: restore.rebalance_channel(PHANTOM), r"\(H, W, 3\)"),
        (lambda: restore.rebalance_channel(np.zeros((8, 8, 3), np.uint8), channel=3), "channel"),
        (lambda: restore.denoise_median(PHANTOM, ksize=4), "ksize must be an odd"),
        (lambda: restore.inpaint(PHANTOM, np.zeros((3, 3), bool)), "mask must be"),
        (lambda: restore.inpaint(PHANTOM, np.zeros(PHANTOM.shape, bool), method="x"), "method"),
        (lambda: restore.fuse_channels(PHANTOM, method="pca"), "method"),
        (
            lambda: restore.decode_colormap(np.zeros((8, 8, 3), np.uint8), colormap="hsv"),
            "colormap",
        ),
        (lambda: restore.rotate_scan(PHANTOM, angle=float("nan")), "angle"),
    ],
)
def test_bad_parameters_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
