"""Point tracks and their robust minimum enclosing circles (curation step 4).

A camera that barely moves leaves every tracked point inside a small circle. The tracker is
pluggable: any callable `(gray_frames, num_points) -> tracks [T, P, 2]` (NaN once a point is
lost) works; the default is OpenCV's pyramidal Lucas-Kanade (KLT) with a forward-backward check.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import cv2
import numpy as np

Tracker = Callable[[Sequence[np.ndarray], int], np.ndarray]


def klt_tracks(gray_frames: Sequence[np.ndarray], num_points: int = 100, max_fb_error_px: float = 1.0) -> np.ndarray:
    """Track `num_points` corners of the first frame through `gray_frames`: [T, P, 2], NaN when lost."""
    first = gray_frames[0]
    h, w = first.shape
    corners = cv2.goodFeaturesToTrack(first, maxCorners=num_points, qualityLevel=0.01, minDistance=max(3, min(h, w) // 40))
    if corners is None:
        return np.full((len(gray_frames), 0, 2), np.nan, np.float32)
    points = corners.reshape(-1, 2).astype(np.float32)
    tracks = np.full((len(gray_frames), len(points), 2), np.nan, np.float32)
    tracks[0] = points
    alive = np.ones(len(points), bool)
    params = dict(winSize=(21, 21), maxLevel=4, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    for t in range(1, len(gray_frames)):
        if not alive.any():
            break
        p0 = tracks[t - 1, alive].reshape(-1, 1, 2)
        p1, ok1, _ = cv2.calcOpticalFlowPyrLK(gray_frames[t - 1], gray_frames[t], p0, None, **params)
        back, ok2, _ = cv2.calcOpticalFlowPyrLK(gray_frames[t], gray_frames[t - 1], p1, None, **params)
        p1, back = p1.reshape(-1, 2), back.reshape(-1, 2)
        good = (ok1.ravel() == 1) & (ok2.ravel() == 1) & (np.linalg.norm(back - p0.reshape(-1, 2), axis=1) < max_fb_error_px)
        good &= (p1[:, 0] >= 0) & (p1[:, 0] <= w - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= h - 1)
        index = np.flatnonzero(alive)
        tracks[t, index[good]] = p1[good]
        alive[index[~good]] = False
    return tracks


def robust_enclosing_circle(points: np.ndarray, fraction: float = 0.6) -> tuple[np.ndarray, float]:
    """Smallest circle (approximately) holding at least `fraction` of `points` [K, 2].

    Candidate centres are the points themselves and their median; for each, the circle through
    its ceil(fraction K)-th nearest point; the best subset is then tightened with OpenCV's exact
    minimum enclosing circle. Outliers (a point jumping to a wrong match) do not inflate it."""
    points = np.asarray(points, np.float32)
    if len(points) == 0:
        raise ValueError("robust_enclosing_circle needs at least one point")
    keep = max(1, math.ceil(fraction * len(points)))
    centres = np.vstack([points, np.median(points, axis=0, keepdims=True)])
    distances = np.linalg.norm(centres[:, None] - points[None], axis=-1)
    order = np.argsort(distances, axis=1)[:, :keep]
    radii = np.take_along_axis(distances, order[:, -1:], axis=1)[:, 0]
    best = int(np.argmin(radii))
    (cx, cy), radius = cv2.minEnclosingCircle(points[order[best]].reshape(-1, 1, 2))
    if radius <= radii[best]:
        return np.array([cx, cy], np.float32), float(radius)
    return centres[best], float(radii[best])


def track_radii(tracks: np.ndarray, fraction: float = 0.6, min_points: int = 3) -> tuple[np.ndarray, list[np.ndarray]]:
    """Robust circle radius and centre of every track seen at least `min_points` times."""
    radii, centres = [], []
    for p in range(tracks.shape[1]):
        seen = tracks[:, p][~np.isnan(tracks[:, p, 0])]
        if len(seen) >= min_points:
            centre, radius = robust_enclosing_circle(seen, fraction)
            radii.append(radius)
            centres.append(centre)
    return np.array(radii, np.float32), centres
