"""Semantic dynamic recognition (curation step 2) behind a small detector interface.

A detector is any object with a `name` and `detect(frames [N, H, W, 3] uint8 RGB) -> list (per
frame) of `Detection``. `MaskRCNNDetector` wraps torchvision's Mask R-CNN R50-FPN (the released
pipeline's detector) and loads only from a local weights file or torch's hub cache. When
torchvision or the weights are missing, `load_detector` falls back to `semantic.fallback_detector`:
`FaceCascadeDetector`, a classical detector whose model ships inside scikit-image (its LBP
frontal-face cascade; nothing is downloaded), counting one person per frontal face; with
`fallback_detector="none"` it raises `DetectorUnavailable` and curation records step 2 as skipped.
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
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the detector's input pixels (after its resize)


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


class FaceCascadeDetector:
    """One "person" per frontal face found by scikit-image's LBP frontal-face cascade (a classical
    Viola-Jones-style detector; its model file ships inside scikit-image). It sees people facing
    the camera only (not from behind, not too small); `replaces` says which detector it stands in
    for and why. A cascade has no confidence: every detection gets score 1.0.

    Frames are resized to fit `size` (width, height); faces from `min_face_px` pixels (at that size) up
    to the frame height are searched; `min_neighbours` overlapping windows confirm a face (fewer
    lets textures through: foliage and rock made up to 12 faces in 21 frames of the water video at
    640x360 with 4, none at 512x288)."""

    name = "skimage_lbp_frontal_face_cascade"

    def __init__(self, size: tuple[int, int] = (512, 288), min_face_px: int = 16, min_neighbours: int = 4,
                 replaces: str | None = None):
        try:
            from skimage.data import lbp_frontal_face_cascade_filename
            from skimage.feature import Cascade
        except ImportError as e:  # the torch extra brings scikit-image
            raise DetectorUnavailable(f"the face cascade needs scikit-image ({e}): pip install 'see3d-kit[torch]'") from None
        self._cascade = Cascade(lbp_frontal_face_cascade_filename())
        self.size, self.min_face_px, self.min_neighbours, self.replaces = size, min_face_px, min_neighbours, replaces

    def __getstate__(self):  # the Cython cascade does not pickle; workers rebuild it
        return {k: v for k, v in self.__dict__.items() if k != "_cascade"}

    def __setstate__(self, state):
        self.__init__(state["size"], state["min_face_px"], state["min_neighbours"], state["replaces"])

    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        found = []
        for frame in frames:
            # fit inside `size` keeping the aspect ratio: a squashed face is no face to the cascade
            scale = min(self.size[0] / frame.shape[1], self.size[1] / frame.shape[0])
            fitted = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
            small = cv2.resize(frame, fitted, interpolation=cv2.INTER_AREA)
            faces = self._cascade.detect_multi_scale(
                img=small, scale_factor=1.2, step_ratio=1, min_size=(self.min_face_px, self.min_face_px),
                max_size=(fitted[1], fitted[1]), min_neighbor_number=self.min_neighbours, intersection_score_threshold=0.5)
            found.append([Detection("person", 1.0, (float(f["c"]), float(f["r"]), float(f["c"] + f["width"]), float(f["r"] + f["height"])))
                          for f in faces])
        return found


def load_detector(config: SemanticConfig) -> Detector | None:
    """The configured detector; None for `detector="none"`. When Mask R-CNN cannot run, the
    `fallback_detector` (its `replaces` says why); raises `DetectorUnavailable` without one."""
    if config.detector == "none":
        return None
    if config.detector == "face_cascade":
        return FaceCascadeDetector()
    try:  # SemanticConfig checked the names
        return MaskRCNNDetector(config.detector_weights, (config.detector_width, config.detector_height))
    except DetectorUnavailable as e:
        if config.fallback_detector == "none":
            raise
        return FaceCascadeDetector(replaces=f"maskrcnn: {e}")


def count_dynamic(detections: Sequence[Sequence[Detection]], classes: Sequence[str], score_threshold: float) -> dict[str, int]:
    """Detections above `score_threshold` per dynamic class, summed over frames."""
    counts = {c: 0 for c in classes}
    for frame in detections:
        for d in frame:
            if d.label in counts and d.score > score_threshold:
                counts[d.label] += 1
    return counts
