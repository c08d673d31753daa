"""How far is each framework's float32 UNet from the exact (float64) one? The measurement behind
the Flax-vs-torch tolerance of tests/test_convert.py (issue 15 item 1).

    .venv/bin/python benchmarks/unet_float32_error.py [--cases tiny small folder_flax folder_torch demo] [--sd21]

For each configuration the tests compare (the same weights, inputs and timesteps), both UNets
run in float32 and in float64: torch with `.double()` (the timestep embedding then in float64
too), Flax in a subprocess with `jax_enable_x64`, the model's float32 (norms, embedding,
attention accumulators, parameters) read as float64 and the blockwise attention (jax.nn's
attention, which the model takes for <= 512 keys, always runs its softmax in float32). Printed per case, in units of the float32
unit roundoff u = 2^-24 times max |y| (y: the float64 output):

- `jax64-torch64`: the two float64 references against each other (~1e-16: the same function);
- `torch32`, `flax32`: each float32 output's max deviation from the float64 one;
- `flax32-torch32`: what the test measured so far;
- `embedding`: the float64 network fed the float32 timestep embedding (the part of the error
  that the phase t f carries: t up to 961 makes its rounding ~1e3 u in absolute terms).

`--sd21` adds the released architecture at the test's 8x8 latent (866M parameters: ~11 GB of
memory per process, ~10 minutes on 2 cores), without the float64 Flax run (which needed more
than 16 GB).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
U = 2.0**-24


def _test_helpers():
    spec = importlib.util.spec_from_file_location("test_convert", ROOT / "tests" / "test_convert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def case_inputs(name: str):
    """(config, torch-layout float32 weights, x [B, V, H, W, C], t [B], context) as the test builds them."""
    from see3d_core import unet_config as uc
    from see3d_core.released_layout import DEMO_CHECKPOINT, WEIGHTS_FILE

    helpers = _test_helpers()
    batch, views, size, seed_x = 2, 3, 16, 0
    if name in ("tiny", "small"):  # test_flax_and_torch_unets_agree: _parity
        import see3d_jax.convert as convert

        config = uc.preset(name)
        tensors = convert.flax_to_torch_tensors(helpers._flax_unet(config))
    elif name == "folder_flax":  # test_a_folder_...: the Flax-written folder (seed 1)
        import see3d_jax.convert as convert

        config = uc.tiny()
        tensors = convert.flax_to_torch_tensors(helpers._flax_unet(config, seed=1))
    elif name == "folder_torch":  # test_a_folder_...: torch's init, then N(0, 0.2) everywhere
        import torch

        from see3d_torch.unet import MultiViewUNet

        config = uc.tiny()
        torch.manual_seed(0)
        model = MultiViewUNet(config)
        for p in model.parameters():
            p.data.normal_(0, 0.2)
        tensors = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    elif name == "demo":  # test_the_demo_checkpoint_is_one_folder_both_frameworks_read
        from safetensors.numpy import load_file

        from see3d_core.released_layout import read_unet_config

        config, _ = read_unet_config(DEMO_CHECKPOINT)
        tensors = load_file(str(DEMO_CHECKPOINT / WEIGHTS_FILE))
        batch, views, size = 1, 2, config.sample_size
    elif name == "sd21":  # test_sd21_flax_and_torch_unets_agree_at_small_latent_size
        from see3d_torch.unet import unet_key_shapes

        config = uc.sd21()
        tensors = helpers.random_torch_tensors(unet_key_shapes(config))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(1, 2, 8, 8, config.in_channels)).astype(np.float32)
        ctx = rng.normal(size=(1, 77, config.context_dim)).astype(np.float32)
        return config, tensors, x, np.array([500]), ctx
    else:
        raise ValueError(f"unknown case {name!r}")
    rng = np.random.default_rng(seed_x)
    x = rng.normal(size=(batch, views, size, size, config.in_channels)).astype(np.float32)
    t = np.array([17, 961][:batch])
    ctx = rng.normal(size=(batch, config.context_tokens, config.context_dim)).astype(np.float32)
    return config, tensors, x, t, ctx


def torch_outputs(case: str) -> dict:
    """Torch's float32 and float64 outputs (and the float64 one with the float32 embedding), in
    the Flax layout; the weights are held once per precision (sd21: ~11 GB at the peak)."""
    import torch

    from see3d_torch import unet as tu

    config, tensors, x, t, ctx = case_inputs(case)
    with torch.device("meta"):
        model = tu.MultiViewUNet(config)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()}, strict=True, assign=True)
    del tensors
    model.eval()
    args = (torch.from_numpy(x.transpose(0, 1, 4, 2, 3)), torch.from_numpy(t), torch.from_numpy(ctx))
    layout = lambda y: y.numpy().transpose(0, 1, 3, 4, 2).astype(np.float64)  # noqa: E731
    with torch.no_grad():
        out = {"t": t, "torch32": layout(model(*args))}
        model = model.double()
        out["torch64"] = layout(model(args[0].double(), args[1], args[2].double()))
        exact = tu.timestep_embedding
        try:  # the float64 network fed the float32 embedding: what the embedding's rounding costs
            tu.timestep_embedding = lambda t, dim, period, dtype=None: exact(t, dim, period)
            out["embedding32_in_64"] = layout(model(args[0].double(), args[1], args[2].double()))
        finally:
            tu.timestep_embedding = exact
    return out


def flax_output(case: str, x64: bool) -> np.ndarray:
    """The Flax UNet's output; with `x64` (jax_enable_x64 already set in this process) every
    float32 of see3d_jax.unet and see3d_jax.attention is read as float64."""
    import jax.numpy as jnp
    from flax import nnx

    from see3d_jax import attention, convert, unet

    if x64:
        class Float64Numpy:
            float32 = jnp.float64

            def __getattr__(self, name):
                return getattr(jnp, name)

        unet.jnp = attention.jnp = Float64Numpy()
    dtype = jnp.float64 if x64 else jnp.float32
    config, tensors, x, t, ctx = case_inputs(case)
    # jax.nn.dot_product_attention ("xla", taken for <= 512 keys) always runs its softmax in float32:
    # the float64 run takes the blockwise attention, whose float32s are read as float64 here
    implementation = "blockwise" if x64 else "auto"
    model = nnx.eval_shape(lambda: unet.UNet(config, dtype=dtype, attention_implementation=implementation))
    convert.load_torch_tensors(model, tensors, "case")  # cast to the parameters' dtype
    del tensors
    fn = nnx.jit(lambda m, *a: m(*a))
    return np.asarray(fn(model, jnp.asarray(x, dtype), jnp.asarray(t), jnp.asarray(ctx, dtype)), np.float64)


def _flax_subprocess(case: str, x64: bool, out: Path) -> np.ndarray:
    env = {**os.environ, "JAX_ENABLE_X64": "1" if x64 else "0", "JAX_PLATFORMS": "cpu"}
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
            "import numpy as np, unet_float32_error as m\n"
            f"np.save({str(out)!r}, m.flax_output({case!r}, x64={x64}))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return np.load(out)


def measure(case: str, workdir: Path) -> dict:
    # the Flax runs first, each in its own process, while this one is still small
    flax32 = _flax_subprocess(case, False, workdir / f"{case}_flax32.npy")
    # sd21's float64 Flax run needs more than the 16 GB this machine had (killed by the OOM killer);
    # the two float64 references agree to ~1e-15 on every smaller case, so torch's stands alone there
    flax64 = None if case == "sd21" else _flax_subprocess(case, True, workdir / f"{case}_flax64.npy")
    torch_out = torch_outputs(case)
    t, y = torch_out["t"], torch_out["torch64"]
    scale = U * np.abs(y).max()
    err = lambda a, b: float(np.abs(a - b).max() / scale)  # noqa: E731
    return {
        "case": case, "max|y|": float(np.abs(y).max()), "rms(y)": float(np.sqrt(np.mean(y**2))),
        "outputs": int(y.size), "t": [int(v) for v in t],
        "jax64-torch64": None if flax64 is None else err(flax64, y), "torch32": err(torch_out["torch32"], y),
        "flax32": err(flax32, y), "flax32-torch32": err(flax32, torch_out["torch32"]),
        "embedding": err(torch_out["embedding32_in_64"], y),
        "flax32 abs": float(np.abs(flax32 - y).max()), "torch32 abs": float(np.abs(torch_out["torch32"] - y).max()),
        "flax32-torch32 abs": float(np.abs(flax32 - torch_out["torch32"]).max()),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=["tiny", "small", "folder_flax", "folder_torch", "demo"])
    parser.add_argument("--sd21", action="store_true", help="add the released architecture (~11 GB, ~10 minutes)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unet_float32_error"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases + (["sd21"] if args.sd21 else []):
        rows.append(measure(case, args.workdir))
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
