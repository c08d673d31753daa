"""The demo model's recipe: a config file loaded by name or path, and `see3d demo-checkpoint`
rebuilding a checkpoint from a (tiny) recipe end to end, resumable."""

import json

import pytest

from see3d_cli import main as cli

TINY_RECIPE = '''
from see3d_core.diffusion import ConditionConfig
from see3d_jax.train_config import preset

DATA = {"scenes": 3, "frames": 4, "size": 16, "seed": 5, "unposed": True}


def get_config():
    return preset("tiny", ["steps=3", "batch_size=2", "num_views=3", "checkpoint_every=3", "tensorboard=false",
                           "condition.variant=time_dependent"])
'''


def test_the_demo_recipe_is_a_config_file_and_pose_free():
    from see3d_jax.train_config import RECIPES_DIR, load_config

    config = load_config("demo")
    assert config == load_config(str(RECIPES_DIR / "demo.py"))  # by name or by path, one file
    assert config.condition.variant == "time_dependent" and config.condition.posed_fraction == 0.0  # See3D's way
    assert config.unet.sample_size >= 64 and config.unet.pixel_space
    assert load_config("demo", ["steps=7"]).steps == 7
    with pytest.raises(ValueError, match="no such recipe file"):
        load_config("nonexistent_recipe")


def test_demo_checkpoint_command_builds_and_resumes(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from see3d_torch.unet import MultiViewUNet

    recipe = tmp_path / "tiny_recipe.py"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "weights"
    argv = ["demo-checkpoint", "--workdir", str(tmp_path / "run"), "--recipe", str(recipe), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["step"] == 3 and summary["megabytes"] > 0
    assert json.loads((tmp_path / "run" / "data.done").read_text())["scenes"] == 3
    model = MultiViewUNet.from_pretrained(out)
    assert model.config.sample_size == 16
    cfg = model.config
    out_views = model(torch.zeros(1, 3, 7, 16, 16), torch.zeros(1), torch.zeros(1, cfg.context_tokens, cfg.context_dim))
    assert out_views.shape == (1, 3, 3, 16, 16)
    # the same line again: data and training are kept, only the export is redone
    assert cli.main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["train"]["resumed_from"] == 3 and again["train"]["step"] == 3
    bad = tmp_path / "bad_recipe.py"
    bad.write_text("X = 1\n")
    assert cli.main(["demo-checkpoint", "--workdir", str(tmp_path / "r2"), "--recipe", str(bad)]) == 2
    assert "get_config" in capsys.readouterr().err
