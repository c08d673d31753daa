"""The clip dataset format: the contract between curation (writes) and training (reads).

A dataset is a directory::

    DATASET/
      manifest.jsonl            one JSON object per clip: {"clip": "<dir relative to DATASET>",
                                "num_frames": N, "width": W, "height": H, "posed": bool}
      <clip dir>/
        clip.json               see `ClipInfo`
        frame_000000.png ...    the frames (PNG or JPEG), listed in clip.json
        depth_000000.npy ...    optional, float32 z-depth in metres, one per frame

`clip.json` holds `format_version`, `source` (the video or scene it came from), `fps`,
`frame_indices` (indices of the frames in the source), `width`, `height`, `frames` (file
names) and, for posed 3D data, optional per-frame `intrinsics` (3x3 pixels), `c2w` (4x4,
OpenCV convention, see `see3d_core.cameras`) and `depths` (file names).

Writes are atomic: a clip is written into a temporary directory and renamed into place, and
its manifest line is appended only after that, so a killed writer leaves no half clip.
Reading validates everything; a malformed clip raises `ClipFormatError` naming the clip and
what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from see3d_core.cameras import Camera, scale_intrinsics
from see3d_core.images import to_uint8

FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ClipFormatError(ValueError):
    """A clip or dataset does not follow the clip dataset format."""


@dataclasses.dataclass
class ClipInfo:
    source: str
    fps: float
    frame_indices: list[int]
    width: int
    height: int
    frames: list[str]
    intrinsics: list[list[list[float]]] | None = None
    c2w: list[list[list[float]]] | None = None
    depths: list[str] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def posed(self) -> bool:
        return self.intrinsics is not None and self.c2w is not None

    def cameras(self) -> list[Camera]:
        if not self.posed:
            raise ClipFormatError(f"clip from {self.source!r} has no cameras (intrinsics and c2w)")
        return [Camera(np.array(K), np.array(T), self.width, self.height) for K, T in zip(self.intrinsics, self.c2w)]

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if v is not None and not (k == "extra" and not v)}


@dataclasses.dataclass
class Clip:
    """A clip in memory: frames [N, H, W, 3] uint8, optional depths [N, H, W] float32."""

    path: Path
    info: ClipInfo
    frames: np.ndarray
    depths: np.ndarray | None = None


def _check(cond: bool, clip: Path | str, message: str) -> None:
    if not cond:
        raise ClipFormatError(f"clip {clip}: {message}")


def validate_info(raw: Any, clip: Path | str) -> ClipInfo:
    """Check a parsed clip.json and return it as `ClipInfo`."""
    _check(isinstance(raw, dict), clip, "clip.json must hold a JSON object")
    required = ["source", "fps", "frame_indices", "width", "height", "frames"]
    missing = [k for k in required if k not in raw]
    _check(not missing, clip, f"clip.json is missing {missing}")
    version = raw.get("format_version", FORMAT_VERSION)
    _check(version == FORMAT_VERSION, clip, f"format_version {version} is not supported (expected {FORMAT_VERSION})")
    frames = raw["frames"]
    _check(isinstance(frames, list) and len(frames) > 0, clip, "'frames' must be a non-empty list of file names")
    for f in frames:
        _check(isinstance(f, str) and f.lower().endswith(IMAGE_SUFFIXES), clip, f"frame {f!r} is not a PNG/JPEG file name")
    n = len(frames)
    _check(len(raw["frame_indices"]) == n, clip, f"'frame_indices' has {len(raw['frame_indices'])} entries for {n} frames")
    _check(isinstance(raw["width"], int) and raw["width"] > 0, clip, f"'width' must be a positive integer, got {raw['width']!r}")
    _check(isinstance(raw["height"], int) and raw["height"] > 0, clip, f"'height' must be a positive integer, got {raw['height']!r}")
    _check(isinstance(raw["fps"], (int, float)) and raw["fps"] > 0, clip, f"'fps' must be positive, got {raw['fps']!r}")
    has_k, has_pose = raw.get("intrinsics") is not None, raw.get("c2w") is not None
    _check(has_k == has_pose, clip, "'intrinsics' and 'c2w' must be given together")
    if has_k:
        K = np.asarray(raw["intrinsics"], dtype=np.float64)
        T = np.asarray(raw["c2w"], dtype=np.float64)
        _check(K.shape == (n, 3, 3), clip, f"'intrinsics' must have shape ({n}, 3, 3), got {K.shape}")
        _check(T.shape == (n, 4, 4), clip, f"'c2w' must have shape ({n}, 4, 4), got {T.shape}")
        _check(bool(np.all(np.isfinite(K)) and np.all(np.isfinite(T))), clip, "cameras contain non-finite values")
        R = T[:, :3, :3]
        orth = np.abs(np.einsum("nij,nkj->nik", R, R) - np.eye(3)).max()
        _check(orth < 1e-4, clip, f"'c2w' rotations are not orthonormal (max error {orth:.2e})")
    if raw.get("depths") is not None:
        _check(len(raw["depths"]) == n, clip, f"'depths' has {len(raw['depths'])} entries for {n} frames")
    known = {f.name for f in dataclasses.fields(ClipInfo)}
    extra = dict(raw.get("extra", {}))
    extra.update({k: v for k, v in raw.items() if k not in known})
    return ClipInfo(
        source=str(raw["source"]),
        fps=float(raw["fps"]),
        frame_indices=[int(i) for i in raw["frame_indices"]],
        width=raw["width"],
        height=raw["height"],
        frames=list(frames),
        intrinsics=raw.get("intrinsics"),
        c2w=raw.get("c2w"),
        depths=raw.get("depths"),
        extra=extra,
        format_version=version,
    )


def read_info(clip_dir: str | os.PathLike) -> ClipInfo:
    clip_dir = Path(clip_dir)
    meta = clip_dir / "clip.json"
    _check(clip_dir.is_dir(), clip_dir, "directory does not exist")
    _check(meta.is_file(), clip_dir, "clip.json is missing")
    try:
        raw = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ClipFormatError(f"clip {clip_dir}: clip.json is not valid JSON ({e})") from None
    info = validate_info(raw, clip_dir)
    for f in info.frames + (info.depths or []):
        _check((clip_dir / f).is_file(), clip_dir, f"file {f} listed in clip.json is missing")
    return info


def _read_frame(path: Path, info: ClipInfo, clip_dir: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    _check(img is not None, clip_dir, f"frame {path.name} cannot be decoded")
    _check(img.shape[:2] == (info.height, info.width), clip_dir,
           f"frame {path.name} is {img.shape[1]}x{img.shape[0]}, clip.json says {info.width}x{info.height}")
    return img[..., ::-1]


def read_clip(
    clip_dir: str | os.PathLike, indices: Sequence[int] | None = None, load_depth: bool = True
) -> Clip:
    """Read a clip (or the frames at `indices`, positions in the clip) as RGB uint8."""
    clip_dir = Path(clip_dir)
    info = read_info(clip_dir)
    idx = list(range(info.num_frames)) if indices is None else list(indices)
    for i in idx:
        _check(0 <= i < info.num_frames, clip_dir, f"frame position {i} out of range (clip has {info.num_frames})")
    frames = np.stack([_read_frame(clip_dir / info.frames[i], info, clip_dir) for i in idx])
    depths = None
    if load_depth and info.depths is not None:
        ds = []
        for i in idx:
            d = np.load(clip_dir / info.depths[i])
            _check(d.shape == (info.height, info.width), clip_dir, f"depth {info.depths[i]} has shape {d.shape}")
            ds.append(d.astype(np.float32))
        depths = np.stack(ds)
    return Clip(clip_dir, info, frames, depths)


def write_clip(
    clip_dir: str | os.PathLike,
    frames: np.ndarray | Sequence[np.ndarray],
    source: str,
    fps: float,
    frame_indices: Sequence[int] | None = None,
    cameras: Sequence[Camera] | None = None,
    depths: np.ndarray | Sequence[np.ndarray] | None = None,
    image_format: str = "png",
    jpeg_quality: int = 95,
    extra: dict[str, Any] | None = None,
) -> ClipInfo:
    """Write one clip atomically. `frames` are RGB, uint8 or float in [0, 1]."""
    clip_dir = Path(clip_dir)
    if clip_dir.exists():
        raise FileExistsError(f"clip {clip_dir}: already exists; refusing to overwrite")
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ClipFormatError(f"clip {clip_dir}: no frames to write")
    h, w = frames[0].shape[:2]
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    n = len(frames)
    frame_indices = list(range(n)) if frame_indices is None else [int(i) for i in frame_indices]
    if len(frame_indices) != n:
        raise ClipFormatError(f"clip {clip_dir}: {len(frame_indices)} frame indices for {n} frames")
    if cameras is not None and len(cameras) != n:
        raise ClipFormatError(f"clip {clip_dir}: {len(cameras)} cameras for {n} frames")
    if depths is not None and len(depths) != n:
        raise ClipFormatError(f"clip {clip_dir}: {len(depths)} depth maps for {n} frames")

    tmp = clip_dir.with_name(f".{clip_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        names = []
        for i, f in enumerate(frames):
            if f.shape[:2] != (h, w) or f.ndim != 3 or f.shape[2] != 3:
                raise ClipFormatError(f"clip {clip_dir}: frame {i} has shape {f.shape}, expected ({h}, {w}, 3)")
            if f.dtype != np.uint8:
                f = to_uint8(f)
            name = f"frame_{i:06d}.{image_format}"
            params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
            if not cv2.imwrite(str(tmp / name), np.ascontiguousarray(f[..., ::-1]), params):
                raise OSError(f"clip {clip_dir}: could not write {name}")
            names.append(name)
        depth_names = None
        if depths is not None:
            depth_names = []
            for i, d in enumerate(depths):
                d = np.asarray(d, dtype=np.float32)
                if d.shape != (h, w):
                    raise ClipFormatError(f"clip {clip_dir}: depth {i} has shape {d.shape}, expected ({h}, {w})")
                name = f"depth_{i:06d}.npy"
                np.save(tmp / name, d)
                depth_names.append(name)
        info = ClipInfo(
            source=str(source),
            fps=float(fps),
            frame_indices=frame_indices,
            width=int(w),
            height=int(h),
            frames=names,
            intrinsics=None if cameras is None else [c.K.tolist() for c in cameras],
            c2w=None if cameras is None else [c.c2w.tolist() for c in cameras],
            depths=depth_names,
            extra=dict(extra or {}),
        )
        validate_info(info.to_json(), clip_dir)
        (tmp / "clip.json").write_text(json.dumps(info.to_json(), indent=1))
        os.replace(tmp, clip_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


# --- datasets ---------------------------------------------------------------------------------

def _append_line(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record) + "\n"
    with open(path, "a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines manifest. A truncated last line (a killed writer) is dropped; any
    other malformed line raises an error naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if lineno == len(lines) and not text.endswith("\n"):
                break  # the writer died mid-line; that record never completed
            raise ClipFormatError(f"{path}:{lineno}: malformed JSON line ({e})") from None
    return records


class ClipDataset:
    """A clip dataset directory: list, read and append clips."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.jsonl"

    def entries(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"clip dataset {self.root}: directory does not exist")
        if not self.manifest_path.exists():
            raise ClipFormatError(f"clip dataset {self.root}: manifest.jsonl is missing")
        entries = read_manifest(self.manifest_path)
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("clip"), str):
                raise ClipFormatError(f"{self.manifest_path}: entry {i} has no 'clip' path")
        return entries

    def clip_dirs(self) -> list[Path]:
        return [self.root / e["clip"] for e in self.entries()]

    def __len__(self) -> int:
        return len(self.entries())

    def __iter__(self) -> Iterator[Clip]:
        for d in self.clip_dirs():
            yield read_clip(d)

    def validate(self) -> int:
        """Check every clip (metadata, files, image sizes); returns the number of clips."""
        dirs = self.clip_dirs()
        for d in dirs:
            info = read_info(d)
            _read_frame(d / info.frames[0], info, d)
        return len(dirs)

    def add_clip(self, name: str, frames, **kwargs) -> Path:
        """Write a clip under the dataset and record it in the manifest (after it is complete)."""
        self.root.mkdir(parents=True, exist_ok=True)
        clip_dir = self.root / name
        info = write_clip(clip_dir, frames, **kwargs)
        _append_line(
            self.manifest_path,
            {"clip": name, "num_frames": info.num_frames, "width": info.width, "height": info.height, "posed": info.posed},
        )
        return clip_dir


