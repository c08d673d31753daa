"""The kit's own CPU rasterizer: tile-binned, memory-bounded alpha compositing in pure torch.

Every projected Gaussian is binned into the square tiles its footprint touches; each tile
composites its Gaussians front to back. Tiles with similar numbers of Gaussians are batched
together (padded to the batch's largest count), so a whole batch is a handful of dense
tensor operations:

- the exponent of every (Gaussian, pixel) pair is one matrix product: with tile-local pixel
  coordinates p = (x, y), `-1/2 (p - m)^T Q (p - m)` is linear in the features
  `[x^2, xy, y^2, x, y, 1]` (coordinates stay below the tile size, so float32 is exact
  enough);
- `alpha = min(0.999, o exp(power))`, dropped below 1/255; transmittance
  `T_i = prod_{j<i} (1 - alpha_j)` is a cumulative sum of `log(1 - alpha)`; a pixel stops
  (like gsplat) before the Gaussian that would bring T to 1e-4 or below;
- the colour is `sum_i alpha_i T_i c_i` (one batched matrix product) plus `T_final * background`.

Memory stays bounded: a batch holds at most `pair_budget` (Gaussian, pixel) pairs, and when a
frame needs more than that in all while gradients are recorded, each batch is recomputed in the
backward pass (activation checkpointing) instead of keeping its intermediates alive. Autograd
differentiates everything, so gradients reach means, scales, rotations, opacities, colours
and the camera poses through the projection.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch.utils.checkpoint import checkpoint

ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
LOG_TRANSMITTANCE_MIN = math.log(TRANSMITTANCE_MIN)
DEFAULT_TILE_SIZE = 4  # measured fastest on CPU (128x128, 10k Gaussians: 4 < 8 < 16)
DEFAULT_PAIR_BUDGET = 1 << 23  # (Gaussian, pixel) pairs per batch: ~32 MB per float tensor

# The tile size when the caller gives none (`choose_tile_size`), from the median footprint of the
# drawn Gaussians: the median over them of the larger 3-sigma radius (whole pixels, as
# `project_gaussians` gives them) picks the tile size of the first bound it is below. Small tiles
# follow ~1-4 px Gaussians closely (few wasted pixel evaluations: DEFAULT_TILE_SIZE, unchanged, so
# reconstructions made of such Gaussians render exactly as before, their median radius being 4-5).
# A Gaussian whose footprint spans many tiles costs a binned (Gaussian, tile) pair, its gather and
# its share of the per-tile work for every tile it touches, which dominates with 4-px tiles at radii
# of 17-33 px; larger tiles cut that count by up to 4x-16x, for more pixels evaluated in vain at
# the footprint's edges (a 17-px radius: ~(34 + 16)^2 pixels with 16-px tiles, ~(34 + 4)^2 with 4).
# Measured on a quiet 2-core CPU (session 7, 1 thread; `benchmarks/bench_splatting.py --only large
# --threads 1 --large-cases 4:3000,11:1000,17:500,33:250`: forward + backward at 128x128, median of
# 15 rounds), seconds for tiles 4 / 8 / 16, and the naive per-Gaussian renderer:
#   median radius  4 px (3,000 Gaussians): 0.029 / 0.033 / 0.076, naive 1.16
#   median radius 11 px (1,000):           0.036 / 0.034 / 0.053, naive 0.38
#   median radius 17 px (500):             0.037 / 0.034 / 0.041, naive 0.21
#   median radius 33 px (250):             0.051 / 0.044 / 0.049, naive 0.13
# so 4 below 8 px and 8 from there (16 was never the fastest); every tiled choice is 2.5-40x
# faster than the naive renderer.
AUTO_TILE_SIZES = ((8, DEFAULT_TILE_SIZE), (math.inf, 8))  # (median radius below, tile size)


def choose_tile_size(radii: torch.Tensor) -> int:
    """The tile size for Gaussians with these projected 3-sigma radii [N, 2] (whole pixels; <= 0: not
    drawn), by the rule of AUTO_TILE_SIZES; DEFAULT_TILE_SIZE when none is drawn."""
    drawn = (radii > 0).all(-1)
    if not bool(drawn.any()):
        return DEFAULT_TILE_SIZE
    median = float(radii[drawn].max(-1).values.median())  # the lower median for an even count
    return next(size for bound, size in AUTO_TILE_SIZES if median < bound)


def _tile_pixel_features(tile_size: int, device, dtype) -> torch.Tensor:
    """[P, 6] features `[x^2, xy, y^2, x, y, 1]` of the pixels of a tile, relative to its centre."""
    local = torch.arange(tile_size, device=device, dtype=dtype) - (tile_size - 1) / 2.0
    py, px = torch.meshgrid(local, local, indexing="ij")  # row-major inside the tile
    px, py = px.reshape(-1), py.reshape(-1)
    return torch.stack([px * px, px * py, py * py, px, py, torch.ones_like(px)], dim=-1)


def _composite(
    mean_rel: torch.Tensor,  # [T, G, 2] Gaussian centres relative to their tile's centre
    conics: torch.Tensor,  # [T, G, 3] (a, b, c) of the inverse 2D covariance
    opacities: torch.Tensor,  # [T, G], zero for padding
    features: torch.Tensor,  # [T, G, F]
    pixel_features: torch.Tensor,  # [P, 6]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Front-to-back compositing of depth-sorted Gaussians for a batch of tiles.

    Returns the accumulated features [T, P, F] and the final transmittance [T, P]."""
    a, b, c = conics.unbind(-1)
    mx, my = mean_rel.unbind(-1)
    coefficients = torch.stack(
        [-0.5 * a, -b, -0.5 * c, a * mx + b * my, b * mx + c * my, -0.5 * (a * mx * mx + 2.0 * b * mx * my + c * my * my)],
        dim=-1,
    )
    power = coefficients @ pixel_features.T  # [T, G, P]
    alpha = (opacities[..., None] * torch.exp(power)).clamp(max=ALPHA_MAX)
    alpha = alpha * ((power <= 0.0) & (alpha >= ALPHA_MIN))
    log_one_minus = torch.log1p(-alpha)
    log_t_inclusive = torch.cumsum(log_one_minus, dim=1)
    # T only decreases along the sorted list, so this mask keeps a prefix: the pixel stops
    # before the Gaussian that would take its transmittance to 1e-4 or below
    alive = (log_t_inclusive > LOG_TRANSMITTANCE_MIN).to(alpha.dtype)
    weights = alpha * torch.exp(log_t_inclusive - log_one_minus) * alive
    accumulated = weights.transpose(1, 2) @ features  # [T, P, F]
    final_transmittance = torch.exp((log_one_minus * alive).sum(dim=1))
    return accumulated, final_transmittance


