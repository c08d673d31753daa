"""The pose-free visual condition of See3D (SPEC.md sections 1.2 and 2), JAX side.

Layout conventions (the whole JAX side):
- views are their own axis: images/latents are [B, V, H, W, C] (channels-last), float32;
- pixels are in [-1, 1] (the VAE's input range), so black is -1;
- masks are [B, V, H, W, 1] float32 with **1 = known** (reference view or valid warp) and
  0 = hole, as the released weights expect; reference views always have all-ones masks;
- `is_reference` is [B, V] bool; timesteps `t` are int32 [B] in [0, T-1] (all views of a
  sample share the same t).

The condition, for target views (references enter clean everywhere):

    C_t = q(E(fill(X0, M)), t') = sqrt(abar_t') E(fill(X0, M)) + sqrt(1 - abar_t') eps'   (Eq. 2)
    V_t = [W_t C_t + (1 - W_t) X_t ; M]                                                  (Eq. 3)

with t' = f(t) (`condition_timestep`, released: t // 5) and W_t (`mixture_weight`, released:
a piecewise schedule on t'). `fill` paints holes black in *pixel space* and E is the VAE
encoder (identity for pixel-space models). The paper writes `(1 - M) X0` (a product in latent
space), but the released weights see, at inference, VAE latents of warped images whose holes
are black (latents are never multiplied by the mask). Filling holes in pixel space before
encoding, in training as at inference, makes the training condition look like a warp.

At inference (Eq. 20) the same `visual_condition` is used with the warped latents and the warp
masks instead of random masks: nothing is masked at random.

Variants for the paper's ablation (Table 3), `ConditionConfig.variant`:
- "time_dependent" (default; MV-UnposeT): random masks, noise at t', mixture with X_t;
- "masked" (MV-UnposeM): the randomly masked clean views are the condition (no noise, no mix);
- "posed_warp" (MV-Posed): the references are forward-warped into the targets with the true
  depth and cameras of posed data; the warp masks replace the random masks, then as
  "time_dependent".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from see3d_core.diffusion import (  # the configs are defined once, in see3d_core
    RELEASED_CONDITION,
    ConditionConfig,
    MaskConfig,
    needs_pair_warps,
)
from see3d_jax.schedules import NoiseSchedule, add_noise

BLACK = -1.0  # black in the [-1, 1] pixel range


# --- t' and W -----------------------------------------------------------------------------------

RELEASED = RELEASED_CONDITION


def condition_timestep(t: jax.Array, config: ConditionConfig = RELEASED) -> jax.Array:
    """The noise level t' = f(t) of the condition, int32, same shape as t (released: t // 5)."""
    t = jnp.asarray(t).astype(jnp.int32)
    if callable(config.timestep_map):
        t_prime = jnp.asarray(config.timestep_map(t))
    elif config.timestep_map == "released":
        t_prime = t // 5
    elif config.timestep_map == "linear":
        t_prime = jnp.floor(config.linear_ratio * t.astype(jnp.float32))
    else:  # "sqrt"
        t_prime = jnp.floor(config.sqrt_scale * jnp.sqrt(t.astype(jnp.float32)))
    return jnp.clip(t_prime.astype(jnp.int32), 0, t)


def released_mixture_weight_of_t_prime(t_prime: jax.Array) -> jax.Array:
    """The released W as a function of t' in [0, 199]: linear above 60, exponential below."""
    t_prime = jnp.asarray(t_prime, jnp.float32)
    high = 1.0 - 0.2 * (200.0 - t_prime) / 140.0
    low = 0.8 * jnp.exp(-0.075 * (60.0 - t_prime))
    return jnp.clip(jnp.where(t_prime >= 60.0, high, low), 0.0, 1.0)


