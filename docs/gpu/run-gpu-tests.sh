#!/usr/bin/env bash
# The GPU-only tests (`pytest -m gpu`, skipped on machines without CUDA), in one device call of about
# 5 minutes; the compiled-vs-eager test on random:sd15 compiles the expert preset cold, the fp8 one
# compiles random:tiny twice. Log in $OUT.
. "$(dirname "$0")/setup.sh"
timeout -k 10 330 python3 -m pytest -v -m gpu -p no:cacheprovider -rs --durations=10 > "$OUT/pytest-gpu.log" 2>&1
tail -25 "$OUT/pytest-gpu.log"
