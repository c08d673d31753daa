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
| `drifting_patch_along`  | translating camera; a wavy patch (5-20% of the frame) drifts 1-5 px/frame along the camera's image motion | rejected `non_rigid_motion` |
| `drifting_patch_across` | the same with the drift across the camera's image motion | rejected `non_rigid_motion` |

The drifting patches are smooth, small non-rigid motion (water surfaces, heat haze, flags,
foliage): a region stuck to the scene whose texture drifts and ripples inside it. Their shape
(ellipse, blob, band), size, drift speed and direction are drawn per video (`DriftingPatch`).

Every video is deterministic given (kind, seed) and is returned with its per-frame truth
(cameras, times, which frames hold dynamic content).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np

from see3d_core import synthetic, trajectories
from see3d_core.cameras import Camera, axis_angle_to_rotation
from see3d_core.images import to_uint8

KINDS = ("moving_camera", "static_camera", "jitter", "rigid_objects", "non_rigid", "mixed", "drifting_patch_along", "drifting_patch_across")
PATCH_SHAPES = ("ellipse", "blob", "band")
EXPECTED = {
    "moving_camera": ("accepted", None),
    "static_camera": ("rejected", "no_camera_motion"),
    "jitter": ("rejected", "small_viewpoint"),
    "rigid_objects": ("rejected", "dynamic_objects"),
    "non_rigid": ("rejected", "non_rigid_motion"),
    "mixed": ("accepted", None),
    "drifting_patch_along": ("rejected", "non_rigid_motion"),
    "drifting_patch_across": ("rejected", "non_rigid_motion"),
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
    patch: DriftingPatch | None = None

    def label(self) -> dict:
        return {
            "kind": self.kind,
            "seed": self.seed,
            "expected_status": self.expected_status,
            "expected_reason": self.expected_reason,
            "num_frames": int(len(self.frames)),
            "dynamic_frames": np.flatnonzero(self.dynamic).tolist(),
        } | ({"patch": dataclasses.asdict(self.patch) | {"direction": list(self.patch.direction)}} if self.patch else {})


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


@dataclasses.dataclass(frozen=True)
class DriftingPatch:
    """A wavy, drifting patch composited over a video: its outline follows a scene point (it
    belongs to the scene), the texture inside it drifts at `speed_px` pixels per frame along
    `direction` and ripples (a wave displacing it across the drift, travelling against it, whose
    sideways speed peaks at `ripple` x the drift speed), so its motion fits neither the camera's
    nor any rigid one."""

    shape: str  # one of PATCH_SHAPES
    area_fraction: float  # of the frame
    speed_px: float  # drift per frame, pixels at the video's size
    direction: tuple[float, float]  # unit image vector of the drift
    ripple: float = 0.6
    period_frames: float = 16.0

    def outline(self, qx: np.ndarray, qy: np.ndarray, width: int, height: int, rng_phase: float) -> np.ndarray:
        """Soft mask in [0, 1] at offsets (qx, qy) pixels from the patch centre."""
        area = self.area_fraction * width * height
        aspect = {"ellipse": 1.6, "blob": 1.2, "band": 4.0}[self.shape]
        a = math.sqrt(area * aspect / math.pi)  # half axes with pi a b = area, a / b = aspect
        b = a / aspect
        radius = np.hypot(qx / a, qy / b)
        if self.shape == "blob":  # a lobed outline of the same mean size
            angle = np.arctan2(qy / b, qx / a)
            radius = radius / (1.0 + 0.22 * np.sin(3 * angle + rng_phase) + 0.12 * np.sin(5 * angle + 2 * rng_phase))
        edge = 2.5 / max(b, 1.0)  # a 2.5-pixel soft edge
        return np.clip((1.0 - radius) / edge + 0.5, 0.0, 1.0)

    def displacement(self, qx: np.ndarray, qy: np.ndarray, frame: int, wavelength: float) -> tuple[np.ndarray, np.ndarray]:
        """How far the texture at (qx, qy) has moved by `frame`: drift plus a travelling ripple."""
        dx, dy = self.direction
        omega = 2 * math.pi / self.period_frames
        k = 2 * math.pi / wavelength
        along = qx * dx + qy * dy
        # the wave travels against the drift, so the texture drifting through it crosses its crests at
        # k speed + omega radians per frame; the amplitude makes its sideways speed peak at ripple x speed
        amplitude = self.ripple * self.speed_px / (k * self.speed_px + omega)
        wave = amplitude * np.sin(k * along + omega * frame)
        return self.speed_px * frame * dx - wave * dy, self.speed_px * frame * dy + wave * dx


def _translating_path(scene: synthetic.Scene, rng: np.random.Generator, n: int, w: int, h: int) -> list[Camera]:
    """A camera sliding sideways (along its x axis) past the courtyard, looking the same way."""
    K = synthetic.default_intrinsics(w, h, fov_x_deg=float(rng.uniform(55, 70)))
    center = np.array([0.0, scene.ground_y - 0.6, 0.6])
    radius = 0.55 * scene.extent
    base = trajectories.orbit(center, radius, 1, K, w, h, azimuth_deg=float(rng.uniform(-30, 0)), elevation_deg=12.0)[0]
    distance = float(rng.uniform(0.12, 0.2)) * scene.extent * rng.choice([-1, 1])
    cams = []
    for s in np.linspace(-0.5, 0.5, n):
        c2w = base.c2w.copy()
        c2w[:3, 3] += s * distance * c2w[:3, 0]
        cams.append(Camera(K, c2w, w, h))
    return cams


def _composite_patch(frames: np.ndarray, cams: list[Camera], depth0: np.ndarray, patch: DriftingPatch,
                     rng: np.random.Generator) -> np.ndarray:
    """`frames` with `patch` painted over them, its centre stuck to the scene point seen at a
    random pixel of the first frame that stays inside every frame."""
    n, h, w = frames.shape[:3]
    texture = synthetic.make_texture(rng, "noise").astype(np.float32)
    tex = texture.shape[0]
    for _ in range(100):  # a scene (not sky) point near the middle that every frame sees
        u0 = np.array([rng.uniform(0.3, 0.7) * (w - 1), rng.uniform(0.35, 0.75) * (h - 1)])
        z = float(depth0[int(round(u0[1])), int(round(u0[0]))])
        if z > 50:
            continue
        point = cams[0].unproject(u0[None], np.array([z]))
        centres = np.array([c.project(point)[0][0] for c in cams])
        if ((centres > [0.2 * w, 0.2 * h]) & (centres < [0.8 * w, 0.8 * h])).all():
            break
    else:
        raise RuntimeError("no patch anchor stays inside every frame")
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = float(rng.uniform(0, 2 * np.pi))
    wavelength = 0.6 * math.sqrt(patch.area_fraction * w * h)
    out = frames.copy()
    for i in range(n):
        qx, qy = xs - centres[i, 0], ys - centres[i, 1]
        mask = patch.outline(qx, qy, w, h, phase)[..., None]
        mx, my = patch.displacement(qx, qy, i, wavelength)
        # the texture moves by (mx, my): sample it where the pixel's content came from
        colour = cv2.remap(texture, np.mod(qx - mx, tex).astype(np.float32), np.mod(qy - my, tex).astype(np.float32),
                           cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        out[i] = (out[i] * (1 - mask) + colour * 255 * mask + 0.5).astype(np.uint8)
    return out


def random_patch(kind: str, rng: np.random.Generator, width: int) -> DriftingPatch:
    """A patch for `kind`: any shape, 5-20% of the frame, 1-5 px per frame at 320 px wide (scaled
    with the width), drifting within 20 degrees of the camera's image motion (horizontal here)
    for `drifting_patch_along` and of the perpendicular for `drifting_patch_across`."""
    angle = np.deg2rad(rng.uniform(-20, 20)) + (0.0 if kind == "drifting_patch_along" else np.pi / 2)
    angle += np.pi * rng.integers(2)
    return DriftingPatch(
        shape=PATCH_SHAPES[int(rng.integers(len(PATCH_SHAPES)))],
        area_fraction=float(rng.uniform(0.05, 0.20)),
        speed_px=float(rng.uniform(1.0, 5.0)) * width / 320.0,
        direction=(float(np.cos(angle)), float(np.sin(angle))),
    )


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
    patch = None
    if kind.startswith("drifting_patch"):
        dynamic = np.ones(num_frames, bool)
        cams = _translating_path(scene, rng, num_frames, width, height)
        patch = random_patch(kind, rng, width)
    else:
        cams = _camera_path(kind, scene, rng, num_frames, width, height)
    rendered = [synthetic.render(scene, c, t) for c, t in zip(cams, times)]
    frames = to_uint8(np.stack([f.rgb for f in rendered]))
    if patch is not None:
        frames = _composite_patch(frames, cams, rendered[0].depth, patch, rng)
    status, reason = EXPECTED[kind]
    return LabelledVideo(kind, seed, frames, fps, cams, times, dynamic, status, reason, patch)


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
