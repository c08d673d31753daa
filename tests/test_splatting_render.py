"""The rasterization interface: our tiled CPU renderer against an independent dense reference
(values and gradients), projection, depth, SH, memory bounds, PLY, and gsplat parity on CUDA."""

import math

import numpy as np
import pytest
import torch

from see3d_core.cameras import Camera, intrinsics_from_fov, look_at
from see3d_torch.splatting import rendering as R
from see3d_torch.splatting import tiled
from see3d_torch.splatting.camera_refinement import CameraRefinement, invert_rigid
from see3d_torch.splatting.gaussians import Gaussians


def dense_reference(means2d, conics, opacities, colors, depths, radii, width, height, background):
    """Every pixel against every Gaussian, one Gaussian at a time in depth order, in float64:
    no tiles, no batching, no cumulative sums; the same alpha and stopping rules."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    pixels = torch.stack([xs, ys], -1).reshape(-1, 2)
    drawn = (radii > 0).all(-1)
    order = [int(i) for i in torch.argsort(depths.detach()) if drawn[i]]
    T = torch.ones(pixels.shape[0], dtype=torch.float64)
    done = torch.zeros(pixels.shape[0], dtype=torch.bool)
    out = torch.zeros(pixels.shape[0], colors.shape[-1], dtype=torch.float64)
    for i in order:
        d = pixels - means2d[i].double()
        a, b, c = conics[i].double()
        power = -0.5 * (a * d[:, 0] ** 2 + 2 * b * d[:, 0] * d[:, 1] + c * d[:, 1] ** 2)
        alpha = (opacities[i].double() * torch.exp(power)).clamp(max=0.999)
        alpha = torch.where((power <= 0) & (alpha >= 1 / 255), alpha, torch.zeros_like(alpha))
        next_T = T * (1 - alpha)
        done = done | (next_T <= 1e-4).detach()
        out = out + torch.where(done, 0.0, alpha * T)[:, None] * colors[i].double()
        T = torch.where(done, T, next_T)
    out = out + T[:, None] * background.double()
    return out.reshape(height, width, -1), (1 - T).reshape(height, width, 1)


def random_scene(n=120, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.8, 0.6, 0.4]) + torch.tensor([0.0, 0.0, 4.0])
    scene = {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.rand(n, 3, generator=g) * 0.2 + 0.04,
        "opacities": torch.rand(n, generator=g) * 0.9 + 0.05,
        "colors": torch.rand(n, 3, generator=g),
    }
    return {k: v.requires_grad_(requires_grad) for k, v in scene.items()}


def camera(width=37, height=29):
    K = torch.tensor([[34.0, 0, (width - 1) / 2 + 1.3], [0, 33.0, (height - 1) / 2 - 0.7], [0, 0, 1]])[None]
    return torch.eye(4)[None], K


@pytest.mark.parametrize("tile_size, pair_budget", [(4, tiled.DEFAULT_PAIR_BUDGET), (8, 3_000), (16, 1_000)])
def test_tiled_renderer_matches_dense_reference(tile_size, pair_budget):
    s = random_scene()
    viewmats, Ks = camera()
    bg = torch.tensor([[0.2, 0.5, 0.7]])
    img, alpha, meta = R.rasterization(
        s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats, Ks, 37, 29,
        backgrounds=bg, tile_size=tile_size, pair_budget=pair_budget, backend="torch",
    )
    assert img.shape == (1, 29, 37, 3) and alpha.shape == (1, 29, 37, 1)
    assert meta["means2d"].shape == (1, 120, 2) and meta["radii"].shape == (1, 120, 2)
    ref, ref_alpha = dense_reference(meta["means2d"][0], meta["conics"][0], s["opacities"], s["colors"], meta["depths"][0],
                                     meta["radii"][0], 37, 29, bg[0])
    assert (meta["radii"] > 0).all(-1).sum() > 60  # most Gaussians are drawn: the test is not vacuous
    assert float(ref_alpha.mean()) > 0.3
    np.testing.assert_allclose(img[0].double().numpy(), ref.numpy(), atol=2e-5)
    np.testing.assert_allclose(alpha[0].double().numpy(), ref_alpha.numpy(), atol=2e-5)


def test_antialiased_mode_and_radius_clip_match_dense_reference():
    """gsplat's `rasterize_mode="antialiased"` (opacity times sqrt(det(cov2d) / det(cov2d + eps2d I)))
    and `radius_clip` (skip Gaussians with both 3-sigma radii <= the clip), each against the
    dense reference given the same rule computed here from the projected covariances."""
    s = random_scene()
    s["scales"] = s["scales"] * torch.linspace(0.05, 1.0, 120)[:, None]  # some sub-pixel Gaussians: compensation matters
    viewmats, Ks = camera()
    bg = torch.tensor([[0.2, 0.5, 0.7]])
    eps2d = 0.3
    args = (s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats, Ks, 37, 29)
    projected = R.project_gaussians(s["means"], s["quats"], s["scales"], viewmats, Ks, 37, 29, eps2d)
    xx, xy, yy = projected["covars2d"][0].double().unbind(-1)
    compensation = torch.sqrt(((xx - eps2d) * (yy - eps2d) - xy**2).clamp_min(0) / (xx * yy - xy**2))
    assert float(compensation.min()) < 0.1 and float(compensation.max()) > 0.8  # both regimes present

    img, alpha, meta = R.rasterization(*args, backgrounds=bg, backend="torch", rasterize_mode="antialiased", eps2d=eps2d)
    ref, ref_alpha = dense_reference(meta["means2d"][0], meta["conics"][0], s["opacities"].double() * compensation,
                                     s["colors"], meta["depths"][0], meta["radii"][0], 37, 29, bg[0])
    np.testing.assert_allclose(img[0].double().numpy(), ref.numpy(), atol=2e-5)
    np.testing.assert_allclose(alpha[0].double().numpy(), ref_alpha.numpy(), atol=2e-5)
    classic, _, _ = R.rasterization(*args, backgrounds=bg, backend="torch")
    assert float((classic - img).abs().max()) > 0.05  # the modes differ visibly here

    radii = projected["radii"][0]
    clip = float(radii.max(-1).values[radii.max(-1).values > 0].float().median())
    img, alpha, meta = R.rasterization(*args, backgrounds=bg, backend="torch", radius_clip=clip)
    kept = (radii > clip).any(-1)
    assert 20 < int(kept.sum()) < 100
    assert torch.equal((meta["radii"][0] > 0).all(-1), kept)
    ref, ref_alpha = dense_reference(meta["means2d"][0], meta["conics"][0], s["opacities"], s["colors"], meta["depths"][0],
                                     radii * kept[:, None], 37, 29, bg[0])
    np.testing.assert_allclose(img[0].double().numpy(), ref.numpy(), atol=2e-5)
    with pytest.raises(ValueError, match="rasterize_mode must be one of"):
        R.rasterization(*args, rasterize_mode="mip")
    with pytest.raises(ValueError, match="radius_clip must be >= 0"):
        R.rasterization(*args, radius_clip=-1.0)


def test_packed_mode_matches_dense_reference_and_dense_mode():
    """`packed=True` keeps only the drawn (camera, Gaussian) pairs (gsplat's layout): the images
    are the dense reference's, the pairs are exactly the drawn ones, and gradients (parameters,
    means2d, the densification statistic) equal the dense mode's."""
    from see3d_torch.splatting.densification import DensificationConfig, DensificationStrategy

    s = random_scene(requires_grad=True)
    sh = torch.cat([((s["colors"] - 0.5) / 0.28209479177387814)[:, None],
                    0.3 * torch.randn(120, 3, 3, generator=torch.Generator().manual_seed(1))], 1).detach().requires_grad_(True)
    viewmats, Ks = camera()
    viewmats = torch.cat([viewmats, viewmats])
    viewmats[1, 0, 3] = 2.5  # the second camera looks past part of the scene
    Ks = torch.cat([Ks, Ks])
    bg = torch.tensor([[0.2, 0.5, 0.7], [0.1, 0.1, 0.1]])
    weights = torch.rand(2, 29, 37, 3, generator=torch.Generator().manual_seed(2))
    results = {}
    for packed in (False, True):
        img, alpha, meta = R.rasterization(s["means"], s["quats"], s["scales"], s["opacities"], sh, viewmats, Ks, 37, 29,
                                           sh_degree=1, backgrounds=bg, rasterize_mode="antialiased", packed=packed,
                                           backend="torch")
        (img * weights).sum().backward()
        strategy = DensificationStrategy(DensificationConfig(), 1.0)
        strategy._accumulate(meta, 120, "cpu")
        grads = {k: v.grad.clone() for k, v in {**s, "sh": sh}.items() if v.grad is not None}
        for v in [*s.values(), sh]:
            v.grad = None
        results[packed] = img.detach(), alpha.detach(), meta, grads, strategy.grad2d, strategy.count
    img, alpha, meta, grads, grad2d, count = results[True]
    dense_img, dense_alpha, dense_meta, dense_grads, dense_grad2d, dense_count = results[False]
    drawn = (dense_meta["radii"] > 0).all(-1)
    assert 30 < int(drawn[1].sum()) < int(drawn[0].sum()) - 20  # camera 1 misses some: packing drops pairs
    assert torch.equal(torch.stack([meta["camera_ids"], meta["gaussian_ids"]]), torch.stack(torch.nonzero(drawn, as_tuple=True)))
    assert meta["means2d"].shape == (int(drawn.sum()), 2) and meta["radii"].shape == (int(drawn.sum()), 2)
    # images: the dense reference, camera by camera, with SH colours and compensated opacities
    colours = R.colors_from_sh(s["means"], sh, viewmats, 1).detach()
    projected = R.project_gaussians(s["means"], s["quats"], s["scales"], viewmats, Ks, 37, 29)
    for c in range(2):
        opacity = s["opacities"].detach() * projected["compensations"][c].detach()
        ref, ref_alpha = dense_reference(dense_meta["means2d"][c].detach(), dense_meta["conics"][c].detach(), opacity,
                                         colours[c], dense_meta["depths"][c].detach(), dense_meta["radii"][c], 37, 29, bg[c])
        np.testing.assert_allclose(img[c].double().numpy(), ref.numpy(), atol=2e-5)
        np.testing.assert_allclose(alpha[c].double().numpy(), ref_alpha.numpy(), atol=2e-5)
    np.testing.assert_allclose(img.numpy(), dense_img.numpy(), atol=1e-6)
    assert set(grads) == set(dense_grads) == {"means", "quats", "scales", "opacities", "sh"}
    for name in grads:
        np.testing.assert_allclose(grads[name].numpy(), dense_grads[name].numpy(), rtol=1e-4, atol=1e-7, err_msg=name)
    packed_means2d_grad = meta["means2d"].grad
    np.testing.assert_allclose(packed_means2d_grad.numpy(), dense_meta["means2d"].grad[drawn].numpy(), rtol=1e-4, atol=1e-9)
    assert float(grad2d.abs().max()) > 0 and torch.equal(count, dense_count)
    np.testing.assert_allclose(grad2d.numpy(), dense_grad2d.numpy(), rtol=1e-4, atol=1e-9)


