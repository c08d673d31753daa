"""WebVi3D curation: geometry pieces, the decision on labelled synthetic videos, the runner
(manifests, errors, resuming, workers, Ray) and the `see3d-curate` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from see3d_core import videos
from see3d_core.cameras import invert_pose
from see3d_core.clips import ClipDataset, read_manifest
from see3d_torch.curation import CurationConfig, curate, flow, geometry, io, pipeline, split, tracks
from see3d_torch.curation.cli import main as cli_main
from see3d_torch.curation.detectors import Detection, DetectorUnavailable, FaceCascadeDetector, count_dynamic, load_detector
from see3d_torch.curation.runner import reconcile


# --- pieces ---------------------------------------------------------------------------------

def _skew(t):
    return np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])


def test_sampson_error_is_zero_on_epipolar_lines_and_grows_off_them():
    rng = np.random.default_rng(0)
    K = np.array([[100.0, 0, 40], [0, 100, 30], [0, 0, 1]])
    R = cv2.Rodrigues(np.array([0.0, 0.05, 0.0]))[0]
    t = np.array([0.3, 0.02, 0.05])
    F = np.linalg.inv(K).T @ _skew(t) @ R @ np.linalg.inv(K)
    h, w = 60, 80
    xs, ys = geometry.pixel_grid(h, w)
    depth = rng.uniform(2, 6, size=(h, w))
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(K).T
    moved = (rays * depth[..., None]) @ R.T + t
    projected = moved @ K.T
    flow = (projected[..., :2] / projected[..., 2:]) - np.stack([xs, ys], -1)
    assert geometry.sampson_error(F, flow.astype(np.float32)).max() < 1e-3
    shifted = flow.copy()
    line = F @ np.array([10.0, 10.0, 1.0])
    normal = line[:2] / np.linalg.norm(line[:2])
    shifted[10, 10] += 3.0 * normal  # 3 px off the epipolar line
    error = geometry.sampson_error(F, shifted.astype(np.float32))
    assert 2.0 < error[10, 10] < 9.5  # Sampson approximates the squared distance (here in both images)


def test_dynamic_mask_keeps_blobs_and_drops_isolated_pixels():
    error = np.zeros((90, 90), np.float32)
    error[40:50, 40:50] = 100.0  # a moving object
    error[5, 5] = 100.0  # a single bad flow vector
    mask = geometry.dynamic_mask(error)
    assert mask[45, 45] and not mask[5, 5]
    assert mask[38, 45]  # dilated by the radius-2 disk


def test_robust_circle_ignores_outliers():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(20, 2)) * 2 + 50
    points[:5] += 300  # lost track jumping around
    centre, radius = tracks.robust_enclosing_circle(points, 0.6)
    assert radius < 8 and np.linalg.norm(centre - 50) < 4
    _, full = tracks.robust_enclosing_circle(points, 1.0)
    assert full > 100


def test_split_clips_drops_dynamic_frames_and_caps_length():
    dynamic = np.zeros(50, bool)
    dynamic[20:22] = True
    dynamic[47] = True
    assert split.split_clips(dynamic, max_frames=12, min_frames=5) == [(0, 10), (10, 20), (22, 30), (30, 39), (39, 47)]
    assert split.split_clips(dynamic, max_frames=40, min_frames=26) == []


def test_config_file_and_options(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[downsample]\ntemporal_stride = 3\n[viewpoint]\nnum_tracks = 50\n")
    config = CurationConfig.from_file(path).with_options(max_clip_frames=10)
    assert (config.downsample.temporal_stride, config.viewpoint.num_tracks, config.clips.max_clip_frames) == (3, 50, 10)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"motion": {"flow_speed": 1}}))
    with pytest.raises(ValueError, match="flow_speed"):
        CurationConfig.from_file(bad)
    with pytest.raises(TypeError, match="no_such_option"):
        CurationConfig().with_options(no_such_option=1)
    with pytest.raises(ValueError, match="window_stride"):
        CurationConfig().with_options(window_stride=0)
    with pytest.raises(ValueError, match="fallback_detector"):
        CurationConfig().with_options(fallback_detector="yolo")
    with pytest.raises(ValueError, match="window_residual_noise_multiple"):
        CurationConfig().with_options(window_residual_noise_multiple=-1.0)


def test_maskrcnn_missing_falls_back_to_the_face_cascade_or_is_reported_not_passed():
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision importable here")
    except Exception:
        pass
    fallback = load_detector(CurationConfig().semantic)
    assert isinstance(fallback, FaceCascadeDetector) and "torchvision" in fallback.replaces
    with pytest.raises(DetectorUnavailable, match="torchvision"):
        load_detector(CurationConfig().with_options(fallback_detector="none").semantic)


def test_face_cascade_counts_a_real_face_and_no_synthetic_one():
    pytest.importorskip("skimage")
    from skimage.data import astronaut

    detector = FaceCascadeDetector()
    image = astronaut()  # 512 x 512, Eileen Collins' face around x 170-290, y 60-170
    (found,) = detector.detect(image[None])
    scale = 512 / min(detector.size)  # the detector fits the image into 512 x 288
    centres = [((d.box[0] + d.box[2]) / 2 * scale, (d.box[1] + d.box[3]) / 2 * scale) for d in found]
    assert all(d.label == "person" for d in found)
    assert any(170 < x < 290 and 60 < y < 170 for x, y in centres), centres
    courtyard = videos.make_video("moving_camera", 1, num_frames=3, width=320, height=240).frames
    assert detector.detect(courtyard) == [[], [], []]
    # the runner ships detectors to worker processes: the cascade must survive pickling
    import pickle

    assert len(pickle.loads(pickle.dumps(detector)).detect(image[None])[0]) == len(found)


# --- decisions on labelled videos -------------------------------------------------------------

@pytest.fixture(scope="session")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    kinds = ["moving_camera", "static_camera", "jitter", "non_rigid", "mixed"]
    labels = []
    for i, kind in enumerate(kinds):
        video = videos.make_video(kind, 7 + i, num_frames=40, width=240, height=180)
        (root / kind).mkdir()
        if kind == "mixed":  # one frame folder among the mp4s
            rel = f"{kind}/{kind}_0"
            videos.write_frame_folder(root / rel, video.frames)
        else:
            rel = f"{kind}/{kind}_0.mp4"
            videos.write_mp4(root / rel, video.frames, video.fps)
        labels.append({"video": rel, **video.label()})
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00 ftypisom this is not a video")
    (root / "empty.webm").write_bytes(b"")
    return root, labels


@pytest.fixture(scope="session")
def curated(suite, tmp_path_factory):
    root, _ = suite
    out = tmp_path_factory.mktemp("curated")
    records = curate(root, out, detector="none", progress=False)
    return out, records


def _by_video(records):
    return {r["video"]: r for r in records}


@pytest.mark.slow
def test_labelled_decisions(suite, curated):
    _, labels = suite
    out, records = curated
    by_video = _by_video(records)
    for label in labels:
        r = by_video[label["video"]]
        assert r["status"] == label["expected_status"], (label["kind"], r["reason"], r["scores"])
        if label["kind"] == "static_camera":
            assert r["reason"] == "no_camera_motion"
        if label["kind"] == "non_rigid":
            assert r["reason"] == "non_rigid_motion", r["scores"]["motion"]["rigid_fit_ratio"]
        if label["kind"] == "jitter":
            assert r["reason"] in ("no_camera_motion", "small_viewpoint")
    mixed = by_video["mixed/mixed_0"]
    dataset = ClipDataset(out / "clips")
    assert dataset.validate() == sum(len(r["clips"]) for r in records) >= 2
    # clips are runs of the downsampled frames of their source (stride 2)
    for clip in mixed["clips"]:
        info = json.loads((out / clip / "clip.json").read_text())
        assert np.all(np.diff(info["frame_indices"]) == 2) and max(info["frame_indices"]) < 40
        assert info["source"] == "mixed/mixed_0"


def test_manifest_fields_and_skipped_semantic_step(curated):
    _, records = curated
    for r in records:
        assert set(r) >= {"video", "status", "reason", "clips", "scores", "steps"}
        assert (r["reason"] is None) == (r["status"] == "accepted")
        assert r["reason"] in (None, *pipeline.REASONS)
    accepted = next(r for r in records if r["status"] == "accepted")
    assert accepted["steps"]["semantic"]["status"] == "skipped"
    assert accepted["steps"]["motion"]["status"] == accepted["steps"]["viewpoint"]["status"] == "ran"
    assert {"mean_abs_flow", "dynamic_fractions", "precheck_edge_correlations"} <= set(accepted["scores"]["motion"])
    assert accepted["scores"]["viewpoint"]["tracks_measured"] > 0


def test_corrupt_and_empty_inputs_are_errors_and_the_run_goes_on(curated):
    _, records = curated
    by_video = _by_video(records)
    for name in ("broken.mp4", "empty.webm"):
        assert by_video[name]["status"] == "error" and by_video[name]["reason"] == "unreadable"
        assert name in by_video[name]["message"]
    assert len(records) == 7


class CrowdDetector:
    """Fake detector: sees five people in every frame."""

    name = "crowd"

    def detect(self, frames):
        return [[Detection("person", 0.9, (0, 0, 1, 1))] * 5 + [Detection("chair", 0.99, (0, 0, 1, 1))] for _ in frames]


def test_detector_interface_rejects_crowds(suite, tmp_path):
    root, _ = suite
    small = tmp_path / "in"
    small.mkdir()
    shutil.copy(root / "moving_camera/moving_camera_0.mp4", small / "a.mp4")
    (record,) = curate(small, tmp_path / "out", detector=CrowdDetector(), progress=False)
    assert record["status"] == "rejected" and record["reason"] == "semantic_dynamic"
    assert record["scores"]["semantic"]["detections"] == {"person": 5 * 20}  # 40 frames, stride 2: 20 of the first 21
    assert record["steps"]["motion"]["status"] == "skipped"
    assert count_dynamic([[Detection("person", 0.4, (0, 0, 1, 1))]], ["person"], 0.5) == {"person": 0}


def test_resume_skips_done_videos_and_cleans_a_killed_run(suite, curated, tmp_path):
    root, _ = suite
    out, records = curated
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    assert curate(root, copy, detector="none", progress=False) == []
    # simulate a run killed after writing the clips of the last video but before its manifest line
    original = (copy / "manifest.jsonl").read_text().splitlines()
    lines = list(original)
    last = json.loads(lines[-1])
    while not last["clips"]:
        lines.pop()
        last = json.loads(lines[-1])
    kept = lines[: lines.index(json.dumps(last))]
    (copy / "manifest.jsonl").write_text("\n".join(kept) + "\n" + lines[-1][:30])  # + a half-written line
    (copy / "clips" / ".orphan.tmp-123").mkdir()
    done = reconcile(copy)
    assert last["video"] not in done
    assert not (copy / last["clips"][0]).exists() and not (copy / "clips" / ".orphan.tmp-123").exists()
    again = curate(root, copy, detector="none", progress=False)
    assert sorted(r["video"] for r in again) == sorted(v for v in [json.loads(l)["video"] for l in original] if v not in done)
    assert ClipDataset(copy / "clips").validate() == sum(len(json.loads(l)["clips"]) for l in original)
    assert len(read_manifest(copy / "manifest.jsonl")) == len(records)


def _comparable(records):
    return sorted(({k: v for k, v in r.items() if k not in ("timings", "traceback")} for r in records), key=lambda r: r["video"])


@pytest.mark.slow
def test_workers_and_ray_give_identical_outputs(suite, curated, tmp_path):
    root, _ = suite
    out, records = curated
    with_workers = curate(root, tmp_path / "w2", detector="none", progress=False, workers=2)
    assert _comparable(with_workers) == _comparable(records)
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = curate(root, tmp_path / "ray", detector="none", progress=False, ray="auto")
    finally:
        ray.shutdown()
    assert _comparable(on_ray) == _comparable(records)
    names = sorted(p.name for p in (out / "clips").iterdir())
    assert sorted(p.name for p in (tmp_path / "ray" / "clips").iterdir()) == names
    some_clip = next(p for p in names if p != "manifest.jsonl")
    assert (out / "clips" / some_clip / "frame_000000.jpg").read_bytes() == (tmp_path / "ray" / "clips" / some_clip / "frame_000000.jpg").read_bytes()


def test_cli(suite, tmp_path, capsys):
    root, _ = suite
    small = tmp_path / "in"
    (small / "nested").mkdir(parents=True)
    shutil.copy(root / "static_camera/static_camera_0.mp4", small / "nested" / "s.mp4")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"semantic": {"detector": "none"}}))
    assert cli_main([str(small), str(tmp_path / "out"), "--config", str(config), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rejected"] == 1 and summary["reasons"] == {"no_camera_motion": 1}
    assert cli_main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "missing" in capsys.readouterr().err


def test_downsampling_reads_stride_and_size(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(9, 600, 800, 3), dtype=np.uint8)
    videos.write_frame_folder(tmp_path / "f", frames)
    video = io.read_downsampled(tmp_path / "f", CurationConfig().downsample)
    assert video.frames.shape == (5, 480, 640, 3)
    assert video.source_indices.tolist() == [0, 2, 4, 6, 8] and video.source_size == (800, 600)
    assert io.find_inputs(tmp_path) == ["f"]


def test_forward_backward_consistency_flags_mismatches_and_pixels_leaving_the_image():
    forward = np.zeros((40, 50, 2), np.float32)
    forward[..., 0] = 3.0  # everything moves 3 px to the right
    backward = -forward
    backward[10:20, 20:30] = 0.0  # an occluded patch: the backward flow does not undo the forward flow
    consistent = flow.forward_backward_consistent(forward, backward)
    assert consistent[30, 5] and not consistent[15, 20]  # x + f lands in the bad patch
    assert not consistent[5, 48]  # leaves the image
    assert consistent.mean() > 0.85


@pytest.mark.parametrize("kind", ["static_camera", "moving_camera"])
def test_short_videos_are_judged_by_the_frames_they_have(kind):
    # 12 frames after downsampling: fewer than the 21 flow pairs of the early exit and the 20
    # frames of the precheck; a static camera must still be "no_camera_motion", not "small_viewpoint"
    video = videos.make_video(kind, 3, num_frames=12, width=160, height=120)
    downsampled = io.DownsampledVideo(video.frames, np.arange(12) * 2, 7.5, 15.0, (160, 120))
    decision = pipeline.decide(downsampled, CurationConfig(), seed=0)
    if kind == "static_camera":
        assert (decision.status, decision.reason) == ("rejected", "no_camera_motion"), decision.scores
        # with the edge precheck out of the way the flow early exit, over the 11 pairs there are, decides
        no_precheck = pipeline.decide(downsampled, CurationConfig().with_options(precheck_correlation=1.1), seed=0)
        assert no_precheck.reason == "no_camera_motion" and no_precheck.steps["motion"]["exit"] == "flow early exit"
    else:
        assert decision.status == "accepted", (decision.reason, decision.scores)


def test_chained_flow_adds_steps_and_is_trusted_only_where_every_step_was():
    h, w = 20, 30
    step1 = np.zeros((h, w, 2), np.float32)
    step1[..., 0] = 2.0  # 2 px right
    step2 = np.zeros((h, w, 2), np.float32)
    step2[..., 1] = 3.0  # then 3 px down
    trusted2 = np.ones((h, w), bool)
    trusted2[10, 12] = False  # where pixel (10, 10) lands after the first step
    chained, valid, _ = flow.chain_flows([step1, step2], [np.ones((h, w), bool), trusted2])
    assert np.allclose(chained[5, 5], [2.0, 3.0])
    assert not valid[10, 10] and valid[10, 11] and valid[5, 5]
    assert not valid[5, w - 1]  # left the image in the first step
    margin = flow.away_from_untrusted(trusted2, 2)
    assert not margin[10, 14] and margin[10, 15] and not margin[0, 15]  # the border counts as untrusted


def test_mixed_video_is_cut_before_its_objects_start_moving():
    # the movers slide along the epipolar lines of adjacent frames: only the chained windows see them
    video = videos.make_video("mixed", 4, num_frames=48, width=240, height=180)
    frames = video.frames[::2]
    onset = int(np.argmax(video.dynamic[::2]))  # first downsampled frame with moving objects (17)
    downsampled = io.DownsampledVideo(frames, np.arange(0, 48, 2), 7.5, 15.0, (240, 180))
    decision = pipeline.decide(downsampled, CurationConfig(), seed=0)
    assert decision.status == "accepted", (decision.reason, decision.scores["motion"])
    assert decision.clip_ranges, decision.scores["motion"]
    assert max(stop for _, stop in decision.clip_ranges) <= onset + 1  # a frame of tolerance
    first_start, first_stop = decision.clip_ranges[0]
    assert first_start == 0 and first_stop - first_start >= CurationConfig().clips.min_clip_frames
    # the same video without the windows (the SPEC's adjacent-pair test alone) keeps the moving frames
    adjacent_only = pipeline.decide(downsampled, CurationConfig().with_options(window_frames=0), seed=0)
    assert max(stop for _, stop in adjacent_only.clip_ranges) > onset + 1


def test_window_fundamental_without_a_model_is_no_evidence_not_an_error(monkeypatch):
    def usac_without_model(*args):
        raise cv2.error("(-215:Assertion failed) !model.empty() in function 'setModelParameters'")

    monkeypatch.setattr(geometry.cv2, "findFundamentalMat", usac_without_model)
    flow_field = np.ones((30, 40, 2), np.float32)
    assert geometry.fundamental_from_flow(flow_field, np.ones((30, 40), bool), 100, np.random.default_rng(0), 1.0) is None


REAL_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_videos"


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_VIDEOS / "water.mp4").is_file(), reason="the real example videos are not on this machine")
def test_real_videos_are_decided_as_the_released_pipeline_decides_them(tmp_path):
    """The See3D authors' unfiltered examples: rushing water is non-rigid motion; the person on the
    stairs is rejected by the semantic step (here the face cascade, as torchvision is missing)."""
    records = {r["video"]: r for r in curate(REAL_VIDEOS, tmp_path / "out", progress=False)}
    water, person = records["water.mp4"], records["person_stairs.mp4"]
    assert (water["status"], water["reason"]) == ("rejected", "non_rigid_motion"), water["scores"]
    assert water["scores"]["semantic"]["total"] <= 10  # the semantic step ran and let it through
    assert (person["status"], person["reason"]) == ("rejected", "semantic_dynamic"), person["scores"]
    assert person["scores"]["semantic"]["detector"] == person["steps"]["semantic"]["detector"]


def test_smooth_non_rigid_patch_is_caught_by_the_summed_epipolar_residuals():
    """A wavy patch drifting 1.5 px per frame along the camera's epipolar lines: no adjacent pair
    and no chained window sees it; the pairs' epipolar distances summed along each path do."""
    video = videos.make_video("drifting_patch_along", 1, num_frames=40, width=240, height=180)
    downsampled = io.DownsampledVideo(video.frames[::2], np.arange(0, 40, 2), 7.5, 15.0, (240, 180))
    decision = pipeline.decide(downsampled, CurationConfig(), seed=0)
    motion = decision.scores["motion"]
    assert (decision.status, decision.reason) == ("rejected", "non_rigid_motion"), motion
    assert motion["dynamic_frame_share"] == 0 and max(motion["window_largest_regions"]) < 0.01
    assert motion["oscillating_window_share"] == 1.0  # off the epipolar lines pair after pair, never at a window's end
    assert max(motion["window_residual_regions"]) >= 0.01
    without = pipeline.decide(downsampled, CurationConfig().with_options(window_residual_noise_multiple=0.0), seed=0)
    assert without.status == "accepted", without.scores["motion"]


