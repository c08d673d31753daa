import json
import subprocess
import sys

import numpy as np
import pytest

from see3d_cli import main as cli
from see3d_core import clips, videos


def test_labelled_videos_have_the_right_motion():
    moving = videos.make_video("moving_camera", 1, num_frames=6, width=64, height=48)
    static = videos.make_video("static_camera", 1, num_frames=6, width=64, height=48)
    jitter = videos.make_video("jitter", 1, num_frames=6, width=64, height=48)
    mixed = videos.make_video("mixed", 1, num_frames=9, width=64, height=48)
    assert np.abs(moving.frames[0].astype(int) - moving.frames[-1]).mean() > 5
    np.testing.assert_array_equal(static.frames[0], static.frames[-1])
    travel = np.linalg.norm(jitter.cameras[0].center - jitter.cameras[-1].center)
    assert 0 < travel < 0.05
    assert mixed.dynamic.tolist() == [False] * 7 + [True] * 2
    assert mixed.expected_status == "accepted"
    with pytest.raises(ValueError, match="unknown video kind"):
        videos.make_video("dancing", 0)


def test_mp4_and_frame_folder_round_trip(tmp_path):
    v = videos.make_video("moving_camera", 2, num_frames=5, width=64, height=48)
    videos.write_mp4(tmp_path / "v.mp4", v.frames, v.fps)
    frames, fps = videos.read_video(tmp_path / "v.mp4")
    assert frames.shape == v.frames.shape and fps == pytest.approx(v.fps)
    assert np.abs(frames.astype(float) - v.frames).mean() < 12  # lossy codec
    videos.write_frame_folder(tmp_path / "f", v.frames)
    assert len(list((tmp_path / "f").glob("*.png"))) == 5


def test_labelled_suite(tmp_path):
    labels = videos.write_labelled_suite(tmp_path, per_kind=1, num_frames=4, width=48, height=32)
    assert {lab["kind"] for lab in labels} == set(videos.KINDS)
    assert json.loads((tmp_path / "labels.json").read_text()) == labels
    for lab in labels:
        assert (tmp_path / lab["video"]).exists()


def test_world_command_writes_dataset_and_previews(tmp_path):
    assert cli.main(["world", "--out", str(tmp_path / "w"), "--frames", "4", "--size", "48"]) == 0
    assert (tmp_path / "w" / "preview.png").exists() and (tmp_path / "w" / "preview.mp4").exists()
    assert clips.ClipDataset(tmp_path / "w" / "dataset").validate() == 1
    # a second run into the same folder is refused without touching what is there
    assert cli.main(["world", "--out", str(tmp_path / "w"), "--frames", "4", "--size", "48"]) == 2
    assert clips.ClipDataset(tmp_path / "w" / "dataset").validate() == 1


def test_dataset_command_writes_posed_training_clips(tmp_path, capsys):
    from see3d_core.clips import read_clip

    out = tmp_path / "data"
    assert cli.main(["dataset", "--out", str(out), "--scenes", "2", "--frames", "3", "--size", "16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 2 and summary["pair_warps"] == 2
    clip_dir = next(p for p in out.iterdir() if p.is_dir())
    clip = read_clip(clip_dir)
    assert clip.frames.shape == (3, 16, 16, 3) and clip.depths.shape == (3, 16, 16) and clip.info.posed
    from see3d_core.clips import pair_warps_path

    with np.load(pair_warps_path(clip_dir, 16)) as warps:  # every frame into every other, for posed training
        assert warps["images"].shape == (3, 3, 16, 16, 3) and warps["images"].dtype == np.uint8
        assert warps["masks"].shape == warps["depths"].shape == (3, 3, 16, 16) and warps["masks"][0, 0].mean() > 0.5
    assert cli.main(["pair-warps", str(out), "--size", "8"]) == 0  # another training size
    assert json.loads(capsys.readouterr().out)["clips_written"] == 2 and pair_warps_path(clip_dir, 8).is_file()
    assert cli.main(["pair-warps", str(out), "--size", "8"]) == 0  # resumable: nothing left to write
    assert json.loads(capsys.readouterr().out)["clips_written"] == 0
    assert cli.main(["dataset", "--out", str(out), "--scenes", "2"]) == 2  # never writes into a non-empty folder
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["dataset", "--out", str(tmp_path / "bad"), "--scenes", "0"]) == 2


def test_pair_warps_of_an_older_warp_are_refused_and_rewritten(tmp_path, capsys):
    """Posed training must read the warp inference uses: files written before the warp changed
    (no "version", or an older one) give a named error and `see3d pair-warps` rewrites them."""
    from see3d_core.clips import PAIR_WARPS_VERSION, pair_warps_path, pair_warps_version
    from see3d_jax.data import training_batches

    out = tmp_path / "data"
    assert cli.main(["dataset", "--out", str(out), "--scenes", "1", "--frames", "3", "--size", "16"]) == 0
    capsys.readouterr()
    path = pair_warps_path(next(p for p in out.iterdir() if p.is_dir()), 16)
    with np.load(path) as stored:
        assert pair_warps_version(stored) == PAIR_WARPS_VERSION
        old = {k: stored[k] for k in stored.files if k != "version"}
    np.savez_compressed(path, **old)  # as written before files carried a version
    with pytest.raises(clips.ClipFormatError, match=r"pair_warps_16\.npz: pair warps written by warp version 1"):
        next(training_batches(out, num_views=2, image_size=16, batch_size=1, posed=True))
    assert cli.main(["pair-warps", str(out), "--size", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["clips_written"] == 1
    with np.load(path) as stored:
        assert pair_warps_version(stored) == PAIR_WARPS_VERSION
    assert next(training_batches(out, num_views=2, image_size=16, batch_size=1, posed=True))["pair_images"].shape[:3] == (1, 2, 2)


def test_dataset_is_written_once_per_spec(tmp_path):
    """`write_dataset_once` (see3d demo-checkpoint's and Table 3's data): kept for the same spec,
    written again for another, unknown arguments named."""
    spec = {"scenes": 1, "frames": 2, "size": 8, "seed": 3, "unposed": True}
    data = cli.write_dataset_once(tmp_path / "data", spec)
    assert data == tmp_path / "data" and clips.ClipDataset(data).validate() == 1
    assert json.loads((tmp_path / "data.done").read_text()) == spec
    (data / "kept").write_text("")
    assert cli.write_dataset_once(data, dict(spec)) == data and (data / "kept").is_file()  # same spec: kept
    cli.write_dataset_once(data, {**spec, "scenes": 2})  # another spec: written again from scratch
    assert not (data / "kept").exists() and clips.ClipDataset(data).validate() == 2
    with pytest.raises(ValueError, match="unpose"):
        cli.write_dataset_once(tmp_path / "other", {**spec, "unpose": True})


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "see3d_cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout
