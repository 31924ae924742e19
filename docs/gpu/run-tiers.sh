#!/usr/bin/env bash
# GPU measurement in one device call (about 7.5 minutes on an H200): every tier side by side on
# random:sd15 at 512x512; the second-process first image of expert (its compile caches were filled by
# the bench run); expert at 50 steps (UNet time per step = the 50-minus-25 difference over 25 steps);
# deploy's throughput at batch 8; lowvram at 1024x1024. Results and logs go to $OUT (or ./gpu-out).
# A GPU machine without diffusers, bitsandbytes and torchao needs their wheels in .whl/; download them from the
# checkout's root on a machine with internet (diffusers: the version you use, 0.42.1 here):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
#     --platform any -d .whl diffusers==0.42.1 importlib_metadata bitsandbytes==0.50.2 torchao==0.18.0
. "$(dirname "$0")/setup.sh"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
  date -u; } 2>&1 | tee "$OUT/machine.txt"
row() { grep -E "^ (preset|baseline|beginner|advanced|expert|deploy|lowvram|minvram) " "$1"; }

# All tiers in one bench run: each preset keeps its own steps (baseline 50 PNDM, the others 25).
timeout 190 $nitro bench --model random:sd15 --presets baseline,beginner,advanced,expert,lowvram \
  --json "$OUT/tiers.json" --csv "$OUT/tiers.csv" > "$OUT/tiers.log" 2>&1; row "$OUT/tiers.log"

# A second process, same model/preset/shape: its first image with warm compile caches.
start=$(date +%s%N)
timeout 50 $nitro generate "arcane style warrior" --model random:sd15 --preset expert --seed 1 -n 2 \
  --out /tmp/second-process --json > "$OUT/second-process.jsonl" 2> "$OUT/second-process.log"
echo "second process exit $?, wall $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$OUT/second-process.log"
echo "per image:" $(grep -o "\"seconds\": [0-9.]*" "$OUT/second-process.jsonl")  # the lines are long: the path comes first

timeout 45 $nitro bench --model random:sd15 --presets expert --steps 50 --json "$OUT/expert-50-steps.json" \
  > "$OUT/expert-50-steps.log" 2>&1; row "$OUT/expert-50-steps.log"
timeout 120 $nitro bench --model random:sd15 --presets deploy --json "$OUT/deploy.json" \
  > "$OUT/deploy.log" 2>&1; row "$OUT/deploy.log"
timeout 35 $nitro bench --model random:sd15 --presets lowvram --width 1024 --height 1024 --runs 1 \
  --json "$OUT/lowvram-1024.json" > "$OUT/lowvram-1024.log" 2>&1; row "$OUT/lowvram-1024.log"
