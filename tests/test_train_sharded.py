"""Sharded training on fake CPU devices, multi-process training, and kill-and-resume.

Each scenario runs in its own process: XLA_FLAGS (the fake device count) must be set before jax
is imported. A shared persistent compilation cache lets repeated runs of the same program skip
compilation."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tiny programs: cheap XLA optimisation keeps compile time (most of these tests) down.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    e["JAX_PLATFORMS"] = "cpu"
    e["PYTHONPATH"] = str(ROOT)
    return e


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from see3d_core.clips import write_synthetic_dataset

    root = tmp_path_factory.mktemp("clips") / "ds"
    write_synthetic_dataset(root, 4, frames_per_clip=4, width=20, height=20, posed=False)
    return root


def _with_devices(env, n):
    e = dict(env)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n} {FAST_XLA}"
    return e


def _python(code, env, timeout=900):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_step_sharded_data4_fsdp2_equals_single_device(env):
    result = _python(
        """
        import json, jax, numpy as np
        from see3d_jax.sharding import make_mesh
        from see3d_jax.train import Trainer
        from see3d_jax.train_config import preset
        cfg = preset("tiny", ["batch_size=8"])
        views = np.random.default_rng(0).uniform(-1, 1, (8, 3, 16, 16, 3)).astype(np.float32)
        single = Trainer(cfg, mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
        sharded = Trainer(cfg, mesh=make_mesh(data=4, fsdp=2))
        s1, s2 = single.init_state(), sharded.init_state()
        specs = [str(x.sharding.spec) for x in jax.tree.leaves(s2["params"])]
        moment_specs = [str(x.sharding.spec) for x in jax.tree.leaves(s2["opt_state"]) if x.ndim > 1]
        losses = []
        for _ in range(2):
            s1, m1 = single.step(s1, {"views": views})
            s2, m2 = sharded.step(s2, sharded.global_batch({"views": views}))
            losses.append((float(m1["loss"]), float(m2["loss"])))
        diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])))
        scale = max(float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(s1["params"]))
        ema = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(jax.tree.leaves(s1["ema"]), jax.tree.leaves(s2["ema"])))
        print(json.dumps({"diff": diff, "scale": scale, "ema": ema, "losses": losses, "devices": len(jax.devices()),
                          "fsdp_sharded": sum("fsdp" in s for s in specs), "moments_sharded": sum("fsdp" in s for s in moment_specs),
                          "batch_by_sample": sharded.batch_shardings["views"].spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, None, None, None)}))
        """,
        _with_devices(env, 8),
    )
    assert result["devices"] == 8
    assert result["fsdp_sharded"] > 10 and result["moments_sharded"] > 10  # parameters and Adam moments are sharded
    assert result["batch_by_sample"]  # batches are split by sample over data x fsdp, views stay together
    for single, sharded in result["losses"]:
        assert sharded == pytest.approx(single, rel=1e-4)
    assert result["diff"] < 1e-5 * max(result["scale"], 1.0) + 1e-6
    assert result["ema"] < 1e-5


def _ckpt_state(workdir, step=None):
    """Restore a run's checkpoint as host numpy (in this process: one CPU device)."""
    from see3d_jax.checkpointing import Checkpointer, abstract_like
    from see3d_jax.train import Trainer
    from see3d_jax.train_config import TrainConfig

    cfg = TrainConfig.from_dict(json.loads((Path(workdir) / "train_config.json").read_text()))
    trainer = Trainer(cfg)
    ckpt = Checkpointer(str(Path(workdir) / "checkpoints"), asynchronous=False)
    try:
        state, data = ckpt.restore(abstract_like(trainer.state_shapes, trainer.state_shardings), step)
    finally:
        ckpt.close()
    import jax

    return jax.tree.map(np.asarray, state), data


