"""The per-video decision: steps 1-4 on frames in memory, with early exits.

One function per step, each a pure function of its inputs returning a `StepVerdict` (what it
measured, its note, the rejection reason if any): `downsample_step`, `semantic_step`,
`motion_step` (the static-camera precheck, flow with its early exit, dynamic masks; built from
`static_precheck`, `flow_evidence` and `judge_motion`) and `viewpoint_step`. `decide(video,
config)` runs them in order, stops at the first rejection and returns a `Decision` with the
numbers behind it and the static clip ranges; the runner calls it per video and writes the files.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Any

import cv2
import numpy as np

from see3d_torch.curation import detectors, flow, geometry, split, tracks
from see3d_torch.curation.config import CurationConfig, DownsampleConfig, MotionConfig, SemanticConfig, ViewpointConfig
from see3d_torch.curation.io import DownsampledVideo

REASONS = ("unreadable", "too_short", "no_camera_motion", "small_viewpoint", "semantic_dynamic", "dynamic_objects", "non_rigid_motion")
STEPS = ("downsample", "semantic", "motion", "viewpoint")
FLOW_REFERENCE_LONG_SIDE = 768  # static_flow_px is given at this flow resolution (SPEC.md)


@dataclasses.dataclass
class PairMotion:
    """Flow between two frames and what it says about rigidity."""

    forward: np.ndarray  # [H, W, 2]
    backward: np.ndarray
    consistent: np.ndarray  # [H, W] bool, forward-backward consistent
    fundamental: np.ndarray | None
    sampson: np.ndarray  # [H, W] px^2, 0 where inconsistent or without F
    mask: np.ndarray  # [H, W] bool dynamic pixels

    @property
    def mean_magnitude(self) -> float:
        return float(np.abs(self.forward).sum(axis=-1).mean())

    @property
    def dynamic_fraction(self) -> float:
        return float(self.mask.mean())

    @property
    def epipolar_distance(self) -> np.ndarray:
        """[H, W] px: each pixel's distance from its epipolar line (0 where not measured)."""
        return np.sqrt(self.sampson)

    @property
    def epipolar_noise(self) -> float:
        """The pair's typical distance from the epipolar lines (px): the median over consistent pixels."""
        return float(np.median(self.epipolar_distance[self.consistent])) if self.consistent.any() else 0.0


def analyse_pair(gray0: np.ndarray, gray1: np.ndarray, estimate_flow: flow.FlowEstimator, config: MotionConfig,
                 rng: np.random.Generator) -> PairMotion:
    forward = estimate_flow(gray0, gray1)
    backward = estimate_flow(gray1, gray0)
    consistent = flow.forward_backward_consistent(forward, backward, config.fb_relative, config.fb_absolute)
    F = geometry.fundamental_from_flow(forward, consistent, config.num_correspondences, rng)
    if F is None:
        sampson = np.zeros(gray0.shape, np.float32)
    else:
        # occluded or mismatched pixels have no trustworthy correspondence: they carry no evidence
        sampson = np.where(consistent, geometry.sampson_error(F, forward), 0.0).astype(np.float32)
    mask = geometry.dynamic_mask(sampson, config.sampson_percentile, config.sampson_threshold_divisor)
    return PairMotion(forward, backward, consistent, F, sampson, mask)


@dataclasses.dataclass
class WindowMotion:
    """Flow chained over several frames and the pixels it puts off their epipolar lines."""

    forward: np.ndarray  # [H, W, 2] first frame -> last frame of the window
    valid: np.ndarray  # [H, W] bool, every step trusted
    mask: np.ndarray  # [H, W] bool dynamic pixels (valid ones only)
    largest_region: float  # share of the frame covered by the largest dynamic region
    accumulated_residual: np.ndarray | None = None  # [H, W] px: adjacent pairs' epipolar distances summed along each path
    residual_region: float = 0.0  # share of the frame covered by the largest region of persistent residuals