# --- the steps one by one (pure functions of their inputs) -----------------------------------

class _CountingDetector:
    name = "counting"
    replaces = "mask-rcnn"  # a fallback names what it stands in for

    def __init__(self, per_frame: int):
        self.per_frame = per_frame

    def detect(self, frames):
        return [[Detection("person", 0.9, (0, 0, 4, 4))] * self.per_frame + [Detection("cat", 0.9, (0, 0, 4, 4))] for _ in frames]


def test_semantic_step_counts_dynamic_classes_over_the_first_frames_and_rejects_above_the_limit():
    config = CurationConfig().semantic  # persons only, more than 10 detections reject
    frames = np.zeros((30, 8, 8, 3), np.uint8)
    passed = pipeline.semantic_step(frames, _CountingDetector(0), config)
    assert passed.rejected is None and passed.scores["total"] == 0 and passed.note == {"detector": "counting", "replaces": "mask-rcnn"}
    rejected = pipeline.semantic_step(frames, _CountingDetector(1), config)
    assert rejected.scores["frames"] == config.detector_frames and rejected.scores["detections"] == {"person": config.detector_frames}
    assert rejected.rejected == ("semantic_dynamic" if config.detector_frames > config.max_detections else None)
    at_limit = pipeline.semantic_step(frames[: config.max_detections], _CountingDetector(1), config)
    assert at_limit.scores["total"] == config.max_detections and at_limit.rejected is None  # the limit itself passes


