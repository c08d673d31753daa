"""Monocular depth estimators: one interface, Depth Anything from a local folder, and an
oracle for synthetic scenes.

Every estimator has `output_space` ("depth" or "disparity", what its numbers mean up to an
unknown affine map; pass it to `see3d_torch.depth.lwlr_align(..., space=...)`) and
`predict(image, camera=None) -> [H, W]` float32 at the input's resolution. `image` is
[H, W, 3] (numpy uint8 or float in [0, 1]) or a torch tensor [3, H, W] / [H, W, 3] in [0, 1].

- `DepthAnything(model_dir)`: a transformers Depth Anything (V1/V2) checkpoint in a local
  folder (`config.json` + `model.safetensors`), e.g. after
  `huggingface-cli download depth-anything/Depth-Anything-V2-Small-hf --local-dir DIR`.
  Nothing is ever downloaded. Relative models predict disparity, metric ones depth in metres.
- `SyntheticDepthOracle(scene)`: the exact depth of a `see3d_core.synthetic` scene, optionally
  corrupted by a `DepthDistortion` (a global affine map and a smooth, spatially varying scale)
  to mimic a monocular estimator with a known answer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from see3d_core.weights import DEPTH_ANYTHING_REPO, is_repo_id, resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class MonoDepthEstimator(Protocol):
    output_space: str

    def predict(self, image, camera=None) -> torch.Tensor: ...


def _image_chw(image) -> torch.Tensor:
    """[3, H, W] float32 in [0, 1] from numpy/torch, HWC or CHW, uint8 or float."""
    t = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if t.dim() != 3 or (t.shape[0] != 3 and t.shape[-1] != 3):
        raise ValueError(f"image must be [H, W, 3] or [3, H, W], got shape {tuple(t.shape)}")
    if t.shape[0] != 3:
        t = t.permute(2, 0, 1)
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


class DepthAnything:
    """Depth Anything through transformers, from a local folder or a Hugging Face repository id
    (`see3d_core.weights.resolve_weights`: the cache, downloaded on first use unless offline)."""

    def __init__(self, model_dir=DEPTH_ANYTHING_REPO, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 input_size: int = 518, offline: bool | None = None):
        if is_repo_id(str(model_dir)):
            model_dir = resolve_weights(model_dir, offline=offline, marker="config.json", argument="depth-model")
        folder = Path(model_dir)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Depth Anything weights folder {str(folder)!r} does not exist; expected a transformers "
                f"checkpoint folder with config.json and {WEIGHT_FILES[0]}, or a repository id such as {DEPTH_ANYTHING_REPO}"
            )
        if not (folder / "config.json").is_file() or not any((folder / f).is_file() for f in WEIGHT_FILES):
            raise FileNotFoundError(f"{str(folder)!r} is not a transformers checkpoint folder: expected config.json and one of {WEIGHT_FILES}")
        try:
            from transformers import AutoModelForDepthEstimation
        except ImportError as err:  # the torch extra brings it
            raise ImportError("DepthAnything needs the `transformers` package: pip install 'see3d-kit[torch]'") from err
        self.model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True).to(device=device, dtype=dtype).eval()
        self.device, self.dtype, self.input_size = torch.device(device), dtype, int(input_size)
        self.patch_size = int(getattr(getattr(self.model.config, "backbone_config", None), "patch_size", 14))
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        processor_file = folder / "preprocessor_config.json"
        if processor_file.is_file():
            processor = json.loads(processor_file.read_text())
            mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
        self.mean = torch.tensor(mean, device=self.device, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, device=self.device, dtype=torch.float32)[:, None, None]
        self.output_space = "depth" if getattr(self.model.config, "depth_estimation_type", "relative") == "metric" else "disparity"

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The input resolution: the short side at `input_size`, both sides multiples of the patch."""
        scale = self.input_size / min(height, width)
        p = self.patch_size
        return max(p, round(height * scale / p) * p), max(p, round(width * scale / p) * p)

    @torch.no_grad()
    def predict(self, image, camera=None) -> torch.Tensor:
        x = _image_chw(image).to(self.device)
        h, w = x.shape[-2:]
        x = F.interpolate(x[None], size=self.network_size(h, w), mode="bicubic", align_corners=False, antialias=True)
        x = ((x.clamp(0, 1) - self.mean) / self.std).to(self.dtype)
        pred = self.model(pixel_values=x).predicted_depth  # [1, h', w']
        pred = F.interpolate(pred[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        return pred.clamp_min(0.0)


@dataclasses.dataclass(frozen=True)
class DepthDistortion:
    """What a monocular estimator gets wrong, with a known answer:
    `mono = scale * depth * (1 + local_amplitude * field) + shift`, where `field` in [-1, 1]
    is a smooth random field whose shortest wavelength is `wavelength_px` pixels."""

    scale: float = 0.37
    shift: float = 0.8
    local_amplitude: float = 0.12
    wavelength_px: float = 256.0
    seed: int = 0

    def scale_field(self, height: int, width: int) -> np.ndarray:
        """1 + local_amplitude * field, [H, W] float64."""
        rng = np.random.default_rng(self.seed)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        field = np.zeros((height, width))
        for _ in range(6):  # a few random plane waves, wavelengths in [1, 2.5] x wavelength_px
            angle = rng.uniform(0, 2 * np.pi)
            wavelength = self.wavelength_px * rng.uniform(1.0, 2.5)
            phase = rng.uniform(0, 2 * np.pi)
            field += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / wavelength + phase)
        field /= max(np.abs(field).max(), 1e-12)
        return 1.0 + self.local_amplitude * field

    def apply(self, depth) -> np.ndarray:
        d = np.asarray(depth, dtype=np.float64)
        return (self.scale * d * self.scale_field(*d.shape) + self.shift).astype(np.float32)


class SyntheticDepthOracle:
    """The true z-depth of a synthetic scene for a camera (the image itself is not used),
    optionally distorted like a monocular estimator's output."""

    output_space = "depth"

    def __init__(self, scene, distortion: DepthDistortion | None = None):
        self.scene = scene
        self.distortion = distortion

    def predict(self, image=None, camera=None) -> torch.Tensor:
        if camera is None:
            raise ValueError("SyntheticDepthOracle.predict needs the `camera` (a see3d_core.cameras.Camera) the image was rendered with")
        from see3d_core import synthetic

        depth = synthetic.render(self.scene, camera).depth
        if self.distortion is not None:
            depth = self.distortion.apply(depth)
        return torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))