def analyse_window(flows: list[np.ndarray], trusted: list[np.ndarray], config: MotionConfig,
                   rng: np.random.Generator, distances: list[np.ndarray] | None = None,
                   noise_px: list[float] | None = None) -> WindowMotion:
    """The Sampson test on consecutive flows chained over a window (see `MotionConfig.window_frames`)
    and, with the adjacent pairs' epipolar `distances` and their typical values `noise_px`, the
    distances summed along each pixel's path: motion that is small in every pair but never rigid
    (see `MotionConfig.window_residual_noise_multiple`)."""
    forward, valid, accumulated = flow.chain_flows(flows, trusted, distances)
    inlier_px = config.window_inlier_px * max(valid.shape) / FLOW_REFERENCE_LONG_SIDE
    F = geometry.fundamental_from_flow(forward, valid, config.window_correspondences, rng, inlier_px)
    if F is None:
        sampson = np.zeros(valid.shape, np.float32)
    else:
        sampson = np.where(valid, geometry.sampson_error(F, forward), 0.0).astype(np.float32)
    mask = geometry.dynamic_mask(sampson, config.sampson_percentile, config.window_sampson_divisor) & valid
    window = WindowMotion(forward, valid, mask, geometry.largest_region_fraction(mask), accumulated)
    if accumulated is not None:
        floor = config.window_residual_min_px * max(valid.shape) / FLOW_REFERENCE_LONG_SIDE
        limit = max(config.window_residual_noise_multiple * float(sum(noise_px or [0.0])), floor)
        window.residual_region = geometry.largest_region_fraction(geometry.open_small_specks((accumulated > limit) & valid))
    return window


def flow_frames(frames: np.ndarray, long_side: int) -> list[np.ndarray]:
    """Gray frames resized so the long side is at most `long_side` (never upscaled)."""
    h, w = frames.shape[1:3]
    scale = min(1.0, long_side / max(h, w))
    size = (int(round(w * scale)), int(round(h * scale)))
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    return [cv2.resize(g, size, interpolation=cv2.INTER_AREA) if size != (w, h) else g for g in grays]


def _required_static(available: int, required: int, of: int) -> int:
    """Static pairs needed among `available` when the rule asks `required` of `of`: the same
    share, rounded up, so a short video is judged by the pairs it has (never by zero pairs)."""
    if available <= 0:
        return 1  # no pair: no evidence of a static camera (the too_short rule handles tiny videos)
    return min(available, math.ceil(required * available / of - 1e-9))


def _in_long_runs(flags: np.ndarray, min_run: int) -> np.ndarray:
    """`flags` kept only inside runs of at least `min_run` consecutive True values."""
    kept = np.zeros(len(flags), bool)
    for start, stop in split.static_segments(~flags):  # the runs of True
        if stop - start >= min_run:
            kept[start:stop] = True
    return kept


@dataclasses.dataclass
class Decision:
    status: str  # "accepted" or "rejected"
    reason: str | None
    scores: dict[str, Any]
    steps: dict[str, dict[str, str]]
    clip_ranges: list[tuple[int, int]]  # [start, stop) in downsampled frames
    timings: dict[str, float]


@dataclasses.dataclass
class StepVerdict:
    """What one step measured (`scores`), what it records beside "ran" (`note`) and, when it
    rejects the video, why (`rejected`, one of `REASONS`)."""

    scores: dict[str, Any]
    note: dict[str, str] = dataclasses.field(default_factory=dict)
    rejected: str | None = None


@dataclasses.dataclass
class MotionVerdict(StepVerdict):
    # [N] bool: frames that a dynamic pair or window touched, or past the frames flow looked at;
    # None when the step stopped before judging the frames (a static camera)
    dynamic_frames: np.ndarray | None = None


def _round(values, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in values]


# --- step 1: downsampling (made `video`; its measurements and the length rule) ------------------

def downsample_step(video: DownsampledVideo, config: DownsampleConfig) -> StepVerdict:
    n, h, w = video.frames.shape[:3]
    scores = {"frames": int(n), "width": int(w), "height": int(h), "fps": round(video.fps, 4),
              "source_width": int(video.source_size[0]), "source_height": int(video.source_size[1])}
    return StepVerdict(scores, rejected="too_short" if n < config.min_frames else None)


# --- step 2: semantic dynamic recognition -------------------------------------------------------

def semantic_step(frames: np.ndarray, detector: detectors.Detector, config: SemanticConfig) -> StepVerdict:
    found = detector.detect(frames[: config.detector_frames])
    counts = detectors.count_dynamic(found, config.dynamic_classes, config.score_threshold)
    scores = {"detector": detector.name, "frames": min(len(frames), config.detector_frames),
              "detections": counts, "total": int(sum(counts.values()))}
    replaces = getattr(detector, "replaces", None)  # a fallback says what it stands in for
    note = {"detector": detector.name, **({"replaces": replaces} if replaces else {})}
    return StepVerdict(scores, note, "semantic_dynamic" if sum(counts.values()) > config.max_detections else None)