def test_viewpoint_step_rejects_when_most_tracks_stay_within_a_small_circle():
    config = CurationConfig().viewpoint
    frames = np.zeros((40, 480, 640, 3), np.uint8)  # short side 480: the radii are the config's pixels

    def circling(radius):
        def tracker(grays, num):
            angles = np.linspace(0, 2 * np.pi, len(grays), endpoint=False)[:, None]
            start = np.random.default_rng(0).uniform(100, 300, (1, num, 2))
            return (start + radius * np.stack([np.cos(angles), np.sin(angles)], -1)).astype(np.float32)
        return tracker

    small = pipeline.viewpoint_step(frames, config, circling(0.5 * config.mean_radius_px))
    assert small.rejected == "small_viewpoint" and small.scores["tracks_measured"] == config.num_tracks
    assert small.scores["small_tracks"] == config.num_tracks
    wide = pipeline.viewpoint_step(frames, config, circling(2 * config.small_radius_px))
    assert wide.rejected is None and wide.scores["small_tracks"] == 0
    assert wide.scores["mean_radius"] == pytest.approx(2 * config.small_radius_px, rel=0.05)
    untracked = pipeline.viewpoint_step(frames, config, lambda grays, num: np.full((len(grays), 0, 2), np.nan, np.float32))
    assert untracked.rejected == "small_viewpoint"  # nothing tracked is no evidence of a viewpoint change


