"""Monocular depth estimators: Depth Anything from a local folder (tiny random model saved in
the test) and the synthetic-world oracle."""

import json

import numpy as np
import pytest
import torch

from see3d_core import synthetic
from see3d_torch import depth as D
from see3d_torch.mono_depth import DepthAnything, DepthDistortion, SyntheticDepthOracle


def _tiny_depth_anything(folder, depth_estimation_type="relative"):
    transformers = pytest.importorskip("transformers")
    backbone = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14,
        out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        head_hidden_size=8, depth_estimation_type=depth_estimation_type, max_depth=20,
    )
    torch.manual_seed(0)
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    return folder


def test_depth_anything_loads_a_local_folder_and_predicts(tmp_path):
    folder = _tiny_depth_anything(tmp_path / "da")
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    estimator = DepthAnything(folder, input_size=42)
    assert estimator.output_space == "disparity"
    assert estimator.network_size(45, 60) == (42, 56)  # short side at input_size, multiples of 14
    image = np.random.default_rng(0).random((45, 60, 3)).astype(np.float32)
    pred = estimator.predict(image)
    assert pred.shape == (45, 60) and pred.dtype == torch.float32
    assert bool(torch.isfinite(pred).all()) and bool((pred >= 0).all())
    # the same picture as uint8 HWC or float CHW gives the same prediction
    same = estimator.predict(torch.from_numpy(image).permute(2, 0, 1))
    torch.testing.assert_close(same, pred)
    torch.testing.assert_close(estimator.mean.flatten(), torch.full((3,), 0.5))


def test_metric_depth_anything_predicts_depth(tmp_path):
    estimator = DepthAnything(_tiny_depth_anything(tmp_path / "metric", "metric"), input_size=28)
    assert estimator.output_space == "depth"
    assert estimator.predict(np.zeros((30, 30, 3), np.uint8)).shape == (30, 30)


def test_depth_anything_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*config.json"):
        DepthAnything(tmp_path / "no_such_folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        DepthAnything(tmp_path / "empty")


def test_depth_anything_rejects_bad_images(tmp_path):
    estimator = DepthAnything(_tiny_depth_anything(tmp_path / "da"), input_size=28)
    with pytest.raises(ValueError, match=r"image must be \[H, W, 3\]"):
        estimator.predict(np.zeros((30, 30)))


def test_oracle_and_distortion():
    scene = synthetic.make_scene(4)
    camera = synthetic.default_orbit(scene, 1, 96, 80)[0]
    true = synthetic.render(scene, camera).depth
    exact = SyntheticDepthOracle(scene).predict(camera=camera)
    np.testing.assert_array_equal(exact.numpy(), true)
    distortion = DepthDistortion(scale=0.5, shift=1.0, local_amplitude=0.1, wavelength_px=64, seed=1)
    field = distortion.scale_field(80, 96)
    assert 0.9 - 1e-9 <= field.min() and field.max() <= 1.1 + 1e-9 and field.max() - field.min() > 0.1
    assert np.abs(np.diff(field, axis=1)).max() < 0.1 * 2 * np.pi / 64 * 1.01  # smooth: bounded slope
    distorted = SyntheticDepthOracle(scene, distortion).predict(camera=camera)
    np.testing.assert_allclose(distorted.numpy(), 0.5 * true * field + 1.0, rtol=1e-5)
    assert D.absolute_relative_error(distorted, torch.from_numpy(true)) > 0.1
    with pytest.raises(ValueError, match="needs the `camera`"):
        SyntheticDepthOracle(scene).predict(np.zeros((8, 8, 3)))