def test_gradients_match_dense_reference_including_camera_pose():
    """Gradients of a loss with respect to every Gaussian parameter and to a camera pose
    correction agree between the tiled renderer (batched, checkpointed) and the reference."""
    viewmats, Ks = camera()
    bg = torch.tensor([0.3, 0.3, 0.3])
    target = torch.rand(29, 37, 3, generator=torch.Generator().manual_seed(5))

    def grads(render):
        s = random_scene(n=40, seed=1, requires_grad=True)
        refine = CameraRefinement(1)
        with torch.no_grad():
            refine.rotation_deltas[0].add_(torch.tensor([0.01, -0.02, 0.0, 0.01, 0.0, 0.02]))
            refine.translation_deltas[0].add_(torch.tensor([0.03, -0.02, 0.01]))
        w2c = invert_rigid(refine(invert_rigid(viewmats), torch.tensor([0])))
        img = render(s, w2c)
        loss = ((img - target) ** 2).sum()
        loss.backward()
        out = {k: v.grad.clone() for k, v in s.items()}
        out["pose_rotation"] = refine.rotation_deltas[0].grad.clone()
        out["pose_translation"] = refine.translation_deltas[0].grad.clone()
        return out

    def tiled_render(s, w2c):
        img, _, _ = R.rasterization(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], w2c, Ks, 37, 29,
                                    backgrounds=bg[None], tile_size=8, pair_budget=2_000, backend="torch")
        return img[0]

    def dense_render(s, w2c):
        p = R.project_gaussians(s["means"], s["quats"], s["scales"], w2c, Ks, 37, 29)
        img, _ = dense_reference(p["means2d"][0], p["conics"][0], s["opacities"], s["colors"], p["depths"][0], p["radii"][0], 37, 29, bg)
        return img

    ours, ref = grads(tiled_render), grads(dense_render)
    for name in ref:
        assert float(ref[name].abs().max()) > 0, name
        np.testing.assert_allclose(ours[name].double().numpy(), ref[name].numpy(), rtol=2e-3, atol=2e-4 * float(ref[name].abs().max()), err_msg=name)


