"""`see3d demo` end to end at a reduced size (tiny random checkpoint, 16 px, a few steps), and
`see3d reconstruct` on what `see3d generate` writes."""

import json

import numpy as np
import pytest

pytest.importorskip("see3d_torch.splatting.reconstruct")

from see3d_cli import main as cli  # noqa: E402
from see3d_core import trajectories  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from see3d_core.unet_config import tiny
    from see3d_torch.unet import MultiViewUNet

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_demo_unet")
    MultiViewUNet(tiny()).save_pretrained(folder)
    return folder


def test_image_metrics_measure_against_the_truth():
    from see3d_torch.generation.demo import image_metrics

    truth = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    noisy = np.clip(truth + 0.1 * np.random.default_rng(1).standard_normal(truth.shape), 0, 1).astype(np.float32)
    same = image_metrics(list(truth), list(truth))
    assert same["psnr"] > 100 and same["ssim"] == pytest.approx(1.0, abs=1e-4) and same["lpips"] == pytest.approx(0, abs=1e-3)
    worse = image_metrics(list(noisy), list(truth))
    assert 19 < worse["psnr"] < 21.5 and worse["ssim"] < 0.98 and worse["lpips"] > same["lpips"] + 1e-3  # sigma 0.1 (clipped): ~20.5 dB
    assert len(worse["psnr_per_view"]) == 2
    with pytest.raises(ValueError, match="predicted"):
        image_metrics(list(noisy), list(truth[:1]))


def test_known_and_hole_metrics_split_the_pixels():
    from see3d_torch.generation.demo import known_and_hole_metrics

    truth = np.full((2, 8, 8, 3), 0.5, np.float32)
    masks = np.zeros((2, 8, 8), np.float32)
    masks[:, :, :4] = 1  # the left half known
    condition = truth + np.where(masks[..., None] > 0.5, 0.1, -0.5).astype(np.float32)  # known off by 0.1 -> 20 dB
    output = truth + np.where(masks[..., None] > 0.5, 0.01, 0.0316).astype(np.float32)  # 40 dB known, ~30 dB holes
    m = known_and_hole_metrics(output, condition, masks, truth)
    assert m["condition_known_psnr"] == pytest.approx(20.0, abs=1e-3) and m["known_psnr"] == pytest.approx(40.0, abs=1e-3)
    assert m["hole_psnr"] == pytest.approx(30.0, abs=0.01) and m["hole_fraction"] == 0.5
    assert m["known_vs_condition_psnr"] == pytest.approx(-10 * np.log10(0.09 ** 2), abs=1e-3)
    assert known_and_hole_metrics(output, condition, np.ones_like(masks), truth)["hole_psnr"] is None


