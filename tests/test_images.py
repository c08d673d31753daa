"""see3d_core.images: the one uint8 conversion, PNG reader/writer and depth picture."""

import numpy as np
import pytest

from see3d_core import images


def test_to_uint8_rounds_as_diffusers_numpy_to_pil():
    x = np.array([0.0, 0.5 / 255, 1.49 / 255, 1.51 / 255, 0.999, 1.2, -0.1], np.float32)
    np.testing.assert_array_equal(images.to_uint8(x), (np.clip(x, 0, 1) * 255).round().astype(np.uint8))
    assert images.to_uint8(x).tolist() == [0, 0, 1, 2, 255, 255, 0]


def test_png_round_trip_and_named_errors(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    images.write_png(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(images.to_uint8(images.read_image(tmp_path / "a.png")), rgb)  # RGB order kept
    images.write_png(tmp_path / "b.png", rgb / np.float32(255))
    np.testing.assert_array_equal(images.to_uint8(images.read_image(tmp_path / "b.png")), rgb)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        images.read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        images.read_image(tmp_path / "bad.png")
    with pytest.raises(OSError, match="no_dir"):
        images.write_png(tmp_path / "no_dir" / "c.png", rgb)


def test_depth_picture_near_is_bright_and_invalid_is_far():
    depth = np.array([[1.0, 2.0, 3.0, 0.0]])
    pic = images.depth_to_rgb(depth, near=1.0, far=3.0)
    brightness = pic.sum(-1)[0]
    assert brightness[0] > brightness[1] > brightness[2] and brightness[3] == brightness[2]
    assert pic.dtype == np.float32 and pic.min() >= 0 and pic.max() <= 1
