"""The device mesh, the logical-axis rules table, and how arrays are laid out on the mesh.

Parameters and activations are annotated with *logical* axis names (`"embed"`, `"heads"`,
`"batch"`, ...). A rules table (it lives in the training config) maps each logical name to
mesh axes; the mesh has three axes:

- `data`: pure data parallelism (parameters replicated),
- `fsdp`: data parallelism with parameters and optimizer state sharded (ZeRO-3 style),
- `tensor`: tensor parallelism of attention heads, MLP and convolution channels.

Batches are sharded by *sample* over (`data`, `fsdp`): a sample's views are contiguous and
never split across devices, so the 3D self-attention over all views stays local.

A logical axis whose size is not divisible by its mesh axes is replicated instead (tiny models
on big meshes keep working; the layout is then a little less memory-efficient).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axes (None or () = replicated)
LogicalRules = tuple[tuple[str, Any], ...]
DEFAULT_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),  # model width of Linear layers
    ("conv_in", "fsdp"),  # input channels of convolutions
    ("conv_out", "tensor"),  # output channels of convolutions
    ("heads", "tensor"),  # attention inner width (heads x head_dim)
    ("mlp", "tensor"),  # feed-forward / timestep MLP hidden width
    ("norm", None),  # norm scales and biases are small: replicate
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (all by default); -1 takes what is left."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got {sizes}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices are not divisible by the product of the given axis sizes {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh: data*fsdp*tensor = {sizes} needs {int(np.prod(sizes))} devices, have {len(devices)}")
    # jax.make_mesh picks a device order that follows the physical interconnect.
    return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _mesh_axes_for(name: str | None, rules: LogicalRules) -> tuple[str, ...]:
    if name is None:
        return ()
    for logical, mesh_axes in rules:
        if logical == name:
            if mesh_axes is None:
                return ()
            return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    return ()


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: LogicalRules) -> PartitionSpec:
    """Resolve logical axes to a PartitionSpec for an array of `shape` on `mesh`.

    Mesh axes of size 1, axes already used by an earlier dimension and axes that do not divide
    the dimension are dropped, so every returned spec is valid for the array."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match an array of shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, size in zip(logical_axes, shape):
        kept: list[str] = []
        for axis in _mesh_axes_for(name, rules):
            if axis not in mesh.shape or mesh.shape[axis] == 1 or axis in used:
                continue
            if size % (int(np.prod([mesh.shape[a] for a in kept])) * mesh.shape[axis]):
                continue
            kept.append(axis)
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*spec)


def variable_logical_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    """The logical axes a parameter was annotated with (replicated when it has none)."""
    axes = variable.get_metadata().get("logical_axes")
    value = variable.get_value()
    return tuple(axes) if axes else (None,) * len(getattr(value, "shape", ()))


def state_shardings(state: nnx.State, mesh: Mesh, rules: LogicalRules) -> nnx.State:
    """NamedShardings for every Variable of an nnx state (abstract or concrete)."""

    def one(variable):
        value = variable.get_value()
        return NamedSharding(mesh, logical_to_spec(variable_logical_axes(variable), value.shape, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_spec(ndim: int) -> PartitionSpec:
    """Batches are sharded on their leading (sample) axis over data and fsdp."""
    return PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1)))


# --- activation constraints --------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[tuple[Mesh, LogicalRules] | None] = contextvars.ContextVar("see3d_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: LogicalRules):
    """While tracing inside this context, `constrain` pins activations to the mesh."""
    token = _ACTIVE.set((mesh, rules))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Annotate an activation with logical axes (a no-op outside `activation_sharding`)."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(logical_axes, x.shape, mesh, rules)))


# --- host copies -------------------------------------------------------------------------------

def process_zero_copy(tree: Any) -> Any:
    """The arrays of `tree` as numpy arrays on process 0 (None on the other processes): what a
    model export writes.

    Each array is assembled on the host from the shards process 0 holds (one copy of each
    distinct block; no device-side gather, nothing copied to the other hosts). Only an array
    with a block that lives on other hosts alone (FSDP across hosts) is gathered, that array on
    its own (`multihost_utils.process_allgather`), so a host holds at most the finished part
    of the export plus one parameter. Every process must call this (the gather is collective;
    whether an array needs it depends only on its sharding, so all processes agree)."""
    return jax.tree.map(_to_process_zero, tree)


def _block(index: tuple) -> tuple:
    return tuple((s.start, s.stop, s.step) for s in index)


def _to_process_zero(x: Any) -> np.ndarray | None:
    if not isinstance(x, jax.Array):
        return np.asarray(x) if jax.process_index() == 0 else None
    blocks = x.sharding.devices_indices_map(x.shape)
    on_zero = {_block(index) for device, index in blocks.items() if device.process_index == 0}
    if on_zero != {_block(index) for index in blocks.values()}:
        from jax.experimental import multihost_utils

        full = multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(full) if jax.process_index() == 0 else None
    if jax.process_index() != 0:
        return None
    out = np.empty(x.shape, x.dtype)
    written: set[tuple] = set()
    for shard in x.addressable_shards:
        block = _block(shard.index)
        if block not in written:  # replicas of a block are copied once
            out[shard.index] = np.asarray(shard.data)
            written.add(block)
    return out
