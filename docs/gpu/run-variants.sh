#!/usr/bin/env bash
# GPU measurement, the part not yet run (one device call, about 8 minutes on an H100/H200): the expert
# knobs one by one (docs/gpu-variants/), minvram beside beginner, and the GPU-only tests.
# Results and logs go to $OUT (or ./gpu-out). Needs .whl/ as docs/gpu/run-tiers.sh does.
. "$(dirname "$0")/setup.sh"
V=docs/gpu-variants
row() { grep -E "^ (preset|[a-z0-9-]+) +[0-9]+ " "$1"; }

# Each expert knob's own share: expert as shipped beside the variants that drop or change one knob.
timeout 330 $nitro bench --model random:sd15 --presets expert,$V/expert-measured-h200.yaml,$V/expert-no-compile-vae.yaml,$V/expert-no-cudnn-benchmark.yaml,$V/expert-bf16.yaml \
  --json "$OUT/variants.json" > "$OUT/variants.log" 2>&1; row "$OUT/variants.log"
timeout 150 $nitro bench --model random:sd15 --presets beginner,minvram --runs 1 --json "$OUT/minvram.json" \
  > "$OUT/minvram.log" 2>&1; row "$OUT/minvram.log"
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider > "$OUT/pytest-gpu.log" 2>&1; tail -3 "$OUT/pytest-gpu.log"
