"""Orbax checkpoints of a training run: model, optimizer, EMA, step and the data iterator.

One `CheckpointManager` under `WORKDIR/checkpoints` (a local path or `gs://...`), saving
asynchronously (training goes on while arrays are written) and keeping the last N. Each
checkpoint holds two items: `state` (the train-state pytree, restored straight into its
shardings) and `data` (the grain iterator position, JSON).

`export_checkpoint` writes the weights of a train state alone (step, params and EMA; no
optimizer state: a third of a checkpoint with AdamW's two moments), each process its own
shards; `restore_export` reads them back straight into shardings (fine-tuning, evaluation).
"""

from __future__ import annotations

from typing import Any

import os

import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True):
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any]) -> bool:
        if self.manager.latest_step() == step:
            return False  # already saved (e.g. a periodic save at the last step)
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restore `step` (the latest by default) into the shardings of `abstract_state`
        (a pytree of `jax.ShapeDtypeStruct` with `.sharding`)."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        )
        return restored["state"], restored["data"]

    def reached_preemption(self, step: int) -> bool:
        """True on every host once any host got a preemption notice (multi-host TPU/GPU jobs)."""
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings: what `Checkpointer.restore` fills in."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


EXPORT_ITEMS = ("step", "params", "ema")  # what an export keeps of the train state


def _orbax_path(directory: str) -> epath.Path:
    return epath.Path(directory if "://" in directory else os.path.abspath(directory))


def export_checkpoint(directory: str, state: Any) -> epath.Path:
    """Write `state`'s step, params and EMA (not its optimizer state) as one orbax checkpoint
    in `directory` (local or gs://); each process writes the shards it holds, nothing is
    gathered. Overwrites an earlier export there."""
    path = _orbax_path(directory)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, {k: state[k] for k in EXPORT_ITEMS}, force=True)
    return path


def restore_export(directory: str, abstract_state: Any) -> dict[str, Any]:
    """Read an `export_checkpoint` into the shardings of `abstract_state` (ShapeDtypeStructs
    with shardings, `abstract_like`; a full train state's or just its EXPORT_ITEMS)."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(_orbax_path(directory), {k: abstract_state[k] for k in EXPORT_ITEMS})
