"""Cutting an accepted video into static clips: runs of frames without dynamic content, each
cut into near-equal pieces of at most `max_frames`; pieces shorter than `min_frames` are dropped."""

from __future__ import annotations

import math

import numpy as np


def static_segments(dynamic: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of False in a boolean per-frame array."""
    segments, start = [], None
    for i, d in enumerate(np.asarray(dynamic, bool).tolist() + [True]):
        if not d and start is None:
            start = i
        elif d and start is not None:
            segments.append((start, i))
            start = None
    return segments


def split_clips(dynamic: np.ndarray, max_frames: int, min_frames: int) -> list[tuple[int, int]]:
    """Clip ranges [start, stop) over frames whose `dynamic` flag is False."""
    if max_frames < 1 or min_frames < 1 or min_frames > max_frames:
        raise ValueError(f"need 1 <= min_clip_frames <= max_clip_frames, got {min_frames} and {max_frames}")
    clips = []
    for start, stop in static_segments(dynamic):
        length = stop - start
        pieces = math.ceil(length / max_frames)
        bounds = np.linspace(start, stop, pieces + 1).round().astype(int)
        clips += [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= min_frames]
    return clips