def _evidence(fractions, window_regions=(), residual_regions=(), rigid=(0.0, 0)):
    n = len(fractions)
    return pipeline.FlowEvidence(0.5, [3.0] * n, list(fractions), rigid[0], rigid[1], list(range(len(window_regions))),
                                 list(window_regions), list(residual_regions), False)


def test_judge_motion_tells_rigid_movers_from_deforming_content_and_flags_their_frames():
    config = CurationConfig().motion  # 6-frame windows at every frame, 0.6 of the frames dynamic rejects
    dynamic, static = 0.01, 0.0
    # 10 flow frames (9 pairs) of 12 frames; pairs 0-2 static, 3-8 dynamic: 6/9 >= 0.6
    fractions = [static] * 3 + [dynamic] * 6
    scores, frames, reason = pipeline.judge_motion(_evidence(fractions, rigid=(90.0, 100)), config, 12, 10)
    assert reason == "dynamic_objects" and scores["rigid_fit_ratio"] == 0.9
    assert frames.tolist() == [False] * 3 + [True] * 9  # pairs 3-8 touch frames 3-9; 10-11 were never checked
    _, _, reason = pipeline.judge_motion(_evidence(fractions, rigid=(50.0, 100)), config, 12, 10)
    assert reason == "non_rigid_motion"  # an affine motion explains too little of the regions
    # fewer dynamic pairs than the ratio: accepted, and the clean frames stay clean
    scores, frames, reason = pipeline.judge_motion(_evidence([static] * 8 + [dynamic]), config, 10, 10)
    assert reason is None and scores["dynamic_frame_share"] == round(1 / 9, 4) and frames.tolist() == [False] * 8 + [True] * 2
    # windows off their epipolar lines pair after pair but not at their end: oscillating, non-rigid
    # even where the adjacent pairs' regions would fit rigidly
    windows = [0.0] * 14  # 20 flow frames: windows start at frames 0-13 and flag frames 6-19 (0.7)
    residuals = [0.05] * 14
    scores, _, reason = pipeline.judge_motion(_evidence([static] * 19, windows, residuals, rigid=(90.0, 100)), config, 20, 20)
    assert scores["oscillating_window_share"] == 1.0 and scores["flagged_frame_share"] >= config.dynamic_frame_ratio
    assert reason == "non_rigid_motion"
