#!/usr/bin/env bash
# GPU measurement, part 2 (one device call right after part 1, same warm machine and NITRO_CACHE_DIR):
# the low-VRAM presets (minvram, 1024x1024 lowvram), expert variants, the UNet time per step
# (expert at 25 and 50 steps: the difference over 25 steps), and deploy's throughput beside expert.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NITRO_CACHE_DIR=${NITRO_CACHE_DIR:-/tmp/nitro-cache}
if [ -d .whl ] && [ ! -d /tmp/site/diffusers ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
fi
[ -d .whl ] && export PYTHONPATH=/tmp/site:$PWD
nitro="python3 -m nitro_cli"
V=docs/gpu-variants

timeout 150 $nitro bench --model random:sd15 --presets expert,$V/expert-measured-h200.yaml,$V/expert-sdpa-cudnn.yaml \
  --json "$OUT/variants.json" 2>&1 | tee "$OUT/variants.log"
timeout 60 $nitro bench --model random:sd15 --presets expert --steps 50 --json "$OUT/expert-50-steps.json" 2>&1 | tee "$OUT/expert-50-steps.log"
timeout 120 $nitro bench --model random:sd15 --presets expert,deploy --json "$OUT/deploy.json" 2>&1 | tee "$OUT/deploy.log"
timeout 60 $nitro bench --model random:sd15 --presets lowvram --width 1024 --height 1024 --runs 1 \
  --json "$OUT/lowvram-1024.json" 2>&1 | tee "$OUT/lowvram-1024.log"
timeout 150 $nitro bench --model random:sd15 --presets beginner,minvram --runs 1 --json "$OUT/minvram.json" 2>&1 | tee "$OUT/minvram.log"
