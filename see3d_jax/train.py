"""Sharded training of the multi-view diffusion UNet.

    python -m see3d_jax.train --config small --data DATASET --workdir RUN [key=value ...]

The train state is a pytree ``{"step", "params", "opt_state", "ema"}`` of pure dicts, laid
out on a (data, fsdp, tensor) mesh by the logical-axis rules of the config
(`see3d_jax.sharding`). One optimizer step (jitted, with input/output shardings and the
old state's buffers donated):

1. split the global batch of clips into `grad_accum_steps` micro-batches (a `lax.scan`);
2. per micro-batch, build the visual condition on device (`condition.build_training_batch`:
   shuffled views, S references, random hole masks, t, C_t, V_t), run the UNet on
   ``cat([x_t, V_t, M])`` and regress `schedules.training_target` (v by default) on target
   views only (optionally Min-SNR-gamma weighted per sample and hole pixels weighted up);
3. clip the global gradient norm, AdamW with linear warmup and cosine decay, update the EMA.

Runs resume from the latest orbax checkpoint in `WORKDIR/checkpoints` (model, optimizer,
EMA, step and data iterator); SIGTERM (preemption) saves a checkpoint and exits cleanly (with
several processes, at the next `log_every` step, where they agree on it).
Logs go to `WORKDIR/log.jsonl` and TensorBoard (`WORKDIR/tensorboard`); at the end the EMA
weights are exported to `WORKDIR/ema/`, a model folder (config.json + diffusion_pytorch_model.safetensors,
torch names) that `see3d_jax.convert.from_pretrained` and `see3d_torch`'s `MultiViewUNet.from_pretrained` read.

On a CPU host, set `XLA_FLAGS=--xla_force_host_platform_device_count=N` (N = 2x the cores)
before starting: the batch is then split over N CPU devices whose programs XLA runs in
parallel, while one device runs the UNet's many small ops mostly on one thread (2 cores, 4
devices: 2.4x the samples/s of the `small` config, benchmarks/RESULTS.md).

Multi-host: pass `--coordinator HOST:PORT --num-processes N --process-id I` (or
`--distributed` on TPU / SLURM, where JAX finds them itself); each process reads its own
shard of the clips and feeds its part of the global batch.

Exports: the EMA model folder is assembled on process 0 from the shards it holds
(`see3d_jax.sharding.process_zero_copy`; only parameters split across hosts are gathered, one
at a time); `export_checkpoint=true` also writes `WORKDIR/export`, the step, params and EMA
without the optimizer state (`see3d_jax.checkpointing.export_checkpoint`, sharded). Training
can start from pretrained weights with `init_from=` (`see3d_jax.pretrained`).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from see3d_core.diffusion import needs_pair_warps
from see3d_jax import condition as cond
from see3d_jax import convert
from see3d_jax import schedules
from see3d_jax.attention import resolve_implementation
from see3d_jax.sharding import (activation_sharding, batch_spec, constrain, logical_to_spec, make_mesh, process_zero_copy,
                                variable_logical_axes)
from see3d_jax.train_config import TrainConfig, load_config
from see3d_jax.unet import UNet, attention_matmul_flops, forward_flops, initial_parameters
from see3d_jax.vae import LatentEncoder

# pixels [B, K, H, W, 3] -> scaled latents [B, K, h, w, C]: a `see3d_jax.vae.LatentEncoder`
# (its parameters become an argument of the jitted step) or a parameter-free function
EncodeFn = Callable[[jax.Array], jax.Array] | LatentEncoder


def make_optimizer(config: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Global-norm clipping, then AdamW with linear warmup and cosine decay (no decay on
    biases and norm scales)."""
    lr = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=max(config.warmup_steps, 1),
        decay_steps=max(config.steps, config.warmup_steps + 1), end_value=config.learning_rate * config.final_lr_fraction,
    )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    tx = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adamw(lr, b1=config.adam_b1, b2=config.adam_b2, weight_decay=config.weight_decay, mask=decay_mask),
    )
    return tx, lr


