"""The `see3d` command's generation subcommands: argument errors name what is wrong, the
backend is chosen from the weights folder's layout, and the demo says what it produced."""

import numpy as np
import pytest

from see3d_core import cli


def _png(path, size=32):
    import cv2

    cv2.imwrite(str(path), (np.random.default_rng(0).uniform(size=(size, size, 3)) * 255).astype(np.uint8))
    return str(path)


def test_generate_names_the_missing_depth_model(tmp_path, capsys):
    img = _png(tmp_path / "a.png")
    assert cli.main(["generate", img, "--backend", "warp-only", "--out", str(tmp_path / "o")]) == 2
    assert "--depth-model" in capsys.readouterr().err


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


def test_demo_labels_its_fallback(tmp_path, capsys, monkeypatch):
    from see3d_torch.generation import demo

    monkeypatch.setattr(demo, "missing_pieces", lambda config: ["checkpoint (test)"])
    assert cli.main(["demo", "--out", str(tmp_path / "d")]) == 0
    assert "FALLBACK" in capsys.readouterr().out
    assert "NOT the generation demo" in (tmp_path / "d" / "FALLBACK.txt").read_text()