def write_synthetic_dataset(
    root: str | os.PathLike,
    num_scenes: int,
    frames_per_clip: int = 8,
    width: int = 64,
    height: int = 64,
    seed: int = 0,
    posed: bool = True,
) -> ClipDataset:
    """A clip dataset of orbits through synthetic scenes (with cameras and depth when posed)."""
    from see3d_core import synthetic

    ds = ClipDataset(root)
    rng = np.random.default_rng(seed)
    for i in range(num_scenes):
        scene_seed = seed * 100003 + i
        scene = synthetic.make_scene(scene_seed)
        start = float(rng.uniform(-60, 20))
        span = float(rng.uniform(25, 45))
        cams = synthetic.default_orbit(scene, frames_per_clip, width, height, azimuth_deg=(start, start + span))
        rendered = synthetic.render_trajectory(scene, cams)
        ds.add_clip(
            f"scene_{scene_seed:06d}",
            [f.rgb for f in rendered],
            source=f"synthetic:seed={scene_seed}",
            fps=10.0,
            cameras=cams if posed else None,
            depths=[f.depth for f in rendered] if posed else None,
        )
    return ds


# --- training crops and the posed condition's warps ------------------------------------------------

def _square_crop(height: int, width: int) -> tuple[int, int, int]:
    """(side, top, left) of the centred square crop of a height x width image."""
    side = min(height, width)
    return side, (height - side) // 2, (width - side) // 2


