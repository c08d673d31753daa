"""Finding input videos and reading them downsampled (curation step 1).

An input is a video file (mp4, mov, mkv, webm, avi) or a frame folder (a directory whose
files are images; frames are taken in name order). Frames are read with a temporal stride,
cut at a maximum duration and resized so that the short side is at most `short_side`
(never upscaled).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cv2
import numpy as np

from see3d_torch.curation.config import DownsampleConfig

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class UnreadableVideoError(OSError):
    """The input cannot be decoded (corrupt, empty, or not a video)."""


@dataclasses.dataclass
class DownsampledVideo:
    frames: np.ndarray  # [N, H, W, 3] uint8 RGB after stride and resize
    source_indices: np.ndarray  # [N] index of each frame in the source
    fps: float  # of the downsampled sequence
    source_fps: float
    source_size: tuple[int, int]  # (width, height) before resizing


def _is_frame_folder(path: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file())


def find_inputs(root: str | os.PathLike) -> list[str]:
    """Videos and frame folders under `root`, as sorted paths relative to it.

    A frame folder is a directory holding images; its subdirectories are not searched.
    Hidden files and directories (e.g. half-written temporaries) are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"curation input {root} is not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if here != root and _is_frame_folder(here):
            found.append(here.relative_to(root).as_posix())
            dirnames[:] = []
            continue
        found += [(here / f).relative_to(root).as_posix() for f in filenames
                  if not f.startswith(".") and f.lower().endswith(VIDEO_SUFFIXES)]
    return sorted(found)


def _target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    scale = min(1.0, short_side / min(width, height))
    # even sizes keep every downstream resize and codec happy
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _resize(frame_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (frame_bgr.shape[1], frame_bgr.shape[0]) != size:
        frame_bgr = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame_bgr[..., ::-1])


def read_downsampled(path: str | os.PathLike, config: DownsampleConfig = DownsampleConfig()) -> DownsampledVideo:
    """Read a video file or frame folder with step 1 applied; raises `UnreadableVideoError`."""
    path = Path(path)
    if config.temporal_stride < 1:
        raise ValueError(f"temporal_stride must be >= 1, got {config.temporal_stride}")
    if path.is_dir():
        return _read_folder(path, config)
    if not path.is_file():
        raise UnreadableVideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UnreadableVideoError(f"{path}: empty file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UnreadableVideoError(f"{path}: cannot be opened as a video")
    try:
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else config.frame_folder_fps
        max_frames = int(config.max_seconds * fps)
        frames, indices, size, source_size = [], [], None, None
        index = 0
        while index < max_frames:
            if index % config.temporal_stride:
                if not cap.grab():  # skipped frames are not converted
                    break
                index += 1
                continue
            ok, frame = cap.read()
            if not ok:
                break
            if size is None:
                source_size = (frame.shape[1], frame.shape[0])
                size = _target_size(*source_size, config.short_side)
            frames.append(_resize(frame, size))
            indices.append(index)
            index += 1
    finally:
        cap.release()
    if not frames:
        raise UnreadableVideoError(f"{path}: no decodable frames")
    return DownsampledVideo(np.stack(frames), np.array(indices), fps / config.temporal_stride, fps, source_size)


def _read_folder(path: Path, config: DownsampleConfig) -> DownsampledVideo:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UnreadableVideoError(f"{path}: frame folder holds no PNG/JPEG images")
    fps = config.frame_folder_fps
    files = files[: int(config.max_seconds * fps)]
    frames, indices, size, source_size = [], [], None, None
    for index in range(0, len(files), config.temporal_stride):
        frame = cv2.imread(str(files[index]), cv2.IMREAD_COLOR)
        if frame is None:
            raise UnreadableVideoError(f"{files[index]}: cannot be decoded as an image")
        if size is None:
            source_size = (frame.shape[1], frame.shape[0])
            size = _target_size(*source_size, config.short_side)
        elif (frame.shape[1], frame.shape[0]) != source_size:
            raise UnreadableVideoError(f"{files[index]}: is {frame.shape[1]}x{frame.shape[0]}, the folder's first frame is {source_size[0]}x{source_size[1]}")
        frames.append(_resize(frame, size))
        indices.append(index)
    return DownsampledVideo(np.stack(frames), np.array(indices), fps / config.temporal_stride, fps, source_size)