def test_demo_end_to_end_reduced(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--weights", str(tiny_checkpoint), "--views", "3", "--steps", "2", "--splat-steps", "8", "--video-frames", "4"]
    import torch

    threads = torch.get_num_threads()
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert torch.get_num_threads() == threads  # --threads 1 (the demo's default) ends with the command
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"].startswith("full pipeline")
    for name in ("grid.png", "flythrough.mp4", "splat.ply", "metrics.json", "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"see3d-small", "warp-only"}
    for method in metrics["methods"].values():
        pixels = method.pop("generated views, known and hole pixels")
        assert set(method) == {"generated views", "rendered, orbit cameras", "rendered, held-out cameras"}
        for values in method.values():
            assert np.isfinite(values["psnr"]) and -1 <= values["ssim"] <= 1 and values["lpips"] >= 0
        # both methods keep the condition's known pixels: the model by composite_known (on), warp-only by construction
        assert pixels["known_vs_condition_psnr"] > 100 and pixels["known_psnr"] == pytest.approx(pixels["condition_known_psnr"])
        assert 0 < pixels["hole_fraction"] < 1 and np.isfinite(pixels["hole_psnr"])
    assert metrics["composite_known"] == {"see3d-small": True}
    assert len(metrics["methods"]["warp-only"]["generated views"]["psnr_per_view"]) == 2  # 3 orbit views, 1 input
    # warping the input (true depth) beats copying it to the targets, even 20 degrees away at 16 px
    from see3d_torch.generation.demo import DemoScene, image_metrics

    world = DemoScene.build(0, 3, 16, 40.0)
    copied = image_metrics([world.truth[world.input_index].rgb] * 2, world.target_truth, lpips=False)
    assert metrics["methods"]["warp-only"]["generated views"]["psnr"] > copied["psnr"] + 0.2
    html = (out / "report.html").read_text()
    assert "grid.png" in html and "flythrough.mp4" in html and "warp-only" in html and "PSNR" in html
    assert "composite_known is ON" in html and "Known and hole pixels" in html
    assert not (out / "MISSING_CHECKPOINT.txt").exists()
    import cv2

    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape[0] > 7 * 128  # true views + 3 rows per method, each view enlarged to >= 128 px
    run = out / "see3d-small" / "generation"
    assert len(trajectories.load_json(run / "cameras.json")) == 3


def test_demo_without_checkpoint_runs_the_labelled_baseline(tmp_path, capsys, monkeypatch):
    from see3d_torch.generation import demo

    monkeypatch.setattr(demo, "DEFAULT_CHECKPOINT", tmp_path / "absent")
    config = demo.DemoConfig(num_views=3, splat_steps=5, image_size=32, flythrough_frames=2, lpips=False, progress=False)
    summary = demo.run_demo(tmp_path / "d", config)
    world = demo.DemoScene.build(0, 3, 32, config.arc_deg)
    copied = demo.image_metrics([world.truth[world.input_index].rgb] * 2, world.target_truth, lpips=False)
    measured = json.loads((tmp_path / "d" / "metrics.json").read_text())["methods"]["warp-only"]
    assert measured["generated views"]["psnr"] > copied["psnr"] + 1.5  # measured: 14.7 vs 12.4 dB
    assert "MODEL CHECKPOINT MISSING" in summary["mode"] and "see3d demo-checkpoint" in summary["mode"]
    assert "MODEL CHECKPOINT MISSING" in (tmp_path / "d" / "MISSING_CHECKPOINT.txt").read_text()
    assert "MODEL CHECKPOINT MISSING" in (tmp_path / "d" / "report.html").read_text()
    assert list(json.loads((tmp_path / "d" / "metrics.json").read_text())["methods"]) == ["warp-only"]
    assert cli.main(["demo", "--out", str(tmp_path / "e"), "--weights", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_reconstruct_a_generation_run(tmp_path, capsys):
    from see3d_core import synthetic
    from see3d_torch.generation.backends import WarpOnlyBackend
    from see3d_torch.generation.loop import GenerationConfig, generate_views
    from see3d_torch.mono_depth import SyntheticDepthOracle

    scene = synthetic.make_scene(1)
    cams = synthetic.default_orbit(scene, 3, 24, 24, azimuth_deg=(-6, 6))
    frame = synthetic.render(scene, cams[1])
    result = generate_views([frame.rgb], [cams[1]], [cams[0], cams[2]], WarpOnlyBackend(), SyntheticDepthOracle(scene),
                            GenerationConfig(), input_depths=[frame.depth])
    result.save(tmp_path / "run")
    argv = ["reconstruct", str(tmp_path / "run"), "--out", str(tmp_path / "splat"), "--steps", "8", "--lpips-weight", "0", "--video-frames", "0"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["views"] == 3 and summary["depth_init"] is True
    assert (tmp_path / "splat" / "splat.ply").is_file() and len(list((tmp_path / "splat" / "renders").glob("*.png"))) == 3
    (tmp_path / "plain").mkdir()
    assert cli.main(["reconstruct", str(tmp_path / "plain"), "--out", str(tmp_path / "x")]) == 2
    assert "--cameras" in capsys.readouterr().err
