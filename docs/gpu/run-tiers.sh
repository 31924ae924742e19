#!/usr/bin/env bash
# GPU measurement, part 1 (one device call, about 5 minutes on an H100/H200): every tier side by side
# on random:sd15 at 512x512, then the second-process first image of the expert tier (its compile
# caches were filled by the bench run). Results and logs go to $OUT (or ./gpu-out).
# Needs the wheels the GPU machine lacks in .whl/ (../shared/tools/device-wheels.sh bitsandbytes==0.50.2).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NITRO_CACHE_DIR=${NITRO_CACHE_DIR:-/tmp/nitro-cache}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nitro="python3 -m nitro_cli"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
  date -u; } 2>&1 | tee "$OUT/machine.txt"

# All tiers in one bench run: each preset keeps its own steps (baseline 50 PNDM, the others 25).
timeout 330 $nitro bench --model random:sd15 --presets baseline,beginner,advanced,expert,lowvram \
  --width 512 --height 512 --batch-size 1 --json "$OUT/tiers.json" --csv "$OUT/tiers.csv" 2>&1 | tee "$OUT/tiers.log"

# A second process, same model/preset/shape: how long its first image takes with warm compile caches.
start=$(date +%s%N)
timeout 150 $nitro generate "arcane style warrior" --model random:sd15 --preset expert --seed 1 -n 2 \
  --out /tmp/second-process --json > "$OUT/second-process.jsonl" 2> "$OUT/second-process.log"
echo "second process exit $?, wall $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$OUT/second-process.log"
cat "$OUT/second-process.jsonl"
