"""The training loop's plumbing: batches prefetched by a thread, JAX's persistent compilation
cache, and the FLOP counts behind MFU and HFU."""

import json
import threading
import time

import numpy as np
import pytest

from see3d_jax.train import Prefetcher
from see3d_jax.train_config import preset


def _counter(fail_at=None):
    """A batch maker returning 1, 2, 3, ... (raising at `fail_at`), and how many it has made."""
    made = {"n": 0}

    def make():
        made["n"] += 1
        if made["n"] == fail_at:
            raise RuntimeError(f"item {fail_at} failed")
        return made["n"]

    return make, made


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetcher_keeps_order_and_raises_where_the_item_would_be(depth):
    batches = Prefetcher(_counter(fail_at=6)[0], depth)
    assert [next(batches) for _ in range(5)] == [1, 2, 3, 4, 5]
    with pytest.raises(RuntimeError, match="item 6 failed"):
        next(batches)
    batches.close()
    assert not any(t.name == "see3d-prefetch" and t.is_alive() for t in threading.enumerate())


def test_prefetcher_runs_ahead_by_its_depth_and_closes_while_full():
    make, made = _counter()
    batches = Prefetcher(make, 2)
    assert next(batches) == 1
    deadline = time.time() + 10
    while made["n"] < 4 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    # one consumed, two queued, one made and waiting for room: never more
    assert made["n"] == 4
    batches.close()


def test_hardware_flops_add_the_recomputation_to_the_model_flops():
    from see3d_jax.train import Trainer

    plain = Trainer(preset("tiny", ["attention_implementation=xla"]))
    assert plain.hardware_flops_per_step() == pytest.approx(plain.flops_per_step())  # nothing recomputed
    full = Trainer(preset("tiny", ["attention_implementation=xla", "remat=full"]))
    assert full.hardware_flops_per_step() == pytest.approx(4 / 3 * full.flops_per_step())  # one more forward
    flash = Trainer(preset("tiny", ["attention_implementation=blockwise"]))
    assert plain.flops_per_step() < flash.hardware_flops_per_step() < full.hardware_flops_per_step()


@pytest.mark.slow
def test_run_fills_the_compilation_cache_and_logs_mfu_and_hfu(tmp_path):
    from see3d_core.clips import write_synthetic_dataset
    from see3d_jax.train import run

    data = tmp_path / "clips"
    write_synthetic_dataset(data, 2, frames_per_clip=4, width=20, height=20, posed=False)
    cache = tmp_path / "jax_cache"
    cfg = preset("tiny", ["steps=2", "log_every=1", "batch_size=2", "tensorboard=false", "checkpoint_every=100",
                          "peak_tflops_per_device=1.0", f"compilation_cache_dir={cache}"])
    summary = run(cfg, str(data), str(tmp_path / "run"), progress=False)
    assert summary["step"] == 2
    assert any(cache.iterdir())  # the train step (compiles in > 1 s) was stored
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    logged = [r for r in records if "mfu" in r]
    assert logged and all(0 < r["mfu"] <= r["hfu"] and np.isfinite(r["hfu"]) for r in logged)


def test_new_options_are_validated():
    with pytest.raises(ValueError, match="attention implementation must be one of"):
        preset("tiny", ["attention_implementation=flash"])
    with pytest.raises(ValueError, match="vae_dtype"):
        preset("tiny", ["vae_dtype=float16"])
    with pytest.raises(ValueError, match="prefetch_batches"):
        preset("tiny", ["prefetch_batches=-1"])
    assert preset("sd21").vae_dtype == "bfloat16" and preset("sd21").attention_implementation == "auto"


def test_gpu_benchmark_script_pieces_run_on_the_cpu():
    """benchmarks/bench_train_gpu.py (one prepared GPU call): its torch step runs, it reads
    bench_train's indented JSON and knows the peak of the GPUs it names. The whole script ran
    with --tiny on this CPU (benchmarks/RESULTS.md); a full run is minutes of compiling."""
    import importlib.util
    from pathlib import Path

    from see3d_core import unet_config

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_train_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.torch_step(unet_config.tiny().replace(sample_size=8).to_dict(), views=2, batch=1, steps=1)
    assert result["samples_per_s"] > 0 and np.isfinite(result["loss"]) and result["image_size"] == 8
    assert bench._last_json('warning\n{\n "a": 1,\n "b": {\n  "c": 2\n }\n}\n') == {"a": 1, "b": {"c": 2}}
    assert bench.peak_tflops_of("NVIDIA H200") == 989.0 and bench.peak_tflops_of("Quadro") is None