def _spy_tile_sizes(monkeypatch):
    """The tile sizes `rasterization` hands the tiled renderer, call by call."""
    used, real = [], tiled.rasterize_tiled

    def spy(*args):
        used.append(args[9])
        return real(*args)

    monkeypatch.setattr(tiled, "rasterize_tiled", spy)
    return used


def test_automatic_tile_size_is_4_for_small_gaussians(monkeypatch):
    """Without a tile size the torch renderer picks one from the median projected radius
    (`tiled.choose_tile_size`): the kit's own small Gaussians (a depth initialisation, ~1 px wide,
    median 3-sigma radius 4) and the test scene above (median 5) keep 4, today's tile, so their
    renders (and reconstructions) are bit-identical to tile_size=4."""
    from see3d_core import synthetic

    scene = synthetic.make_scene(0)
    cams = synthetic.default_orbit(scene, 4, 48, 48)
    frames = [synthetic.render(scene, c) for c in cams]
    g = Gaussians.from_depths([f.rgb for f in frames], [f.depth for f in frames], cams, max_points=3_000, opacity=0.5)
    t = g.tensors()
    small = (t["means"], t["quats"], torch.exp(t["log_scales"]), torch.sigmoid(t["opacity_logits"]), t["sh0"][:, 0],
             torch.tensor(np.stack([c.w2c for c in cams[:2]]), dtype=torch.float32),
             torch.tensor(np.stack([c.K for c in cams[:2]]), dtype=torch.float32), 48, 48)
    s = random_scene()
    viewmats, Ks = camera()
    for args in (small, (s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats, Ks, 37, 29)):
        radii = R.project_gaussians(*args[:3], *args[5:])["radii"]
        assert 3 <= float(radii[0][(radii[0] > 0).all(-1)].max(-1).values.float().median()) <= 5
        used = _spy_tile_sizes(monkeypatch)
        auto, auto_alpha, _ = R.rasterization(*args, backend="torch")
        assert used == [4] * len(args[5])
        four, four_alpha, _ = R.rasterization(*args, tile_size=4, backend="torch")
        assert torch.equal(auto, four) and torch.equal(auto_alpha, four_alpha)

    # the rule itself: the median of the larger radius of the drawn Gaussians
    def pick(*radius_counts):
        return tiled.choose_tile_size(torch.tensor([[r, r] for r, n in radius_counts for _ in range(n)]))

    assert pick((2, 5)) == pick((4, 100)) == pick((7, 10)) == 4
    assert pick((4, 60), (40, 40)) == 4  # a minority of large Gaussians does not change it
    assert pick((4, 40), (40, 60)) == 8
    assert pick((8, 3)) == pick((15, 3)) == pick((16, 3)) == pick((33, 3)) == 8
    assert tiled.choose_tile_size(torch.tensor([[0, 0], [0, 20], [3, 3]])) == 4  # undrawn ones do not count
    assert tiled.choose_tile_size(torch.zeros(0, 2, dtype=torch.int32)) == tiled.DEFAULT_TILE_SIZE


