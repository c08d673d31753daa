"""A deterministic procedural world with exact RGB, metric depth and cameras.

The world is the test bed of every stage of the kit, so it is exact rather than pretty:
rays are cast analytically against a ground plane, walls, (yawed) boxes, spheres and a sky
dome; surfaces are Lambertian (view-independent), so a pixel's colour is a function of the
world point alone and warping with the true depth reproduces other views.

Textures are band-limited periodic noise (built in the Fourier domain, so they tile without
seams and do not alias at the default texel density), mixed with bricks, checks and stripes
so that keypoint detectors and optical flow have something to hold on to.

Dynamics for curation test videos: objects may move rigidly with a constant velocity, and
"non-rigid" panels show a texture that waves/flows with time.

Typical use::

    scene = make_scene(seed=3)
    cams = default_orbit(scene, num_frames=24, width=256, height=256)
    frame = render(scene, cams[0])          # frame.rgb [H, W, 3] in [0, 1], frame.depth [H, W]
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from see3d_core.cameras import Camera, camera_rays, intrinsics_from_fov
from see3d_core import trajectories

TEXTURE_SIZE = 256
TEXELS_PER_METRE = 56.0
SKY_RADIUS = 60.0
SUN_DIRECTION = np.array([0.35, -0.8, -0.45]) / np.linalg.norm([0.35, -0.8, -0.45])  # towards the sun


# --- textures ---------------------------------------------------------------------------------

def _band_limited_noise(rng: np.random.Generator, size: int, min_wavelength: float, power: float) -> np.ndarray:
    """Periodic noise with a power-law spectrum cut off below `min_wavelength` texels, in [0, 1]."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    amp = np.where(f > 0, np.power(np.maximum(f, 1e-6), -power), 0.0)
    amp *= np.exp(-((f * min_wavelength) ** 4))  # smooth cut-off: no energy above ~1/min_wavelength
    spectrum = amp * (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape))
    noise = np.fft.irfft2(spectrum, s=(size, size))
    noise -= noise.min()
    return noise / max(noise.max(), 1e-12)


def _smoothstep(x: np.ndarray, edge: float) -> np.ndarray:
    return np.clip(0.5 + x / edge, 0.0, 1.0)


