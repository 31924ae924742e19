"""`nitro generate` in this process, then where torch.compile's time went: dynamo's per-phase totals.

For the expert tier's second-process target (first image at most 15 s with the compile caches on disk):
run it after another process filled NITRO_CACHE_DIR, e.g.
    python3 docs/gpu/second_process.py generate "arcane style warrior" --model random:sd15 --preset expert -n 2 --json
The command's own output is unchanged; the breakdown goes to stderr at the end.
"""

import sys

from nitro_cli.__main__ import main

sys.argv = ["nitro", *sys.argv[1:]]
try:
    main()
except SystemExit as done:
    code = done.code
else:
    code = 0
finally:
    if "torch" in sys.modules:  # --help and usage errors never import it
        from torch._dynamo.utils import compile_times

        # The "csv" form, not "str": "str" is a table whose layout depends on whether the `tabulate` package is
        # installed, and run-variants.sh reads these lines as "phase, seconds".
        phases, seconds = compile_times(repr="csv", aggregate=True)
        print("torch.compile time by phase, seconds (all compiled graphs together):", file=sys.stderr)
        for phase, total in sorted(zip(phases, map(float, seconds)), key=lambda row: -row[1]):
            print(f"{phase}, {total:.4f}", file=sys.stderr)
sys.exit(code)