@pytest.mark.parametrize("scale, expected_tile", [(2.5, 8), (5.0, 8)])
def test_automatic_tile_size_for_large_gaussians_matches_dense_reference(monkeypatch, scale, expected_tile):
    """Large Gaussians (median 3-sigma radius 11 and 21 px) get larger tiles by default, with the
    dense reference's image, alpha and gradients (the tolerances of the tests above)."""
    viewmats, Ks = camera(64, 48)
    bg = torch.tensor([0.2, 0.5, 0.7])
    target = torch.rand(48, 64, 3, generator=torch.Generator().manual_seed(5))

    def render(dense):
        s = random_scene(requires_grad=True)
        scales = s["scales"] * scale
        if dense:
            p = R.project_gaussians(s["means"], s["quats"], scales, viewmats, Ks, 64, 48)
            img, alpha = dense_reference(p["means2d"][0], p["conics"][0], s["opacities"], s["colors"], p["depths"][0],
                                         p["radii"][0], 64, 48, bg)
        else:
            img, alpha, _ = R.rasterization(s["means"], s["quats"], scales, s["opacities"], s["colors"], viewmats, Ks,
                                            64, 48, backgrounds=bg[None], backend="torch")
            img, alpha = img[0], alpha[0]
        ((img - target) ** 2).sum().backward()
        return img.detach().double(), alpha.detach().double(), {k: v.grad.clone() for k, v in s.items()}

    used = _spy_tile_sizes(monkeypatch)
    img, alpha, grads = render(dense=False)
    assert used == [expected_tile]
    ref, ref_alpha, ref_grads = render(dense=True)
    assert float(ref_alpha.mean()) > 0.25  # not vacuous: a third of the image is covered
    np.testing.assert_allclose(img.numpy(), ref.numpy(), atol=2e-5)
    np.testing.assert_allclose(alpha.numpy(), ref_alpha.numpy(), atol=2e-5)
    for name in ref_grads:
        assert float(ref_grads[name].abs().max()) > 0, name
        np.testing.assert_allclose(grads[name].double().numpy(), ref_grads[name].double().numpy(), rtol=2e-3,
                                   atol=2e-4 * float(ref_grads[name].abs().max()), err_msg=name)


