"""Keypoint matching between two views, for the per-keypoint depth alignment (Eq. 15).

`match(image_a, image_b)` returns matched pixel coordinates (x, y) as two float32 tensors
[M, 2]. Methods:

- "sift" (default, no weights): OpenCV SIFT, Lowe's ratio test in both directions, a mutual
  (cross) check, then RANSAC on the fundamental matrix keeps the matches consistent with one
  rigid two-view geometry.
- "disk_lightglue": kornia's DISK features matched by LightGlue (the paper uses
  SuperPoint+LightGlue; SuperPoint weights are non-commercial, DISK and LightGlue are not).
  Both networks need weights in a local folder, never downloaded: `disk.pth` (kornia's DISK
  checkpoint, `{"extractor": state_dict}` or a plain state dict) and `disk_lightglue.pth`
  (LightGlue's DISK weights). The same RANSAC filter follows.

Images are [H, W, 3] numpy (uint8, or float in [0, 1]) or torch [3, H, W] in [0, 1].
`draw_matches` draws them side by side on a matplotlib axis.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from see3d_core.images import to_uint8

MATCH_METHODS = ("sift", "disk_lightglue")
DISK_WEIGHTS = "disk.pth"
LIGHTGLUE_WEIGHTS = "disk_lightglue.pth"


def _rgb_uint8(image, name: str) -> np.ndarray:
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{name} must be an image [H, W, 3] or [3, H, W], got shape {a.shape}")
    if a.dtype != np.uint8:
        a = to_uint8(a)
    return np.ascontiguousarray(a)


def sift_features(gray: np.ndarray, max_keypoints: int = 4000):
    """OpenCV SIFT keypoints and descriptors of a uint8 grey image."""
    return cv2.SIFT_create(nfeatures=max_keypoints).detectAndCompute(gray, None)


def _ratio_map(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float) -> dict[int, int]:
    """Index in a -> index in b for matches passing Lowe's ratio test."""
    if desc_a is None or desc_b is None or len(desc_a) < 2 or len(desc_b) < 2:
        return {}
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_a, desc_b, k=2)
    return {m.queryIdx: m.trainIdx for m, n in (p for p in knn if len(p) == 2) if m.distance < ratio * n.distance}


def ratio_matches(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float = 0.8, cross_check: str | None = "ratio") -> list[tuple[int, int]]:
    """Descriptor index pairs (i in a, j in b) passing Lowe's ratio test from a to b: the one SIFT
    matcher of the kit. cross_check: "ratio" keeps pairs that also pass the ratio test from b to
    a (strict: Eq. 15's keypoint depths); "nearest" keeps pairs whose b descriptor's nearest
    neighbour in a is i (more matches: two-view camera estimation); None keeps every pair."""
    a_to_b = _ratio_map(desc_a, desc_b, ratio)
    if cross_check is None:
        return list(a_to_b.items())
    if cross_check == "ratio":
        b_to_a = _ratio_map(desc_b, desc_a, ratio)
    elif cross_check == "nearest":
        b_to_a = {m.queryIdx: m.trainIdx for m in cv2.BFMatcher(cv2.NORM_L2).match(desc_b, desc_a)} if a_to_b else {}
    else:
        raise ValueError(f"cross_check: expected 'ratio', 'nearest' or None, got {cross_check!r}")
    return [(i, j) for i, j in a_to_b.items() if b_to_a.get(j) == i]


def _sift_matches(a: np.ndarray, b: np.ndarray, ratio: float, mutual: bool, max_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    kp_a, desc_a = sift_features(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), max_keypoints)
    kp_b, desc_b = sift_features(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), max_keypoints)
    pairs = ratio_matches(desc_a, desc_b, ratio, "ratio" if mutual else None)
    uv_a = np.array([kp_a[i].pt for i, _ in pairs], np.float32).reshape(-1, 2)
    uv_b = np.array([kp_b[j].pt for _, j in pairs], np.float32).reshape(-1, 2)
    return uv_a, uv_b


