"""benchmarks/gpu_training.sh, the prepared one-call GPU run of issue 18, at toy sizes on the
CPU: it must run end to end and leave at most the 8 files a device call brings back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_training_script_runs_at_toy_size(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "WORK": str(work), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_training.sh"), "--tiny"], env=env, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["curves.png", "demo_train_log.jsonl", "demo_weights/config.json",
                     "demo_weights/diffusion_pytorch_model.safetensors", "log.txt", "samples.png", "table3.json", "table3.md"]
    assert len(files) <= 8  # what one device call returns
    table = json.loads((out / "table3.json").read_text())["variants"]
    assert set(table) == {"masked", "time_dependent"} and all(v[-1]["steps"] == 2 for v in table.values())
    log = (out / "log.txt").read_text()
    assert "demo model:" in log and "table3:" in log and "total:" in log
    bad = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_training.sh"), "--nonsense"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
