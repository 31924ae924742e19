#!/usr/bin/env bash
# GPU measurement still open (one device call, at most 9.5 minutes on an H100/H200; the most wanted first,
# each step under its own timeout so a slow one leaves the rest their time):
#  1. expert beside its two opt-in levers, the feature cache and fp8 matmuls (open: their speed and PSNR
#     against expert), and beside expert without the compiled VAE decoder; then the first image of a second
#     process (target: at most 15 s), with and without the compiled VAE decoder (on a CPU its tracing was a
#     quarter of a second process's compile time: docs/benchmarks.md);
#  2. deploy sustained over 200 prompts with `nitro generate` (target: 12 images/s);
#  3. minvram beside beginner (target: peak VRAM <= 1 GiB; and its time), when time is left.
# The GPU-only tests need a device session of their own (a call of about 5.5 minutes; after this one, the
# machine's start and a 15-minute budget leave too little): no per-step host sync, flash attention for the
# UNet only, compiled vs eager PSNR on random:sd15, fp8 matmuls with CUDA graphs, low-VRAM presets, probe:
# bash docs/gpu/run-gpu-tests.sh
# Results and logs go to $OUT (or ./gpu-out). Needs .whl/ as docs/gpu/run-tiers.sh does.
. "$(dirname "$0")/setup.sh"
V=docs/gpu-variants
# The bench table's header and rows (a row: its name, then its steps; a failed row too), not the lines around it.
row() { grep -E "^ (preset +steps|[a-z0-9-]+ +[0-9]+) " "$1"; }
# A step's timeout: its share ($1 s), cut to what is left before END (SECONDS: this script's own clock, the
# wheels' install included), so no step runs past the call's 570 s and loses what the later steps wrote;
# `timeout -k` then kills a step that does not stop soon after its SIGTERM. At least 1: `timeout 0` never ends.
END=555
share() { local left=$((END - SECONDS)); echo $(( left < 1 ? 1 : ($1 < left ? $1 : left) )); }
rm -rf /tmp/second-process /tmp/deploy-200  # fresh output folders: the counts below are this run's
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; } 2>&1 | tee "$OUT/machine.txt"

# expert's own code path is unchanged since its H200 row (11.63x baseline): compare the two levers with it
# (the second grep shows whether fp8 matmuls were applied, skipped or failed, and why: the lines that
# name fp8, less the preset's progress lines and its table row).
# expert-no-compile-vae last: its UNet graph is expert's, so it loads from the on-disk cache in seconds.
timeout -k 10 $(share 345) $nitro bench --model random:sd15 \
  --presets expert,$V/expert-feature-cache.yaml,$V/expert-fp8-matmul.yaml,$V/expert-no-compile-vae.yaml \
  --baseline expert --json "$OUT/expert.json" > "$OUT/expert.log" 2>&1
row "$OUT/expert.log"
grep -i "fp8" "$OUT/expert.log" | grep -vE "^\[[0-9]+/[0-9]+\] |^expert-fp8-matmul: (built|warm-up|timed) |^ expert-fp8-matmul +[0-9]+ "
# A second process, same model/preset/shape: its first image with the caches the bench just filled, and
# where its compile time went (dynamo's phases, the largest first). Only a process that stops prints the phases,
# and generate stops at SIGTERM only after the step it is in, which may still be compiling: so 20 s after the
# SIGTERM a SIGINT stops it at once (sent by the outer timeout to the inner one, which passes it on; the inner
# one ignores a second SIGTERM), and -k 30 kills it 10 s later. A slow second process is the one to explain.
for preset in expert $V/expert-no-compile-vae.yaml; do
  name=$(basename "$preset" .yaml) stop=$(share 45)
  timeout -s INT $((stop + 20)) timeout -k 30 "$stop" python3 docs/gpu/second_process.py generate "arcane style warrior" --model random:sd15 --preset "$preset" \
    --seed 1 -n 2 --out "/tmp/second-process/$name" --json > "$OUT/second-process-$name.jsonl" 2> "$OUT/second-process-$name.log"
  echo "second process, $name: exit $?, per image:" $(grep -o "\"seconds\": [0-9.]*" "$OUT/second-process-$name.jsonl")
  awk -F', ' 'NF == 2 && $1 !~ / / && $2 + 0 >= 0.3' "$OUT/second-process-$name.log" | sort -t, -k2 -nr | head -8
done

for i in $(seq 1 200); do echo "--prompt \"arcane style city number $i\" --seed $i"; done > /tmp/prompts-200.txt
timeout -k 10 $(share 130) $nitro generate --model random:sd15 --preset deploy --prompts-file /tmp/prompts-200.txt \
  --out /tmp/deploy-200 --json > "$OUT/deploy-200.jsonl" 2> "$OUT/deploy-200.log"
echo "deploy 200 prompts: exit $?, $(ls /tmp/deploy-200/*.png 2>/dev/null | wc -l) PNG files"; tail -2 "$OUT/deploy-200.log"
# Sustained rate: the images after the first batch (which compiles), by their batches' own time and by
# the run's wall clock (the summary's total, so waiting on the PNG writer counts too).
python3 - "$OUT/deploy-200.jsonl" "$OUT/deploy-200.log" <<'PY'
import json, re, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.endswith("\n")]  # a killed run's last line may be cut
if not rows:
    sys.exit("no images: see deploy-200.log")
first, rest = rows[:rows[0]["batch_size"]], rows[rows[0]["batch_size"]:]
if not rest:  # stopped by its timeout during or right after the first (compiling) batch
    sys.exit(f"only the first batch: {len(first)} images, {sum(r['seconds'] for r in first):.1f} s; see deploy-200.log")
total = re.search(r"Total: ([0-9.]+) s", open(sys.argv[2]).read())
print(f"{len(rows)} images; first batch {sum(r['seconds'] for r in first):.1f} s; after it: "
      f"{len(rest) / sum(r['seconds'] for r in rest):.2f} images/s by batch time"
      + (f", {len(rest) / (float(total[1]) - sum(r['seconds'] for r in first)):.2f} by wall clock" if total else ""))
PY

# Whatever is left of the call's 9.5 minutes.
if [ $SECONDS -lt 480 ]; then
  timeout -k 10 $(share $END) $nitro bench --model random:sd15 --presets beginner,minvram --runs 1 \
    --json "$OUT/minvram.json" > "$OUT/minvram.log" 2>&1; row "$OUT/minvram.log"
else
  echo "minvram not run: $SECONDS s used"
fi
