"""A set of 3D Gaussians: its parameters, its initialisation and its standard PLY file.

Parameters are stored the way they are optimised (as in 3DGS and gsplat): means, unnormalised
quaternions (w, x, y, z), log scales, opacity logits, and SH coefficients split into the DC
term `sh0` [N, 1, 3] and the rest `shN` [N, K-1, 3].

The PLY layout is the one of the original 3DGS code, which splat viewers read:
`x y z nx ny nz f_dc_0..2 f_rest_0.. opacity scale_0..2 rot_0..3`, little-endian float32,
with f_rest ordered channel-major (all coefficients of red, then green, then blue), opacity
as a logit and scales as logs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from see3d_core.cameras import Camera, depth_to_points
from see3d_torch.splatting.rendering import rasterization

SH_C0 = 0.28209479177387814
PARAMETER_NAMES = ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN")


def nearest_neighbour_radii(points: np.ndarray, neighbours: int = 3) -> np.ndarray:
    """RMS distance of every point [N, 3] to its `neighbours` nearest others (0 distances ignored
    by a floor at 1e-7 of the points' extent)."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    k = min(neighbours, len(points) - 1)
    distances, _ = cKDTree(points).query(points, k=k + 1)  # the first neighbour is the point itself
    extent = float(np.ptp(points, axis=0).max()) or 1.0
    return np.maximum(np.sqrt((distances[:, 1:] ** 2).mean(1)), 1e-7 * extent)


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """The DC coefficient that renders as `rgb` (colour = SH_C0 * sh0 + 0.5)."""
    return (rgb - 0.5) / SH_C0


@dataclasses.dataclass
class Gaussians:
    means: torch.Tensor  # [N, 3]
    quats: torch.Tensor  # [N, 4] (w, x, y, z), any norm
    log_scales: torch.Tensor  # [N, 3]
    opacity_logits: torch.Tensor  # [N]
    sh0: torch.Tensor  # [N, 1, 3]
    shN: torch.Tensor  # [N, K - 1, 3], K = (sh_degree + 1)^2

    def __post_init__(self):
        n = self.means.shape[0]
        shapes = {
            "means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,), "sh0": (n, 1, 3),
        }
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"Gaussians.{name} must be {list(shape)}, got {tuple(getattr(self, name).shape)}")
        k = self.shN.shape[1] + 1 if self.shN.ndim == 3 else -1
        if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3 or math.isqrt(k) ** 2 != k:
            raise ValueError(f"Gaussians.shN must be [N, (d+1)^2 - 1, 3], got {tuple(self.shN.shape)}")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return math.isqrt(self.shN.shape[1] + 1) - 1

    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def sh(self) -> torch.Tensor:
        return torch.cat([self.sh0, self.shN], dim=1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in PARAMETER_NAMES}

    def to(self, device) -> "Gaussians":
        return Gaussians(**{k: v.to(device) for k, v in self.tensors().items()})

    def detach(self) -> "Gaussians":
        return Gaussians(**{k: v.detach() for k, v in self.tensors().items()})

    def render(
        self, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, sh_degree: int | None = None, **options
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """`rasterization` of these Gaussians (SH colours up to `sh_degree`, default all)."""
        degree = self.sh_degree if sh_degree is None else min(sh_degree, self.sh_degree)
        return rasterization(
            self.means, self.quats, self.scales, self.opacities, self.sh, viewmats, Ks, width, height,
            sh_degree=degree, **options,
        )

    def render_cameras(self, cameras: Sequence[Camera], background=(0.0, 0.0, 0.0), **options) -> tuple[np.ndarray, np.ndarray]:
        """RGB [V, H, W, 3] in [0, 1] and expected depth [V, H, W] for kit cameras, no gradients."""
        images, depths = [], []
        device = self.means.device
        with torch.no_grad():
            for cam in cameras:
                viewmats = torch.as_tensor(cam.w2c, dtype=torch.float32, device=device)[None]
                Ks = torch.as_tensor(cam.K, dtype=torch.float32, device=device)[None]
                bg = torch.as_tensor(background, dtype=torch.float32, device=device)[None]
                out, _, _ = self.render(viewmats, Ks, cam.width, cam.height, render_mode="RGB+ED", backgrounds=bg, **options)
                images.append(out[0, ..., :3].clamp(0, 1).cpu().numpy())
                depths.append(out[0, ..., 3].cpu().numpy())
        return np.stack(images), np.stack(depths)

    # --- initialisation ------------------------------------------------------------------------

    @classmethod
    def from_points(
        cls,
        points: np.ndarray | torch.Tensor,
        colors: np.ndarray | torch.Tensor,
        scales: np.ndarray | torch.Tensor,
        sh_degree: int = 0,
        opacity: float = 0.1,
        seed: int = 0,
    ) -> "Gaussians":
        """Isotropic Gaussians at `points` [N, 3] with RGB `colors` [N, 3] in [0, 1] and radii `scales` [N]."""
        points = torch.as_tensor(np.asarray(points), dtype=torch.float32)
        colors = torch.as_tensor(np.asarray(colors), dtype=torch.float32)
        scales = torch.as_tensor(np.asarray(scales), dtype=torch.float32)
        n = points.shape[0]
        if points.ndim != 2 or points.shape[1] != 3 or colors.shape != (n, 3) or scales.shape != (n,):
            raise ValueError(
                f"from_points needs points [N, 3], colors [N, 3] and scales [N]; got {tuple(points.shape)}, "
                f"{tuple(colors.shape)}, {tuple(scales.shape)}"
            )
        if not 0.0 < opacity < 1.0:
            raise ValueError(f"opacity must be in (0, 1), got {opacity}")
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
        generator = torch.Generator().manual_seed(seed)
        quats = torch.randn(n, 4, generator=generator)
        return cls(
            means=points,
            quats=quats / quats.norm(dim=-1, keepdim=True),
            log_scales=torch.log(scales.clamp_min(1e-7))[:, None].repeat(1, 3),
            opacity_logits=torch.full((n,), math.log(opacity / (1 - opacity))),
            sh0=rgb_to_sh0(colors.clamp(0, 1))[:, None, :],
            shN=torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3),
        )

    @classmethod
    def from_depths(
        cls,
        images: Sequence[np.ndarray],
        depths: Sequence[np.ndarray],
        cameras: Sequence[Camera],
        max_points: int = 30_000,
        pixel_footprint: float = 1.0,
        sh_degree: int = 0,
        opacity: float = 0.5,
        seed: int = 0,
    ) -> "Gaussians":
        """One Gaussian per (randomly subsampled) pixel with a valid depth, unprojected with its
        camera; its radius covers `pixel_footprint` pixels at its depth."""
        if not len(images) == len(depths) == len(cameras) or len(images) == 0:
            raise ValueError(f"from_depths needs as many images, depths and cameras (> 0); got {len(images)}, {len(depths)}, {len(cameras)}")
        points, colors, radii = [], [], []
        for i, (image, depth, cam) in enumerate(zip(images, depths, cameras)):
            depth = np.asarray(depth, dtype=np.float64)
            if depth.shape != (cam.height, cam.width) or np.asarray(image).shape[:2] != depth.shape:
                raise ValueError(
                    f"view {i}: image {np.asarray(image).shape[:2]} and depth {depth.shape} must match the camera size "
                    f"{cam.height}x{cam.width}"
                )
            valid = np.isfinite(depth) & (depth > 0)
            points.append(depth_to_points(np.where(valid, depth, 1.0), cam.K, cam.c2w)[valid])
            colors.append(np.asarray(image, dtype=np.float32)[..., :3][valid])
            radii.append(pixel_footprint * depth[valid] / np.sqrt(cam.K[0, 0] * cam.K[1, 1]))
        points, colors, radii = np.concatenate(points), np.concatenate(colors), np.concatenate(radii)
        if len(points) == 0:
            raise ValueError("from_depths: no pixel has a valid (finite, positive) depth")
        keep = np.random.default_rng(seed).permutation(len(points))[:max_points]
        return cls.from_points(points[keep], colors[keep], radii[keep], sh_degree, opacity, seed)

    @classmethod
    def from_sfm_points(
        cls, points: np.ndarray, colors: np.ndarray, sh_degree: int = 0, opacity: float = 0.1, seed: int = 0,
        radius_factor: float = 1.0,
    ) -> "Gaussians":
        """Gaussians at structure-from-motion points [N, 3] with their RGB `colors` [N, 3] in
        [0, 1]; each radius is `radius_factor` x the RMS distance to its 3 nearest neighbours
        (3DGS: factor 1)."""
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3 or len(points) < 2:
            raise ValueError(f"from_sfm_points needs at least 2 points [N, 3], got shape {points.shape}")
        if radius_factor <= 0:
            raise ValueError(f"radius_factor must be positive, got {radius_factor}")
        return cls.from_points(points, colors, radius_factor * nearest_neighbour_radii(points), sh_degree, opacity, seed)

    @classmethod
    def in_frustums(
        cls, num: int, cameras: Sequence[Camera], near: float, far: float, sh_degree: int = 0, opacity: float = 0.1,
        seed: int = 0,
    ) -> "Gaussians":
        """`num` Gaussians with random colours spread uniformly over the volume the cameras see
        between z-depths `near` and `far` (each camera's frustum in turn, a random pixel, a depth
        with density proportional to z^2); radii from the spacing of `num` points in one frustum
        (the frustums of a capture mostly overlap)."""
        if num < 1 or not 0 < near < far:
            raise ValueError(f"in_frustums needs num >= 1 and 0 < near < far, got {num}, {near}, {far}")
        if not cameras:
            raise ValueError("in_frustums needs at least one camera")
        rng = np.random.default_rng(seed)
        which = rng.integers(0, len(cameras), num)
        z = (near**3 + rng.uniform(0, 1, num) * (far**3 - near**3)) ** (1 / 3)
        points = np.empty((num, 3))
        for i, cam in enumerate(cameras):
            mine = which == i
            uv = rng.uniform([-0.5, -0.5], [cam.width - 0.5, cam.height - 0.5], size=(int(mine.sum()), 2))
            points[mine] = cam.unproject(uv, z[mine])
        volume = np.mean([c.width * c.height / (c.K[0, 0] * c.K[1, 1]) for c in cameras]) * (far**3 - near**3) / 3
        spacing = (volume / num) ** (1 / 3)
        return cls.from_points(points, rng.uniform(0, 1, (num, 3)), np.full(num, 0.5 * spacing), sh_degree, opacity, seed)

    # --- PLY --------------------------------------------------------------------------------------

    def save_ply(self, path: str | os.PathLike) -> Path:
        """Write the standard 3DGS PLY (binary little-endian), atomically."""
        path = Path(path)
        g = self.detach().to("cpu")
        n = len(g)
        rest = g.shN.transpose(1, 2).reshape(n, -1).numpy()  # channel-major, as 3DGS writes it
        columns = {
            **{c: g.means[:, i].numpy() for i, c in enumerate("xyz")},
            **{c: np.zeros(n, np.float32) for c in ("nx", "ny", "nz")},
            **{f"f_dc_{i}": g.sh0[:, 0, i].numpy() for i in range(3)},
            **{f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])},
            "opacity": g.opacity_logits.numpy(),
            **{f"scale_{i}": g.log_scales[:, i].numpy() for i in range(3)},
            **{f"rot_{i}": g.quats[:, i].numpy() for i in range(4)},
        }
        table = np.empty(n, dtype=[(name, "<f4") for name in columns])
        for name, values in columns.items():
            table[name] = values
        header = "\n".join(
            ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
            + [f"property float {name}" for name in columns]
            + ["end_header"]
        ) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(table.tobytes())
        os.replace(tmp, path)
        return path

    @classmethod
    def load_ply(cls, path: str | os.PathLike) -> "Gaussians":
        """Read a 3DGS PLY written by `save_ply` or by the original 3DGS code."""
        path = Path(path)
        data = path.read_bytes()
        end = data.find(b"end_header\n")
        if not data.startswith(b"ply") or end < 0:
            raise ValueError(f"{path}: not a PLY file")
        header = data[:end].decode("ascii").splitlines()
        if "format binary_little_endian 1.0" not in header:
            raise ValueError(f"{path}: only binary_little_endian PLY is supported")
        n, names = None, []
        for line in header:
            parts = line.split()
            if parts[:2] == ["element", "vertex"]:
                n = int(parts[2])
            elif parts[:1] == ["property"]:
                if parts[1] != "float":
                    raise ValueError(f"{path}: property {parts[-1]} is {parts[1]}, expected float")
                names.append(parts[2])
        needed = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", *(f"scale_{i}" for i in range(3)), *(f"rot_{i}" for i in range(4))}
        if n is None or needed - set(names):
            raise ValueError(f"{path}: not a 3DGS PLY (missing {sorted(needed - set(names))})")
        table = np.frombuffer(data[end + len(b"end_header\n") :], dtype=[(name, "<f4") for name in names], count=n)
        rest_names = sorted((x for x in names if x.startswith("f_rest_")), key=lambda x: int(x[7:]))
        k = len(rest_names) // 3 + 1
        if len(rest_names) % 3 or math.isqrt(k) ** 2 != k:
            raise ValueError(f"{path}: {len(rest_names)} f_rest properties do not form SH coefficients")
        col = lambda *cols: torch.from_numpy(np.stack([table[c] for c in cols], axis=-1).astype(np.float32))
        rest = col(*rest_names) if rest_names else torch.zeros(n, 0)
        return cls(
            means=col("x", "y", "z"),
            quats=col(*(f"rot_{i}" for i in range(4))),
            log_scales=col(*(f"scale_{i}" for i in range(3))),
            opacity_logits=col("opacity")[:, 0],
            sh0=col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
            shN=rest.reshape(n, 3, k - 1).transpose(1, 2).contiguous(),
        )
