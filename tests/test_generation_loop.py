"""The generation loop's pieces one by one: a view's alignment partners, its aligned depth and
the fallbacks it takes, the kept output of a target (the loop itself: tests/test_generation.py)."""

import numpy as np
import pytest

from see3d_core import synthetic
from see3d_torch.generation import anchors
from see3d_torch.generation.loop import GenerationConfig, ViewRecord, aligned_depth, alignment_partners, finished_view

SIZE = 48


@pytest.fixture(scope="module")
def orbit():
    scene = synthetic.make_scene(2)
    cams = synthetic.default_orbit(scene, 5, SIZE, SIZE, azimuth_deg=(-12, 12))
    return cams, [synthetic.render(scene, c) for c in cams]


class _ScaledDepth:
    """A monocular estimator that knows the shape of the scene but not its scale."""

    output_space = "depth"

    def __init__(self, depths, scale):
        self.depths, self.scale = depths, scale

    def predict(self, image, camera):
        return self.depths[camera.width] * self.scale  # keyed by the requested view's size


def test_alignment_partners_are_the_nearest_other_known_views(orbit):
    cams, frames = orbit
    views = [ViewRecord(i, c, frames[i].rgb) for i, c in enumerate(cams)]
    views[1].image = None  # not generated yet: nothing to match against
    scale = anchors.scene_scale_of(cams)
    partners = alignment_partners(views[2], views, scale, max_partners=2)
    assert [p.index for p in partners] == [3, 0]  # 2 itself and imageless 1 left out, nearest first
    assert alignment_partners(views[2], [views[2]], scale, 3) == []


def test_aligned_depth_pools_keypoints_with_the_warped_depth_and_falls_back_to_the_monocular_one(orbit):
    cams, frames = orbit
    truth = frames[2].depth
    estimator = _ScaledDepth({SIZE: truth}, 3.0)  # three times too deep
    lone = ViewRecord(2, cams[2], frames[2].rgb)
    depth, source = aligned_depth(lone, [], estimator, GenerationConfig())
    assert source == "monocular (sets the scale)"
    np.testing.assert_allclose(depth, np.maximum(3.0 * truth, 1e-3))  # as predicted: it fixes the scene's scale
    # a generated view: its keypoints (a handful match on a 48 px view) pooled with the depth warped into it
    warped = ViewRecord(2, cams[2], frames[2].rgb, mask=np.ones((SIZE, SIZE), np.float32), warped_depth=truth.copy())
    partners = [ViewRecord(1, cams[1], frames[1].rgb)]
    depth, source = aligned_depth(warped, partners, estimator, GenerationConfig(max_alignment_partners=1))
    assert source.startswith("keypoints (") and " + warped depth (" in source
    assert int(source.split("warped depth (")[1].rstrip(")")) > 500
    assert np.median(np.abs(depth - truth) / truth) < 0.02
    # too few consistent points: the prediction as it is, saying how many keypoints there were
    depth, source = aligned_depth(lone, partners, estimator, GenerationConfig(min_keypoints=100))
    assert source.startswith("monocular (") and source.endswith("keypoints)")
    np.testing.assert_allclose(depth, np.maximum(3.0 * truth, 1e-3))
    # no warped depth (inputs without depth): keypoints matched with the partners, triangulated through their cameras
    partners = [ViewRecord(i, cams[i], frames[i].rgb) for i in (1, 3)]
    depth, source = aligned_depth(lone, partners, estimator, GenerationConfig(min_keypoints=8))
    assert source.startswith("keypoints") and "warped" not in source
    assert np.median(np.abs(depth - truth) / truth) < 0.05


def test_warped_depth_is_sampled_away_from_depth_edges_and_hole_borders():
    from see3d_torch.generation.loop import warped_depth_points

    depth = np.full((20, 20), 2.0, np.float32)
    depth[:, 10:] = 4.0  # a depth edge between columns 9 and 10
    mask = np.ones((20, 20), np.float32)
    mask[2:5, 2:5] = 0  # a hole
    depth[mask == 0] = 0
    uv, z = warped_depth_points(depth, mask, max_points=10_000)
    xs, ys = uv[:, 0].astype(int), uv[:, 1].astype(int)
    assert not np.isin(xs, (9, 10)).any()  # both sides of the edge
    assert not ((xs >= 1) & (xs <= 5) & (ys >= 1) & (ys <= 5)).any()  # the hole and its 1-pixel border
    np.testing.assert_array_equal(z, depth[ys, xs])
    assert len(z) == 20 * 20 - 2 * 20 - 5 * 5  # every other pixel, image borders included
    assert len(warped_depth_points(depth, mask, max_points=50)[1]) == 50


def test_aligned_depth_rejects_an_estimate_of_the_wrong_size(orbit):
    cams, frames = orbit
    estimator = _ScaledDepth({SIZE: frames[0].depth[:-1]}, 1.0)
    with pytest.raises(ValueError, match=r"depth estimator returned shape \(47, 48\) for a 48x48 view"):
        aligned_depth(ViewRecord(0, cams[0], frames[0].rgb), [], estimator, GenerationConfig())


def test_finished_view_is_clipped_and_pastes_the_known_pixels_only_when_asked():
    generated = np.full((4, 4, 3), 1.5, np.float32)
    condition = np.full((4, 4, 3), 0.25, np.float32)
    mask = np.zeros((4, 4), np.float32)
    mask[:2] = 1.0
    assert np.all(finished_view(generated, condition, mask, composite_known=False) == 1.0)
    pasted = finished_view(generated, condition, mask, composite_known=True)
    assert np.all(pasted[:2] == 0.25) and np.all(pasted[2:] == 1.0) and pasted.dtype == np.float32
