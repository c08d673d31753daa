"""Forward warping (Eq. 18-19): splat a view with its depth into another camera.

Each source pixel is back-projected with K_src^-1 and its z-depth, moved into the
destination camera by `src_to_dst` (= w2c_dst @ c2w_src), projected with K_dst and splatted
there. Collisions are resolved with a z-buffer: a destination pixel takes the colour of the
nearest surface that lands on it. Destination pixels nothing lands on are holes
(`known_mask` 0, colour 0: See3D encodes warped images with black holes and passes the mask
as its own channel, 1 = known).

Splatting modes:
- "nearest": each source pixel lands on the one pixel nearest its projection;
- "bilinear" (default): it is spread over the four pixels around its projection with bilinear
  weights, which closes the one-pixel cracks that nearest splatting leaves where the view
  magnifies a surface; contributions within `depth_tolerance` (relative) of the nearest one
  are averaged, farther ones are hidden;
- "soft": bilinear weights times exp(-(z / z_nearest - 1) / depth_tolerance), a smooth
  z-buffer (softmax splatting) instead of the hard cut.

Where the warp magnifies a surface by more than 1.5x (a face seen at a grazing angle in the
source, the ground as the camera moves towards it), pixels additionally cover the area up to
their same-surface neighbours, like a rasterised mesh (up to `max_stretch` pixels), so that
such surfaces have no cracks; depth edges are never bridged, so disocclusions stay holes.

`erode_mask` removes that many pixels from the border of the known region (and blanks them):
the fringe of a disocclusion mixes foreground and background and is better regenerated.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from see3d_core.clips import (
    PAIR_WARPS_VERSION,
    ClipDataset,
    ClipFormatError,
    pair_warps_path,
    pair_warps_version,
    read_clip,
    read_info,
    square_resize,
    square_resize_intrinsics,
)
from see3d_core.images import to_uint8

SPLAT_MODES = ("nearest", "bilinear", "soft")
MIN_WEIGHT = 0.05  # a destination pixel is known when this much splat weight reached it, and a splat
# corner occludes farther ones only with at least this weight (see the z-buffer in `forward_warp`)


def _check_inputs(image, depth, K_src, K_dst, src_to_dst):
    if image.dim() != 4:
        raise ValueError(f"forward_warp: image must be [B, C, H, W], got {tuple(image.shape)}")
    b, _, h, w = image.shape
    if h < 2 or w < 2:
        raise ValueError(f"forward_warp: image must be at least 2x2 pixels, got {h}x{w}")
    if depth.shape != (b, 1, h, w):
        raise ValueError(f"forward_warp: depth must be [B, 1, H, W] = {(b, 1, h, w)} to match the image, got {tuple(depth.shape)}")
    for name, m, shape in (("K_src", K_src, (b, 3, 3)), ("K_dst", K_dst, (b, 3, 3)), ("src_to_dst", src_to_dst, (b, 4, 4))):
        if tuple(m.shape) != shape:
            raise ValueError(f"forward_warp: {name} must be {list(shape)}, got {tuple(m.shape)}")


def depth_to_camera_points(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points [B, H, W, 3] of a z-depth map [B, 1, H, W] with intrinsics [B, 3, 3]."""
    b, _, h, w = depth.shape
    dtype = depth.dtype if depth.is_floating_point() else torch.float32
    ys, xs = torch.meshgrid(torch.arange(h, device=depth.device, dtype=dtype), torch.arange(w, device=depth.device, dtype=dtype), indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # [H, W, 3]
    rays = torch.matmul(pix.reshape(1, -1, 3), torch.linalg.inv(K.to(dtype)).transpose(1, 2))  # [B, HW, 3], z = 1
    return rays.reshape(-1, h, w, 3) * depth[:, 0, ..., None].to(dtype)


def surface_normals(points: torch.Tensor) -> torch.Tensor:
    """Unnormalised normals [B, H, W, 3] of camera-frame points [B, H, W, 3]: the cross product
    of the image-x and image-y tangents, each taken on the side with the smaller depth step
    so that a depth edge does not bend the normals of the surface beside it. Surfaces facing
    the camera get normals pointing away from it (n . p > 0)."""

    def tangent(dim: int) -> torch.Tensor:
        n = points.shape[dim]
        step = torch.diff(points, dim=dim)  # [.., n-1, ..]: step k joins pixels k and k+1
        fwd = torch.cat([step, step.narrow(dim, n - 2, 1)], dim)  # the border pixels reuse
        bwd = torch.cat([step.narrow(dim, 0, 1), step], dim)  # their only neighbour's step
        fwd_ok = fwd[..., 2].abs() <= bwd[..., 2].abs()
        return torch.where(fwd_ok[..., None], fwd, bwd)

    return torch.linalg.cross(tangent(2), tangent(1), dim=-1)


def project_to_destination(depth: torch.Tensor, K_src: torch.Tensor, K_dst: torch.Tensor, src_to_dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each source pixel lands: destination pixel coordinates [B, H, W, 2] (x, y),
    destination z-depth [B, H, W], and whether its surface faces the destination camera
    [B, H, W] (a surface seen from behind is hidden there by the object it belongs to)."""
    b, _, h, w = depth.shape
    points = depth_to_camera_points(depth, K_src)
    T = src_to_dst.to(points.dtype)
    Rt = T[:, :3, :3].transpose(1, 2)
    flat = points.reshape(b, -1, 3)
    cam = torch.baddbmm(T[:, None, :3, 3], flat, Rt)  # [B, HW, 3]
    normals = torch.bmm(surface_normals(points).reshape(b, -1, 3), Rt)
    facing = (normals * cam).sum(-1) > 0
    proj = torch.bmm(cam, K_dst.to(points.dtype).transpose(1, 2))
    z = proj[..., 2]
    uv = proj[..., :2] / z.clamp_min(1e-9)[..., None]
    return uv.reshape(b, h, w, 2), z.reshape(b, h, w), facing.reshape(b, h, w)


def _same_surface_steps(src_depth: torch.Tensor, ok: torch.Tensor, dim: int) -> torch.Tensor:
    """For each pair of neighbours along `dim` ([..., n-1]): do they lie on one smooth surface?
    Yes when their depth step is small (1%) or no larger than 1.5x a neighbouring pair's step
    (a surface seen at a grazing angle has large but steady steps; a depth edge is a jump)."""
    n = src_depth.shape[dim]
    step = torch.diff(src_depth, dim=dim).abs()
    prev = torch.cat([step.narrow(dim, 0, 1), step.narrow(dim, 0, n - 2)], dim) if n > 2 else step
    nxt = torch.cat([step.narrow(dim, 1, n - 2), step.narrow(dim, n - 2, 1)], dim) if n > 2 else step
    near = src_depth.narrow(dim, 0, n - 1)
    smooth = (step <= 0.01 * near) | (step <= 1.5 * torch.minimum(prev, nxt))
    return smooth & ok.narrow(dim, 0, n - 1) & ok.narrow(dim, 1, n - 1)


def _stretched_splats(uv, z, src_depth, src_ok, pixel_id, max_stretch: int):
    """Extra splats where the warp magnifies a surface so much (neighbours land more than 1.5 px
    apart) that bilinear splatting would leave cracks: each such source pixel covers the
    destination pixels between it and its same-surface neighbours, with tent weights in
    source-pixel coordinates (the inverse of the local affine map) and linearly interpolated
    depth, like a rasterised mesh. Stretching beyond `max_stretch` pixels is left as holes."""
    b, h, w = z.shape
    zero = torch.zeros_like(z)
    jacobian, dz, lo, hi = [], [], [], []
    for dim in (2, 1):  # image x, then image y
        same = _same_surface_steps(src_depth, src_ok, dim)
        pad = torch.zeros_like(same.narrow(dim, 0, 1))
        after = torch.cat([same, pad], dim)  # pixel p pairs with p+1
        before = torch.cat([pad, same], dim)  # pixel p pairs with p-1
        duv = torch.diff(uv, dim=dim)
        duv_after = torch.cat([duv, torch.zeros_like(duv.narrow(dim, 0, 1))], dim)
        duv_before = torch.cat([torch.zeros_like(duv.narrow(dim, 0, 1)), duv], dim)
        dzz = torch.diff(z, dim=dim)
        dz_after = torch.cat([dzz, zero.narrow(dim, 0, 1)], dim)
        dz_before = torch.cat([zero.narrow(dim, 0, 1), dzz], dim)
        jacobian.append(torch.where(after[..., None], duv_after, torch.where(before[..., None], duv_before, torch.zeros_like(duv_after))))
        dz.append(torch.where(after, dz_after, torch.where(before, dz_before, zero)))
        lo.append(torch.where(before, -1.0, 0.0).to(z))
        hi.append(torch.where(after, 1.0, 0.0).to(z))
    jx, jy = jacobian
    det = jx[..., 0] * jy[..., 1] - jx[..., 1] * jy[..., 0]
    spacing = torch.maximum(jx.norm(dim=-1), jy.norm(dim=-1))
    stretched = src_ok & (spacing > 1.5) & (det.abs() > 1e-6)
    sel = stretched.nonzero(as_tuple=True)
    # the window only needs to reach the farthest corner of the widest footprint
    reach = (jx.abs() + jy.abs())[sel].amax() if sel[0].numel() else torch.zeros((), device=z.device)
    r = int(min(max_stretch, math.ceil(float(reach))))
    offsets = torch.arange(-r, r + 1, device=z.device, dtype=z.dtype)
    oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")
    u, v = uv[sel][:, 0], uv[sel][:, 1]
    qx = torch.round(u)[:, None] + ox.reshape(1, -1)  # [S, (2r+1)^2]
    qy = torch.round(v)[:, None] + oy.reshape(1, -1)
    ex, ey = qx - u[:, None], qy - v[:, None]
    ax, ay, bx, by, dt = jx[sel][:, 0:1], jx[sel][:, 1:2], jy[sel][:, 0:1], jy[sel][:, 1:2], det[sel][:, None]
    sx = (by * ex - bx * ey) / dt  # s = J^-1 (q - p), J = [jx jy]
    sy = (-ay * ex + ax * ey) / dt
    inside = (sx >= lo[0][sel][:, None]) & (sx <= hi[0][sel][:, None]) & (sy >= lo[1][sel][:, None]) & (sy <= hi[1][sel][:, None])
    weight = torch.where(inside, (1 - sx.abs()) * (1 - sy.abs()), torch.zeros_like(sx))
    cz = z[sel][:, None] + sx * dz[0][sel][:, None] + sy * dz[1][sel][:, None]
    src = pixel_id[sel][:, None].expand_as(qx)
    return src.reshape(-1), qx.reshape(-1), qy.reshape(-1), weight.reshape(-1), cz.reshape(-1)


def forward_warp(
    image: torch.Tensor,
    depth: torch.Tensor,
    K_src: torch.Tensor,
    K_dst: torch.Tensor,
    src_to_dst: torch.Tensor,
    out_size: tuple[int, int] | None = None,
    splat: str = "bilinear",
    depth_tolerance: float = 0.02,
    erode_mask: int = 0,
    cull_backfaces: bool = True,
    max_stretch: int = 4,
    return_depth: bool = False,
):
    """Warp `image` [B, C, H, W] with z-depth [B, 1, H, W] from the source camera (K_src
    [B, 3, 3]) into the destination camera (K_dst [B, 3, 3], image size `out_size` = (H', W'),
    default (H, W)). `src_to_dst` [B, 4, 4] takes source-camera to destination-camera
    coordinates. Returns (warped [B, C, H', W'], known_mask [B, 1, H', W'] in {0, 1}) and,
    with `return_depth`, also the warped z-depth in the destination camera [B, 1, H', W']
    (the splats' weighted mean, 0 in holes).
    Source pixels with non-positive or non-finite depth are not splatted, nor (with
    `cull_backfaces`) pixels whose surface, its normal taken from the depth map, faces away
    from the destination camera: the z-buffer cannot hide them when the surface in front of
    them was never seen by the source (the far side of an object leaking through its near side)."""
    _check_inputs(image, depth, K_src, K_dst, src_to_dst)
    if splat not in SPLAT_MODES:
        raise ValueError(f"forward_warp: splat must be one of {SPLAT_MODES}, got {splat!r}")
    if depth_tolerance <= 0 or erode_mask < 0:
        raise ValueError(f"forward_warp: need depth_tolerance > 0 and erode_mask >= 0, got {depth_tolerance} and {erode_mask}")
    b, c, h, w = image.shape
    ho, wo = (h, w) if out_size is None else (int(out_size[0]), int(out_size[1]))
    uv, z, facing = project_to_destination(depth, K_src, K_dst, src_to_dst)
    src_depth = depth[:, 0].to(z.dtype)
    src_ok = torch.isfinite(src_depth) & (src_depth > 0) & (z > 1e-6) & torch.isfinite(uv).all(-1)
    if cull_backfaces:
        src_ok &= facing

    # candidate (source pixel, destination pixel, weight, depth) splats; the four bilinear
    # corners are stacked into one [4, N] batch so each step is one vectorised op
    n = b * h * w
    u, v, zf, ok_f = uv[..., 0].reshape(1, n), uv[..., 1].reshape(1, n), z.reshape(1, n), src_ok.reshape(1, n)
    if splat == "nearest":
        cx, cy, cw = torch.round(u), torch.round(v), torch.ones_like(u)
    else:
        x0, y0 = torch.floor(u), torch.floor(v)
        fx, fy = u - x0, v - y0
        corner_x = torch.tensor([[0.0], [1.0], [0.0], [1.0]], device=u.device, dtype=u.dtype)
        corner_y = torch.tensor([[0.0], [0.0], [1.0], [1.0]], device=u.device, dtype=u.dtype)
        cx, cy = x0 + corner_x, y0 + corner_y
        wx = torch.cat([1 - fx, fx])
        wy = torch.cat([1 - fy, fy])
        cw = wx[[0, 1, 0, 1]] * wy[[0, 0, 1, 1]]
    # no compaction (boolean indexing is the slow part on CPU): invalid splats go to one extra
    # "trash" pixel with zero weight and a neutral depth, dropped at the end
    trash = b * ho * wo
    ok = ok_f & (cx >= 0) & (cx <= wo - 1) & (cy >= 0) & (cy <= ho - 1) & (cw > 0)
    pixel_id = torch.arange(n, device=image.device)
    batch_base = torch.div(pixel_id, h * w, rounding_mode="floor") * (ho * wo)
    index = torch.where(ok, batch_base + cy.long() * wo + cx.long(), trash).reshape(-1)
    weight = torch.where(ok, cw, 0.0).reshape(-1)
    cand_z = torch.where(ok, zf, 1.0).reshape(-1)
    colours = image.permute(0, 2, 3, 1).reshape(n, c)
    source_rest = None
    if splat != "nearest" and max_stretch > 1:
        src_id, sx, sy, sw, sz = _stretched_splats(uv, z, src_depth, src_ok, pixel_id.reshape(b, h, w), max_stretch)
        keep = (sx >= 0) & (sx <= wo - 1) & (sy >= 0) & (sy <= ho - 1) & (sw > 0)
        index = torch.cat([index, torch.where(keep, batch_base[src_id] + sy.long() * wo + sx.long(), trash)])
        weight = torch.cat([weight, torch.where(keep, sw, 0.0)])
        cand_z = torch.cat([cand_z, torch.where(keep, sz, 1.0)])
        source_rest = src_id

    # z-buffer: the nearest surface per destination pixel, then who counts against it. Only a
    # corner that could make the pixel known on its own (weight >= MIN_WEIGHT) bids: a weaker one
    # (a float-rounding share, or the far corner of a splat on a surface seen at a grazing angle,
    # whose neighbours in the source lie > depth_tolerance deeper) would hide the heavier splats
    # of its own surface and leave a hole although the source sees the pixel. With any
    # weight > 0 bidding a view warped onto itself lost ~45% of a 32 px view; with > 1e-3, 64 px
    # warps of the synthetic floor kept one-pixel cracks (tests/test_warp.py, RESULTS issue 18).
    # Weaker corners nearer than the winner still count (each with under MIN_WEIGHT), and where
    # no corner bids they all do.
    bids = torch.where(weight >= MIN_WEIGHT, cand_z, torch.full_like(cand_z, float("inf")))
    nearest = torch.full((trash + 1,), float("inf"), device=image.device, dtype=z.dtype)
    nearest.scatter_reduce_(0, index, bids, reduce="amin")
    ratio = cand_z / nearest[index] - 1.0
    if splat == "soft":
        weight = weight * torch.exp(-ratio / depth_tolerance)
    else:
        weight = weight * (ratio <= depth_tolerance)

    # accumulate [colour * weight, weight] per corner: no [4N, C] copy of the colours
    weight = weight.to(colours.dtype)
    with_one = torch.cat([colours, torch.ones_like(colours[:, :1])], 1)
    acc = torch.zeros(trash + 1, c + 1, device=image.device, dtype=colours.dtype)
    for k in range(cw.shape[0]):
        part = slice(k * n, (k + 1) * n)
        acc.index_add_(0, index[part], with_one * weight[part, None])
    if index.shape[0] > cw.shape[0] * n:
        rest = slice(cw.shape[0] * n, None)
        acc.index_add_(0, index[rest], with_one[source_rest] * weight[rest, None])
    acc = acc[:trash]
    total = acc[:, c]
    known = total >= MIN_WEIGHT
    if return_depth:
        acc_z = torch.zeros(trash + 1, device=image.device, dtype=colours.dtype)
        acc_z.index_add_(0, index, cand_z.to(colours.dtype) * weight)
        depth_out = torch.where(known, acc_z[:trash] / total.clamp_min(1e-12), torch.zeros_like(total)).reshape(b, 1, ho, wo)
    warped = torch.where(known[:, None], acc[:, :c] / total.clamp_min(1e-12)[:, None], torch.zeros_like(acc[:, :c]))
    warped = warped.reshape(b, ho, wo, c).permute(0, 3, 1, 2)
    mask = known.reshape(b, 1, ho, wo).to(image.dtype)
    if erode_mask > 0:
        k = 2 * erode_mask + 1
        mask = 1.0 - F.max_pool2d(1.0 - mask, kernel_size=k, stride=1, padding=erode_mask)
        warped = warped * mask
        if return_depth:
            depth_out = depth_out * mask
    if return_depth:
        return warped.contiguous(), mask, depth_out
    return warped.contiguous(), mask


def pair_warps(images: np.ndarray, depths: np.ndarray, intrinsics: np.ndarray, c2w: np.ndarray) -> dict[str, np.ndarray]:
    """Every view of a posed clip warped into every other with `forward_warp` (the warp the
    generation loop uses), for training's posed condition (MV-Posed).

    images [N, H, W, 3] (any range), depths [N, H, W] z-depth, intrinsics [N, 3, 3], c2w
    [N, 4, 4]. Returns {"images" [N, N, H, W, 3] float32, "masks" [N, N, H, W] bool,
    "depths" [N, N, H, W] float32}, indexed [source, destination]; the destination's z-depth
    lets a consumer keep the nearest surface where several sources land (as `warp_anchors`)."""
    images, depths = np.asarray(images, np.float32), np.asarray(depths, np.float32)
    n, h, w = depths.shape
    if images.shape[:3] != (n, h, w) or np.shape(intrinsics) != (n, 3, 3) or np.shape(c2w) != (n, 4, 4):
        raise ValueError(f"pair_warps: expected images [N, H, W, 3], depths [N, H, W], intrinsics [N, 3, 3], c2w [N, 4, 4] "
                         f"with one N, got {images.shape}, {depths.shape}, {np.shape(intrinsics)}, {np.shape(c2w)}")
    c2w = np.asarray(c2w, np.float64)
    w2c = np.linalg.inv(c2w)
    src = np.repeat(np.arange(n), n)
    dst = np.tile(np.arange(n), n)
    K = torch.from_numpy(np.asarray(intrinsics, np.float32))
    warped, mask, depth = forward_warp(
        torch.from_numpy(images[src]).permute(0, 3, 1, 2), torch.from_numpy(depths[src])[:, None], K[src], K[dst],
        torch.from_numpy((w2c[dst] @ c2w[src]).astype(np.float32)), return_depth=True)
    return {"images": warped.permute(0, 2, 3, 1).reshape(n, n, h, w, -1).numpy(),
            "masks": (mask[:, 0] > 0.5).reshape(n, n, h, w).numpy(),
            "depths": depth[:, 0].reshape(n, n, h, w).numpy()}


# --- plots for the notebooks (matplotlib is imported lazily by the caller's axis) ------------

def _hwc(image) -> np.ndarray:
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 4:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    return a


def warp_preview(warped, known_mask, hole_color=(1.0, 0.0, 1.0)) -> np.ndarray:
    """An RGB image [H, W, 3] of a warp with its holes painted `hole_color` (black content
    and holes look alike otherwise). Accepts [C, H, W] / [1, C, H, W] tensors or HWC arrays."""
    rgb = np.clip(_hwc(warped).astype(np.float32), 0, 1)
    mask = _hwc(known_mask).astype(bool)
    mask = mask[..., 0] if mask.ndim == 3 else mask
    out = rgb.copy()
    out[~mask] = hole_color
    return out


def show_warp(ax, warped, known_mask, title: str = "", target=None) -> None:
    """Draw a warp with its holes marked; with `target`, the title gets the PSNR on known pixels."""
    ax.imshow(warp_preview(warped, known_mask))
    if target is not None:
        mask = _hwc(known_mask).astype(bool)
        mask = mask[..., 0] if mask.ndim == 3 else mask
        err = np.mean((_hwc(warped)[mask] - _hwc(target)[mask]) ** 2)
        title = f"{title} PSNR {-10 * np.log10(max(err, 1e-12)):.1f} dB (known {mask.mean():.0%})".strip()
    ax.set_title(title)
    ax.set_axis_off()


def write_pair_warps(clip_dir, image_size: int, overwrite: bool = False) -> bool:
    """Compute and store `pair_warps` of a posed clip at the training crop `image_size`
    (`see3d_core.clips.square_resize`), in `see3d_core.clips.pair_warps_path`. Written whole
    (temporary file, then rename); an existing file is kept unless `overwrite` or it was written
    by an older warp (`PAIR_WARPS_VERSION`). Returns whether it wrote. Raises ClipFormatError
    naming the clip when it has no cameras or depths."""
    path = pair_warps_path(clip_dir, image_size)
    if path.is_file() and not overwrite:
        with np.load(path) as stored:
            if pair_warps_version(stored) == PAIR_WARPS_VERSION:
                return False
    clip = read_clip(clip_dir)
    info = clip.info
    if not info.posed or clip.depths is None:
        raise ClipFormatError(f"clip {clip_dir}: pair warps need 'intrinsics', 'c2w' and 'depths' in clip.json")
    frames = square_resize(clip.frames, image_size)
    depths = square_resize(clip.depths, image_size).astype(np.float32)
    K = square_resize_intrinsics(np.asarray(info.intrinsics, np.float64), info.height, info.width, image_size)
    warps = pair_warps(frames.astype(np.float32) / 255.0, depths, K, np.asarray(info.c2w))
    tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, images=to_uint8(warps["images"]), masks=warps["masks"],
                        depths=warps["depths"].astype(np.float32), version=np.int32(PAIR_WARPS_VERSION))
    os.replace(tmp, path)
    return True


def write_dataset_pair_warps(data_dir, image_size: int, overwrite: bool = False) -> int:
    """`write_pair_warps` for every posed clip of a clip dataset (unposed clips are skipped);
    resumable. Returns the number of clips written now."""
    written = 0
    for clip_dir in ClipDataset(data_dir).clip_dirs():
        info = read_info(clip_dir)
        if info.posed and info.depths is not None:
            written += write_pair_warps(clip_dir, image_size, overwrite)
    return written