def mixture_weight(t: jax.Array, config: ConditionConfig = RELEASED) -> jax.Array:
    """The mixture weight W_t in [0, 1] of Eq. 3, float32, same shape as t.

    Released: 999 -> 0.9986, 500 -> 0.857, 300 -> 0.800, 250 -> 0.378, 200 -> 0.179,
    100 -> 0.040, 0 -> 0.0089.
    """
    t = jnp.asarray(t).astype(jnp.int32)
    if callable(config.weight):
        w = jnp.asarray(config.weight(t), jnp.float32)
    elif config.weight == "released":
        w = released_mixture_weight_of_t_prime(t // 5)
    else:  # "exponential"
        last = config.num_train_timesteps - 1
        w = jnp.exp(-config.exp_rate * (1.0 - t.astype(jnp.float32) / last))
    return jnp.clip(w, 0.0, 1.0)


# --- masks ----------------------------------------------------------------------------------------

def _segment_distance(px, py, ax, ay, bx, by):
    """Distance from pixels (px, py) [H, W] to the segment a-b (scalars)."""
    dx, dy = bx - ax, by - ay
    h = jnp.clip(((px - ax) * dx + (py - ay) * dy) / jnp.maximum(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return jnp.hypot(px - ax - h * dx, py - ay - h * dy)


def _uniform_draws(key: jax.Array, sizes: dict[str, int]) -> dict[str, jax.Array]:
    """One uniform draw for every random number a mask needs, split by name (each jax.random
    call compiles its own generator)."""
    u = jax.random.uniform(key, (sum(sizes.values()),))
    draws, offset = {}, 0
    for name, size in sizes.items():
        draws[name], offset = u[offset:offset + size], offset + size
    return draws


def _random_walk_distances(draws: dict[str, jax.Array], n: int, m: int, px, py, start_scale, length_scale) -> jax.Array:
    """Distances [n, H, W] from the pixels (px, py) to n random walks of m vertices: each starts
    at `draws["start"]` x `start_scale` and takes m - 1 steps in random directions, of length
    (0.08 to 0.30) x `length_scale`."""
    start = draws["start"].reshape(n, 1, 2) * start_scale
    angle = draws["angle"].reshape(n, m - 1) * 2 * math.pi
    length = (0.08 + 0.22 * draws["length"].reshape(n, m - 1)) * length_scale
    steps = jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1) * length[..., None]
    vertices = jnp.concatenate([start, start + jnp.cumsum(steps, axis=1)], axis=1)  # [n, m, 2] (x, y)
    a, b = vertices[:, :-1].reshape(-1, 2), vertices[:, 1:].reshape(-1, 2)
    dist = jax.vmap(lambda s, e: _segment_distance(px, py, s[0], s[1], e[0], e[1]))(a, b)
    return dist.reshape(n, m - 1, *px.shape).min(axis=1)


def _hole_field(key: jax.Array, height: int, width: int, config: MaskConfig) -> jax.Array:
    """A field [H, W] that is large inside the shapes and decreases away from them."""
    n, m, nb, ne = config.num_strokes, config.stroke_vertices, config.num_boxes, config.num_ellipses
    draws = _uniform_draws(key, {"start": 2 * n, "angle": n * (m - 1), "length": n * (m - 1), "thick": n,
                                 "box": 4 * nb, "ellipse": 5 * ne, "present": n + nb + ne})
    ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height
    xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width
    py, px = jnp.meshgrid(ys, xs, indexing="ij")
    fields = []

    # Strokes: random walks of `stroke_vertices` points; field = 1 - distance / thickness.
    thickness = 0.02 + 0.05 * draws["thick"]
    dist = _random_walk_distances(draws, n, m, px, py, 1.0, 1.0)
    fields.append(1.0 - dist / thickness[:, None, None])

    if nb:
        box = draws["box"].reshape(nb, 4)
        centre, half = box[:, :2], 0.04 + 0.18 * box[:, 2:]
        u_ = jnp.abs(px[None] - centre[:, 0, None, None]) / half[:, 0, None, None]
        v_ = jnp.abs(py[None] - centre[:, 1, None, None]) / half[:, 1, None, None]
        fields.append(1.0 - jnp.maximum(u_, v_))

    if ne:
        ell = draws["ellipse"].reshape(ne, 5)
        centre, radii, rot = ell[:, :2], 0.04 + 0.21 * ell[:, 2:4], ell[:, 4] * math.pi
        dx, dy = px[None] - centre[:, 0, None, None], py[None] - centre[:, 1, None, None]
        c, s_ = jnp.cos(rot)[:, None, None], jnp.sin(rot)[:, None, None]
        u_ = (c * dx + s_ * dy) / radii[:, 0, None, None]
        v_ = (-s_ * dx + c * dy) / radii[:, 1, None, None]
        fields.append(1.0 - jnp.sqrt(u_ * u_ + v_ * v_))

    field = jnp.concatenate(fields, axis=0)  # [num_shapes, H, W]
    present = (draws["present"] < config.shape_probability).at[0].set(True)
    return jnp.where(present[:, None, None], field, -jnp.inf).max(axis=0)


def _warp_hole_field(key: jax.Array, height: int, width: int, config: MaskConfig) -> jax.Array:
    """A field [H, W] for a warp-like mask, in pixels: minus the distance to the nearest of
    `warp_like_curves` thin random curves, or to one image border scaled down by 1-4x (so the
    strip grows 1-4x faster than the curves). Ranked to a coverage, it gives curves of equal
    width (one pixel at a low coverage) and a border strip, as a forward warp leaves them."""
    n, m = config.warp_like_curves, config.stroke_vertices
    draws = _uniform_draws(key, {"start": 2 * n, "angle": n * (m - 1), "length": n * (m - 1), "border": 3})
    ys = jnp.arange(height, dtype=jnp.float32) + 0.5
    xs = jnp.arange(width, dtype=jnp.float32) + 0.5
    py, px = jnp.meshgrid(ys, xs, indexing="ij")
    scale = jnp.asarray([width, height], jnp.float32)
    dist = _random_walk_distances(draws, n, m, px, py, scale, float(max(height, width))).min(axis=0)
    side, stretch, present = draws["border"][0], 1.0 + 3.0 * draws["border"][1], draws["border"][2] < 0.7
    to_border = jnp.select([side < 0.25, side < 0.5, side < 0.75], [px, width - px, py], height - py)
    return -jnp.minimum(dist, jnp.where(present, to_border / stretch, jnp.inf))


def random_masks(key: jax.Array, num: int, height: int, width: int, config: MaskConfig = MaskConfig()) -> jax.Array:
    """`num` random irregular masks [num, H, W, 1] float32 (1 = known, 0 = hole).

    Deterministic in `key`; vectorised (vmap over masks) and jit-compiled once per size and
    shape counts (the coverage range is traced, so changing it does not recompile). The hole
    fraction of each mask is uniform in [config.min_coverage, config.max_coverage] (for the
    warp-like share, in [warp_like_min_coverage, warp_like_max_coverage]), exact up to rounding
    to whole pixels: the holes are the round(coverage * H * W) pixels where the union of
    shapes' field is largest.
    """
    if num < 0 or height < 1 or width < 1:
        raise ValueError(f"random_masks: expected num >= 0 and a positive size, got {num}, {height}x{width}")
    shapes = dataclasses.replace(config, min_coverage=0.0, max_coverage=1.0)
    return _random_masks(key, jnp.float32(config.min_coverage), jnp.float32(config.max_coverage), num, height, width, shapes)


@functools.partial(jax.jit, static_argnames=("num", "height", "width", "shapes"))
def _random_masks(key, min_coverage, max_coverage, num, height, width, shapes):
    def one(k):
        field = _hole_field(k, height, width, shapes).reshape(-1)
        coverage = jax.random.uniform(jax.random.fold_in(k, 1), (), minval=min_coverage, maxval=max_coverage)
        if shapes.warp_like_fraction > 0:  # static: blob-only masks stay exactly as they were
            warp_like = jax.random.uniform(jax.random.fold_in(k, 2), ()) < shapes.warp_like_fraction
            field = jnp.where(warp_like, _warp_hole_field(jax.random.fold_in(k, 3), height, width, shapes).reshape(-1), field)
            warp_coverage = jax.random.uniform(jax.random.fold_in(k, 4), (), minval=shapes.warp_like_min_coverage,
                                               maxval=shapes.warp_like_max_coverage)
            coverage = jnp.where(warp_like, warp_coverage, coverage)
        num_holes = jnp.round(coverage * field.size).astype(jnp.int32)
        rank = jnp.argsort(jnp.argsort(-field))  # 0 = largest field value; ties by pixel index
        return jnp.where(rank < num_holes, 0.0, 1.0).reshape(height, width, 1).astype(jnp.float32)

    return jax.vmap(one)(jax.random.split(key, num))


def fill_holes(images: jax.Array, masks: jax.Array, fill_value: float = BLACK) -> jax.Array:
    """Paint holes (mask 0) with `fill_value` (black, -1 in [-1, 1]); images [..., H, W, C], masks [..., H, W, 1]."""
    return jnp.where(masks > 0.5, images, jnp.asarray(fill_value, images.dtype))


def resize_masks_nearest(masks: jax.Array, height: int, width: int) -> jax.Array:
    """Nearest resize of masks [..., H, W, 1] to [..., height, width, 1] (as torch's 'nearest':
    source index floor(i * H / height)), used to bring pixel masks to latent size."""
    src_h, src_w = masks.shape[-3], masks.shape[-2]
    rows = jnp.floor(jnp.arange(height) * (src_h / height)).astype(jnp.int32)
    cols = jnp.floor(jnp.arange(width) * (src_w / width)).astype(jnp.int32)
    return jnp.take(jnp.take(masks, rows, axis=-3), cols, axis=-2)


# --- the condition ------------------------------------------------------------------------------

def visual_condition(
    schedule: NoiseSchedule,
    x_t: jax.Array,
    clean_condition: jax.Array,
    masks: jax.Array,
    is_reference: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    config: ConditionConfig = RELEASED,
) -> tuple[jax.Array, jax.Array]:
    """The model's condition inputs (V, M) of Eq. 3 (training) and Eq. 20 (inference).

    schedule: the diffusion schedule (abar for the noise at t').
    x_t: noisy views [B, V, h, w, C] (references already clean).
    clean_condition: [B, V, h, w, C] clean model-space views whose holes were filled black in
        pixel space *before* encoding: random-masked views in training, warped views at
        inference; for reference views, their clean latents.
    masks: [B, V, h, w, 1], 1 = known, at model resolution; forced to 1 on references.
    is_reference: [B, V] bool. t: int32 [B]. noise: like x_t, fresh every step (eps' of Eq. 2).
    Returns V [B, V, h, w, C] and M [B, V, h, w, 1]:
        targets:    V = W_t q(clean_condition, t') + (1 - W_t) x_t   ("masked": V = clean_condition)
        references: V = clean_condition, M = 1.
    """
    ref = is_reference[:, :, None, None, None]
    masks = jnp.where(ref, 1.0, masks).astype(x_t.dtype)
    if config.variant == "masked":
        target_condition = clean_condition
    else:
        t_prime = condition_timestep(t, config)
        weight = mixture_weight(t, config).astype(x_t.dtype).reshape(-1, 1, 1, 1, 1)
        corrupted = add_noise(schedule, clean_condition, noise, t_prime)  # C_t, Eq. 2
        target_condition = weight * corrupted + (1.0 - weight) * x_t  # Eq. 3
    return jnp.where(ref, clean_condition, target_condition), masks


# --- posed warps (MV-Posed) -----------------------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PairWarps:
    """Every view of a posed clip warped into every other by the generation loop's warp
    (`see3d_torch.warp.pair_warps`, stored beside the clip, read by `see3d_jax.data`): images
    [B, N, N, H, W, 3] in [-1, 1], masks and z-depths in the destination camera [B, N, N, H, W],
    indexed [sample, source, destination]. Training's posed condition (MV-Posed) and inference
    then use one warp."""

    images: jax.Array
    masks: jax.Array
    depths: jax.Array


def merge_pair_warps(warps: PairWarps, is_reference: jax.Array, fill_value: float = BLACK) -> tuple[jax.Array, jax.Array]:
    """The condition of each view from the references' warps into it: per pixel the nearest
    surface among the references that reach it (as `warp_anchors` merges anchors at inference).
    is_reference [B, N]. Returns (warped [B, N, H, W, 3] with holes = fill_value, masks
    [B, N, H, W, 1], 1 where some reference landed)."""
    usable = (warps.masks > 0.5) & is_reference[:, :, None, None, None]  # [B, source, destination, H, W]
    z = jnp.where(usable, warps.depths, jnp.inf)
    nearest = jnp.argmin(z, axis=1)  # [B, destination, H, W]
    known = jnp.any(usable, axis=1)
    chosen = jnp.take_along_axis(warps.images, nearest[:, None, ..., None], axis=1)[:, 0]
    warped = jnp.where(known[..., None], chosen, fill_value)
    return warped, known[..., None].astype(warped.dtype)


# --- training batches -----------------------------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainingBatch:
    """One training batch in model space (latents or pixels), views in shuffled order.

    x0, noise, x_t, condition: [B, V, h, w, C]; mask: [B, V, h, w, 1] (1 = known);
    t: int32 [B]; is_reference: bool [B, V]; loss_mask: float32 [B, V] (1 on targets only);
    view_order: int32 [B, V], the index in the input clip of each shuffled view.
    The model input is cat([x_t, condition, mask], -1); the regression target is
    `schedules.training_target(schedule, x0, noise, t, prediction_type)` on targets only.
    """

    x0: jax.Array
    noise: jax.Array
    t: jax.Array
    x_t: jax.Array
    condition: jax.Array
    mask: jax.Array
    is_reference: jax.Array
    loss_mask: jax.Array
    view_order: jax.Array


def reference_counts(config: ConditionConfig, num_views: int) -> tuple[int, int]:
    """(fewest, most) references a training sample of `num_views` views gets: at least one
    view is always a target."""
    most = min(config.max_references, num_views - 1)
    return min(config.min_references, most), most


def build_training_batch(
    key: jax.Array,
    views: jax.Array,
    schedule: NoiseSchedule,
    config: ConditionConfig = RELEASED,
    encode_fn: Callable[[jax.Array], jax.Array] | None = None,
    latents: jax.Array | None = None,
    pair_warps: PairWarps | None = None,
) -> TrainingBatch:
    """Build (x_t, V_t, M) and the loss mask from N views per clip.

    key: PRNG key (everything random comes from it: order, references, masks, t, noises).
    views: pixels [B, N, H, W, 3] in [-1, 1].
    encode_fn: for latent models, maps pixels [B, K, H, W, 3] in [-1, 1] to latents
        [B, K, h, w, C] (already multiplied by the VAE scaling factor); None for pixel-space
        models. Holes are filled black in pixel space *before* encoding, exactly as warped
        images at inference, so the model sees the same kind of condition in both.
    pair_warps: required by the "posed_warp" variant only: every view warped into every other
        by the generation loop's warp (`PairWarps`).
    latents: latent models with cached latents: `encode_fn(views)` computed beforehand
        [B, N, h, w, C]; used as x0 and as the references' condition, so only the condition
        images of views that may be targets are encoded here.

    Steps: shuffle the views (no temporal order), the first S of the shuffled views are the
    references (S uniform in [min_references, min(max_references, N - 1)] per sample), the
    others are targets with random irregular masks (or posed warps); references are clean in
    x_t and in V with all-ones masks; t is uniform in [0, T-1] per sample.
    """
    if views.ndim != 5 or views.shape[-1] != 3:
        raise ValueError(f"build_training_batch: views must be pixels [B, N, H, W, 3], got shape {views.shape}")
    B, N, H, W, _ = views.shape
    if N < 2:
        raise ValueError(f"build_training_batch: need at least 2 views per clip (a reference and a target), got {N}")
    min_refs, max_refs = reference_counts(config, N)
    if needs_pair_warps(config) and pair_warps is None:
        raise ValueError("build_training_batch: variant 'posed_warp' needs pair_warps (every view warped into every other: "
                         "`see3d pair-warps DATA --size S` writes them beside the clips, the data pipeline reads them)")
    k_draws, k_masks, k_noise = jax.random.split(key, 3)
    # One uniform draw for order, reference count and t (each jax.random call compiles its own generator).
    u = jax.random.uniform(k_draws, (B, N + 2))
    order = jnp.argsort(u[:, :N], axis=1).astype(jnp.int32)  # a uniform random permutation per sample
    num_refs = min_refs + jnp.floor(u[:, N] * (max_refs - min_refs + 1)).astype(jnp.int32)
    num_refs = jnp.minimum(num_refs, max_refs)
    t = jnp.minimum(jnp.floor(u[:, N + 1] * schedule.num_train_timesteps), schedule.num_train_timesteps - 1).astype(jnp.int32)

    def shuffle(a):
        return None if a is None else jnp.take_along_axis(a, order.reshape((B, N) + (1,) * (a.ndim - 2)), axis=1)
    views, latents = shuffle(views), shuffle(latents)
    if pair_warps is not None:  # both the source and the destination axes follow the new order
        def shuffle_pairs(a):
            rows = jnp.take_along_axis(a, order.reshape((B, N, 1) + (1,) * (a.ndim - 3)), axis=1)
            return jnp.take_along_axis(rows, order.reshape((B, 1, N) + (1,) * (a.ndim - 3)), axis=2)
        pair_warps = PairWarps(*(shuffle_pairs(a) for a in (pair_warps.images, pair_warps.masks, pair_warps.depths)))
    is_reference = jnp.arange(N)[None, :] < num_refs[:, None]

    if config.variant == "posed_warp":
        warped, pixel_masks = merge_pair_warps(pair_warps, is_reference)
    else:
        pixel_masks = random_masks(k_masks, B * N, H, W, config.masks).reshape(B, N, H, W, 1)
        warped = views
        if config.posed_fraction > 0:  # a share of the samples takes the references' warps (posed data)
            posed = jax.random.uniform(jax.random.fold_in(k_masks, 1), (B,)) < config.posed_fraction
            posed = posed[:, None, None, None, None]
            posed_warped, posed_masks = merge_pair_warps(pair_warps, is_reference)
            warped = jnp.where(posed, posed_warped, warped)
            pixel_masks = jnp.where(posed, posed_masks, pixel_masks)
    pixel_masks = jnp.where(is_reference[:, :, None, None, None], 1.0, pixel_masks)
    filled = fill_holes(warped, pixel_masks)

    if latents is not None:
        if encode_fn is None:
            raise ValueError("build_training_batch: cached latents need encode_fn for the condition images")
        # references are whole frames: their condition is their cached latents. The first
        # min_refs shuffled views are references in every sample, so only the others' images
        # (holes filled) are encoded
        encoded = jnp.concatenate([latents[:, :min_refs], encode_fn(filled[:, min_refs:])], axis=1)
        x0, clean_condition = latents, jnp.where(is_reference[:, :, None, None, None], latents, encoded)
    elif encode_fn is None:
        x0, clean_condition = views, filled
    else:
        both = encode_fn(jnp.concatenate([views, filled], axis=1))
        x0, clean_condition = both[:, :N], both[:, N:]
    masks = resize_masks_nearest(pixel_masks, x0.shape[2], x0.shape[3])

    noise, condition_noise = jax.random.normal(k_noise, (2,) + x0.shape, x0.dtype)
    ref = is_reference[:, :, None, None, None]
    x_t = jnp.where(ref, x0, add_noise(schedule, x0, noise, t))
    condition, masks = visual_condition(schedule, x_t, clean_condition, masks, is_reference, t, condition_noise, config)
    return TrainingBatch(
        x0=x0,
        noise=noise,
        t=t,
        x_t=x_t,
        condition=condition,
        mask=masks,
        is_reference=is_reference,
        loss_mask=(~is_reference).astype(jnp.float32),
        view_order=order,
    )