def _nested_set(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


class Trainer:
    """Builds the model, the sharded train state and the jitted train step for a config."""

    def __init__(self, config: TrainConfig, mesh: jax.sharding.Mesh | None = None, encode_fn: EncodeFn | None = None,
                 context: np.ndarray | None = None):
        if not config.unet.pixel_space and encode_fn is None:
            raise ValueError("Trainer: a latent-space UNet needs encode_fn (a Flax VAE encoder, see `vae=` in the config)")
        self.config = config
        self.mesh = mesh if mesh is not None else make_mesh(config.mesh_data, config.mesh_fsdp, config.mesh_tensor)
        self.rules = config.sharding_rules
        if isinstance(encode_fn, LatentEncoder):
            self._encode_apply, encoder_params = encode_fn.apply, encode_fn.params
        else:  # a function without parameters (a stand-in, or pixel space when None)
            self._encode_apply, encoder_params = (None if encode_fn is None else lambda _, pixels: encode_fn(pixels)), None
        self.schedule = schedules.make_noise_schedule(schedules.ScheduleConfig.see3d())
        self.condition_config = config.condition
        self.tx, self.lr = make_optimizer(config)
        dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
        abstract = nnx.eval_shape(lambda: UNet(config.unet, dtype=dtype, remat=config.remat,
                                                  attention_implementation=config.attention_implementation))
        self.graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise AssertionError("UNet holds state other than parameters; the train state would miss it")
        self._abstract_params = abstract_params
        self._rest = rest
        u = config.unet
        if context is None:
            context = np.zeros((u.context_tokens, u.context_dim), np.float32)
        context = np.asarray(context, np.float32)
        if context.ndim != 2 or context.shape[1] != u.context_dim:
            raise ValueError(f"Trainer: context must be [T, {u.context_dim}], got shape {context.shape}")
        self.context = jnp.asarray(context)

        replicated = NamedSharding(self.mesh, PartitionSpec())
        # the VAE encoder (84M parameters for SD's) is replicated: small next to the UNet
        self.encoder_params = jax.device_put(encoder_params, replicated)
        param_shardings: dict = {}
        for path, var in nnx.to_flat_state(abstract_params):
            spec = logical_to_spec(variable_logical_axes(var), var.get_value().shape, self.mesh, self.rules)
            _nested_set(param_shardings, path, NamedSharding(self.mesh, spec))
        self.param_shardings = param_shardings
        param_shapes = nnx.to_pure_dict(abstract_params)
        opt_shapes = jax.eval_shape(self.tx.init, param_shapes)
        opt_shardings = self._optimizer_shardings(opt_shapes)
        self.state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings, "ema": param_shardings}
        self.state_shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": param_shapes, "opt_state": opt_shapes, "ema": param_shapes}
        self._init_rest = jax.jit(
            lambda params: {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params),
                            "ema": jax.tree.map(jnp.copy, params)},
            in_shardings=(param_shardings,), out_shardings=self.state_shardings,
        )
        # Batches are dicts sharded by sample: "views" [B, N, H, W, 3], and for posed training the
        # pair warps (the generation loop's warp, `see3d_jax.data`): "pair_images" [B, N, N, H, W, 3],
        # "pair_masks" and "pair_depths" [B, N, N, H, W].
        self.posed = needs_pair_warps(config.condition)
        batch_ndims = {"views": 5, "pair_images": 6, "pair_masks": 5, "pair_depths": 5} if self.posed else {"views": 5}
        if config.cache_latents:  # "latents" [B, N, h, w, C] from see3d_jax.data.cache_latents
            batch_ndims["latents"] = 5
        self.batch_shardings = {k: NamedSharding(self.mesh, batch_spec(n)) for k, n in batch_ndims.items()}
        self.train_step = jax.jit(
            self._train_step, in_shardings=(self.state_shardings, self.batch_shardings, replicated),
            out_shardings=(self.state_shardings, replicated), donate_argnums=(0,),
        )

    # --- state --------------------------------------------------------------------------------
    def _optimizer_shardings(self, opt_shapes):
        """Optimizer moments take the layout of their parameters; scalars are replicated."""
        def names(path):
            return [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]

        by_name = {".".join(names(path)): s for path, s in jax.tree_util.tree_flatten_with_path(self.param_shardings)[0]}
        replicated = NamedSharding(self.mesh, PartitionSpec())

        def pick(path, leaf):
            keys = names(path)
            for start in range(len(keys)):  # the moments' paths end with their parameter's path
                sharding = by_name.get(".".join(keys[start:]))
                if sharding is not None:
                    return sharding
            return replicated

        return jax.tree_util.tree_map_with_path(pick, opt_shapes)

    def init_state(self, seed: int | None = None, params: dict | None = None):
        """A new train state in its shardings: step 0, a fresh optimizer, EMA = parameters.

        Parameters: `params` if given (a pure dict already in `param_shardings`), else the
        config's `init_from` weights (`load_pretrained`), else drawn on the host (the same on
        every host); either way each device receives only its shard."""
        if params is None and self.config.init_from is not None:
            params, _ = self.load_pretrained()
        if params is None:
            host = initial_parameters(nnx.eval_shape(lambda: UNet(self.config.unet)), self.config.seed if seed is None else seed)
            params = jax.tree.map(
                lambda x, sharding: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), host, self.param_shardings
            )
        with jax.set_mesh(self.mesh):
            return self._init_rest(params)

    def load_pretrained(self) -> tuple[dict, dict[str, Any]]:
        """The config's `init_from` weights, converted and placed straight into
        `param_shardings` (`see3d_jax.pretrained`), and a report for the log."""
        from see3d_jax import pretrained

        source = pretrained.open_source(self.config.init_from, self.config.init_from_variant)
        return pretrained.load_sharded(source, self.config.unet, self.param_shardings)

    def model(self, params) -> UNet:
        """The UNet with `params` (a pure dict: train `params` or `ema`)."""
        state = jax.tree.map(lambda x: x, self._abstract_params)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state, self._rest)

    def model_fn(self, params):
        """`sampling.sample`'s model function: (x_t, V, M, t, context) -> prediction."""
        model = self.model(params)
        channels = self.config.unet.sample_channels

        def fn(x_t, condition, mask, t, context):
            out = model(jnp.concatenate([x_t, condition, mask], axis=-1), t, context)
            return out[..., :channels]

        return fn

    def batch_context(self, batch: int) -> jax.Array:
        return jnp.broadcast_to(self.context, (batch,) + self.context.shape)

    # --- the step ----------------------------------------------------------------------------
    def loss(self, params, batch: dict[str, jax.Array], key: jax.Array, encoder_params=None) -> tuple[jax.Array, dict]:
        """The training loss of one batch; `encoder_params` defaults to the trainer's own (pass
        them explicitly inside jitted code, so they are not embedded as constants)."""
        views = constrain(batch["views"], ("batch", None, None, None, None))
        encoder_params = self.encoder_params if encoder_params is None else encoder_params
        encode_fn = None if self._encode_apply is None else lambda pixels: self._encode_apply(encoder_params, pixels)
        pair_warps = cond.PairWarps(batch["pair_images"], batch["pair_masks"], batch["pair_depths"]) if self.posed else None
        tb = cond.build_training_batch(key, views, self.schedule, self.condition_config, encode_fn,
                                       batch.get("latents"), pair_warps)
        out = self.model_fn(params)(tb.x_t, tb.condition, tb.mask, tb.t, self.batch_context(views.shape[0]))
        target = schedules.training_target(self.schedule, tb.x0, tb.noise, tb.t, self.config.unet.prediction_type)
        cfg = self.config
        squared = jnp.square(out - target)
        # per-view mean over pixels, weighted towards the holes (the part the condition does not give)
        pixel_weight = 1.0 + (cfg.hole_loss_weight - 1.0) * (1.0 - tb.mask)
        per_view = jnp.sum(squared * pixel_weight, axis=(2, 3, 4)) / (jnp.sum(pixel_weight, axis=(2, 3, 4)) * squared.shape[-1])
        view_weight = tb.loss_mask
        if cfg.min_snr_gamma is not None:
            view_weight = view_weight * schedules.min_snr_loss_weight(self.schedule, tb.t, cfg.unet.prediction_type, cfg.min_snr_gamma)[:, None]
        loss = jnp.sum(per_view * view_weight) / jnp.maximum(jnp.sum(tb.loss_mask), 1.0)
        return loss, {}

    def _train_step(self, state, batch, encoder_params):
        cfg = self.config
        key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), state["step"])
        grad_fn = jax.value_and_grad(self.loss, has_aux=True)
        accum = cfg.grad_accum_steps
        if accum == 1:
            (loss, _), grads = grad_fn(state["params"], batch, key, encoder_params)
        else:
            # micro-batch i takes samples i, i + accum, ...: every device keeps its own samples
            micro = jax.tree.map(lambda a: jnp.swapaxes(a.reshape((a.shape[0] // accum, accum) + a.shape[1:]), 0, 1), batch)

            def body(carry, inputs):
                grads_sum, loss_sum = carry
                mv, i = inputs
                (l, _), g = grad_fn(state["params"], mv, jax.random.fold_in(key, i), encoder_params)
                return (jax.tree.map(jnp.add, grads_sum, g), loss_sum + l), None

            zeros = jax.tree.map(jnp.zeros_like, state["params"])
            (grads, loss), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), (micro, jnp.arange(accum)))
            grads = jax.tree.map(lambda g: g / accum, grads)
            loss = loss / accum
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        step = state["step"] + 1
        decay = jnp.minimum(cfg.ema_decay, (1.0 + step) / (10.0 + step))  # short warmup of the EMA
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state["ema"], params)
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": self.lr(state["step"])}
        return {"step": step, "params": params, "opt_state": opt_state, "ema": ema}, metrics

    def step(self, state, batch: dict[str, jax.Array]):
        """One optimizer step on a global batch (see `global_batch`)."""
        with activation_sharding(self.mesh, self.rules):
            return self.train_step(state, batch, self.encoder_params)

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assemble the global batch from each process's local rows (sharded by sample): a dict
        as yielded by `see3d_jax.data.training_batches` ("views", plus the geometry when posed)."""
        missing = set(self.batch_shardings) - set(local)
        if missing:
            raise ValueError(f"Trainer.global_batch: batch lacks {sorted(missing)} (the '{self.config.condition.variant}' "
                             f"condition needs {sorted(self.batch_shardings)}; posed data: training_batches(..., posed=True))")
        return {k: jax.make_array_from_process_local_data(sh, local[k]) for k, sh in self.batch_shardings.items()}

    def flops_per_step(self) -> float:
        """Model FLOPs of one optimizer step (MFU's numerator): 3x the UNet's analytic forward
        FLOPs (forward, and backward = 2x forward) per sample."""
        u, cfg = self.config.unet, self.config
        return 3.0 * cfg.batch_size * forward_flops(u, cfg.num_views, u.sample_size, u.sample_size)

    def hardware_flops_per_step(self) -> float:
        """FLOPs the hardware executes per step (HFU's numerator): the model FLOPs plus what
        rematerialisation recomputes (`full`: the forward; `dots_no_batch`: the attention score
        and value matmuls), the score matmul flash-style attention recomputes in its backward,
        and the VAE encoder (XLA's cost analysis of one image, times the images encoded per
        step: the views and the condition images, or with `cache_latents` the condition images
        of the views that are not always references)."""
        u, cfg = self.config.unet, self.config
        size, views = u.sample_size, cfg.num_views
        forward = forward_flops(u, views, size, size)
        attention = attention_matmul_flops(u, views, size, size)
        recompute = {"full": forward, "dots_no_batch": attention}.get(cfg.remat, 0.0)
        levels = [level for level in range(len(u.channel_mult)) if u.level_has_attention(level)]
        longest = (size >> min(levels, default=0)) ** 2 * (views if u.multiview_attention else 1)  # the finest attention level's tokens
        implementation = resolve_implementation(cfg.attention_implementation, backend=jax.default_backend(),
                                                dtype=cfg.compute_dtype, num_keys=longest, head_dim=u.num_head_channels)
        flash = attention / 2 if implementation != "xla" else 0.0
        vae = 0.0
        if self._encode_apply is not None:
            image = jax.ShapeDtypeStruct((1, 1, cfg.image_size, cfg.image_size, 3), jnp.float32)
            cost = jax.jit(self._encode_apply).lower(self.encoder_params, image).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            # with cached latents only the views that may be targets are encoded (their condition)
            images = views - cond.reference_counts(cfg.condition, views)[0] if cfg.cache_latents else 2 * views
            vae = float(cost.get("flops", 0.0)) * cfg.batch_size * images
        return cfg.batch_size * (3.0 * forward + recompute + flash) + vae


# --- the run (CLI) -------------------------------------------------------------------------------

class _Logger:
    """JSONL (always) and TensorBoard (optional) scalars, written by process 0 only."""

    def __init__(self, log_dir: Path, tensorboard: bool):
        self.enabled = jax.process_index() == 0
        self.jsonl = None
        self.tb = None
        if not self.enabled:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(log_dir / "log.jsonl", "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as e:
                raise ImportError("TensorBoard logging needs the 'tensorboardX' package (pip install tensorboardX), or set tensorboard=false") from e
            self.tb = SummaryWriter(str(log_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def _is_remote(path: str) -> bool:
    return "://" in path


def load_encoder(path: str, dtype: str = "float32") -> LatentEncoder:
    """The VAE encoder of a folder as a `LatentEncoder` (posterior mean x scaling factor,
    computed in `dtype`: "float32" or "bfloat16"): a model folder (config.json +
    diffusion_pytorch_model.safetensors, as diffusers or `see3d_jax.convert.save_pretrained`
    write it)."""
    from see3d_jax.vae import AutoencoderKL, latent_encoder

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"vae={path}: not a directory")
    model = convert.from_pretrained(folder)
    if not isinstance(model, AutoencoderKL):
        raise ValueError(f"vae={path}: the folder holds a {type(model).__name__}, not a VAE")
    return latent_encoder(model, jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)


def use_compilation_cache(directory: str) -> None:
    """Store compiled programs in `directory` (JAX's persistent compilation cache; local or
    gs://), so a restarted or resumed run loads its train step instead of compiling it again
    (minutes for sd21). Programs that compile in under a second are not stored."""
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir not in (None, directory):
        compilation_cache.reset_cache()  # the cache opens its directory once: start over for a new one
    compilation_cache.set_cache_dir(directory)


def run(config: TrainConfig, data_dir: str, workdir: str, *, data_shards: int | None = None,
        progress: bool = True, encode_fn: EncodeFn | None = None) -> dict[str, Any]:
    """Train (or resume) to `config.steps`. Returns a summary (final step, last loss, whether it
    was preempted). `data_shards` fixes how the clips are split into per-host shards (default:
    one per process); a run with the same `data_shards` sees the same global batches whatever
    its number of processes."""
    from see3d_jax.checkpointing import Checkpointer, abstract_like, export_checkpoint
    from see3d_jax.data import cache_latents, clip_shard, training_batches

    if config.compilation_cache_dir is not None:
        use_compilation_cache(config.compilation_cache_dir)
    process_count, process_index = jax.process_count(), jax.process_index()
    shards = process_count if data_shards is None else data_shards
    if shards % process_count or config.batch_size % shards:
        raise ValueError(f"data_shards={shards} must be a multiple of the process count {process_count} and divide batch_size {config.batch_size}")
    if encode_fn is None and config.vae is not None:
        encode_fn = load_encoder(config.vae, config.vae_dtype)
    context = None if config.context is None else np.load(config.context)
    trainer = Trainer(config, encode_fn=encode_fn, context=context)

    local_dir = Path(workdir) if not _is_remote(workdir) else Path("logs") / Path(workdir.rstrip("/")).name
    if process_index == 0:
        local_dir.mkdir(parents=True, exist_ok=True)
        (local_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=1))
    per_shard = config.batch_size // shards
    shards_here = range(process_index * shards // process_count, (process_index + 1) * shards // process_count)
    latent_dir = None
    if config.cache_latents:  # each process encodes the clips of its own shards (resumable)
        latent_dir = Path(config.latent_dir) if config.latent_dir else local_dir / "latent_cache"
        mine = [c for s in shards_here for c in clip_shard(data_dir, config.num_views, trainer.posed, s, shards)]
        t0 = time.perf_counter()
        encoded = cache_latents(mine, latent_dir, encode_fn, config.image_size, vae=config.vae)
        print(f"see3d_jax.train: latents of {encoded} clips encoded into {latent_dir} in {time.perf_counter() - t0:.1f} s "
              f"({len(mine) - encoded} already cached)", file=sys.stderr)
    iterators = [
        training_batches(data_dir, num_views=config.num_views, image_size=config.image_size, batch_size=per_shard,
                         seed=config.seed, cache=config.cache_frames, num_workers=config.num_workers,
                         process_index=s, process_count=shards, posed=trainer.posed, latent_dir=latent_dir)
        for s in shards_here
    ]

    ckpt = Checkpointer(f"{workdir.rstrip('/')}/checkpoints", keep=config.keep_checkpoints, asynchronous=config.async_checkpointing)
    init_record = None
    if ckpt.latest_step() is not None:
        state, data_state = ckpt.restore(abstract_like(trainer.state_shapes, trainer.state_shardings))
        for it, s in zip(iterators, data_state["shards"]):
            it.set_state(s)
        resumed_from = int(state["step"])
        if config.init_from is not None:  # the run's own weights win: init_from only starts a run
            init_record = {"event": "init_from_ignored", "init_from": config.init_from, "reason": "resumed from the run's own checkpoint"}
            print(f"see3d_jax.train: init_from={config.init_from} ignored: resuming from the run's checkpoint at step {resumed_from}",
                  file=sys.stderr)
    else:
        params = None
        if config.init_from is not None:
            params, report = trainer.load_pretrained()
            init_record = {"event": "init_from", **report}
        state = trainer.init_state(params=params)
        resumed_from = 0

    def next_batch():  # the next global batch, and the data iterators' state once it is drawn
        parts = [next(it) for it in iterators]
        local = {k: np.concatenate([p[k] for p in parts], axis=0) for k in trainer.batch_shardings}
        return trainer.global_batch(local), {"shards": [it.get_state() for it in iterators]}

    data_state = {"shards": [it.get_state() for it in iterators]}  # the state after the last consumed batch
    batches = Prefetcher(next_batch, config.prefetch_batches)
    stop = {"signal": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("signal", True))
    logger = _Logger(local_dir, config.tensorboard)
    logger.write({"step": resumed_from, "event": "resumed" if resumed_from else "started", "processes": process_count,
                  "devices": jax.device_count(), "mesh": dict(trainer.mesh.shape)})
    if init_record is not None:
        logger.write({"step": resumed_from, **init_record})
    if jax.default_backend() == "cpu" and jax.local_device_count() == 1 and (os.cpu_count() or 1) > 1 and process_index == 0:
        # XLA runs one CPU device's small ops mostly on one thread; N devices run N programs at once
        print(f"see3d_jax.train: one CPU device on {os.cpu_count()} cores; XLA_FLAGS="
              f"--xla_force_host_platform_device_count={os.cpu_count() * 2} splits each batch over that many CPU "
              "devices (the small config: 2.4x the samples/s on 2 cores, benchmarks/RESULTS.md)", file=sys.stderr)
    bar = None
    if progress and process_index == 0:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=resumed_from, desc="train", dynamic_ncols=True)
    flops = trainer.flops_per_step()
    hardware_flops = trainer.hardware_flops_per_step() if config.peak_tflops_per_device else None
    step = resumed_from
    last_loss = float("nan")
    preempted = False
    window_start, window_steps = time.perf_counter(), 0
    run_start = time.perf_counter()
    try:
        while step < config.steps:
            if config.time_limit_minutes is not None and time.perf_counter() - run_start > 60 * config.time_limit_minutes:
                logger.write({"step": step, "event": "time_limit"})
                ckpt.save(step, state, data_state)
                break
            batch, data_state = next(batches)
            t0 = time.perf_counter()
            state, metrics = trainer.step(state, batch)
            step += 1
            window_steps += 1
            if step == resumed_from + 1:
                jax.block_until_ready(state)
                logger.write({"step": step, "event": "compiled", "first_step_seconds": time.perf_counter() - t0})
                window_start, window_steps = time.perf_counter(), 0
            if step % config.log_every == 0 or step == config.steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - window_start
                step_time = elapsed / window_steps if window_steps else float("nan")
                record = {"step": step, **metrics, "step_seconds": step_time,
                          "samples_per_second": config.batch_size / step_time if window_steps else None,
                          "tflops_per_step": flops / 1e12}
                if config.peak_tflops_per_device and window_steps:
                    peak = config.peak_tflops_per_device * 1e12 * jax.device_count()
                    record["mfu"] = flops / step_time / peak
                    record["hfu"] = hardware_flops / step_time / peak
                    record["hardware_tflops_per_step"] = hardware_flops / 1e12
                logger.write(record)
                last_loss = metrics["loss"]
                window_start, window_steps = time.perf_counter(), 0
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.4f}")
            if bar is not None:
                bar.update(1)
            stop_now = stop["signal"] if process_count == 1 else False
            if process_count > 1 and step % config.log_every == 0:  # processes agree at a host sync: not every step
                from jax.experimental import multihost_utils

                stop_now = bool(multihost_utils.process_allgather(np.array(stop["signal"])).any())
            if stop_now or ckpt.reached_preemption(step):
                ckpt.save(step, state, data_state)
                ckpt.wait()
                logger.write({"step": step, "event": "preempted", "checkpoint": step})
                preempted = True
                break
            if step % config.checkpoint_every == 0:
                ckpt.save(step, state, data_state)
        if not preempted and step == config.steps:
            ckpt.save(step, state, data_state)
        ckpt.wait()
        if not preempted:
            ema = process_zero_copy(state["ema"])  # assembled from shards on process 0, not gathered on every host
            if process_index == 0:
                convert.save_pretrained_params(ema, config.unet, local_dir / "ema")
                logger.write({"step": step, "event": "finished", "ema": str(local_dir / "ema")})
            if config.export_checkpoint:  # every process writes its own shards
                export = export_checkpoint(f"{workdir.rstrip('/')}/export", state)
                logger.write({"step": step, "event": "exported", "export": str(export)})
    finally:
        batches.close()
        signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
        logger.close()
        ckpt.close()
    return {"step": step, "loss": last_loss, "preempted": preempted, "resumed_from": resumed_from}


class Prefetcher:
    """Batches made by `make` (a function returning one item) `depth` items ahead, in a
    background thread (as big_vision prefetches to devices): reading, decoding and the
    host-to-device copy of the next batches overlap the running step. `depth=0` calls `make`
    inline. An exception in the thread is raised by the `next` that would have returned its
    item."""

    def __init__(self, make: Callable[[], Any], depth: int):
        self.make, self.depth = make, depth
        if depth == 0:
            return
        self.items: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._fill, name="see3d-prefetch", daemon=True)
        self.thread.start()

    def _fill(self):
        while not self.stopping.is_set():
            try:
                item = (True, self.make())
            except BaseException as e:  # handed to the consumer
                item = (False, e)
            while not self.stopping.is_set():
                try:
                    self.items.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not item[0]:
                return

    def __next__(self):
        if self.depth == 0:
            return self.make()
        ok, item = self.items.get()
        if not ok:
            raise item
        return item

    def close(self):
        if self.depth == 0:
            return
        self.stopping.set()
        self.thread.join()


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """The multi-process options of the kit's JAX commands (`start_distributed` acts on them)."""
    parser.add_argument("--coordinator", default=None, help="multi-host: coordinator HOST:PORT")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() with auto-detection (TPU pods, SLURM)")


def start_distributed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.coordinator is not None:
        if args.num_processes is None or args.process_id is None:
            parser.error("--coordinator needs --num-processes and --process-id")
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    elif args.distributed:
        jax.distributed.initialize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m see3d_jax.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="training config: a preset (tiny, small, sd21), a recipe in "
                        "see3d_jax/configs (demo) or a recipe .py file defining get_config()")
    parser.add_argument("--data", required=True, help="clip dataset directory (manifest.jsonl + clips)")
    parser.add_argument("--workdir", required=True, help="run directory (local or gs://) for checkpoints and logs")
    parser.add_argument("--data-shards", type=int, default=None, help="split clips into this many host shards (default: one per process)")
    add_distributed_arguments(parser)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=500 unet.model_channels=32")
    args = parser.parse_args(argv)
    if not Path(args.data).is_dir():
        parser.error(f"--data {args.data}: not a directory")
    start_distributed(args, parser)
    config = load_config(args.config, args.overrides)
    summary = run(config, args.data, args.workdir, data_shards=args.data_shards, progress=not args.no_progress)
    if jax.process_index() == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