def test_benchmark_naive_renderer_matches_dense_reference_and_tiled(monkeypatch):
    """benchmarks/bench_splatting.py's `naive_rasterize` (the per-Gaussian timing reference for
    large Gaussians) renders the dense reference's image and alpha, and the tiled renderer's
    gradients; its transmittance stop is exercised here (opaque, overlapping Gaussians)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_splatting.py"
    spec = importlib.util.spec_from_file_location("bench_splatting", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    size = 40
    params = bench.large_gaussians(12.0, 60, size, seed=3)
    params["opacities"] = 0.7 + 0.29 * params["opacities"].sub(0.2).div(0.7)  # 0.7-0.99: pixels reach the stop
    params = {k: v.requires_grad_() for k, v in params.items()}
    viewmats, Ks = bench.large_camera(size)
    bg = torch.tensor([0.3, 0.4, 0.5])
    weights = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(4))
    args = (params["means"], params["quats"], params["scales"], params["opacities"], params["colors"], viewmats, Ks,
            size, size)

    def render(naive):
        if naive:
            with bench._NaiveRenderer():
                img, alpha, meta = R.rasterization(*args, backgrounds=bg[None], backend="torch")
        else:
            img, alpha, meta = R.rasterization(*args, backgrounds=bg[None], backend="torch")
        (img[0] * weights).sum().backward()
        grads = {k: v.grad.clone() for k, v in params.items()}
        for v in params.values():
            v.grad = None
        return img[0].detach(), alpha[0].detach(), meta, grads

    img, alpha, meta, grads = render(naive=True)
    assert tiled.rasterize_tiled is not bench.naive_rasterize  # restored
    ref, ref_alpha = dense_reference(meta["means2d"][0].detach(), meta["conics"][0].detach(), params["opacities"].detach(),
                                     params["colors"].detach(), meta["depths"][0].detach(), meta["radii"][0], size, size, bg)
    np.testing.assert_allclose(img.double().numpy(), ref.numpy(), atol=2e-5)
    np.testing.assert_allclose(alpha.double().numpy(), ref_alpha.numpy(), atol=2e-5)
    tiled_img, _, _, tiled_grads = render(naive=False)
    np.testing.assert_allclose(img.numpy(), tiled_img.numpy(), atol=2e-5)
    for name in grads:
        assert float(tiled_grads[name].abs().max()) > 0, name
        np.testing.assert_allclose(grads[name].numpy(), tiled_grads[name].numpy(), rtol=2e-3,
                                   atol=2e-4 * float(tiled_grads[name].abs().max()), err_msg=name)
    # without the stop (the transmittance floor at 0) the naive image changes: the stop was exercised
    monkeypatch.setattr(tiled, "TRANSMITTANCE_MIN", 0.0)
    with bench._NaiveRenderer(), torch.no_grad():
        unstopped = R.rasterization(*args, backgrounds=bg[None], backend="torch")[0][0]
    assert float((unstopped - img).abs().max()) > 1e-4  # measured 3e-4; the rounding differences are ~2e-7


def test_camera_pose_gradient_matches_finite_differences():
    s = random_scene(n=30, seed=2)
    viewmats, Ks = camera()
    target = torch.rand(29, 37, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    scene64 = {k: v.double() for k, v in s.items()}

    def loss_of(translation):
        delta = torch.cat([torch.cat([torch.eye(3, dtype=torch.float64), translation.T], 1),
                           torch.tensor([[0.0, 0, 0, 1]], dtype=torch.float64)])
        w2c = invert_rigid(invert_rigid(viewmats.double()) @ delta)
        img, _, _ = R.rasterization(scene64["means"], scene64["quats"], scene64["scales"], scene64["opacities"],
                                    scene64["colors"], w2c, Ks.double(), 37, 29, backend="torch")
        return ((img[0] - target) ** 2).sum()

    t = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    loss_of(t).backward()
    for axis in range(3):
        h = torch.zeros(1, 3, dtype=torch.float64)
        h[0, axis] = 1e-5
        numeric = (loss_of(h) - loss_of(-h)) / 2e-5
        assert float(t.grad[0, axis]) == pytest.approx(float(numeric), rel=1e-3, abs=1e-3)


def test_projection_matches_the_kit_camera_and_depth_renders():
    K = intrinsics_from_fov(60.0, 40, 30)
    cam = Camera(K, look_at([0.5, -0.3, -2.0], [0.0, 0.0, 3.0]), 40, 30)
    rng = np.random.default_rng(0)
    points = rng.uniform([-1, -1, 2], [1, 1, 4], size=(50, 3))
    uv, z = cam.project(points)
    viewmats = torch.tensor(cam.w2c, dtype=torch.float32)[None]
    Ks = torch.tensor(K, dtype=torch.float32)[None]
    p = R.project_gaussians(torch.tensor(points, dtype=torch.float32), torch.tensor([[1.0, 0, 0, 0]]).repeat(50, 1),
                            torch.full((50, 3), 0.01), viewmats, Ks, 40, 30)
    np.testing.assert_allclose(p["means2d"][0].numpy(), uv, atol=1e-3)
    np.testing.assert_allclose(p["depths"][0].numpy(), z, atol=1e-4)

    # a dense wall of opaque Gaussians at z = 3 renders depth 3 and alpha ~1 (pixel-centre convention)
    xs, ys = np.meshgrid(np.linspace(-2.5, 2.5, 60), np.linspace(-2, 2, 50))
    wall = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, 3.0)], -1)
    n = len(wall)
    out, alpha, _ = R.rasterization(torch.tensor(wall, dtype=torch.float32), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                                    torch.full((n, 3), 0.06), torch.full((n,), 0.99), torch.rand(n, 3),
                                    torch.eye(4)[None], Ks, 40, 30, render_mode="RGB+ED", backend="torch")
    assert out.shape == (1, 30, 40, 4)
    assert float(alpha.min()) > 0.99
    np.testing.assert_allclose(out[0, ..., 3].numpy(), 3.0, atol=1e-3)


def test_spherical_harmonics_colours():
    s = random_scene(n=20)
    sh = torch.zeros(20, 4, 3)
    sh[:, 0] = (s["colors"] - 0.5) / 0.28209479177387814
    viewmats, Ks = camera()
    plain, _, _ = R.rasterization(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats, Ks, 37, 29, backend="torch")
    degree0, _, _ = R.rasterization(s["means"], s["quats"], s["scales"], s["opacities"], sh, viewmats, Ks, 37, 29, sh_degree=1, backend="torch")
    assert torch.allclose(plain, degree0, atol=1e-5)
    # degree 1 along the viewing axis (+z from the camera) changes colour by C1 * z-coefficient
    dirs = torch.tensor([[0.0, 0.0, 1.0]])
    coeffs = torch.zeros(1, 4, 3)
    coeffs[0, 2] = 1.0
    assert torch.allclose(R.spherical_harmonics(1, dirs, coeffs), torch.full((1, 3), 0.4886025119029199))
    with pytest.raises(ValueError, match="sh_degree"):
        R.rasterization(s["means"], s["quats"], s["scales"], s["opacities"], sh, viewmats, Ks, 37, 29, sh_degree=2)


def test_memory_bound_holds_per_batch(monkeypatch):
    s = random_scene(n=300, seed=4, requires_grad=True)
    viewmats, Ks = camera(64, 48)
    sizes = []
    real = tiled._composite

    def spy(mean_rel, conics, opacities, features, pixel_features):
        sizes.append(mean_rel.shape[0] * mean_rel.shape[1] * pixel_features.shape[0])
        return real(mean_rel, conics, opacities, features, pixel_features)

    monkeypatch.setattr(tiled, "_composite", spy)
    budget = 20_000
    img, _, _ = R.rasterization(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats, Ks, 64, 48,
                                tile_size=4, pair_budget=budget, backend="torch")
    forward_batches = len(sizes)
    img.sum().backward()
    assert forward_batches > 5
    assert len(sizes) > forward_batches  # the backward pass recomputed batches (checkpointing)
    # a batch only exceeds the budget when one tile alone does
    largest_tile = max(sizes) // 16
    assert all(size <= max(budget, largest_tile * 16) for size in sizes)


def test_input_errors_are_clear():
    s = random_scene(n=5)
    viewmats, Ks = camera()
    with pytest.raises(ValueError, match="quats must be"):
        R.rasterization(s["means"], s["quats"][:, :3], s["scales"], s["opacities"], s["colors"], viewmats, Ks, 37, 29)
    with pytest.raises(ValueError, match="viewmats"):
        R.rasterization(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats[0], Ks, 37, 29)
    with pytest.raises(ValueError, match="render_mode"):
        R.rasterization(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats, Ks, 37, 29, render_mode="X")
    with pytest.raises(ValueError, match="CUDA"):
        R.rasterization(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], viewmats, Ks, 37, 29, backend="gsplat")


def test_ply_round_trip_in_the_standard_layout(tmp_path):
    g = Gaussians.from_points(np.random.default_rng(0).normal(size=(17, 3)), np.random.default_rng(1).uniform(size=(17, 3)),
                              np.full(17, 0.05), sh_degree=3, opacity=0.3)
    g.shN.normal_()
    path = g.save_ply(tmp_path / "splat.ply")
    data = path.read_bytes()
    header = data[: data.index(b"end_header\n")].decode().splitlines()
    props = [line.split()[-1] for line in header if line.startswith("property")]
    assert header[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 17"]
    assert props == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
                     + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert len(data) - data.index(b"end_header\n") - len(b"end_header\n") == 17 * len(props) * 4
    loaded = Gaussians.load_ply(path)
    for name, value in g.tensors().items():
        assert torch.allclose(getattr(loaded, name), value), name
    # and renders the same view-dependent colours at degree 3
    viewmats = torch.eye(4)[None].clone()
    viewmats[0, 2, 3] = 4.0
    Ks = torch.tensor([[[30.0, 0, 15], [0, 30.0, 15], [0, 0, 1]]])
    assert loaded.sh_degree == 3
    assert torch.allclose(loaded.render(viewmats, Ks, 31, 31)[0], g.render(viewmats, Ks, 31, 31)[0])
    assert not torch.allclose(g.render(viewmats, Ks, 31, 31)[0], g.render(viewmats, Ks, 31, 31, sh_degree=0)[0], atol=1e-3)
    # f_rest is channel-major: f_rest_1 is the second coefficient of red
    table = np.frombuffer(data[data.index(b"end_header\n") + 11:], dtype=[(p, "<f4") for p in props])
    assert np.allclose(table["f_rest_1"], g.shN[:, 1, 0].numpy())
    (tmp_path / "bad.ply").write_bytes(b"not a ply")
    with pytest.raises(ValueError, match="bad.ply"):
        Gaussians.load_ply(tmp_path / "bad.ply")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat parity needs a CUDA GPU (none here)")
def test_gsplat_and_torch_backends_agree_on_cuda():
    pytest.importorskip("gsplat")
    from see3d_torch import metrics

    s = random_scene(n=2000, seed=9)
    viewmats, Ks = camera(96, 80)
    cuda = {k: v.cuda() for k, v in s.items()}
    args = (viewmats.cuda(), Ks.cuda(), 96, 80)
    ours, _, _ = R.rasterization(cuda["means"], cuda["quats"], cuda["scales"], cuda["opacities"], cuda["colors"], *args, backend="torch")
    theirs, _, meta = R.rasterization(cuda["means"], cuda["quats"], cuda["scales"], cuda["opacities"], cuda["colors"], *args, backend="gsplat")
    assert meta["backend"] == "gsplat"
    psnr = metrics.psnr(ours[0].permute(2, 0, 1).clamp(0, 1).cpu(), theirs[0].permute(2, 0, 1).clamp(0, 1).cpu())
    assert float(psnr) >= 40.0
