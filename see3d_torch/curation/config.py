"""Curation settings: one small dataclass per step, every SPEC.md threshold a default.

Pixel thresholds are given at a reference resolution (`reference_short_side` for tracks and
flow magnitudes) and scaled to the resolution the step actually runs at, so a decision does
not change when the same video arrives at another size.

A config file (JSON or TOML) holds one table per step, e.g.::

    [downsample]
    temporal_stride = 3
    [viewpoint]
    num_tracks = 200

and `CurationConfig.with_options(temporal_stride=3)` changes single fields by name (field
names are unique across steps).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from see3d_core.dataclass_json import from_json_dict, to_json_dict


@dataclasses.dataclass(frozen=True)
class DownsampleConfig:
    """Step 1: keep every `temporal_stride`-th frame, at most `max_seconds`, short side <= `short_side`."""

    temporal_stride: int = 2
    short_side: int = 480
    max_seconds: float = 150.0
    frame_folder_fps: float = 30.0  # frame folders carry no frame rate
    min_frames: int = 8  # fewer frames after downsampling: rejected "too_short"


@dataclasses.dataclass(frozen=True)
class SemanticConfig:
    """Step 2: instance detection on the first frames; too many dynamic-class detections reject."""

    detector: str = "maskrcnn"  # "maskrcnn", "face_cascade" or "none"
    # used when Mask R-CNN cannot run (no torchvision or weights): "face_cascade" (scikit-image's
    # LBP frontal-face cascade, one person per face) or "none" (step 2 recorded as skipped)
    fallback_detector: str = "face_cascade"
    detector_weights: str | None = None  # local Mask R-CNN weights; default: torch's hub cache
    detector_frames: int = 21
    detector_width: int = 1024
    detector_height: int = 576
    score_threshold: float = 0.5
    dynamic_classes: tuple[str, ...] = ("person",)
    max_detections: int = 10  # rejected when the total count over the frames is larger

    def __post_init__(self):
        if self.detector not in ("maskrcnn", "face_cascade", "none"):
            raise ValueError(f"semantic.detector must be 'maskrcnn', 'face_cascade' or 'none', got {self.detector!r}")
        if self.fallback_detector not in ("face_cascade", "none"):
            raise ValueError(f"semantic.fallback_detector must be 'face_cascade' or 'none', got {self.fallback_detector!r}")


@dataclasses.dataclass(frozen=True)
class MotionConfig:
    """Step 3: static-camera precheck, dense flow, Sampson error, dynamic masks."""

    flow: str = "dis"  # "dis", "farneback" or "raft" (RAFT needs torchvision)
    dis_preset: str = "fast"  # "ultrafast", "fast" or "medium"
    flow_long_side: int = 512  # SPEC: 768 in the released code; 512 is 2.25x cheaper (thresholds scale with size)
    max_flow_frames: int = 200
    # precheck: Canny edge maps of every `precheck_step`-th of the first `precheck_frames` frames
    precheck_frames: int = 20
    precheck_step: int = 2
    canny_low: int = 50
    canny_high: int = 100
    precheck_correlation: float = 0.7
    precheck_min_static_pairs: int = 8
    # early exit: >= early_exit_min_static of the first early_exit_pairs pairs barely move
    early_exit_pairs: int = 21
    early_exit_min_static: int = 20
    static_flow_px: float = 0.4  # mean |u| + |v|, at flow_long_side
    # forward-backward consistency |f + b(f)| < fb_relative (|f| + |b(f)|) + fb_absolute
    fb_relative: float = 0.5
    fb_absolute: float = 0.5
    num_correspondences: int = 500
    sampson_percentile: float = 80.0
    sampson_threshold_divisor: float = 8100.0  # dynamic pixel: error > H * W / divisor (px^2)
    dynamic_pixel_fraction: float = 1e-4  # a frame is dynamic above this mask fraction
    dynamic_frame_ratio: float = 0.6  # a video is dynamic when this share of frames is
    # dynamic regions that fit their own affine motion: "dynamic_objects", else "non_rigid_motion".
    # Measured on the synthetic suite (240x180 and 320x240): rigid movers 0.82-0.90, waving walls 0.47-0.72
    rigid_inlier_ratio: float = 0.77
    # a region pixel fits when within this many flow pixels of the affine fit, at a flow long side of
    # 768 (scaled with the flow size, so that a verdict does not depend on the input resolution)
    rigid_tolerance_px: float = 2.4
    # Long-baseline windows: the consecutive flows chained over `window_frames` frames. An object moving
    # along the epipolar lines of adjacent frames (a horizontal mover seen from a horizontal orbit) is
    # off the epipolar lines of frames further apart, once the camera has turned. 0 turns windows off.
    window_frames: int = 6
    window_stride: int = 1  # a window starts at every `window_stride`-th frame
    window_correspondences: int = 1000
    window_inlier_px: float = 2.4  # MAGSAC++ inlier threshold of a window's F, pixels at flow long side 768
    window_sampson_divisor: float = 8100.0  # dynamic pixel in a window: error > H * W / divisor (px^2)
    # Accumulated residuals: each adjacent pair's epipolar distance (sqrt of its Sampson error) summed
    # along the chained path over the window. Smooth non-rigid motion (water, haze, flags) moves a few
    # pixels per frame: under the Sampson threshold of any single pair (3 px at 320 px wide), and when it
    # oscillates, under that of the chained flow too, but it is off its epipolar line in every pair. A
    # static pixel's distances are noise: a pixel is persistently off when its sum exceeds this multiple
    # of the sum of the pairs' median distances (their noise level, 0.02-0.09 px per pair on the
    # synthetic suite), and at least `window_residual_min_px` (pixels at a flow long side of 768).
    # 0 turns the test off.
    window_residual_noise_multiple: float = 8.0
    window_residual_min_px: float = 1.0
    # reason: "non_rigid_motion" when at least this share of the dynamic windows are off the epipolar
    # lines in every pair but not at their end (back-and-forth motion). Measured at 320x240: drifting
    # patches along the epipolar lines without adjacent-pair regions 0.89-1.0, rejected rigid movers
    # 0-0.08, waving walls and drifting patches across the lines 0 (they accumulate).
    oscillating_window_share: float = 0.5
    window_min_region: float = 0.01  # a window is dynamic when its largest dynamic region covers this share
    window_min_run: int = 2  # ... and so are its neighbours in a run this long (flow errors are sporadic, movers persist)
    # chained flow is trusted only this far (pixels at a flow long side of 768) from forward-backward
    # failures and the border: next to occlusion edges DIS drags the background along with the occluder
    occlusion_margin_px: float = 10.0

    def __post_init__(self):
        for name, least in (("window_frames", 0), ("window_stride", 1), ("window_min_run", 1), ("window_correspondences", 8),
                            ("window_residual_noise_multiple", 0), ("window_residual_min_px", 0), ("oscillating_window_share", 0)):
            if getattr(self, name) < least:
                raise ValueError(f"motion.{name} must be >= {least}, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ViewpointConfig:
    """Step 4: point tracks and a robust minimum enclosing circle per track."""

    tracker: str = "klt"
    num_tracks: int = 100
    track_stride: int = 4
    circle_fraction: float = 0.6  # the circle holds at least this share of a track's points
    reference_short_side: int = 480  # the radii below are pixels at this short side
    small_radius_px: float = 20.0
    min_small_tracks: int = 40
    mean_radius_px: float = 10.0


@dataclasses.dataclass(frozen=True)
class ClipSplitConfig:
    """Cut accepted videos into static clips."""

    max_clip_frames: int = 32
    min_clip_frames: int = 8
    image_format: str = "jpg"  # quality 95; PNG ("png") is lossless but 5x slower to write at 480p


SECTIONS = {
    "downsample": DownsampleConfig,
    "semantic": SemanticConfig,
    "motion": MotionConfig,
    "viewpoint": ViewpointConfig,
    "clips": ClipSplitConfig,
}


@dataclasses.dataclass(frozen=True)
class CurationConfig:
    downsample: DownsampleConfig = DownsampleConfig()
    semantic: SemanticConfig = SemanticConfig()
    motion: MotionConfig = MotionConfig()
    viewpoint: ViewpointConfig = ViewpointConfig()
    clips: ClipSplitConfig = ClipSplitConfig()
    seed: int = 0  # seeds the random correspondence samples (decisions are reproducible)

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "CurationConfig":
        """Sections (tables) of fields as `to_dict` writes them; a missing one keeps its defaults."""
        return from_json_dict(cls, raw, source)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "CurationConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"curation config {path} does not exist")
        text = path.read_text()
        try:
            raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"curation config {path}: cannot parse ({e}); expected JSON or TOML (.toml)") from None
        return cls.from_dict(raw, str(path))

    def with_options(self, **options: Any) -> "CurationConfig":
        """A copy with single fields changed by name, e.g. `with_options(temporal_stride=3)`."""
        sections = {name: getattr(self, name) for name in SECTIONS}
        seed = options.pop("seed", self.seed)
        for key, value in options.items():
            owner = [name for name, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
            if not owner:
                raise TypeError(f"unknown curation option {key!r}; see see3d_torch.curation.config for the fields")
            sections[owner[0]] = from_json_dict(SECTIONS[owner[0]], {**to_json_dict(sections[owner[0]]), key: value},
                                                source=f"curation option {key}")
        return CurationConfig(**sections, seed=int(seed))

