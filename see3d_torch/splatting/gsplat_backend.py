"""The CUDA backend: gsplat's rasterizer behind the kit's `rasterization` interface.

Only used for CUDA tensors; gsplat is imported here, lazily, so the CPU path never needs it
(gsplat 1.5.3 imports on CPU but its kernels are JIT-built for CUDA and fail without it).
"""

from __future__ import annotations

import torch


def _import_gsplat():
    try:
        import gsplat
    except ImportError as e:
        raise ImportError(
            "the gsplat backend needs the 'gsplat' package (and CUDA torch): pip install 'see3d-kit[torch-cuda]'; "
            f"on CPU use backend='torch' ({e})"
        ) from None
    return gsplat


def rasterize(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, *,
    sh_degree, backgrounds, render_mode, near_plane, far_plane, eps2d, tile_size, radius_clip=0.0, rasterize_mode="classic",
    packed=False,
):
    if not means.is_cuda:
        raise ValueError("backend='gsplat' needs CUDA tensors; move the Gaussians to a GPU or use backend='torch'")
    gsplat = _import_gsplat()
    # gsplat samples pixel (i, j) at (j + 0.5, i + 0.5); the kit puts pixel centres at integers
    Ks_gsplat = Ks.clone()
    Ks_gsplat[:, 0, 2] += 0.5
    Ks_gsplat[:, 1, 2] += 0.5
    render_colors, render_alphas, info = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks_gsplat, int(width), int(height),
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree, packed=packed,
        tile_size=tile_size, backgrounds=backgrounds, render_mode=render_mode, radius_clip=radius_clip,
        rasterize_mode=rasterize_mode,
    )
    means2d = info["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()  # densification reads the screen-space gradient
    radii = info["radii"]
    if radii.shape[-1] != 2:  # older gsplat: one radius per Gaussian
        radii = radii[..., None].expand(*radii.shape, 2)
    meta = {
        # in gsplat's pixel convention (+0.5); densification only reads its gradient
        "means2d": means2d,
        "radii": radii.to(torch.int32),
        "depths": info["depths"],
        "conics": info["conics"],
        "width": int(width),
        "height": int(height),
        "n_cameras": viewmats.shape[0],
        "backend": "gsplat",
        "gsplat_info": info,
    }
    if packed:
        meta.update(camera_ids=info["camera_ids"], gaussian_ids=info["gaussian_ids"])
    return render_colors, render_alphas, meta