# --- step 3: static-camera precheck, flow with early exit, dynamic masks -------------------------

def static_precheck(grays: list[np.ndarray], config: MotionConfig) -> tuple[np.ndarray, int, bool]:
    """Edge correlations of the precheck's frame pairs, how many say "static", and whether
    enough do to call the camera static."""
    correlations = geometry.edge_correlations(grays[: config.precheck_frames : config.precheck_step], config.canny_low, config.canny_high)
    static_pairs = int(np.sum(correlations >= config.precheck_correlation))
    precheck_pairs = max(1, config.precheck_frames // config.precheck_step - 1)  # 9 with the SPEC settings
    # a short video is judged by the pairs it has (>= 3 of them; fewer: the flow early exit decides)
    static = len(correlations) >= 3 and static_pairs >= _required_static(len(correlations), config.precheck_min_static_pairs, precheck_pairs)
    return correlations, static_pairs, static


@dataclasses.dataclass
class FlowEvidence:
    """What flow over consecutive frames measured, pair by pair and window by window."""

    static_px: float  # mean flow at or below which a pair counts as static, at the flow resolution
    magnitudes: list[float]  # per pair: mean absolute flow
    fractions: list[float]  # per pair: dynamic pixel fraction
    rigid_inliers: float  # over the dynamic pairs' regions: pixels an affine motion explains
    rigid_pixels: int  # ... out of these
    window_starts: list[int]
    window_regions: list[float]  # per window: largest region off the chained flow's epipolar lines
    residual_regions: list[float]  # per window: largest region of persistent epipolar residuals
    static: bool  # the early exit fired: enough of the first pairs barely moved


def flow_evidence(grays: list[np.ndarray], estimate_flow: flow.FlowEstimator, config: MotionConfig, seed: int) -> FlowEvidence:
    """Flow pair by pair (and chained over windows) until the early exit or the last frame."""
    fh, fw = grays[0].shape
    rng = np.random.default_rng(seed)
    static_px = config.static_flow_px * max(fh, fw) / FLOW_REFERENCE_LONG_SIDE
    magnitudes, fractions, rigid_inliers, rigid_pixels = [], [], 0.0, 0
    tolerance = config.rigid_tolerance_px * max(fh, fw) / FLOW_REFERENCE_LONG_SIDE
    margin = round(config.occlusion_margin_px * max(fh, fw) / FLOW_REFERENCE_LONG_SIDE)
    recent = collections.deque(maxlen=config.window_frames)  # (forward flow, trusted, epipolar distance, its noise) of the last pairs
    window_starts, window_regions, residual_regions = [], [], []
    min_region = max(8, round(fh * fw * 4e-4))  # regions smaller than 0.04% of the frame are too small to fit
    # short videos: the early exit looks at all their pairs and asks the same share to be static
    early_exit_pairs = min(config.early_exit_pairs, len(grays) - 1)
    early_exit_static = _required_static(early_exit_pairs, config.early_exit_min_static, config.early_exit_pairs)

    def flow_says_static() -> bool:
        return len(magnitudes) == early_exit_pairs and sum(m <= static_px for m in magnitudes) >= early_exit_static

    for i in range(len(grays) - 1):
        pair = analyse_pair(grays[i], grays[i + 1], estimate_flow, config, rng)
        magnitudes.append(pair.mean_magnitude)
        fractions.append(pair.dynamic_fraction)
        if pair.dynamic_fraction > config.dynamic_pixel_fraction:
            ratio, pixels = geometry.rigid_fit_ratio(pair.forward, pair.mask, pair.consistent, tolerance, rng, min_region)
            if pixels:
                rigid_inliers += ratio * pixels
                rigid_pixels += pixels
        if config.window_frames:
            recent.append((pair.forward, flow.away_from_untrusted(pair.consistent, margin), pair.epipolar_distance, pair.epipolar_noise))
            start = i + 1 - config.window_frames
            if start >= 0 and start % config.window_stride == 0:
                flows_, trusted_, distances, noises = (list(parts) for parts in zip(*recent))
                accumulate = config.window_residual_noise_multiple > 0
                window = analyse_window(flows_, trusted_, config, rng, distances if accumulate else None, noises if accumulate else None)
                window_starts.append(start)
                window_regions.append(window.largest_region)
                residual_regions.append(window.residual_region)
        if flow_says_static():
            break
    return FlowEvidence(static_px, magnitudes, fractions, rigid_inliers, rigid_pixels, window_starts, window_regions,
                        residual_regions, flow_says_static())


def judge_motion(evidence: FlowEvidence, config: MotionConfig, num_frames: int, num_flow_frames: int
                 ) -> tuple[dict[str, Any], np.ndarray, str | None]:
    """From the flow evidence of a moving camera: the measurements, the frames that dynamic
    pairs or windows touched ([num_frames] bool) and the rejection reason, if any."""
    dynamic_pairs = np.array(evidence.fractions) > config.dynamic_pixel_fraction
    dynamic_share = float(dynamic_pairs.mean())
    off_after_window = np.array(evidence.window_regions) >= config.window_min_region  # chained flow ends off its epipolar line
    persistently_off = np.array(evidence.residual_regions) >= config.window_min_region  # off in every pair along the way
    dynamic_windows = _in_long_runs(off_after_window | persistently_off, config.window_min_run)
    window_share = float(dynamic_windows.mean()) if len(dynamic_windows) else 0.0
    # off the epipolar lines pair after pair but not at the window's end: the motion went back and forth
    oscillating = persistently_off & ~off_after_window
    oscillating_share = float(oscillating[dynamic_windows].mean()) if dynamic_windows.any() else 0.0
    # Clips drop every frame a dynamic pair or window touches (frames past the flow range were not
    # checked). The video-level share counts a window from its last frame up to the next window's last
    # frame only: the motion it sees has happened by then, and a mover that starts late must not claim
    # the frames before it moved.
    per_frame = np.ones(num_frames, bool)
    per_frame[:num_flow_frames] = False
    seen_moving = np.zeros(num_flow_frames, bool)
    for i in np.flatnonzero(dynamic_pairs):
        per_frame[i : i + 2] = seen_moving[i : i + 2] = True
    for start in np.array(evidence.window_starts, int)[dynamic_windows]:
        per_frame[start : start + config.window_frames + 1] = True
        seen_moving[start + config.window_frames : start + config.window_frames + config.window_stride] = True
    flagged_share = float(seen_moving.mean())
    rigid_pixels = evidence.rigid_pixels
    scores = {"flagged_frame_share": round(flagged_share, 4), "dynamic_frame_share": round(dynamic_share, 4),
              "rigid_fit_ratio": round(evidence.rigid_inliers / rigid_pixels, 4) if rigid_pixels else None,
              "window_frames": config.window_frames, "window_starts": evidence.window_starts,
              "window_largest_regions": _round(evidence.window_regions), "window_residual_regions": _round(evidence.residual_regions),
              "dynamic_window_share": round(window_share, 4), "oscillating_window_share": round(oscillating_share, 4)}
    # the SPEC rule on adjacent pairs, or frames flagged by pairs or windows (windows catch objects that
    # move along the epipolar lines of adjacent frames)
    if max(dynamic_share, flagged_share) < config.dynamic_frame_ratio:
        return scores, per_frame, None
    # Content that leaves its epipolar line and comes back within a window (ripples, waves, haze)
    # deforms: a rigid body moving through the scene accumulates its offset. Otherwise the affine
    # fit of adjacent pairs' regions tells rigid movers from deforming content; chained flow does not
    # (waving walls fit as well as movers). Without adjacent regions to fit, motion that only windows
    # saw is typically an object sliding along the epipolar lines.
    if oscillating_share >= config.oscillating_window_share:
        rigid = False
    elif rigid_pixels:
        rigid = evidence.rigid_inliers / rigid_pixels >= config.rigid_inlier_ratio
    else:
        rigid = dynamic_share < config.dynamic_frame_ratio
    return scores, per_frame, "dynamic_objects" if rigid else "non_rigid_motion"


def motion_step(frames: np.ndarray, config: MotionConfig, seed: int = 0) -> MotionVerdict:
    """The static-camera precheck, flow with its early exit, and the dynamic-content rules;
    `seed` makes the random correspondence samples reproducible."""
    grays = flow_frames(frames[: config.max_flow_frames], config.flow_long_side)
    fh, fw = grays[0].shape
    correlations, static_pairs, static = static_precheck(grays, config)
    scores: dict[str, Any] = {"flow_width": fw, "flow_height": fh, "precheck_edge_correlations": _round(correlations),
                              "precheck_static_pairs": static_pairs}
    if static:
        return MotionVerdict(scores, {"exit": "static-camera precheck"}, "no_camera_motion")
    estimate_flow, flow_name, flow_note = flow.make_flow(config)
    scores["flow"] = flow_name
    evidence = flow_evidence(grays, estimate_flow, config, seed)
    scores.update({"static_flow_px": round(evidence.static_px, 4), "mean_abs_flow": _round(evidence.magnitudes),
                   "dynamic_fractions": _round(evidence.fractions, 6)})
    note = {"flow": flow_name} | ({"flow_note": flow_note} if flow_note else {})
    if evidence.static:
        return MotionVerdict(scores, {"exit": "flow early exit", **note}, "no_camera_motion")
    judged, dynamic_frames, reason = judge_motion(evidence, config, len(frames), len(grays))
    return MotionVerdict(scores | judged, note, reason, dynamic_frames)


# --- step 4: small viewpoint --------------------------------------------------------------------

def viewpoint_step(frames: np.ndarray, config: ViewpointConfig, tracker: tracks.Tracker = tracks.klt_tracks) -> StepVerdict:
    h, w = frames.shape[1:3]
    scale = min(h, w) / config.reference_short_side
    sampled = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames[:: config.track_stride]]
    point_tracks = tracker(sampled, config.num_tracks)
    radii, _ = tracks.track_radii(point_tracks, config.circle_fraction)
    small_radius, mean_limit = config.small_radius_px * scale, config.mean_radius_px * scale
    num_small = int(np.sum(radii <= small_radius))
    mean_radius = float(radii.mean()) if len(radii) else 0.0
    scores = {
        "tracker": getattr(tracker, "__name__", type(tracker).__name__), "tracked_frames": len(sampled),
        "tracks": int(point_tracks.shape[1]), "tracks_measured": int(len(radii)),
        "small_tracks": num_small, "small_radius_px": round(small_radius, 3),
        "mean_radius": round(mean_radius, 4), "median_radius": round(float(np.median(radii)), 4) if len(radii) else 0.0,
        "mean_radius_limit_px": round(mean_limit, 3),
    }
    small = len(radii) == 0 or (num_small >= config.min_small_tracks and mean_radius <= mean_limit)
    return StepVerdict(scores, rejected="small_viewpoint" if small else None)


