"""Pipeline spec: defaults from the seeds, stable hash, fitting, and the runner."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from xraycore.image import edges, exposure, restore
from xraycore.image.pipeline import OUTPUTS, PipelineSpec, fit_to_size, run_pipeline
from xraycore.image.synth import damage_scan, phantom_chest


def test_defaults_are_the_seeds_values():
    p = PipelineSpec().params
    assert p["log"]["sigma"] == 1.0 and p["gradient_magnitude"]["sigma"] == 2.0
    assert p["mask"]["threshold"] == 150
    assert p["white_balance"]["tail"] == 0.0005
    assert p["clahe"] == {"clip_limit": 2.0, "tile_grid": [8, 8]}
    assert PipelineSpec().size == 1024


def test_hash_is_stable_and_sensitive():
    a, b = PipelineSpec(), PipelineSpec()
    assert a.hash == b.hash and len(a.hash) == 16
    # Explicitly passing a default changes nothing.
    assert PipelineSpec(params={"log": {"sigma": 1.0}}).hash == a.hash
    assert PipelineSpec(params={"log": {"sigma": 1.5}}).hash != a.hash
    assert PipelineSpec(size=512).hash != a.hash
    assert PipelineSpec(enhance=("clahe",)).hash != a.hash


def test_spec_from_json_and_toml(tmp_path):
    j = tmp_path / "spec.json"
    j.write_text(json.dumps({"size": 256, "params": {"clahe": {"clip_limit": 3.0}}}))
    t = tmp_path / "spec.toml"
    t.write_text("size = 256\n[params.clahe]\nclip_limit = 3.0\n")
    assert PipelineSpec.from_file(j).hash == PipelineSpec.from_file(t).hash
    assert PipelineSpec.from_file(j).params["clahe"]["clip_limit"] == 3.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 8}, "size must be"),
        ({"fit": "crop"}, "fit must be"),
        ({"restore": "sometimes"}, "restore must be"),
        ({"enhance": ("sharpen",)}, "enhance step"),
        ({"outputs": ("hog",)}, "output must be"),
        ({"outputs": ("log", "log")}, "duplicates"),
        ({"params": {"blur": {}}}, "unknown step"),
        ({"params": {"log": {"radius": 3}}}, "unknown keys"),
    ],
)
def test_bad_spec_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PipelineSpec(**kwargs)


def test_bad_spec_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid pipeline spec"):
        PipelineSpec.from_file(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"sizes": 3}')
    with pytest.raises(ValueError, match="unknown keys"):
        PipelineSpec.from_file(unknown)


def test_fit_letterbox_and_resize():
    wide = np.full((50, 100), 200, np.uint8)
    box = fit_to_size(wide, 64)
    assert box.shape == (64, 64)
    assert (box[:16] == 0).all() and (box[-16:] == 0).all() and (box[20:44] == 200).all()
    assert (fit_to_size(wide, 64, fit="resize") == 200).all()


def test_run_pipeline_outputs_equal_the_library_calls():
    scan = phantom_chest(256, seed=2)
    spec = PipelineSpec(size=256)
    out = run_pipeline(scan, spec)
    assert set(out) == set(OUTPUTS) | {"preprocessed"}
    # OpenCV's threaded SIMD paths may round the last float32 bit differently run to run.
    np.testing.assert_allclose(out["log"], edges.gaussian_laplace(scan, sigma=1.0), atol=1e-4)
    np.testing.assert_allclose(out["sobel"], edges.sobel(scan), atol=1e-4)
    assert np.array_equal(out["canny"], edges.canny(scan))
    assert np.array_equal(out["mask"], scan > 150)
    assert np.array_equal(out["histogram"], np.bincount(scan.ravel(), minlength=256))
    expected = exposure.clahe(exposure.white_balance(scan))
    assert np.array_equal(out["preprocessed"], expected)
    assert out["preprocessed"].dtype == np.uint8 and out["preprocessed"].shape == (256, 256)


def test_run_pipeline_restores_colour_inputs_only_in_auto():
    clean = phantom_chest(256, seed=2)
    damaged, _ = damage_scan(clean, seed=1)
    spec = PipelineSpec(size=256, enhance=(), outputs=())
    restored = run_pipeline(damaged, spec)["preprocessed"]
    assert np.array_equal(restored, restore.restore_scan(damaged))
    plain = run_pipeline(damaged, PipelineSpec(size=256, enhance=(), outputs=(), restore="never"))
    assert np.array_equal(plain["preprocessed"], cv2.cvtColor(damaged, cv2.COLOR_BGR2GRAY))


def test_run_pipeline_resizes_16_bit_input():
    deep = (phantom_chest(300, seed=1).astype(np.uint16) * 257)[:, :200]
    out = run_pipeline(deep, PipelineSpec(size=128))
    assert out["preprocessed"].shape == (128, 128)
    assert out["log"].shape == (128, 128)
