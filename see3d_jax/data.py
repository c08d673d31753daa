"""Training data: clip datasets -> batches of N random views per clip, through `grain`.

Each element is one clip with `num_views` frames drawn at random (without replacement, in
random order: See3D uses no temporal order), resized (area) and centre-cropped to a square
`image_size`, as float32 pixels in [-1, 1]: ``views [num_views, S, S, 3]``. Which of them are
references and which are masked targets is decided later, on device, by
`see3d_jax.condition.build_training_batch`.

Clips are shuffled with a new order every epoch; the iterator's position is a small JSON
state, saved with every checkpoint so a resumed run continues with the very next batch.
Several processes (multi-host) each read their own shard of the clips (`process_index`-th of
every `process_count`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cv2
import grain
import numpy as np

from see3d_core.clips import ClipDataset, ClipFormatError, read_clip, read_info


def square_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop [N, H, W, 3] uint8 frames to a square and resize to `size` (area filter)."""
    n, h, w, _ = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = frames[:, top:top + side, left:left + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in crop])


def to_model_range(frames: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (the VAE's input range)."""
    return frames.astype(np.float32) / 127.5 - 1.0


@dataclasses.dataclass
class ClipViews:
    """`grain` transform: a clip directory -> `num_views` random frames at `image_size`."""

    num_views: int
    image_size: int
    cache: bool = False

    def __post_init__(self):
        self._cache: dict[str, np.ndarray] = {}

    def _frames(self, clip_dir: str, positions: np.ndarray) -> np.ndarray:
        if self.cache:
            if clip_dir not in self._cache:
                self._cache[clip_dir] = square_resize(read_clip(clip_dir, load_depth=False).frames, self.image_size)
            return self._cache[clip_dir][positions]
        return square_resize(read_clip(clip_dir, positions.tolist(), load_depth=False).frames, self.image_size)

    def __call__(self, clip: tuple[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
        clip_dir, num_frames = clip
        positions = rng.choice(num_frames, size=self.num_views, replace=False)
        return {"views": to_model_range(self._frames(clip_dir, positions))}


def list_clips(data_dir: str | os.PathLike, num_views: int) -> list[tuple[str, int]]:
    """(clip directory, frame count) of every clip with at least `num_views` frames."""
    dataset = ClipDataset(data_dir)
    clips = []
    for entry in dataset.entries():
        clip_dir = Path(data_dir) / entry["clip"]
        n = int(entry.get("num_frames") or read_info(clip_dir).num_frames)
        if n >= num_views:
            clips.append((str(clip_dir), n))
    if not clips:
        raise ClipFormatError(f"clip dataset {data_dir}: no clip has at least num_views={num_views} frames")
    return clips


def training_batches(
    data_dir: str | os.PathLike,
    *,
    num_views: int,
    image_size: int,
    batch_size: int,
    seed: int = 0,
    cache: bool = False,
    num_workers: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of `{"views": [batch_size, num_views, S, S, 3]}`.

    `batch_size` is this process's share of the global batch. `get_state()` / `set_state()`
    save and restore the position."""
    clips = list_clips(data_dir, num_views)
    if len(clips) < process_count:
        raise ClipFormatError(f"clip dataset {data_dir}: {len(clips)} clips cannot be split over {process_count} processes")
    ds = grain.MapDataset.source(clips)[process_index::process_count]
    ds = ds.shuffle(seed=seed).repeat().random_map(ClipViews(num_views, image_size, cache), seed=seed + 1)
    ds = ds.batch(batch_size, drop_remainder=True)
    it_ds = ds.to_iter_dataset()
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)