def _palette(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    base = rng.uniform(0.15, 0.85, size=3)
    other = np.clip(base + rng.normal(scale=0.35, size=3), 0.05, 0.95)
    return base, other


def make_texture(rng: np.random.Generator, kind: str, size: int = TEXTURE_SIZE) -> np.ndarray:
    """An RGB texture [size, size, 3] in [0, 1] of the given kind, tileable and band-limited."""
    c0, c1 = _palette(rng)
    detail = _band_limited_noise(rng, size, min_wavelength=7.0, power=1.0)
    coarse = _band_limited_noise(rng, size, min_wavelength=24.0, power=1.6)
    u = (np.arange(size) + 0.5) / size
    U, V = np.meshgrid(u, u)
    if kind == "noise":
        mix = 0.6 * coarse + 0.4 * detail
    elif kind == "checker":
        n = int(rng.integers(3, 7))
        s = np.sin(2 * np.pi * n * U) * np.sin(2 * np.pi * n * V)
        mix = 0.55 * _smoothstep(s, 0.35) + 0.45 * detail
    elif kind == "bricks":
        rows = int(rng.integers(6, 10))
        cols = rows // 2
        row = np.floor(V * rows)
        shifted = U * cols + 0.5 * (row % 2)
        mortar_u = np.abs(shifted - np.round(shifted)) * size / cols
        mortar_v = np.abs(V * rows - np.round(V * rows)) * size / rows
        mortar = np.minimum(mortar_u, mortar_v)
        brick = _smoothstep(mortar - 2.0, 2.0)
        mix = brick * (0.5 + 0.5 * detail) + (1 - brick) * 0.05
    elif kind == "stripes":
        n = int(rng.integers(4, 10))
        warp = 0.05 * (coarse - 0.5)
        mix = 0.5 * _smoothstep(np.sin(2 * np.pi * n * (U + warp)), 0.5) + 0.5 * detail
    else:
        raise ValueError(f"unknown texture kind {kind!r}; expected noise, checker, bricks or stripes")
    tex = c0[None, None] * (1 - mix[..., None]) + c1[None, None] * mix[..., None]
    # contrast-normalise the detail, then sprinkle dark and bright blobs of two sizes: blob
    # and corner detectors (SIFT, KLT) need local contrast on every surface
    tex = tex * (0.7 + 0.6 * (detail[..., None] - 0.5))
    for wavelength, threshold in ((10.0, 0.70), (16.0, 0.72)):
        blobs = _band_limited_noise(rng, size, min_wavelength=wavelength, power=0.3)
        for sign, colour in ((1, rng.uniform(0.75, 1.0, size=3)), (-1, rng.uniform(0.0, 0.2, size=3))):
            spots = _smoothstep(sign * (blobs - 0.5) - (threshold - 0.5), 0.06)[..., None]
            tex = tex * (1 - spots) + spots * colour
    return np.clip(tex, 0.0, 1.0).astype(np.float32)


def _sample_bilinear(atlas: np.ndarray, tex_id: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Wrap-around bilinear lookup in a texture atlas [T, S, S, 3] at texel coordinates (u, v)."""
    size = atlas.shape[1]
    x = u - 0.5
    y = v - 0.5
    x0 = np.floor(x)
    y0 = np.floor(y)
    ax = (x - x0)[..., None].astype(np.float32)
    ay = (y - y0)[..., None].astype(np.float32)
    x0 = x0.astype(np.int64) % size
    y0 = y0.astype(np.int64) % size
    x1 = (x0 + 1) % size
    y1 = (y0 + 1) % size
    flat = atlas.reshape(-1, 3)
    base = tex_id.astype(np.int64) * size * size
    c00 = flat[base + y0 * size + x0]
    c01 = flat[base + y0 * size + x1]
    c10 = flat[base + y1 * size + x0]
    c11 = flat[base + y1 * size + x1]
    return (c00 * (1 - ax) + c01 * ax) * (1 - ay) + (c10 * (1 - ax) + c11 * ax) * ay


# --- the scene --------------------------------------------------------------------------------

@dataclasses.dataclass
class Plane:
    """An infinite or bounded plane {p : n . p = offset}, textured by two in-plane axes."""

    normal: np.ndarray
    offset: float
    axis_u: np.ndarray
    axis_v: np.ndarray
    texture: int
    y_min: float = -np.inf  # bounds along world y (walls end at the top)
    y_max: float = np.inf
    waving: bool = False  # non-rigid: the texture flows and waves with time


@dataclasses.dataclass(kw_only=True)
class Motion:
    """A straight-line motion that starts at `start_time` (objects of dynamic-scene videos)."""

    velocity: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    start_time: float = 0.0  # the object rests until then

    def center_at(self, time: float) -> np.ndarray:
        return self.center + max(0.0, time - self.start_time) * self.velocity


@dataclasses.dataclass
class Box(Motion):
    center: np.ndarray
    half_size: np.ndarray
    yaw_deg: float
    texture: int


@dataclasses.dataclass
class Sphere(Motion):
    center: np.ndarray
    radius: float
    texture: int


@dataclasses.dataclass
class Scene:
    """A procedural scene. `extent` is the half-width of the walkable area; cameras placed by
    `default_orbit` stay inside the walls and above the ground."""

    planes: list[Plane]
    boxes: list[Box]
    spheres: list[Sphere]
    textures: np.ndarray  # [T, S, S, 3] float32
    sky_texture: int
    sky_colors: tuple[np.ndarray, np.ndarray]
    ground_y: float
    extent: float
    seed: int

    @property
    def has_dynamics(self) -> bool:
        movers = any(np.any(o.velocity != 0) for o in [*self.boxes, *self.spheres])
        return movers or any(p.waving for p in self.planes)

    @property
    def scale(self) -> float:
        """A characteristic length of the scene (metres): the walkable half-width."""
        return self.extent


@dataclasses.dataclass
class Frame:
    rgb: np.ndarray  # [H, W, 3] float32 in [0, 1]
    depth: np.ndarray  # [H, W] float32, z-depth in metres (sky: the sky dome's depth)
    object_id: np.ndarray  # [H, W] int32: -1 sky, 0.. planes, then boxes, then spheres
    camera: Camera
    time: float


def make_scene(
    seed: int,
    num_boxes: int = 4,
    num_spheres: int = 3,
    moving_objects: int = 0,
    waving_panels: int = 0,
    object_speed: float = 0.6,
) -> Scene:
    """A courtyard: textured ground, three walls, boxes and spheres, and a sky; deterministic.

    `moving_objects` of the objects get a constant velocity (metres per time unit) and
    `waving_panels` walls get a flowing, waving texture: the two kinds of dynamic content the
    curation filters must catch.
    """
    rng = np.random.default_rng(seed)
    kinds = ["noise", "checker", "bricks", "stripes"]
    textures: list[np.ndarray] = []

    def new_texture(kind: str | None = None) -> int:
        textures.append(make_texture(rng, kind or kinds[int(rng.integers(len(kinds)))]))
        return len(textures) - 1

    ground_y = 1.0
    extent = float(rng.uniform(3.5, 4.5))
    wall_height = float(rng.uniform(2.0, 3.0))
    ex, ey, ez = np.eye(3)
    planes = [Plane(-ey, -ground_y, ex, ez, new_texture("noise"))]  # ground, normal up (-y)
    wall_top = ground_y - wall_height
    planes.append(Plane(-ez, -extent, ex, ey, new_texture("bricks"), y_min=wall_top))  # back wall z = +extent
    planes.append(Plane(ex, -extent, ez, ey, new_texture(), y_min=wall_top))  # left wall x = -extent
    planes.append(Plane(-ex, -extent, ez, ey, new_texture(), y_min=wall_top))  # right wall x = +extent
    for i in range(min(waving_panels, 3)):
        planes[1 + i].waving = True

    boxes, spheres = [], []
    placed: list[tuple[np.ndarray, float]] = []

    def free_spot(radius: float) -> np.ndarray:
        # objects stay in the back part of the courtyard (z > -0.2) so that cameras of
        # `default_orbit`, which sit in front of it, never end up inside one
        lo = np.array([-extent + radius + 0.4, -0.2 + radius])
        hi = np.array([extent - radius - 0.4, extent - radius - 0.4])
        for _ in range(200):
            p = rng.uniform(lo, hi)
            if all(np.hypot(*(p - q)) > radius + r + 0.2 for q, r in placed):
                placed.append((p, radius))
                return p
        placed.append((p, radius))
        return p

    for _ in range(num_boxes):
        half = rng.uniform([0.25, 0.25, 0.25], [0.6, 0.9, 0.6])
        xz = free_spot(float(np.hypot(half[0], half[2])))
        center = np.array([xz[0], ground_y - half[1], xz[1]])
        boxes.append(Box(center, half, float(rng.uniform(0, 90)), new_texture()))
    for _ in range(num_spheres):
        r = float(rng.uniform(0.25, 0.55))
        xz = free_spot(r)
        lift = float(rng.uniform(0.0, 0.6))
        spheres.append(Sphere(np.array([xz[0], ground_y - r - lift, xz[1]]), r, new_texture()))

    objects = [*boxes, *spheres]
    for obj in objects[: min(moving_objects, len(objects))]:
        angle = rng.uniform(0, 2 * np.pi)
        obj.velocity = object_speed * np.array([np.cos(angle), 0.0, np.sin(angle)])

    sky_tex = new_texture("noise")
    sky_colors = (np.array([0.55, 0.7, 0.95]), np.array([0.95, 0.95, 1.0]))
    return Scene(planes, boxes, spheres, np.stack(textures), sky_tex, sky_colors, ground_y, extent, seed)


# --- ray casting ------------------------------------------------------------------------------

def _intersect_plane(plane: Plane, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    denom = d @ plane.normal.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (plane.offset - float(o @ plane.normal)) / denom
    t = np.where((denom < -1e-9) & (t > 1e-4), t, np.inf)  # one-sided: visible from the front
    if np.isfinite(plane.y_min) or np.isfinite(plane.y_max):
        y = o[1] + t * d[:, 1]
        t = np.where((y >= plane.y_min) & (y <= plane.y_max), t, np.inf)
    return t


def _box_frame(box: Box, time: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.deg2rad(box.yaw_deg)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])  # local -> world
    return R, box.center_at(time)


def _intersect_box(box: Box, o: np.ndarray, d: np.ndarray, time: float) -> np.ndarray:
    R, c = _box_frame(box, time)
    ol = ((o - c) @ R).astype(np.float32)
    dl = d @ R.astype(np.float32)
    half = box.half_size.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dl
        t0 = (-half - ol) * inv
        t1 = (half - ol) * inv
    near = np.minimum(t0, t1)
    far = np.maximum(t0, t1)
    # fmax/fmin skip the NaNs of rays parallel to a slab (0 * inf); faster than nanmax(axis=1)
    tmin = np.fmax(np.fmax(near[:, 0], near[:, 1]), near[:, 2])
    tmax = np.fmin(np.fmin(far[:, 0], far[:, 1]), far[:, 2])
    return np.where((tmax >= tmin) & (tmin > 1e-4), tmin, np.inf)


def _intersect_sphere(s: Sphere, o: np.ndarray, d: np.ndarray, time: float) -> np.ndarray:
    oc = o - s.center_at(time)
    a = np.einsum("ij,ij->i", d, d)
    b = 2.0 * (d @ oc.astype(np.float32))
    c = float(oc @ oc) - s.radius**2
    disc = b * b - 4 * a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    t = (-b - sq) / (2 * a)
    return np.where((disc >= 0) & (t > 1e-4), t, np.inf)


def _sky_depth(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    a = np.einsum("ij,ij->i", d, d)
    b = 2.0 * (d @ o.astype(np.float32))
    c = float(o @ o) - SKY_RADIUS**2
    return (-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))) / (2 * a)


def _shade(albedo: np.ndarray, normal: np.ndarray) -> np.ndarray:
    lambert = np.clip(normal @ SUN_DIRECTION.astype(np.float32), 0.0, 1.0)
    return albedo * (0.45 + 0.6 * lambert)[:, None]


def render(scene: Scene, camera: Camera, time: float = 0.0) -> Frame:
    """Render RGB, z-depth and object ids of `scene` seen by `camera` at `time`."""
    h, w = camera.height, camera.width
    origin, dirs = camera_rays(camera.K, camera.c2w, w, h)
    d = dirs.reshape(-1, 3).astype(np.float32)
    o = origin.astype(np.float64)

    prims: list[tuple[str, object]] = [("plane", p) for p in scene.planes]
    prims += [("box", b) for b in scene.boxes] + [("sphere", s) for s in scene.spheres]
    best_t = _sky_depth(o, d).astype(np.float32)
    best_id = np.full(d.shape[0], -1, dtype=np.int32)
    for i, (kind, prim) in enumerate(prims):
        if kind == "plane":
            t = _intersect_plane(prim, o, d)
        elif kind == "box":
            t = _intersect_box(prim, o, d, time)
        else:
            t = _intersect_sphere(prim, o, d, time)
        closer = t < best_t
        best_t = np.where(closer, t, best_t)
        best_id = np.where(closer, i, best_id)

    rgb = np.empty((d.shape[0], 3), dtype=np.float32)
    order = np.argsort(best_id, kind="stable")
    ids_sorted = best_id[order]
    bounds = np.searchsorted(ids_sorted, np.arange(-1, len(prims) + 1))
    for k in range(-1, len(prims)):
        idx = order[bounds[k + 1] : bounds[k + 2]]
        if idx.size == 0:
            continue
        t = best_t[idx].astype(np.float64)
        p = o + t[:, None] * d[idx]
        if k < 0:
            rgb[idx] = _sky_color(scene, d[idx])
            continue
        kind, prim = prims[k]
        if kind == "plane":
            u = p @ prim.axis_u * TEXELS_PER_METRE
            v = p @ prim.axis_v * TEXELS_PER_METRE
            if prim.waving:
                # non-rigid: the texture flows and ripples, so its image motion fits no rigid model
                phase = 2 * np.pi * 0.8 * time
                u = u + 14.0 * np.sin(v / 23.0 + phase) + 25.0 * time
                v = v + 10.0 * np.sin(u / 31.0 - 1.3 * phase)
            normal = np.broadcast_to(prim.normal, p.shape)
        elif kind == "box":
            R, c = _box_frame(prim, time)
            pl = (p - c) @ R
            rel = pl / prim.half_size
            axis = np.argmax(np.abs(rel), axis=1)
            sign = np.sign(rel[np.arange(len(rel)), axis])
            nl = np.zeros_like(pl)
            nl[np.arange(len(rel)), axis] = sign
            normal = nl @ R.T
            # face coordinates: the two local axes other than the face normal
            a1 = np.where(axis == 0, pl[:, 2], pl[:, 0])
            a2 = np.where(axis == 1, pl[:, 2], pl[:, 1])
            u = (a1 + 7.0 * axis) * TEXELS_PER_METRE
            v = a2 * TEXELS_PER_METRE
        else:
            rel = (p - prim.center_at(time)) / prim.radius
            normal = rel
            lon = np.arctan2(rel[:, 0], rel[:, 2])
            lat = np.arcsin(np.clip(rel[:, 1], -1, 1))
            circumference = 2 * np.pi * prim.radius * TEXELS_PER_METRE
            u = lon / (2 * np.pi) * np.round(circumference / TEXTURE_SIZE) * TEXTURE_SIZE
            v = lat * prim.radius * TEXELS_PER_METRE
        tex_ids = np.full(idx.shape, prim.texture)
        albedo = _sample_bilinear(scene.textures, tex_ids, u, v)
        rgb[idx] = _shade(albedo, np.asarray(normal, dtype=np.float32))

    depth = best_t.reshape(h, w)
    return Frame(
        rgb=np.clip(rgb, 0, 1).reshape(h, w, 3),
        depth=depth.astype(np.float32),
        object_id=best_id.reshape(h, w),
        camera=camera,
        time=time,
    )


def _sky_color(scene: Scene, d: np.ndarray) -> np.ndarray:
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    height = np.clip(-dn[:, 1], 0, 1)[:, None]
    low, high = scene.sky_colors
    grad = (high * (1 - height) + low * height).astype(np.float32)
    # clouds: the noise texture mapped on a plane high above, so they move with the view
    with np.errstate(divide="ignore"):
        s = 6.0 / np.maximum(-dn[:, 1], 0.05)
    u = dn[:, 0] * s * 20.0
    v = dn[:, 2] * s * 20.0
    cloud = _sample_bilinear(scene.textures, np.full(len(d), scene.sky_texture), u, v).mean(axis=1, keepdims=True)
    return grad * (0.85 + 0.15 * cloud)


# --- cameras for a scene ----------------------------------------------------------------------

def default_intrinsics(width: int, height: int, fov_x_deg: float = 60.0) -> np.ndarray:
    return intrinsics_from_fov(fov_x_deg, width, height)


def default_orbit(
    scene: Scene,
    num_frames: int,
    width: int,
    height: int,
    azimuth_deg=(-40.0, 40.0),
    elevation_deg=12.0,
    radius: float | None = None,
    fov_x_deg: float = 60.0,
) -> list[Camera]:
    """An orbit inside the courtyard around a point above the ground at its centre."""
    radius = 0.55 * scene.extent if radius is None else radius
    center = np.array([0.0, scene.ground_y - 0.6, 0.6])
    K = default_intrinsics(width, height, fov_x_deg)
    return trajectories.orbit(
        center, radius, num_frames, K, width, height, azimuth_deg=azimuth_deg, elevation_deg=elevation_deg, endpoint=True
    )


def render_trajectory(scene: Scene, cameras: Sequence[Camera], times: Sequence[float] | None = None) -> list[Frame]:
    times = [0.0] * len(cameras) if times is None else list(times)
    return [render(scene, cam, t) for cam, t in zip(cameras, times)]