def _assert_same_state(a, b):
    import jax

    assert int(a["step"]) == int(b["step"])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def _train_cmd(clips, workdir, *extra):
    return [sys.executable, "-m", "see3d_jax.train", "--config", "tiny", "--data", str(clips), "--workdir", str(workdir),
            "--no-progress", *extra]


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(env, clips, tmp_path):
    common = ["steps=30", "log_every=1", "checkpoint_every=1000", "tensorboard=false", "batch_size=4"]
    e = _with_devices(env, 1)
    full = subprocess.run(_train_cmd(clips, tmp_path / "full", *common), env=e, capture_output=True, text=True, timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(clips, run, *common), env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "log.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline:
        steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines()] if log.exists() else []
        if steps and max(steps) >= 5:
            break
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["preempted"] and 5 <= summary["step"] < 30

    resumed = subprocess.run(_train_cmd(clips, run, *common), env=e, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary2 = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary2["resumed_from"] == summary["step"] and summary2["step"] == 30

    a, data_a = _ckpt_state(tmp_path / "full")
    b, data_b = _ckpt_state(run)
    _assert_same_state(a, b)  # model, optimizer, EMA and step
    assert data_a == data_b  # and the data iterator
    from safetensors.numpy import load_file

    from see3d_core.released_layout import WEIGHTS_FILE

    ema_a, ema_b = load_file(str(tmp_path / "full/ema" / WEIGHTS_FILE)), load_file(str(run / "ema" / WEIGHTS_FILE))
    assert ema_a.keys() == ema_b.keys() and all(np.array_equal(ema_a[k], ema_b[k]) for k in ema_a)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_together_like_one(env, clips, tmp_path):
    common = ["steps=3", "log_every=1", "tensorboard=false", "batch_size=8", "--data-shards", "2"]
    port = _free_port()
    e = _with_devices(env, 4)
    procs = [
        subprocess.Popen(_train_cmd(clips, tmp_path / "multi", *common, "--coordinator", f"127.0.0.1:{port}",
                                    "--num-processes", "2", "--process-id", str(i)),
                         env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    single = subprocess.run(_train_cmd(clips, tmp_path / "single", *common), env=_with_devices(env, 8),
                            capture_output=True, text=True, timeout=900)
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    started = json.loads((tmp_path / "multi/log.jsonl").read_text().splitlines()[0])
    assert started["processes"] == 2 and started["devices"] == 8
    a, _ = _ckpt_state(tmp_path / "single")
    b, _ = _ckpt_state(tmp_path / "multi")
    import jax

    assert int(a["step"]) == int(b["step"]) == 3
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.slow
def test_exports_read_each_parameter_from_its_shards(env, tmp_path):
    result = _python(
        f"""
        import json, jax, numpy as np
        from jax.experimental import multihost_utils
        from see3d_jax import sharding
        from see3d_jax.checkpointing import abstract_like, export_checkpoint, restore_export
        from see3d_jax.train import Trainer
        from see3d_jax.train_config import preset
        trainer = Trainer(preset("tiny", ["mesh_data=1", "mesh_fsdp=4"]))
        state = trainer.init_state()
        # the unsharded values, from the host parameters the state was made of
        from flax import nnx
        from see3d_jax.unet import UNet, initial_parameters
        host = initial_parameters(nnx.eval_shape(lambda: UNet(trainer.config.unet)), trainer.config.seed)
        def refuse(*args, **kwargs):
            raise AssertionError("gathered")
        jax.device_get, multihost_utils.process_allgather = refuse, refuse
        ema = sharding.process_zero_copy(state["ema"])
        # a jax.Array caches its whole value on the host once anything reads it in full
        whole = sum(x._npy_value is not None for x in jax.tree.leaves(state["ema"]))
        sharded = sum(len(x.sharding.device_set) > 1 and x.sharding.shard_shape(x.shape) != x.shape for x in jax.tree.leaves(state["ema"]))
        equal = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(host)))
        export_checkpoint("{tmp_path / 'export'}", state)
        restored = restore_export("{tmp_path / 'export'}", abstract_like(trainer.state_shapes, trainer.state_shardings))
        same = all(np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(restored["ema"]), jax.tree.leaves(host)))
        layout = all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(restored["params"]), jax.tree.leaves(state["params"])))
        print(json.dumps({{"whole": whole, "sharded": sharded, "equal": equal, "restored_equal": same, "layout": layout,
                          "items": sorted(restored), "leaves": len(jax.tree.leaves(host))}}))
        """,
        _with_devices(env, 4),
    )
    assert result["sharded"] >= 10  # the export really met split parameters
    assert result["whole"] == 0  # no parameter was read in full: each came from its shards
    assert result["equal"]  # assembled from shards: the unsharded values
    assert result["items"] == ["ema", "params", "step"] and result["restored_equal"] and result["layout"]
    opt_files = list((tmp_path / "export").rglob("*opt_state*"))
    assert not opt_files  # no optimizer state in the export


@pytest.mark.slow
def test_export_copy_across_processes_reaches_process_zero_only(env, tmp_path):
    """Two processes x 2 devices: a parameter split over all 4 devices (FSDP across hosts) is
    gathered for process 0; one whose blocks all live on process 0's devices is not."""
    code = textwrap.dedent(f"""
        import json, sys, jax, numpy as np
        jax.distributed.initialize("127.0.0.1:{_free_port()}", num_processes=2, process_id=int(sys.argv[1]))
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jax.experimental import multihost_utils
        from see3d_jax.sharding import process_zero_copy
        mesh = jax.make_mesh((2, 2), ("data", "fsdp"))
        values = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
        across = jax.make_array_from_callback(values.shape, NamedSharding(mesh, P(("data", "fsdp"))), lambda i: values[i])
        # blocks over "fsdp" only, replicated over "data": process 0 holds every block itself
        local = jax.make_array_from_callback(values.shape, NamedSharding(mesh, P("fsdp")), lambda i: values[i])
        gathers = []
        original = multihost_utils.process_allgather
        multihost_utils.process_allgather = lambda x, tiled=False: (gathers.append(x.shape), original(x, tiled=tiled))[1]
        out = process_zero_copy({{"across": across, "local": local}})
        print(json.dumps({{"process": jax.process_index(), "gathers": len(gathers),
                          "across": None if out["across"] is None else bool(np.array_equal(out["across"], values)),
                          "local": None if out["local"] is None else bool(np.array_equal(out["local"], values))}}))
    """)
    e = _with_devices(env, 2)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    zero, one = sorted(results, key=lambda r: r["process"])
    assert zero == {"process": 0, "gathers": 1, "across": True, "local": True}  # only the split parameter was gathered
    assert one == {"process": 1, "gathers": 1, "across": None, "local": None}  # nothing kept on the other host
