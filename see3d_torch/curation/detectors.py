"""Semantic dynamic recognition (curation step 2) behind a small detector interface.

A detector is any object with a `name` and `detect(frames [N, H, W, 3] uint8 RGB) -> list (per
frame) of `Detection``. `MaskRCNNDetector` wraps torchvision's Mask R-CNN R50-FPN and loads
only from a local weights file or torch's hub cache; when torchvision or the weights are
missing `load_detector` raises `DetectorUnavailable`, and curation records step 2 as skipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol, Sequence

import cv2
import numpy as np

from see3d_torch.curation.config import SemanticConfig

MASKRCNN_WEIGHTS_FILE = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"  # torchvision's COCO_V1 file name


class DetectorUnavailable(RuntimeError):
    """The detector cannot run here (missing package or weights); the message says which."""


@dataclasses.dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the detector's input pixels


class Detector(Protocol):
    name: str

    def detect(self, frames: np.ndarray) -> list[list[Detection]]: ...


class MaskRCNNDetector:
    """torchvision Mask R-CNN R50-FPN (COCO), frames resized to `size` (width, height)."""

    name = "maskrcnn_resnet50_fpn"

    def __init__(self, weights: str | Path | None = None, size: tuple[int, int] = (1024, 576), device: str = "cpu"):
        try:
            import torch
            from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn
        except Exception as e:  # torchvision from PyPI is a CUDA build that fails to import on CPU torch
            raise DetectorUnavailable(f"Mask R-CNN needs torchvision, which cannot be imported here ({type(e).__name__}: {e})") from None
        path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / MASKRCNN_WEIGHTS_FILE
        if not path.is_file():
            raise DetectorUnavailable(f"Mask R-CNN weights not found at {path} (set semantic.detector_weights)")
        self._torch = torch
        self.categories = list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
        self.model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        self.model.load_state_dict(torch.load(path, map_location="cpu"))
        self.model.eval().to(device)
        self.size = size
        self.device = device

    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        torch = self._torch
        batch = [torch.from_numpy(cv2.resize(f, self.size, interpolation=cv2.INTER_AREA)).permute(2, 0, 1).float().div(255).to(self.device)
                 for f in frames]
        with torch.inference_mode():
            outputs = self.model(batch)
        return [
            [Detection(self.categories[int(l)], float(s), tuple(float(v) for v in b))
             for l, s, b in zip(o["labels"].cpu(), o["scores"].cpu(), o["boxes"].cpu())]
            for o in outputs
        ]


def load_detector(config: SemanticConfig) -> Detector | None:
    """The configured detector; None for `detector="none"`; raises `DetectorUnavailable`."""
    if config.detector == "none":
        return None
    if config.detector == "maskrcnn":
        return MaskRCNNDetector(config.detector_weights, (config.detector_width, config.detector_height))
    raise ValueError(f"semantic.detector must be 'maskrcnn' or 'none', got {config.detector!r}")


def count_dynamic(detections: Sequence[Sequence[Detection]], classes: Sequence[str], score_threshold: float) -> dict[str, int]:
    """Detections above `score_threshold` per dynamic class, summed over frames."""
    counts = {c: 0 for c in classes}
    for frame in detections:
        for d in frame:
            if d.label in counts and d.score > score_threshold:
                counts[d.label] += 1
    return counts