class DiskLightGlue:
    """DISK + LightGlue from local weight files (kornia's architectures)."""

    def __init__(self, weights_dir, device: str | torch.device = "cpu", max_keypoints: int = 2048):
        folder = Path(weights_dir) if weights_dir is not None else None
        missing = [f for f in (DISK_WEIGHTS, LIGHTGLUE_WEIGHTS) if folder is None or not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"match(method='disk_lightglue') needs weights_dir={(str(folder) if folder is not None else None)!r} to hold {missing}: kornia's DISK "
                f"checkpoint and LightGlue's DISK weights, downloaded beforehand (nothing is downloaded at run time)"
            )
        import kornia.feature as KF

        self.device = torch.device(device)
        disk_state = torch.load(folder / DISK_WEIGHTS, map_location="cpu", weights_only=True)
        self.disk = KF.DISK()
        self.disk.load_state_dict(disk_state.get("extractor", disk_state))
        glue_state = torch.load(folder / LIGHTGLUE_WEIGHTS, map_location="cpu", weights_only=True)
        self.lightglue = KF.LightGlue(features=None, input_dim=128)
        n_layers = self.lightglue.conf.n_layers
        renamed = {}
        for key, value in glue_state.items():  # the original release names its layers differently
            for i in range(n_layers):
                key = key.replace(f"self_attn.{i}.", f"transformers.{i}.self_attn.").replace(f"cross_attn.{i}.", f"transformers.{i}.cross_attn.")
            renamed[key] = value
        self.lightglue.load_state_dict(renamed, strict=False)
        self.disk.to(self.device).eval()
        self.lightglue.to(self.device).eval()
        self.max_keypoints = max_keypoints

    @torch.no_grad()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = [torch.from_numpy(x).permute(2, 0, 1).float().div(255.0)[None].to(self.device) for x in (a, b)]
        feats = [self.disk(x, n=self.max_keypoints, pad_if_not_divisible=True)[0] for x in images]
        data = {
            f"image{i}": {"keypoints": f.keypoints[None], "descriptors": f.descriptors[None], "image_size": torch.tensor([[x.shape[-1], x.shape[-2]]], device=self.device)}
            for i, (f, x) in enumerate(zip(feats, images))
        }
        pairs = self.lightglue(data)["matches"][0].cpu().numpy()
        kp_a, kp_b = (f.keypoints.cpu().numpy() for f in feats)
        return kp_a[pairs[:, 0]].astype(np.float32).reshape(-1, 2), kp_b[pairs[:, 1]].astype(np.float32).reshape(-1, 2)


def match(
    image_a,
    image_b,
    method: str = "sift",
    ratio: float = 0.75,
    mutual: bool = True,
    ransac: bool = True,
    ransac_threshold: float = 1.0,
    max_keypoints: int = 4000,
    weights_dir=None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matched pixel coordinates (uv_a [M, 2], uv_b [M, 2]), (x, y), float32 tensors.

    `ratio` is Lowe's ratio, `mutual` keeps only matches found in both directions (SIFT),
    `ransac` keeps the inliers of a fundamental matrix (threshold in pixels; MAGSAC++) when
    there are at least 8 matches. `weights_dir` holds the DISK/LightGlue weights.
    """
    if method not in MATCH_METHODS:
        raise ValueError(f"match: method must be one of {MATCH_METHODS}, got {method!r}")
    a, b = _rgb_uint8(image_a, "image_a"), _rgb_uint8(image_b, "image_b")
    if method == "sift":
        uv_a, uv_b = _sift_matches(a, b, ratio, mutual, max_keypoints)
    else:
        uv_a, uv_b = DiskLightGlue(weights_dir, device, max_keypoints)(a, b)
    if ransac and len(uv_a) >= 8:
        try:
            _, inliers = cv2.findFundamentalMat(uv_a, uv_b, cv2.USAC_MAGSAC, ransac_threshold, 0.999, 10000)
        except cv2.error:  # OpenCV 5 raises (instead of returning None) when USAC finds no model
            inliers = None
        if inliers is not None:
            keep = inliers.ravel().astype(bool)
            uv_a, uv_b = uv_a[keep], uv_b[keep]
    return torch.from_numpy(np.ascontiguousarray(uv_a)), torch.from_numpy(np.ascontiguousarray(uv_b))


def draw_matches(ax, image_a, image_b, uv_a, uv_b, max_lines: int = 150, seed: int = 0, errors=None, max_error: float = 0.05) -> None:
    """Draw two images side by side on a matplotlib axis with (a random subset of at most
    `max_lines`) match lines; with per-match `errors` (e.g. relative depth error) lines are
    coloured green (0) to red (>= `max_error`)."""
    a, b = _rgb_uint8(image_a, "image_a"), _rgb_uint8(image_b, "image_b")
    h = max(a.shape[0], b.shape[0])
    canvas = np.zeros((h, a.shape[1] + b.shape[1], 3), np.uint8)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1] :] = b
    ax.imshow(canvas)
    pa = uv_a.detach().cpu().numpy() if isinstance(uv_a, torch.Tensor) else np.asarray(uv_a)
    pb = uv_b.detach().cpu().numpy() if isinstance(uv_b, torch.Tensor) else np.asarray(uv_b)
    pick = np.random.default_rng(seed).permutation(len(pa))[:max_lines]
    if errors is None:
        colours = np.tile([[0.2, 0.9, 1.0]], (len(pick), 1))
    else:
        e = np.asarray(errors.detach().cpu() if isinstance(errors, torch.Tensor) else errors, dtype=np.float64)[pick]
        t = np.clip(e / max_error, 0.0, 1.0)[:, None]
        colours = (1 - t) * np.array([[0.1, 0.9, 0.1]]) + t * np.array([[1.0, 0.1, 0.1]])
    for k, colour in zip(pick, colours):
        ax.plot([pa[k, 0], pb[k, 0] + a.shape[1]], [pa[k, 1], pb[k, 1]], "-", color=colour, linewidth=0.6)
    ax.scatter(pa[pick, 0], pa[pick, 1], s=3, c="yellow")
    ax.scatter(pb[pick, 0] + a.shape[1], pb[pick, 1], s=3, c="yellow")
    ax.set_title(f"{len(pa)} matches" + (f" ({len(pick)} drawn)" if len(pick) < len(pa) else ""))
    ax.set_axis_off()
