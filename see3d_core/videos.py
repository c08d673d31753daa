"""Labelled synthetic videos for curation: what WebVi3D must keep and what it must drop.

Kinds (and the decision a correct curation makes):

| kind              | content                                             | expected                      |
|-------------------|-----------------------------------------------------|-------------------------------|
| `moving_camera`   | static scene, camera orbits/sweeps                   | accepted                      |
| `static_camera`   | static scene, camera does not move                   | rejected `no_camera_motion`   |
| `jitter`          | static scene, hand-held jitter of a few millimetres  | rejected (`no_camera_motion` or `small_viewpoint`) |
| `rigid_objects`   | moving camera, objects moving through the scene      | rejected `dynamic_objects`    |
| `non_rigid`       | moving camera, walls with waving/flowing textures    | rejected `non_rigid_motion`   |
| `mixed`           | moving camera; objects start moving two thirds in    | accepted, clips only from the static part |

Every video is deterministic given (kind, seed) and is returned with its per-frame truth
(cameras, times, which frames hold dynamic content).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import cv2
import numpy as np

from see3d_core import synthetic, trajectories
from see3d_core.cameras import Camera, axis_angle_to_rotation

KINDS = ("moving_camera", "static_camera", "jitter", "rigid_objects", "non_rigid", "mixed")
EXPECTED = {
    "moving_camera": ("accepted", None),
    "static_camera": ("rejected", "no_camera_motion"),
    "jitter": ("rejected", "small_viewpoint"),
    "rigid_objects": ("rejected", "dynamic_objects"),
    "non_rigid": ("rejected", "non_rigid_motion"),
    "mixed": ("accepted", None),
}


@dataclasses.dataclass
class LabelledVideo:
    kind: str
    seed: int
    frames: np.ndarray  # [N, H, W, 3] uint8 RGB
    fps: float
    cameras: list[Camera]
    times: np.ndarray
    dynamic: np.ndarray  # [N] bool: the frame shows moving or deforming content
    expected_status: str
    expected_reason: str | None

    def label(self) -> dict:
        return {
            "kind": self.kind,
            "seed": self.seed,
            "expected_status": self.expected_status,
            "expected_reason": self.expected_reason,
            "num_frames": int(len(self.frames)),
            "dynamic_frames": np.flatnonzero(self.dynamic).tolist(),
        }


def _camera_path(kind: str, scene: synthetic.Scene, rng: np.random.Generator, n: int, w: int, h: int) -> list[Camera]:
    K = synthetic.default_intrinsics(w, h, fov_x_deg=float(rng.uniform(55, 70)))
    center = np.array([0.0, scene.ground_y - 0.6, 0.6])
    radius = 0.55 * scene.extent
    a0 = float(rng.uniform(-30, 0))
    if kind in ("static_camera", "jitter"):
        base = trajectories.orbit(center, radius, 1, K, w, h, azimuth_deg=a0, elevation_deg=12.0)[0]
        if kind == "static_camera":
            return [base] * n
        cams = []
        for _ in range(n):  # hand-held jitter: a few millimetres and a few hundredths of a degree
            c2w = base.c2w.copy()
            c2w[:3, :3] = c2w[:3, :3] @ axis_angle_to_rotation(rng.normal(size=3), np.deg2rad(rng.normal(scale=0.03)))
            c2w[:3, 3] += rng.normal(scale=0.003, size=3)
            cams.append(Camera(K, c2w, w, h))
        return cams
    span = float(rng.uniform(35, 55)) * rng.choice([-1, 1])
    return trajectories.orbit(center, radius, n, K, w, h, azimuth_deg=(a0, a0 + span), elevation_deg=(8.0, 16.0), endpoint=True)


def make_video(kind: str, seed: int, num_frames: int = 48, width: int = 320, height: int = 240, fps: float = 15.0) -> LabelledVideo:
    """Render one labelled video of the given kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown video kind {kind!r}; expected one of {KINDS}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    moving = {"rigid_objects": 3, "mixed": 2}.get(kind, 0)
    scene = synthetic.make_scene(seed, moving_objects=moving, waving_panels=3 if kind == "non_rigid" else 0, object_speed=0.8)
    times = np.arange(num_frames) / fps
    if kind == "mixed":
        switch = times[int(num_frames * 2 / 3)]
        for obj in [*scene.boxes, *scene.spheres]:
            obj.start_time = switch
        dynamic = times > switch
    else:
        dynamic = np.full(num_frames, kind in ("rigid_objects", "non_rigid"))
    cams = _camera_path(kind, scene, rng, num_frames, width, height)
    frames = np.stack([(synthetic.render(scene, c, t).rgb * 255 + 0.5).astype(np.uint8) for c, t in zip(cams, times)])
    status, reason = EXPECTED[kind]
    return LabelledVideo(kind, seed, frames, fps, cams, times, dynamic, status, reason)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Write RGB uint8 frames as an mp4 (OpenCV's built-in mp4v encoder), atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot open an mp4 writer for {path}")
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    os.replace(tmp, path)


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read an mp4 (or any container OpenCV reads) as RGB uint8 frames and its fps."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f[..., ::-1])
    cap.release()
    if not frames:
        raise OSError(f"video {path} has no decodable frames")
    return np.stack(frames), float(fps)


def write_frame_folder(path: str | os.PathLike, frames: np.ndarray) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp / f"{i:06d}.png"), np.ascontiguousarray(f[..., ::-1]))
    os.replace(tmp, path)


def write_labelled_suite(
    out_dir: str | os.PathLike,
    per_kind: int = 7,
    seed: int = 0,
    num_frames: int = 48,
    width: int = 320,
    height: int = 240,
    as_frames_every: int = 3,
) -> list[dict]:
    """Write `per_kind` videos of every kind to `out_dir` (mp4; every `as_frames_every`-th one
    as a frame folder instead) and `labels.json` mapping each relative path to its label."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = []
    count = 0
    for k, kind in enumerate(KINDS):
        for i in range(per_kind):
            vid_seed = seed * 1000 + k * 100 + i
            video = make_video(kind, vid_seed, num_frames, width, height)
            name = f"{kind}_{i:02d}"
            if as_frames_every and count % as_frames_every == as_frames_every - 1:
                rel = f"{kind}/{name}"
                (out / kind).mkdir(exist_ok=True)
                write_frame_folder(out / rel, video.frames)
            else:
                rel = f"{kind}/{name}.mp4"
                (out / kind).mkdir(exist_ok=True)
                write_mp4(out / rel, video.frames, video.fps)
            labels.append({"video": rel, **video.label()})
            count += 1
    (out / "labels.json").write_text(json.dumps(labels, indent=1))
    return labels
