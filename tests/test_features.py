"""Keypoint matching: SIFT on the synthetic world, DISK/LightGlue plumbing from local files."""

import numpy as np
import pytest
import torch

from see3d_core import synthetic
from see3d_torch.features import DISK_WEIGHTS, LIGHTGLUE_WEIGHTS, draw_matches, match

SIZE = 192


@pytest.fixture(scope="module")
def pair():
    scene = synthetic.make_scene(2)
    cams = synthetic.default_orbit(scene, 2, SIZE, SIZE, azimuth_deg=(-6.0, 6.0))
    return synthetic.render_trajectory(scene, cams)


def _true_correspondence(a, b, uv_a):
    """Where each pixel of view a lands in view b, through the exact depth."""
    px = np.round(uv_a).astype(int)
    depth = a.depth[px[:, 1], px[:, 0]]
    uv_b, _ = b.camera.project(a.camera.unproject(px.astype(np.float64), depth))
    return uv_b + (uv_a - px)  # sub-pixel offset carried over (first order)


def test_sift_matches_follow_the_true_geometry(pair):
    a, b = pair
    uv_a, uv_b = match(a.rgb, b.rgb)
    assert uv_a.dtype == torch.float32 and uv_a.shape == uv_b.shape and uv_a.shape[1] == 2
    assert len(uv_a) >= 50
    err = np.linalg.norm(_true_correspondence(a, b, uv_a.numpy()) - uv_b.numpy(), axis=1)
    print(f"{len(uv_a)} SIFT matches, median error {np.median(err):.2f} px, {np.mean(err < 3):.1%} within 3 px")
    assert np.mean(err < 3.0) >= 0.9


def test_match_options_and_inputs(pair):
    a, b = pair
    strict = match(a.rgb, b.rgb)
    loose = match(a.rgb, b.rgb, ratio=0.9, mutual=False, ransac=False)
    assert len(loose[0]) > len(strict[0])
    # torch CHW float and numpy uint8 inputs give the same matches as numpy float HWC
    chw = match(torch.from_numpy(a.rgb).permute(2, 0, 1), (b.rgb * 255 + 0.5).astype(np.uint8))
    torch.testing.assert_close(chw[0], strict[0])
    with pytest.raises(ValueError, match="method must be one of"):
        match(a.rgb, b.rgb, method="orb")
    with pytest.raises(ValueError, match="image_b must be an image"):
        match(a.rgb, np.zeros((4, 5, 6)))
    blank = match(np.zeros((32, 32, 3)), np.zeros((32, 32, 3)))
    assert blank[0].shape == (0, 2)


def test_disk_lightglue_needs_local_weights(tmp_path, pair):
    with pytest.raises(FileNotFoundError, match=DISK_WEIGHTS):
        match(pair[0].rgb, pair[1].rgb, method="disk_lightglue", weights_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="weights_dir=None"):
        match(pair[0].rgb, pair[1].rgb, method="disk_lightglue")


def test_disk_lightglue_runs_from_local_files(tmp_path, pair):
    """Untrained networks saved to a folder: checks loading (incl. the original LightGlue
    layer names) and the plumbing, not match quality."""
    kornia_feature = pytest.importorskip("kornia.feature")
    torch.manual_seed(0)
    torch.save({"extractor": kornia_feature.DISK().state_dict()}, tmp_path / DISK_WEIGHTS)
    glue = kornia_feature.LightGlue(features=None, input_dim=128).state_dict()
    original_names = {k.replace("transformers.0.self_attn.", "self_attn.0."): v for k, v in glue.items()}
    torch.save(original_names, tmp_path / LIGHTGLUE_WEIGHTS)
    a, b = pair
    uv_a, uv_b = match(a.rgb[:64, :64], b.rgb[:64, :64], method="disk_lightglue", weights_dir=tmp_path, max_keypoints=64, ransac=False)
    assert uv_a.shape == uv_b.shape and uv_a.shape[1] == 2
    assert bool(((uv_a >= 0) & (uv_a <= 63)).all())


def test_draw_matches(pair):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = pair
    uv_a, uv_b = match(a.rgb, b.rgb)
    fig, ax = plt.subplots()
    draw_matches(ax, a.rgb, b.rgb, uv_a, uv_b, max_lines=20, errors=torch.rand(len(uv_a)) * 0.1)
    assert len(ax.lines) == 20
    assert ax.images[0].get_array().shape == (SIZE, 2 * SIZE, 3)
    plt.close(fig)
