"""The `see3d` command's generation subcommands: argument errors name what is wrong, the
backend is chosen from the weights folder's layout, and the released-weights path runs on tiny checkpoints."""

import numpy as np
import pytest

from see3d_cli import main as cli


def _png(path, size=32):
    import cv2

    cv2.imwrite(str(path), (np.random.default_rng(0).uniform(size=(size, size, 3)) * 255).astype(np.uint8))
    return str(path)


def test_generate_names_the_missing_depth_model(tmp_path, capsys):
    img = _png(tmp_path / "a.png")
    assert cli.main(["generate", img, "--backend", "warp-only", "--offline", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--depth-model depth-anything/Depth-Anything-V2-Small-hf" in err and "offline" in err  # the default, by name
    assert cli.main(["generate", img, "--backend", "warp-only", "--depth-model", str(tmp_path / "no_depth"),
                     "--out", str(tmp_path / "o")]) == 2
    assert "no_depth" in capsys.readouterr().err


def test_generate_rejects_bad_inputs(tmp_path, capsys):
    img = _png(tmp_path / "a.png")
    assert cli.main(["generate", *[img] * 7, "--out", str(tmp_path / "o")]) == 2
    assert "2 to 6 images" in capsys.readouterr().err
    assert cli.main(["generate", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert cli.main(["generate", img, "--weights", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_backend_is_chosen_from_the_folder_layout(tmp_path):
    torch = pytest.importorskip("torch")
    from see3d_core.unet_config import tiny
    from see3d_torch.generation.backends import TorchUNetBackend, WarpOnlyBackend
    from see3d_torch.unet import MultiViewUNet

    torch.manual_seed(0)
    MultiViewUNet(tiny()).save_pretrained(tmp_path / "unet")
    assert isinstance(cli.load_backend("auto", str(tmp_path / "unet")), TorchUNetBackend)
    assert isinstance(cli.load_backend("warp-only", None), WarpOnlyBackend)
    (tmp_path / "odd").mkdir()
    with pytest.raises(ValueError, match="model_index.json"):
        cli.load_backend("auto", str(tmp_path / "odd"))


# --- `see3d generate photo.jpg --weights MVD_weights`, on tiny random checkpoints ----------------

from test_pipeline import release_root  # noqa: E402,F401  (tiny random folder in the released layout)


@pytest.fixture(scope="module")
def tiny_depth_anything(tmp_path_factory):
    """A random Depth Anything in the transformers layout, its output kept positive (a relative
    disparity) so that it can play the monocular estimator."""
    torch = pytest.importorskip("torch")
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14,
                            image_size=518, out_features=["stage1", "stage2"], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 32],
                                 reassemble_factors=[2, 1], fusion_hidden_size=16, head_hidden_size=8)
    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():
        model.head.conv3.bias.fill_(1.0)
    folder = tmp_path_factory.mktemp("depth_anything")
    model.save_pretrained(folder)
    return folder


def test_generate_with_released_weights_layout(release_root, tiny_depth_anything, tmp_path, capsys):
    import json

    from see3d_core import trajectories
    img = _png(tmp_path / "photo.png", size=40)
    out = tmp_path / "run"
    argv = ["generate", img, "--weights", str(release_root), "--depth-model", str(tiny_depth_anything),
            "--views", "3", "--steps", "2", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "on cpu" in captured.err and "expect ~" in captured.err  # the device, and a CPU run's cost before it starts
    assert summary["backend"] == f"see3d:{release_root.name}/single"  # one image: the single-view UNet
    assert summary["generated"] == 2 and summary["inputs"] == 1
    cams = trajectories.load_json(out / "cameras.json")
    assert len(cams) == 3 and cams[0].width == 16  # the tiny base model's size: sample 8 x VAE factor 2
    record = json.loads((out / "generation.json").read_text())
    assert [v["input"] for v in record["views"]] == [True] + [False] * 2
    for sub, name in (("views", "view_002.png"), ("conditions", "condition_002.png"), ("masks", "mask_002.png"),
                      ("depths", "depth_002.npy")):
        assert (out / sub / name).is_file()
    assert (out / "grid.png").is_file()
    first = cv2_read(out / "views" / "view_001.png")
    assert first.shape == (16, 16, 3) and first.std() > 0  # a decoded image, not a blank

    assert cli.main(["generate", img, "--weights", str(tmp_path), "--backend", "pipeline", "--out", str(out)]) == 2
    assert "model_index.json" in capsys.readouterr().err  # names what the released layout starts with


def cv2_read(path):
    import cv2

    return cv2.imread(str(path))[..., ::-1]


def test_debug_raises_with_the_traceback(tmp_path, capsys):
    missing = str(tmp_path / "missing.png")
    assert cli.main(["generate", missing, "--out", str(tmp_path / "o")]) == 2
    assert "--debug" in capsys.readouterr().err  # the one-line error says how to get the traceback
    with pytest.raises(FileNotFoundError, match="missing.png"):
        cli.main(["--debug", "generate", missing, "--out", str(tmp_path / "o")])


def test_checkpoint_format_is_detected_beside_the_released_layout(tmp_path):
    from see3d_core.released_layout import (CONFIG_FILE, LEGACY_FLAX_WEIGHTS, LEGACY_ORBAX_PARAMS, WEIGHTS_FILE,
                                            LegacyCheckpointError, detect_checkpoint_format)

    (tmp_path / "released").mkdir()
    (tmp_path / "released" / "model_index.json").write_text("{}")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / CONFIG_FILE).write_text("{}")
    (tmp_path / "model" / WEIGHTS_FILE).write_bytes(b"")
    assert [detect_checkpoint_format(tmp_path / k) for k in ("released", "model")] == ["released", "model"]
    (tmp_path / "orbax" / LEGACY_ORBAX_PARAMS).mkdir(parents=True)
    (tmp_path / "flax").mkdir()
    (tmp_path / "flax" / LEGACY_FLAX_WEIGHTS).write_bytes(b"")
    for old, marker in (("orbax", LEGACY_ORBAX_PARAMS), ("flax", LEGACY_FLAX_WEIGHTS)):
        with pytest.raises(LegacyCheckpointError) as info:
            detect_checkpoint_format(tmp_path / old)
        assert str(tmp_path / old / marker) in str(info.value) and f"see3d-convert upgrade {tmp_path / old}" in str(info.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / CONFIG_FILE).write_text("{}")
    (tmp_path / "other" / "model.safetensors").write_bytes(b"")  # another weights name is no model folder
    for folder in (tmp_path, tmp_path / "other"):
        with pytest.raises(ValueError, match=f"model_index.json.*{WEIGHTS_FILE}"):
            detect_checkpoint_format(folder)
