"""Image files and pictures, defined once for the whole kit (numpy + OpenCV, framework-free).

Conventions: RGB images are float arrays in [0, 1] ([H, W, 3]) or uint8; `to_uint8` rounds as
diffusers' `numpy_to_pil` does (the released pipeline's outputs pass through it); depth pictures
are viridis with near = bright.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (any shape) -> uint8, rounded (`(x * 255).round()`, as diffusers)."""
    return (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB float32 [H, W, 3] in [0, 1]; a clear error when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not an image OpenCV can read (expected PNG, JPEG, ...)")
    return bgr[..., ::-1].astype(np.float32) / 255.0


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB image ([H, W, 3] floats in [0, 1], or uint8) as PNG; OSError naming the path."""
    rgb = image if np.asarray(image).dtype == np.uint8 else to_uint8(image)
    if not cv2.imwrite(str(path), np.ascontiguousarray(np.asarray(rgb)[..., ::-1])):
        raise OSError(f"could not write {path}")


def depth_to_rgb(depth: np.ndarray, near: float | None = None, far: float | None = None) -> np.ndarray:
    """A z-depth map [H, W] -> RGB float32 [H, W, 3] in [0, 1], viridis with near = bright,
    between `near` and `far` (default: the 2nd and 98th percentiles of the valid depths);
    invalid depths (0, inf, nan) are drawn as far."""
    depth = np.asarray(depth, np.float64)
    valid = depth[np.isfinite(depth) & (depth > 0)]
    if near is None:
        near = float(np.percentile(valid, 2)) if valid.size else 0.0
    if far is None:
        far = float(np.percentile(valid, 98)) if valid.size else 1.0
    d = np.clip((depth - near) / max(far - near, 1e-9), 0.0, 1.0)
    d = np.where(np.isfinite(depth) & (depth > 0), d, 1.0)
    colored = cv2.applyColorMap((255 * (1 - d)).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    return colored[..., ::-1].astype(np.float32) / 255.0
