"""Does the small pixel-space model learn? Hole PSNR on held-out synthetic scenes vs cv2.inpaint.

    .venv/bin/python benchmarks/eval_small_pixel.py --weights RUN/ema [--scenes 16] [--steps 25]

For each held-out scene (seeds never used in training), 4 views along a short orbit are
rendered at 2x and area-downsampled to the model size (as the training pipeline does). View 0
is the reference; it is forward-warped with its true depth into views 1-3 by the generation
loop's warp (`see3d_torch.warp.forward_warp`: bilinear splats, z-buffer), which leaves holes (disocclusions, out-of-view areas, cracks). The model generates the targets
from [reference; warped views + masks] with the DDIM sampler (no random masking, Eq. 20). On
the hole pixels only, its PSNR is compared with the warped image completed by `cv2.inpaint`
(Telea, radius 3). PSNR is pooled over all hole pixels (one MSE over all of them) and also
averaged per image. On the known (warped) pixels, the model's PSNR is printed beside the warp's
own: how faithfully the model reproduces its condition.

`--samples K` also scores the mean of K independent samples per view (a Monte Carlo estimate of
the posterior mean, the estimator PSNR rewards; a single sample has about twice its error
variance). Both the single-sample and the K-sample-mean figures are printed; the first sample
is the single-sample figure.
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from see3d_core import synthetic
from see3d_core.cameras import scale_intrinsics
from see3d_jax import sampling, schedules
from see3d_jax.condition import ConditionConfig
from see3d_jax.data import square_resize, to_model_range
from see3d_jax.convert import from_pretrained
from see3d_torch.warp import pair_warps


def held_out_views(seed: int, size: int, num_views: int = 4, span_deg: float = 30.0):
    """[V, S, S, 3] in [-1, 1], depths [V, S, S], K [V, 3, 3], c2w [V, 4, 4] at model size."""
    scene = synthetic.make_scene(seed)
    rng = np.random.default_rng(seed)
    start = float(rng.uniform(-60, 20))
    cams = synthetic.default_orbit(scene, num_views, 2 * size, 2 * size, azimuth_deg=(start, start + span_deg))
    frames = synthetic.render_trajectory(scene, cams)
    rgb = square_resize(np.stack([(np.clip(f.rgb, 0, 1) * 255 + 0.5).astype(np.uint8) if f.rgb.dtype != np.uint8 else f.rgb for f in frames]), size)
    depth = np.stack([cv2.resize(f.depth.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) for f in frames])
    K = scale_intrinsics(np.stack([c.K for c in cams]), 0.5)
    c2w = np.stack([c.c2w for c in cams])
    return to_model_range(rgb), depth, K.astype(np.float32), c2w.astype(np.float32)


def reference_warps(views: np.ndarray, depths: np.ndarray, K: np.ndarray, c2w: np.ndarray):
    """View 0 of each scene warped into every view by the generation loop's warp (Eq. 18-19),
    the reference itself left as it is. views [B, V, S, S, 3] in [-1, 1]. Returns (warped in
    [-1, 1] with black holes, masks [B, V, S, S, 1])."""
    warped, masks = [], []
    for b in range(views.shape[0]):
        w = pair_warps((views[b] + 1) / 2, depths[b], K[b], c2w[b])
        warped.append(np.where(w["masks"][0][..., None], w["images"][0] * 2 - 1, -1.0))
        masks.append(w["masks"][0][..., None].astype(np.float32))
    warped, masks = np.stack(warped), np.stack(masks)
    warped[:, 0], masks[:, 0] = views[:, 0], 1.0
    return jnp.asarray(warped, jnp.float32), jnp.asarray(masks)


def held_out_batches(seeds: list[int], size: int, batch: int = 4):
    """The held-out test's inputs in batches of `batch` scenes: (index of the batch's first seed,
    views [B, 4, S, S, 3] in [-1, 1] (numpy), their reference warps and masks (`reference_warps`))."""
    for start in range(0, len(seeds), batch):
        data = [held_out_views(s, size) for s in seeds[start:start + batch]]
        views, depths, K, c2w = (np.stack(x) for x in zip(*data))
        warped, masks = reference_warps(views, depths, K, c2w)
        yield start, views, warped, masks


def make_generator(model, sample_steps: int, guidance: float = 0.0):
    """A jitted `generate(views, warped, masks, key)` -> samples [B, V, S, S, 3]: view 0 is the
    reference, the others are generated from [reference; warps + masks] (Eq. 20) by DDIM."""
    cfg = model.config
    schedule = schedules.make_noise_schedule(schedules.ScheduleConfig.see3d())
    ddim = sampling.DDIMConfig(num_inference_steps=sample_steps, prediction_type=cfg.prediction_type, guidance_scale=guidance)

    def model_fn(x_t, condition, mask, t, context):
        return model(jnp.concatenate([x_t, condition, mask], -1), t, context)[..., :3]

    @jax.jit
    def generate(views, warped, masks, key):
        b, v = views.shape[:2]
        is_ref = jnp.zeros((b, v), bool).at[:, 0].set(True)
        noise = sampling.SamplerNoise.draw(key, sample_steps, views.shape)
        context = jnp.zeros((b, cfg.context_tokens, cfg.context_dim))
        return sampling.sample(model_fn, schedule, warped, masks, is_ref, noise, context, ddim, ConditionConfig())

    return generate


def psnr(mse: float) -> float:
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="model folder (config.json + diffusion_pytorch_model.safetensors), e.g. RUN/ema")
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=0.0, help="condition guidance s (the model is trained without condition dropout)")
    parser.add_argument("--seed", type=int, default=900_000, help="first held-out scene seed")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--samples", type=int, default=1, help="also score the mean of this many samples per view")
    args = parser.parse_args(argv)

    model = from_pretrained(args.weights)
    cfg = model.config
    if not cfg.pixel_space:
        raise SystemExit(f"--weights {args.weights}: this evaluation is for pixel-space models")
    size = cfg.sample_size
    sample = make_generator(model, args.steps, args.guidance)

    def generate(views, warped, masks, key):
        return sample(views, warped, masks, key), warped, masks

    if args.samples < 1:
        raise SystemExit(f"--samples must be >= 1, got {args.samples}")
    se_model, se_mean, se_inpaint, n_holes, per_image = 0.0, 0.0, 0.0, 0, []
    se_known_model, se_known_warp, n_known = 0.0, 0.0, 0
    t0 = time.perf_counter()
    seeds = list(range(args.seed, args.seed + args.scenes))
    for i, views, warped_in, masks_in in held_out_batches(seeds, size, args.batch):
        views = jnp.asarray(views)
        samples = [jax.device_get(generate(views, warped_in, masks_in, jax.random.fold_in(jax.random.PRNGKey(i), k)))
                   for k in range(args.samples)]
        out, warped, masks = samples[0]
        mean_out = np.mean([np.clip((o + 1) / 2, 0, 1) for o, _, _ in samples], axis=0)
        truth = (np.asarray(views) + 1) / 2
        for b in range(truth.shape[0]):
            for v in range(1, truth.shape[1]):
                hole = masks[b, v, ..., 0] < 0.5
                known = ~hole
                generated = np.clip((out[b, v] + 1) / 2, 0, 1)
                se_known_model += np.sum((generated[known] - truth[b, v][known]) ** 2)
                se_known_warp += np.sum((np.clip((warped[b, v][known] + 1) / 2, 0, 1) - truth[b, v][known]) ** 2)
                n_known += int(known.sum()) * 3
                if not hole.any():
                    continue
                warped_u8 = (np.clip((warped[b, v] + 1) / 2, 0, 1) * 255 + 0.5).astype(np.uint8)
                inpainted = cv2.inpaint(warped_u8, hole.astype(np.uint8), 3, cv2.INPAINT_TELEA).astype(np.float32) / 255
                em = np.sum((generated[hole] - truth[b, v][hole]) ** 2)
                se_mean += np.sum((mean_out[b, v][hole] - truth[b, v][hole]) ** 2)
                ei = np.sum((inpainted[hole] - truth[b, v][hole]) ** 2)
                k = int(hole.sum()) * 3
                se_model, se_inpaint, n_holes = se_model + em, se_inpaint + ei, n_holes + k
                per_image.append((psnr(em / k), psnr(ei / k), hole.mean()))
    per = np.array(per_image)
    result = {
        "weights": args.weights, "scenes": args.scenes, "target_views": len(per_image), "ddim_steps": args.steps,
        "guidance": args.guidance, "mean_hole_fraction": float(per[:, 2].mean()),
        "hole_psnr_model": psnr(se_model / n_holes), "hole_psnr_cv2_inpaint": psnr(se_inpaint / n_holes),
        "samples": args.samples, "hole_psnr_model_sample_mean": psnr(se_mean / n_holes),
        "known_psnr_model": psnr(se_known_model / max(n_known, 1)), "known_psnr_warp": psnr(se_known_warp / max(n_known, 1)),
        "mean_image_hole_psnr_model": float(per[:, 0].mean()), "mean_image_hole_psnr_cv2_inpaint": float(per[:, 1].mean()),
        "seconds": time.perf_counter() - t0,
    }
    result["gain_db"] = result["hole_psnr_model"] - result["hole_psnr_cv2_inpaint"]
    result["gain_db_sample_mean"] = result["hole_psnr_model_sample_mean"] - result["hole_psnr_cv2_inpaint"]
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
