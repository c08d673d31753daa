"""The pose-free visual condition of See3D (SPEC.md sections 1.2 and 2), torch side.

The same math and public names as `see3d_jax.condition` (the sides never import each other;
a test checks they agree to 1e-5). Layout conventions on the torch side:
- views are their own axis: latents/images are [B, V, C, H, W] (channels-first), float32;
- pixels are in [-1, 1] (the VAE's input range), so black is -1;
- masks are [B, V, 1, H, W] with **1 = known** (reference view or valid warp), 0 = hole;
  reference views always have all-ones masks;
- `is_reference` is bool [B, V]; timesteps `t` are int64 [B] in [0, T-1].

For target views (references enter clean everywhere):

    C_t = sqrt(abar_t') E(fill(X, M)) + sqrt(1 - abar_t') eps'         (Eq. 2)
    V_t = [W_t C_t + (1 - W_t) X_t ; M]                                (Eq. 3 / Eq. 20)

t' = `condition_timestep(t)` (released: t // 5), W_t = `mixture_weight(t)` (released piecewise
schedule). Holes are filled black in pixel space before VAE encoding (warped images are
encoded as they are; latents are never multiplied by the mask), the same in training and at
inference. At inference X are the warped views and M their warp masks (no random masking).
"""

from __future__ import annotations

import torch

from see3d_core.diffusion import RELEASED_CONDITION, ConditionConfig  # the configs are defined once, in see3d_core
from see3d_torch.schedules import add_noise

BLACK = -1.0


RELEASED = RELEASED_CONDITION


def condition_timestep(t: torch.Tensor, config: ConditionConfig = RELEASED) -> torch.Tensor:
    """The noise level t' = f(t) of the condition, int64, same shape as t (released: t // 5)."""
    t = torch.as_tensor(t).long()
    if callable(config.timestep_map):
        t_prime = torch.as_tensor(config.timestep_map(t))
    elif config.timestep_map == "released":
        t_prime = torch.div(t, 5, rounding_mode="floor")
    elif config.timestep_map == "linear":
        t_prime = torch.floor(config.linear_ratio * t.float())
    else:  # "sqrt"
        t_prime = torch.floor(config.sqrt_scale * torch.sqrt(t.float()))
    t_prime = t_prime.long()
    return torch.minimum(torch.clamp(t_prime, min=0), t)


def released_mixture_weight_of_t_prime(t_prime: torch.Tensor) -> torch.Tensor:
    """The released W as a function of t' in [0, 199]: linear above 60, exponential below."""
    t_prime = torch.as_tensor(t_prime).float()
    high = 1.0 - 0.2 * (200.0 - t_prime) / 140.0
    low = 0.8 * torch.exp(-0.075 * (60.0 - t_prime))
    return torch.where(t_prime >= 60.0, high, low).clamp(0.0, 1.0)


def mixture_weight(t: torch.Tensor, config: ConditionConfig = RELEASED) -> torch.Tensor:
    """The mixture weight W_t in [0, 1] of Eq. 3, float32, same shape as t.

    Released: 999 -> 0.9986, 500 -> 0.857, 300 -> 0.800, 250 -> 0.378, 200 -> 0.179,
    100 -> 0.040, 0 -> 0.0089.
    """
    t = torch.as_tensor(t).long()
    if callable(config.weight):
        w = torch.as_tensor(config.weight(t)).float()
    elif config.weight == "released":
        w = released_mixture_weight_of_t_prime(torch.div(t, 5, rounding_mode="floor"))
    else:  # "exponential"
        last = config.num_train_timesteps - 1
        w = torch.exp(-config.exp_rate * (1.0 - t.float() / last))
    return w.clamp(0.0, 1.0)


def fill_holes(images: torch.Tensor, masks: torch.Tensor, fill_value: float = BLACK) -> torch.Tensor:
    """Paint holes (mask 0) with `fill_value` (black); images [..., C, H, W], masks [..., 1, H, W]."""
    return torch.where(masks > 0.5, images, torch.as_tensor(fill_value, dtype=images.dtype, device=images.device))


def resize_masks_nearest(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest resize of masks [..., 1, H, W] to [..., 1, height, width] (source index
    floor(i * H / height), as `F.interpolate(mode="nearest")`), e.g. pixel masks to latent size."""
    src_h, src_w = masks.shape[-2], masks.shape[-1]
    rows = torch.floor(torch.arange(height, dtype=torch.float64) * (src_h / height)).long().to(masks.device)
    cols = torch.floor(torch.arange(width, dtype=torch.float64) * (src_w / width)).long().to(masks.device)
    return masks.index_select(-2, rows).index_select(-1, cols)


def visual_condition(
    scheduler,
    x_t: torch.Tensor,
    clean_condition: torch.Tensor,
    masks: torch.Tensor,
    is_reference: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    config: ConditionConfig = RELEASED,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's condition inputs (V, M) of Eq. 3 / Eq. 20.

    scheduler: a diffusers DDIMScheduler (its alphas_cumprod). x_t: [B, V, C, h, w]
    (references already clean). clean_condition: [B, V, C, h, w], latents of the warped (or
    randomly masked) views with holes filled black before encoding; clean latents on references.
    masks: [B, V, 1, h, w], 1 = known, forced to 1 on references. is_reference: bool [B, V].
    t: int [B]. noise: like x_t (fresh every step). Returns V [B, V, C, h, w], M [B, V, 1, h, w]:
        targets:    V = W_t q(clean_condition, t') + (1 - W_t) x_t   ("masked": V = clean_condition)
        references: V = clean_condition, M = 1.
    """
    ref = is_reference[:, :, None, None, None].to(x_t.device)
    masks = torch.where(ref, torch.ones_like(masks), masks).to(x_t.dtype)
    if config.variant == "masked":
        target_condition = clean_condition
    else:
        t = torch.as_tensor(t, device=x_t.device)
        t_prime = condition_timestep(t, config)
        weight = mixture_weight(t, config).to(x_t.dtype).reshape(-1, 1, 1, 1, 1)
        corrupted = add_noise(scheduler, clean_condition, noise, t_prime)  # C_t, Eq. 2
        target_condition = weight * corrupted + (1.0 - weight) * x_t  # Eq. 3
    return torch.where(ref, clean_condition, target_condition), masks