# --- the decision: the steps in order, each one's verdict recorded, the first rejection final ----

class _Run:
    """Bookkeeping of one decision: steps, scores, timings, early exits."""

    def __init__(self):
        self.steps: dict[str, dict[str, str]] = {}
        self.scores: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.rejected: str | None = None
        self._t = time.perf_counter()

    def ran(self, step: str, verdict: StepVerdict) -> bool:
        """Record the step's verdict; True when it rejected the video."""
        self.scores[step] = verdict.scores
        self.steps[step] = {"status": "ran", **verdict.note}
        now = time.perf_counter()
        self.timings[step] = round(now - self._t, 4)
        self._t = now
        self.rejected = verdict.rejected
        return verdict.rejected is not None

    def skip(self, step: str, why: str) -> None:
        self.steps[step] = {"status": "skipped", "why": why}
        self._t = time.perf_counter()

    def decision(self, clip_ranges=()) -> Decision:
        for step in STEPS:
            if step not in self.steps:
                self.skip(step, f"rejected earlier: {self.rejected}")
        status = "rejected" if self.rejected else "accepted"
        return Decision(status, self.rejected, self.scores, self.steps, list(clip_ranges), self.timings)


def decide(video: DownsampledVideo, config: CurationConfig = CurationConfig(), detector: detectors.Detector | None = None,
           detector_skip_reason: str | None = None, tracker: tracks.Tracker = tracks.klt_tracks, seed: int = 0) -> Decision:
    """Accept or reject one downsampled video (steps 2-4; step 1 made `video`).

    `detector=None` skips step 2 and records `detector_skip_reason`. `seed` makes the random
    correspondence samples reproducible (the runner derives it from the video's path)."""
    run = _Run()
    frames = video.frames
    if run.ran("downsample", downsample_step(video, config.downsample)):
        return run.decision()
    if detector is None:
        run.skip("semantic", detector_skip_reason or "no detector configured")
    elif run.ran("semantic", semantic_step(frames, detector, config.semantic)):
        return run.decision()
    motion = motion_step(frames, config.motion, seed)
    if run.ran("motion", motion):
        return run.decision()
    if run.ran("viewpoint", viewpoint_step(frames, config.viewpoint, tracker)):
        return run.decision()
    # clips: runs of frames that no dynamic pair or window touched
    return run.decision(split.split_clips(motion.dynamic_frames, config.clips.max_clip_frames, config.clips.min_clip_frames))