def square_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop [N, H, W, ...] frames (uint8 images or float depths) to a square and resize
    to `size` (area filter when shrinking)."""
    side, top, left = _square_crop(*frames.shape[1:3])
    crop = frames[:, top:top + side, left:left + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in crop])


def square_resize_intrinsics(K: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """The intrinsics [..., 3, 3] after `square_resize` of a height x width image to `size`:
    the principal point moves with the crop, then the resize scales them."""
    side, top, left = _square_crop(height, width)
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, 2] -= left
    K[..., 1, 2] -= top
    return scale_intrinsics(K, size / side)


def pair_warps_path(clip_dir: str | os.PathLike, image_size: int) -> Path:
    """Where a posed clip keeps every frame warped into every other at `image_size` (after
    `square_resize`): `clip_dir/pair_warps_<size>.npz` with "images" uint8 [N, N, S, S, 3],
    "masks" bool [N, N, S, S] and "depths" float32 [N, N, S, S] indexed [source, destination].
    Written by `see3d_torch.warp.write_pair_warps` (the generation loop's warp), read by the
    JAX data pipeline for the "posed_warp" condition; "version" is the warp's `PAIR_WARPS_VERSION`."""
    return Path(clip_dir) / f"pair_warps_{int(image_size)}.npz"


# bumped when the generation loop's warp changes what it writes, so that training never reads pair
# warps the inference warp would not produce: 2 = the z-buffer without one-pixel cracks (issue 18)
PAIR_WARPS_VERSION = 2


def pair_warps_version(stored: np.lib.npyio.NpzFile) -> int:
    """The warp version an opened pair-warps file (`np.load(pair_warps_path(...))`) was written
    with (1: before files carried one)."""
    return int(stored["version"]) if "version" in stored.files else 1
