# Sourced by the docs/gpu/run-*.sh scripts: output folder, offline caches, the carried wheels
# (.whl/: the pip download command in docs/gpu/run-tiers.sh; used only when present), and the `nitro` command line.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NITRO_CACHE_DIR=${NITRO_CACHE_DIR:-/tmp/nitro-cache}
# This checkout's nitro_cli, also for `python3 docs/gpu/second_process.py` (a script's own folder comes first on
# its sys.path, not the current one): without it, that script imports an installed nitro, if any.
export PYTHONPATH=$PWD
if [ -d .whl ]; then
  [ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nitro="python3 -m nitro_cli"
