"""Training data: clip datasets -> batches of N random views per clip, through `grain`.

Each element is one clip with `num_views` frames drawn at random (without replacement, in
random order: See3D uses no temporal order), resized (area) and centre-cropped to a square
`image_size`, as float32 pixels in [-1, 1]: ``views [num_views, S, S, 3]``. With `posed=True`
(the condition's "posed_warp" variant) the element also carries every view warped into every
other at the same crop and size by the generation loop's warp (`see3d_core.clips.pair_warps_path`, written by `see3d pair-warps`):
``pair_images [num_views, num_views, S, S, 3]`` in [-1, 1], ``pair_masks`` and ``pair_depths``
``[num_views, num_views, S, S]``, indexed [source, destination]. Which views are references and which are
targets is decided later, on device, by `see3d_jax.condition.build_training_batch`.

Latent models can encode every frame once before training (`cache_latents`: the trainer's
`cache_latents=true`, or beforehand `python -m see3d_jax.encode_latents`): each clip's frames
at `image_size` go through the VAE encoder and are stored as ``LATENT_DIR/<clip>.npy
[num_frames, h, w, C]``; the elements then also carry ``latents [num_views, h, w, C]`` of the
drawn frames, and the trainer uses them as x0 and as the condition of the reference views
instead of encoding them every step.

Clips are shuffled with a new order every epoch; the iterator's position is a small JSON
state, saved with every checkpoint so a resumed run continues with the very next batch.
Several processes (multi-host) each read their own shard of the clips (`process_index`-th of
every `process_count`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import grain
import numpy as np

from see3d_core.clips import (PAIR_WARPS_VERSION, ClipDataset, ClipFormatError, pair_warps_path, pair_warps_version,
                              read_clip, read_info, square_resize)


def to_model_range(frames: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (the VAE's input range)."""
    return frames.astype(np.float32) / 127.5 - 1.0