@torch.no_grad()
def bin_gaussians_to_tiles(
    means2d: torch.Tensor,  # [N, 2]
    extents: torch.Tensor,  # [N, 2] half-widths in pixels; <= 0 means not drawn
    depths: torch.Tensor,  # [N]
    width: int,
    height: int,
    tile_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Gaussian, tile) intersections, sorted by tile then depth.

    Returns `gaussian_ids` [M] (indices into the N Gaussians), `tile_counts` [tiles] and
    `tile_offsets` [tiles] (start of each tile's run in `gaussian_ids`); tiles are numbered
    row-major."""
    device = means2d.device
    tiles_x = -(-width // tile_size)
    tiles_y = -(-height // tile_size)
    lo = torch.ceil(means2d - extents)
    hi = torch.floor(means2d + extents)
    limit = torch.tensor([width - 1, height - 1], device=device, dtype=means2d.dtype)
    drawn = (extents > 0).all(-1) & (hi >= 0).all(-1) & (lo <= limit).all(-1) & torch.isfinite(means2d).all(-1)
    ids = torch.nonzero(drawn).squeeze(1)
    empty = torch.zeros(tiles_x * tiles_y, dtype=torch.long, device=device)
    if ids.numel() == 0:
        return ids, empty, empty.clone()
    lo_tile = (torch.maximum(lo[ids], torch.zeros_like(limit)).long()) // tile_size
    hi_tile = (torch.minimum(hi[ids], limit).long()) // tile_size
    span = hi_tile - lo_tile + 1  # [n, 2] tiles along x and y
    counts = span[:, 0] * span[:, 1]
    local = torch.repeat_interleave(torch.arange(ids.numel(), device=device), counts)
    within = torch.arange(local.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[local]
    tx = lo_tile[local, 0] + within % span[local, 0]
    ty = lo_tile[local, 1] + within // span[local, 0]
    tile = ty * tiles_x + tx
    order = torch.argsort(depths[ids])
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=device)
    key = tile * ids.numel() + rank[local]
    key = torch.sort(key).values
    gaussian_ids = ids[order[key % ids.numel()]]
    tile_counts = torch.bincount(key // ids.numel(), minlength=tiles_x * tiles_y)
    tile_offsets = torch.cumsum(tile_counts, 0) - tile_counts
    return gaussian_ids, tile_counts, tile_offsets


def _tile_batches(tile_counts: torch.Tensor, pixels_per_tile: int, pair_budget: int) -> list[torch.Tensor]:
    """Non-empty tiles in batches of similar load: each batch is padded to its largest count,
    so a new batch starts when counts fall below 3/4 of it, or when the budget is full."""
    order = torch.argsort(tile_counts, descending=True)
    nonempty = int((tile_counts > 0).sum())
    counts = tile_counts[order[:nonempty]].tolist()
    batches, start = [], 0
    while start < nonempty:
        largest = counts[start]  # the batch's largest count
        end = min(nonempty, start + max(1, pair_budget // (largest * pixels_per_tile)))
        # counts are sorted: the first one below 3/4 of the largest ends the batch
        end = start + 1 + bisect.bisect_left([-c for c in counts[start + 1 : end]], -0.75 * largest)
        batches.append(order[start:end])
        start = end
    return batches


def rasterize_tiled(
    means2d: torch.Tensor,  # [N, 2] pixel coordinates (pixel centres at integers)
    conics: torch.Tensor,  # [N, 3]
    opacities: torch.Tensor,  # [N]
    features: torch.Tensor,  # [N, F]
    depths: torch.Tensor,  # [N] (sorting key)
    extents: torch.Tensor,  # [N, 2] footprint half-widths in pixels, <= 0: not drawn
    width: int,
    height: int,
    background: torch.Tensor | None = None,  # [F]
    tile_size: int = DEFAULT_TILE_SIZE,
    pair_budget: int = DEFAULT_PAIR_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One camera: accumulated features [H, W, F] (plus `T_final * background`) and alpha [H, W, 1]."""
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    device, dtype = means2d.device, means2d.dtype
    num_features = features.shape[-1]
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    pixels_per_tile = tile_size * tile_size
    gaussian_ids, tile_counts, tile_offsets = bin_gaussians_to_tiles(
        means2d.detach(), extents, depths.detach(), width, height, tile_size
    )
    pixel_features = _tile_pixel_features(tile_size, device, dtype)
    tile_ix = torch.arange(tiles_x * tiles_y, device=device)
    tile_centres = torch.stack(
        [(tile_ix % tiles_x) * tile_size, (tile_ix // tiles_x) * tile_size], dim=-1
    ).to(dtype) + (tile_size - 1) / 2.0

    # a padding Gaussian (index N) with zero opacity fills the short lists of a batch
    pad = means2d.shape[0]
    means_p = torch.cat([means2d, means2d.new_zeros(1, 2)])
    conics_p = torch.cat([conics, conics.new_tensor([[1.0, 0.0, 1.0]])])
    opacities_p = torch.cat([opacities, opacities.new_zeros(1)])
    features_p = torch.cat([features, features.new_zeros(1, num_features)])

    batches = _tile_batches(tile_counts, pixels_per_tile, pair_budget)
    padded_pairs = sum(len(t) * int(tile_counts[t[0]]) for t in batches) * pixels_per_tile
    recompute = padded_pairs > pair_budget and torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, features)
    )
    outputs, transmittances, tiles_done = [], [], []
    for tiles in batches:
        counts = tile_counts[tiles]
        slots = torch.arange(int(counts.max()), device=device)
        valid = slots[None] < counts[:, None]
        index = (tile_offsets[tiles][:, None] + slots[None]).clamp(max=max(gaussian_ids.numel() - 1, 0))
        gid = torch.where(valid, gaussian_ids[index], torch.full_like(index, pad))
        args = (
            means_p[gid] - tile_centres[tiles][:, None],
            conics_p[gid],
            opacities_p[gid],
            features_p[gid],
            pixel_features,
        )
        if recompute:
            accumulated, transmittance = checkpoint(_composite, *args, use_reentrant=False)
        else:
            accumulated, transmittance = _composite(*args)
        outputs.append(accumulated)
        transmittances.append(transmittance)
        tiles_done.append(tiles)

    num_tiles = tiles_x * tiles_y
    image = features.new_zeros(num_tiles, pixels_per_tile, num_features)
    transmittance = features.new_ones(num_tiles, pixels_per_tile)
    if outputs:
        done = torch.cat(tiles_done)
        image = image.index_copy(0, done, torch.cat(outputs))
        transmittance = transmittance.index_copy(0, done, torch.cat(transmittances))
    if background is not None:
        image = image + transmittance[..., None] * background
    image = image.view(tiles_y, tiles_x, tile_size, tile_size, num_features).permute(0, 2, 1, 3, 4)
    image = image.reshape(tiles_y * tile_size, tiles_x * tile_size, num_features)[:height, :width]
    alpha = 1.0 - transmittance.view(tiles_y, tiles_x, tile_size, tile_size).permute(0, 2, 1, 3)
    alpha = alpha.reshape(tiles_y * tile_size, tiles_x * tile_size)[:height, :width, None]
    return image, alpha
