"""Dense optical flow for curation: OpenCV DIS (default) or Farneback, RAFT when torchvision
and its weights are present, and the forward-backward consistency test.

A flow estimator is any callable `(gray0, gray1) -> flow [H, W, 2] float32` (pixels, x then y)
mapping gray0's pixels into gray1.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import cv2
import numpy as np

from see3d_torch.curation.config import MotionConfig

FlowEstimator = Callable[[np.ndarray, np.ndarray], np.ndarray]
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class FlowUnavailable(RuntimeError):
    """The requested flow backend cannot run here (missing package or weights)."""


def dis_flow(preset: str = "fast") -> FlowEstimator:
    if preset not in DIS_PRESETS:
        raise ValueError(f"dis_preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    return lambda gray0, gray1: dis.calc(gray0, gray1, None)


def farneback_flow() -> FlowEstimator:
    return lambda gray0, gray1: cv2.calcOpticalFlowFarneback(gray0, gray1, None, 0.5, 4, 15, 3, 5, 1.2, 0)


def raft_flow(weights: str | None = None) -> FlowEstimator:
    """RAFT-large from torchvision, weights from `weights` or torch's hub cache; never downloads."""
    try:
        import torch
        from torchvision.models.optical_flow import Raft_Large_Weights, raft_large
    except Exception as e:  # torchvision from PyPI is a CUDA build that fails to import on CPU torch
        raise FlowUnavailable(f"RAFT needs torchvision, which cannot be imported here ({type(e).__name__}: {e})") from None
    from pathlib import Path

    path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / Path(Raft_Large_Weights.DEFAULT.url).name
    if not path.is_file():
        raise FlowUnavailable(f"RAFT weights not found at {path}")
    model = raft_large(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    model.eval()

    def estimate(gray0: np.ndarray, gray1: np.ndarray) -> np.ndarray:
        h, w = gray0.shape
        pad_h, pad_w = (-h) % 8, (-w) % 8  # RAFT works on multiples of 8

        def tensor(g):
            g = np.pad(g, ((0, pad_h), (0, pad_w)), mode="edge").astype(np.float32) / 127.5 - 1.0
            return torch.from_numpy(np.repeat(g[None, None], 3, axis=1))

        with torch.inference_mode():
            flow = model(tensor(gray0), tensor(gray1))[-1][0]
        return flow.permute(1, 2, 0).numpy()[:h, :w].astype(np.float32)

    return estimate


def make_flow(config: MotionConfig) -> tuple[FlowEstimator, str, str | None]:
    """The configured estimator, its name, and why another one stands in (None if it does not).

    RAFT falls back to DIS when torchvision or its weights are missing; the reason is recorded."""
    if config.flow == "dis":
        return dis_flow(config.dis_preset), f"dis-{config.dis_preset}", None
    if config.flow == "farneback":
        return farneback_flow(), "farneback", None
    if config.flow == "raft":
        try:
            return raft_flow(), "raft", None
        except FlowUnavailable as e:
            return dis_flow(config.dis_preset), f"dis-{config.dis_preset}", f"raft unavailable: {e}"
    raise ValueError(f"flow must be 'dis', 'farneback' or 'raft', got {config.flow!r}")


@functools.lru_cache(maxsize=8)
def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y coordinates of every pixel (float32, cached: every pair of a video shares them)."""
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def warp_by_flow(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample `image` at x + flow(x) (bilinear, border replicated)."""
    xs, ys = pixel_grid(*flow.shape[:2])
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def forward_backward_consistent(forward: np.ndarray, backward: np.ndarray, relative: float = 0.5, absolute: float = 0.5) -> np.ndarray:
    """Pixels whose forward flow is undone by the backward flow at its end point:
    |f + b(x + f)| < relative (|f| + |b(x + f)|) + absolute. Also false where x + f leaves the image."""
    h, w = forward.shape[:2]
    xs, ys = pixel_grid(h, w)
    ex, ey = xs + forward[..., 0], ys + forward[..., 1]
    b_at_end = cv2.remap(backward, ex, ey, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # cv2.magnitude is several times faster than np.linalg.norm over the last axis
    error = cv2.magnitude(forward[..., 0] + b_at_end[..., 0], forward[..., 1] + b_at_end[..., 1])
    bound = cv2.magnitude(forward[..., 0], forward[..., 1]) + cv2.magnitude(b_at_end[..., 0], b_at_end[..., 1])
    bound = relative * bound + absolute
    inside = (ex >= 0) & (ex <= w - 1) & (ey >= 0) & (ey <= h - 1)
    return (error < bound) & inside


def away_from_untrusted(trusted: np.ndarray, margin_px: int) -> np.ndarray:
    """`trusted` eroded by a disk of radius `margin_px`: flow next to an occlusion edge or the image
    border is often dragged along by the occluder even where the forward-backward test passes."""
    if margin_px < 1:
        return trusted
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin_px + 1, 2 * margin_px + 1))
    return cv2.erode(trusted.astype(np.uint8), disk, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def chain_flows(flows: Sequence[np.ndarray], trusted: Sequence[np.ndarray],
                residuals: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Compose the flows of consecutive frames a -> a+1 -> ... -> a+k into one flow a -> a+k.

    A chained correspondence is trusted only where every step along its path was; composing short
    steps keeps DIS accurate where one direct flow over k frames would have to find large motions.
    With `residuals` (one [H, W] map per step), also returns their sum along each pixel's path
    (each step's map read where the path is at that step); else None."""
    h, w = flows[0].shape[:2]
    xs, ys = pixel_grid(h, w)
    px, py = xs.copy(), ys.copy()
    valid = np.ones((h, w), bool)
    total = None if residuals is None else np.zeros((h, w), np.float32)
    for i, (step, ok) in enumerate(zip(flows, trusted)):
        valid &= cv2.remap(ok.astype(np.uint8), px, py, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        # one remap moves the flow and the residual together (a third channel costs little)
        fields = step if residuals is None else np.dstack([step, residuals[i]])
        moved = cv2.remap(fields, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        px += moved[..., 0]
        py += moved[..., 1]
        if total is not None:
            total += moved[..., 2]
    return np.stack([px - xs, py - ys], axis=-1), valid, total