@dataclasses.dataclass
class ClipViews:
    """`grain` transform: a clip directory -> `num_views` random frames at `image_size`."""

    num_views: int
    image_size: int
    cache: bool = False
    posed: bool = False
    latent_dir: str | None = None  # `cache_latents` output: the element also carries "latents"

    def __post_init__(self):
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    def _read(self, clip_dir: str, positions: list[int] | None) -> dict[str, np.ndarray]:
        clip = read_clip(clip_dir, positions, load_depth=False)
        out = {"views": to_model_range(square_resize(clip.frames, self.image_size))}
        if self.latent_dir is not None:
            path = Path(self.latent_dir) / f"{Path(clip_dir).name}.npy"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no cached latents for clip {clip_dir} (run see3d_jax.data.cache_latents)")
            latents = np.load(path, mmap_mode="r")
            out["latents"] = np.asarray(latents if positions is None else latents[positions], np.float32)
        if self.posed:
            info = clip.info
            if not info.posed or info.depths is None:
                raise ClipFormatError(f"clip {clip_dir}: posed training needs 'intrinsics', 'c2w' and 'depths' in clip.json")
            idx = list(range(info.num_frames)) if positions is None else positions
            path = pair_warps_path(clip_dir, self.image_size)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no pair warps for posed training at {self.image_size} px; write them with "
                                        f"`see3d pair-warps DATA --size {self.image_size}` (the generation loop's warp)")
            with np.load(path) as warps:
                version = pair_warps_version(warps)
                if version != PAIR_WARPS_VERSION:
                    raise ClipFormatError(f"{path}: pair warps written by warp version {version}, the kit's is "
                                          f"{PAIR_WARPS_VERSION}; rewrite them with `see3d pair-warps DATA --size {self.image_size}`")
                pick = np.ix_(idx, idx)
                out["pair_images"] = to_model_range(warps["images"][pick])
                out["pair_masks"] = warps["masks"][pick].astype(np.float32)
                out["pair_depths"] = warps["depths"][pick].astype(np.float32)
        return out

    def __call__(self, clip: tuple[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
        clip_dir, num_frames = clip
        positions = rng.choice(num_frames, size=self.num_views, replace=False)
        if not self.cache:
            return self._read(clip_dir, positions.tolist())
        if clip_dir not in self._cache:
            self._cache[clip_dir] = self._read(clip_dir, None)
        return {k: v[np.ix_(positions, positions)] if k.startswith("pair_") else v[positions]
                for k, v in self._cache[clip_dir].items()}


def cache_latents(
    clips: Sequence[tuple[str, int]],
    latent_dir: str | os.PathLike,
    encoder: Callable,
    image_size: int,
    vae: str,
    chunk: int = 16,
    devices: Sequence | None = None,
) -> int:
    """Encode every frame of `clips` (as `list_clips` returns them) at `image_size` into
    ``latent_dir/<clip>.npy``: the one latent cache, written by the trainer's
    `cache_latents=true` and by `python -m see3d_jax.encode_latents`.

    encoder: a `see3d_jax.vae.LatentEncoder` (e.g. `see3d_jax.train.load_encoder`; its
        parameters are an argument of the jitted encode, replicated on `devices`, not
        constants of the program) or a parameter-free function; pixels [..., S, S, 3] in
        [-1, 1] -> scaled latents [..., h, w, C].
    Each call encodes `chunk` frames per device, split over `devices` (default: this process's
    local devices); a clip's last block is padded (one shape: one compilation).

    Resumable: clips whose file exists with the right frame count are skipped, and each file is
    written whole (temp file + rename). `latent_dir/cache.json` records `image_size` and `vae`;
    a directory made with other values is an error rather than silently reused. Returns the
    number of clips encoded now."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from see3d_jax.vae import LatentEncoder

    root = Path(latent_dir)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"image_size": int(image_size), "vae": _vae_id(vae)}
    meta_path = root / "cache.json"
    if meta_path.is_file():
        found = json.loads(meta_path.read_text())
        if found != meta:
            raise ValueError(f"{meta_path}: latents cached for {found}, but this run needs {meta}; "
                             "delete the directory or point the cache elsewhere")
    else:  # whole or absent, also for processes sharing the directory
        tmp = meta_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
    if isinstance(encoder, LatentEncoder):
        apply, params = encoder.apply, encoder.params
    else:
        apply, params = (lambda _, pixels: encoder(pixels)), None
    mesh = Mesh(np.array(jax.local_devices() if devices is None else list(devices)), ("frames",))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    rows = NamedSharding(mesh, PartitionSpec("frames"))  # [devices, chunk, S, S, 3]: one row per device
    encode = jax.jit(apply)
    block = mesh.size * chunk
    encoded = 0
    for clip_dir, num_frames in clips:
        path = root / f"{Path(clip_dir).name}.npy"
        if path.is_file() and np.load(path, mmap_mode="r").shape[0] == num_frames:
            continue
        frames = to_model_range(square_resize(read_clip(clip_dir).frames, image_size))
        parts = []
        for start in range(0, len(frames), block):
            part = frames[start:start + block]
            padded = np.concatenate([part, np.repeat(part[-1:], block - len(part), 0)]) if len(part) < block else part
            out = encode(params, jax.device_put(padded.reshape((mesh.size, chunk) + padded.shape[1:]), rows))
            parts.append(np.asarray(out).reshape((block,) + out.shape[2:])[:len(part)])
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, np.concatenate(parts).astype(np.float32))
        os.replace(tmp, path)
        encoded += 1
    return encoded


def _vae_id(vae: str) -> str:
    """What cache.json records of the VAE: a local folder by its absolute path (the same
    folder named two ways is the same VAE), anything else as given."""
    path = Path(vae)
    return str(path.resolve()) if path.exists() else str(vae)


def list_clips(data_dir: str | os.PathLike, num_views: int, posed: bool = False) -> list[tuple[str, int]]:
    """(clip directory, frame count) of every clip with at least `num_views` frames (and, when
    `posed`, with cameras and depths: the others are skipped, an error if none is left)."""
    dataset = ClipDataset(data_dir)
    clips, unposed = [], 0
    for entry in dataset.entries():
        clip_dir = Path(data_dir) / entry["clip"]
        info = read_info(clip_dir) if posed or not entry.get("num_frames") else None
        n = int(entry.get("num_frames") or info.num_frames)
        if posed and not (info.posed and info.depths is not None):
            unposed += 1
            continue
        if n >= num_views:
            clips.append((str(clip_dir), n))
    if not clips:
        need = " with cameras and depths (posed training)" if posed else ""
        raise ClipFormatError(
            f"clip dataset {data_dir}: no clip{need} has at least num_views={num_views} frames"
            + (f" ({unposed} clips have no cameras/depths)" if unposed else "")
        )
    return clips


def clip_shard(data_dir: str | os.PathLike, num_views: int, posed: bool, process_index: int,
               process_count: int) -> list[tuple[str, int]]:
    """The `process_index`-th of `process_count` shards of `list_clips` (every `process_count`-th
    clip): what one process reads, and, with `cache_latents`, encodes."""
    clips = list_clips(data_dir, num_views, posed)
    if len(clips) < process_count:
        raise ClipFormatError(f"clip dataset {data_dir}: {len(clips)} clips cannot be split over {process_count} processes")
    return clips[process_index::process_count]


def training_batches(
    data_dir: str | os.PathLike,
    *,
    num_views: int,
    image_size: int,
    batch_size: int,
    seed: int = 0,
    cache: bool = False,
    num_workers: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    posed: bool = False,
    latent_dir: str | os.PathLike | None = None,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of `{"views": [batch_size, num_views, S, S, 3]}`
    (plus "depths", "intrinsics" and "c2w" when `posed`, and "latents" [batch_size, num_views,
    h, w, C] with a `latent_dir` filled by `cache_latents`).

    `batch_size` is this process's share of the global batch. `get_state()` / `set_state()`
    save and restore the position."""
    ds = grain.MapDataset.source(clip_shard(data_dir, num_views, posed, process_index, process_count))
    ds = ds.shuffle(seed=seed).repeat().random_map(ClipViews(num_views, image_size, cache, posed, None if latent_dir is None else str(latent_dir)), seed=seed + 1)
    ds = ds.batch(batch_size, drop_remainder=True)
    it_ds = ds.to_iter_dataset()
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)
