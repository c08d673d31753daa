"""The demo model's recipe: a config file loaded by name or path, and `see3d demo-checkpoint`
rebuilding a checkpoint from a (tiny) recipe end to end, resumable."""

import json
import math

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
    from see3d_jax.train_config import RECIPES_DIR, load_config, load_recipe

    config = load_config("demo")
    assert config == load_config(str(RECIPES_DIR / "demo.py"))  # by name or by path, one file
    assert config.condition.variant == "time_dependent" and config.condition.posed_fraction == 0.0  # See3D's way
    assert config.unet.sample_size >= 64 and config.unet.pixel_space
    assert load_config("demo", ["steps=7"]).steps == 7
    legs = load_recipe("demo").LEGS  # the command trains them in turn; the config is the first
    assert legs[0] == config.steps and list(legs) == sorted(set(legs))
    with pytest.raises(ValueError, match="no such recipe file"):
        load_config("nonexistent_recipe")


def test_training_legs_carry_the_recipes_leg_overrides_from_their_leg_on(tmp_path):
    from types import SimpleNamespace

    from see3d_jax.train_config import load_config, load_recipe

    recipe = SimpleNamespace(LEGS=(2, 4, 6), LEG_OVERRIDES={4: ["learning_rate=0.5"], 6: ["batch_size=3"]})
    assert cli.training_legs(recipe, [], tmp_path / "train") == [
        (2, []), (4, ["learning_rate=0.5"]), (6, ["learning_rate=0.5", "batch_size=3"])]
    assert cli.training_legs(recipe, ["steps=9"], tmp_path / "train") == [(None, [])]  # one run as configured
    assert cli.training_legs(SimpleNamespace(LEGS=(2, 4)), [], tmp_path / "train") == [(2, []), (4, [])]
    with pytest.raises(ValueError, match="LEG_OVERRIDES must map ends in LEGS"):
        cli.training_legs(SimpleNamespace(LEGS=(2, 4), LEG_OVERRIDES={3: ["a=1"]}), [], tmp_path / "train")
    with pytest.raises(ValueError, match="LEG_OVERRIDES must map ends in LEGS"):
        cli.training_legs(SimpleNamespace(LEGS=(2, 4), LEG_OVERRIDES={4: "a=1"}), [], tmp_path / "train")
    # the demo recipe: warp-like masks from its last leg on, blobs before
    demo = load_recipe("demo")
    legs = cli.training_legs(demo, [], tmp_path / "none")
    assert [end for end, _ in legs] == list(demo.LEGS)
    assert load_config("demo", legs[0][1]).condition.masks.warp_like_fraction == 0.0
    assert load_config("demo", legs[-1][1]).condition.masks.warp_like_fraction == 0.5


@pytest.mark.slow  # 20 s: data, a tiny training, export, a rerun (the fast tier stays under 3 min)
def test_demo_checkpoint_command_builds_and_resumes(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from see3d_torch.unet import MultiViewUNet

    recipe = tmp_path / "tiny_recipe.py"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "weights"
    argv = ["demo-checkpoint", "--workdir", str(tmp_path / "run"), "--recipe", str(recipe), "--out", str(out), "--no-progress",
            "--cpu-devices", "1"]  # the tiny batch of 2 does not split over 4 devices (when jax starts here)
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


@pytest.mark.slow  # 50 s: two legs, a rerun, a one-leg run
def test_demo_checkpoint_runs_the_recipes_legs_in_one_command(tmp_path, capsys):
    """LEGS = (2, 4): the first leg trains 2 steps with a cosine over 2, the second resumes it
    with a cosine over 4 (as the embedded model was trained); a rerun only exports; `steps=`
    on the line runs one leg as configured."""
    recipe = tmp_path / "legs_recipe.py"
    recipe.write_text(TINY_RECIPE.replace('"steps=3"', '"steps=2", "warmup_steps=1", "log_every=1"')
                      .replace('"checkpoint_every=3"', '"checkpoint_every=2"') + "\nLEGS = (2, 4)\n")
    run = tmp_path / "run"
    argv = ["demo-checkpoint", "--workdir", str(run), "--recipe", str(recipe), "--out", str(tmp_path / "w"), "--no-progress",
            "--cpu-devices", "1"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)["train"]
    assert (summary["step"], summary["resumed_from"]) == (4, 2)
    events = [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events if e.get("event") in ("started", "resumed")] == [("started", 0), ("resumed", 2)]
    rates = {e["step"]: e["learning_rate"] for e in events if "learning_rate" in e}
    # step 3 runs on the 4-step cosine (warm-up 1, then a third of the way down to 10% of the
    # peak), not at the 2-step leg's end value 1e-4
    assert rates[3] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 3))), rel=1e-5)
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["train"]["resumed_from"] == 4
    assert cli.main([*argv, "steps=5"]) == 0  # one leg, as configured
    assert json.loads(capsys.readouterr().out)["train"]["step"] == 5
    recipe.write_text(recipe.read_text().replace("LEGS = (2, 4)", "LEGS = (4, 2)"))
    assert cli.main(["demo-checkpoint", "--workdir", str(tmp_path / "r3"), "--recipe", str(recipe), "--no-progress"]) == 2
    assert "LEGS must be increasing" in capsys.readouterr().err

