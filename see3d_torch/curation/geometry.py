"""Epipolar geometry of flow fields: the static-camera precheck, the robust fundamental matrix,
Sampson error and dynamic masks (curation step 3).

For a static scene seen by a moving camera every flow correspondence (x, x' = x + f(x))
satisfies x'^T F x = 0. Pixels far from their epipolar line move in a way the camera motion
does not explain: moving objects or deforming (non-rigid) content.
"""

from __future__ import annotations

import cv2
import numpy as np

from see3d_torch.curation.flow import pixel_grid  # one cached grid for flow and geometry


def edge_correlations(gray_frames: list[np.ndarray], low: int = 50, high: int = 100) -> np.ndarray:
    """Normalised correlation of the Canny edge maps of consecutive frames."""
    edges = [cv2.Canny(g, low, high).astype(np.float32) for g in gray_frames]
    values = []
    for a, b in zip(edges[:-1], edges[1:]):
        if a.std() == 0 or b.std() == 0:  # blank edge maps: identical iff both are blank
            values.append(1.0 if a.std() == b.std() == 0 else 0.0)
            continue
        values.append(float(cv2.matchTemplate(a, b, cv2.TM_CCOEFF_NORMED)[0, 0]))
    return np.array(values)


def fundamental_from_flow(flow: np.ndarray, valid: np.ndarray, num_samples: int, rng: np.random.Generator,
                          inlier_px: float | None = None) -> np.ndarray | None:
    """F from `num_samples` random valid flow correspondences; None when degenerate.

    LMedS (the SPEC's estimator) by default; with `inlier_px`, MAGSAC++ with that inlier threshold,
    which fits the static majority more tightly (LMedS's looser F leaves smooth residual fields that
    flag static regions once flows are chained over several frames)."""
    ys, xs = np.nonzero(valid)
    if len(xs) < 8:
        return None
    pick = rng.choice(len(xs), size=min(num_samples, len(xs)), replace=False)
    p0 = np.stack([xs[pick], ys[pick]], axis=1).astype(np.float64)
    p1 = p0 + flow[ys[pick], xs[pick]].astype(np.float64)
    cv2.setRNGSeed(int(rng.integers(2**31 - 1)))  # both sample with OpenCV's RNG: keep it reproducible
    if inlier_px is None:
        F, _ = cv2.findFundamentalMat(p0, p1, cv2.FM_LMEDS)
    else:
        try:
            F, _ = cv2.findFundamentalMat(p0, p1, cv2.USAC_MAGSAC, inlier_px, 0.999, 10000)
        except cv2.error:  # OpenCV's USAC asserts instead of returning nothing when no model fits
            return None
    if F is None or F.shape != (3, 3):
        return None
    return F


def sampson_error(F: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sampson error (pixels^2) of every pixel's correspondence x -> x + flow(x) under F."""
    h, w = flow.shape[:2]
    x0, y0 = pixel_grid(h, w)
    x1, y1 = x0 + flow[..., 0], y0 + flow[..., 1]
    F = F.astype(np.float32)
    # epipolar lines F x0 (in image 1) and F^T x1 (in image 0)
    l1 = [F[i, 0] * x0 + F[i, 1] * y0 + F[i, 2] for i in range(3)]
    l0 = [F[0, i] * x1 + F[1, i] * y1 + F[2, i] for i in range(3)]
    algebraic = x1 * l1[0] + y1 * l1[1] + l1[2]
    denominator = l1[0] ** 2 + l1[1] ** 2 + l0[0] ** 2 + l0[1] ** 2
    return algebraic**2 / np.maximum(denominator, 1e-12)


def open_small_specks(mask: np.ndarray) -> np.ndarray:
    """`mask` opened with a disk of radius 1 (isolated pixels and one-pixel lines go)."""
    disk1 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disk1).astype(bool)


def dynamic_mask(error: np.ndarray, percentile: float = 80.0, threshold_divisor: float = 8100.0) -> np.ndarray:
    """Pixels that move against the rigid scene: error above its `percentile`-th percentile and
    above H*W/`threshold_divisor` px^2, opened with a disk of radius 1, dilated with radius 2."""
    h, w = error.shape
    floor = np.percentile(error, percentile)
    raw = (error >= floor) & (error > h * w / threshold_divisor)
    disk2 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    return cv2.dilate(open_small_specks(raw).astype(np.uint8), disk2).astype(bool)


def rigid_fit_ratio(flow: np.ndarray, mask: np.ndarray, valid: np.ndarray, tolerance_px: float,
                    rng: np.random.Generator, min_pixels: int = 30, samples_per_region: int = 300) -> tuple[float, int]:
    """How well each connected dynamic region moves as one rigid piece.

    A small object moving rigidly has image motion close to an affine map; flowing or waving
    content does not. Returns the pixel-weighted share of sampled region pixels within
    `tolerance_px` of their region's RANSAC affine fit, and the pixel count it is based on."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    inliers = total = 0
    for label in range(1, count):
        ys, xs = np.nonzero((labels == label) & valid)
        if len(xs) < min_pixels:
            continue
        pick = rng.choice(len(xs), size=min(samples_per_region, len(xs)), replace=False)
        p0 = np.stack([xs[pick], ys[pick]], axis=1).astype(np.float32)
        p1 = p0 + flow[ys[pick], xs[pick]]
        cv2.setRNGSeed(int(rng.integers(2**31 - 1)))
        A, _ = cv2.estimateAffine2D(p0, p1, method=cv2.RANSAC, ransacReprojThreshold=tolerance_px)
        if A is None:
            total += len(xs)
            continue
        residual = np.linalg.norm(p0 @ A[:, :2].T + A[:, 2] - p1, axis=1)
        inliers += float(np.mean(residual < tolerance_px)) * len(xs)
        total += len(xs)
    return (inliers / total if total else float("nan")), int(total)


def largest_region_fraction(mask: np.ndarray) -> float:
    """Area of the largest 8-connected region of `mask`, as a share of the frame."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return float(stats[1:, cv2.CC_STAT_AREA].max()) / mask.size if count > 1 else 0.0
