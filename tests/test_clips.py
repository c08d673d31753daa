import json

import numpy as np
import pytest

from see3d_core import clips, synthetic


def small_frames(n=3, h=16, w=24):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_write_read_round_trip_with_cameras_and_depth(tmp_path):
    scene = synthetic.make_scene(0)
    cams = synthetic.default_orbit(scene, 3, 32, 24)
    frames = synthetic.render_trajectory(scene, cams)
    ds = clips.ClipDataset(tmp_path / "ds")
    ds.add_clip("a", [f.rgb for f in frames], source="synthetic", fps=10, cameras=cams, depths=[f.depth for f in frames])
    ds.add_clip("b", small_frames(), source="video.mp4", fps=30, frame_indices=[0, 2, 4])
    assert len(ds) == 2 and ds.validate() == 2
    clip = clips.read_clip(tmp_path / "ds" / "a")
    assert clip.frames.shape == (3, 24, 32, 3) and clip.frames.dtype == np.uint8
    np.testing.assert_array_equal(clip.depths, np.stack([f.depth for f in frames]))
    np.testing.assert_allclose(clip.info.cameras()[1].c2w, cams[1].c2w)
    np.testing.assert_allclose(clip.frames / 255.0, np.stack([f.rgb for f in frames]), atol=0.5 / 255 + 1e-6)
    b = clips.read_clip(tmp_path / "ds" / "b", indices=[2])
    np.testing.assert_array_equal(b.frames[0], small_frames()[2])
    assert not b.info.posed


def test_refuses_to_overwrite_and_leaves_no_temp(tmp_path):
    clips.write_clip(tmp_path / "c", small_frames(), source="s", fps=1)
    with pytest.raises(FileExistsError):
        clips.write_clip(tmp_path / "c", small_frames(), source="s", fps=1)
    with pytest.raises(clips.ClipFormatError, match="frame 1 has shape"):
        clips.write_clip(tmp_path / "d", [np.zeros((4, 4, 3)), np.zeros((5, 4, 3))], source="s", fps=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.pop("fps"), "missing"),
        (lambda m: m.update(frames=["frame_000000.png"]), "frame_indices"),
        (lambda m: m.update(width=0), "width"),
        (lambda m: m.update(c2w=[np.eye(4).tolist()] * 3), "given together"),
        (lambda m: m.update(intrinsics=[np.eye(3).tolist()] * 3, c2w=[(2 * np.eye(4)).tolist()] * 3), "orthonormal"),
        (lambda m: m.update(frames=["a.png", "b.png", "c.png"]), "missing"),
        (lambda m: m.update(format_version=99), "format_version"),
    ],
)
def test_malformed_clip_errors_name_the_clip(tmp_path, mutate, message):
    clip_dir = tmp_path / "clip7"
    clips.write_clip(clip_dir, small_frames(), source="s", fps=1)
    meta = json.loads((clip_dir / "clip.json").read_text())
    mutate(meta)
    (clip_dir / "clip.json").write_text(json.dumps(meta))
    with pytest.raises(clips.ClipFormatError, match=message) as err:
        clips.read_clip(clip_dir)
    assert "clip7" in str(err.value)


def test_wrong_image_size_and_corrupt_image(tmp_path):
    clip_dir = tmp_path / "c"
    clips.write_clip(clip_dir, small_frames(), source="s", fps=1)
    meta = json.loads((clip_dir / "clip.json").read_text())
    meta["width"] = 99
    (clip_dir / "clip.json").write_text(json.dumps(meta))
    with pytest.raises(clips.ClipFormatError, match="clip.json says 99x16"):
        clips.read_clip(clip_dir)
    meta["width"] = 24
    (clip_dir / "clip.json").write_text(json.dumps(meta))
    (clip_dir / "frame_000001.png").write_bytes(b"not a png")
    with pytest.raises(clips.ClipFormatError, match="cannot be decoded"):
        clips.read_clip(clip_dir)


def test_manifest_tolerates_a_killed_writer_but_not_garbage(tmp_path):
    ds = clips.ClipDataset(tmp_path)
    ds.add_clip("a", small_frames(), source="s", fps=1)
    with open(ds.manifest_path, "a") as fh:
        fh.write('{"clip": "b", "num_fr')  # the writer died mid-line
    assert [e["clip"] for e in ds.entries()] == ["a"]
    ds.manifest_path.write_text('{"clip": "a"}\nnot json\n{"clip": "a"}\n')
    with pytest.raises(clips.ClipFormatError, match="manifest.jsonl:2"):
        ds.entries()


def test_missing_dataset_and_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clips.ClipDataset(tmp_path / "nope").entries()
    with pytest.raises(clips.ClipFormatError, match="manifest.jsonl is missing"):
        clips.ClipDataset(tmp_path).entries()


def test_synthetic_dataset(tmp_path):
    ds = clips.write_synthetic_dataset(tmp_path / "syn", num_scenes=2, frames_per_clip=4, width=32, height=32)
    assert ds.validate() == 2
    clip = next(iter(ds))
    assert clip.info.posed and clip.depths.shape == (4, 32, 32)
