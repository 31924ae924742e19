"""`nitro bench`: presets measured side by side in one run; a table on stderr, JSON and CSV files."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from nitro_cli import benchmark, errors, options, paths, streams
from nitro_cli.errors import EXIT_INTERRUPTED, RuntimeFailure, UsageError
from nitro_cli.tables import print_table

DEFAULT_PRESETS = ",".join(benchmark.DEFAULT_PRESETS)
NOISY_SPREAD = 1.5  # slowest over fastest timed call above which the machine, not the preset, is in the numbers


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _significant(value: float, digits: int) -> str:
    """`value` to `digits` significant digits, written out: a GPU dry run's 1234 it/s is not 1.23e+03, and its
    0.000412 s/image is not 0.000."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"


def _seconds(value: float) -> str:
    return f"{value:.3f}" if value >= 0.1 else _significant(value, 3)  # milliseconds keep three digits too


def _print_report(console, report) -> None:
    """The numbers as one table, then what each preset applied and skipped (too long for a column)."""
    from rich import box
    from rich.table import Table

    env = report.environment
    table = Table(title=f"nitro bench: {env['model']} on {env['device']}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("preset", "steps", "s/image", "min-max", "it/s", "vs base", "VRAM MiB",
                   "RSS MiB", "load s", "1st call s", "PSNR dB"):
        table.add_column(header, justify="left" if header == "preset" else "right")
    for r in report.results:
        if r.error:
            table.add_row(r.preset, _number(r.steps, 0), "[red]failed[/red]", *[""] * 8)
            continue
        vram = _number(r.peak_vram_mib, 0)
        if r.peak_device_vram_mib is not None:
            vram += f" ({r.peak_device_vram_mib:.0f})"
        psnr = "inf" if r.psnr_vs_baseline_db == float("inf") else _number(r.psnr_vs_baseline_db, 1)
        table.add_row(
            r.preset, str(r.steps), _seconds(r.median_s), f"{_seconds(r.min_s)}-{_seconds(r.max_s)}",
            _significant(r.it_per_s, 3),
            "-" if r.speedup_vs_baseline is None else f"{r.speedup_vs_baseline:.2f}x", vram,
            _number(r.peak_rss_mib, 0), _number(r.load_s), _number(r.first_call_s), psnr,
        )
    table.caption = "\n".join(_table_notes(report))
    table.caption_justify = "left"
    print_table(console, table)
    for r in report.results:
        if r.error:
            console.print(f"[bold]{r.preset}[/bold] [red]failed:[/red] {escape(r.error)}")
            continue
        console.print(f"[bold]{r.preset}[/bold] (batch {r.batch_size}, {r.width}x{r.height}): "
                      f"{escape('; '.join(r.applied))}")
        if r.vram_plan:
            console.print(f"  {escape(r.vram_plan)}")
        for skipped in r.skipped:
            console.print(f"  [yellow]skipped[/yellow] {escape(skipped)}")


def _table_notes(report) -> list[str]:
    """What the table's numbers mean for this run: how they were measured, and why some can't be compared."""
    env = report.environment
    notes = [f"{env['runs']} timed call(s) after {env['warmup']} warm-up call(s); "
             f"prompt \"{env['prompt']}\", seed {env['seed']}"]
    if env["device_type"] == "cuda":
        notes.append("VRAM: torch allocator peak (in brackets: device memory in use after the calls, from NVML: "
                     "allocator reserve + CUDA context)")
    steps = {r.steps for r in report.results if not r.error}
    if env["steps_override"] is None and len(steps) > 1:
        notes.append("each preset kept its own steps (no --steps): 'vs base' compares whole images, "
                     "it/s compares per-step speed")
    noisy = [r.preset for r in report.results if not r.error and r.max_s > NOISY_SPREAD * r.min_s]
    if noisy:
        notes.append(f"timed calls of {', '.join(noisy)} differ by over {NOISY_SPREAD}x (a busy machine?): "
                     "compare the fastest calls, add --runs, or bench on an idle machine")
    baseline = env["baseline"]
    reference = next((r for r in report.results if r.preset == baseline and not r.error), None)
    if reference is None:
        notes.append(f"{baseline} not run (or failed): no speed-up or PSNR")
    else:
        if baseline != benchmark.BASELINE:
            notes.append(f"'vs base' and PSNR compare with {baseline} (--baseline), not with the baseline preset")
        if other_size := [r.preset for r in report.results
                          if not r.error and (r.width, r.height) != (reference.width, reference.height)]:
            # A preset file's own width/height (no --width/--height): its PSNR is null, and the table must say why.
            notes.append(f"{', '.join(other_size)} ran at another size than {baseline}: no PSNR, and 'vs base' "
                         "compares images of different sizes (give --width and --height for one size)")
    if env.get("max_vram_gib"):
        notes.append(f"--max-vram {env['max_vram_gib']:g}: each preset ran with what it needs to fit (said under "
                     "its row); a preset that cannot fit failed its row")
    if env["note"]:
        notes.append(f"{env['model']}: {env['note']}")
    return notes


def bench(
    presets: Annotated[str, typer.Option("--presets", metavar="P1,P2,...",
                                         help="Comma-separated shipped preset names or paths to YAML files "
                                              "(a file's row is named after its stem).")] = DEFAULT_PRESETS,
    model: options.ModelOption = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed calls per preset (median, min, max).")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Calls before timing, not counted.")] = 1,
    steps: Annotated[Optional[int], typer.Option(
        "--steps", min=1, help="Denoising steps for every preset (fair per-step comparison). "
                               "Default: each preset's own.")] = None,
    batch_size: options.BatchSizeOption = None,
    width: options.WidthOption = None,
    height: options.HeightOption = None,
    device: options.DeviceOption = options.Device.auto,
    max_vram: options.BenchMaxVramOption = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", metavar="FILE",
                                                      help="Write the report as JSON (- for stdout).")] = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", metavar="FILE",
                                                     help="Write one CSV row per preset (- for stdout).")] = None,
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", metavar="NAME", help="The row the others are compared with ('vs base', PSNR): a preset "
                                           "name or file stem among --presets, e.g. a tier beside its "
                                           "variant. Default: baseline, when it is among them.")
    ] = None,
) -> None:
    """Measure presets side by side on one model, prompt, seed and size: speed, memory and fidelity."""
    from rich.console import Console

    options.check_max_vram(max_vram)
    options.check_report_file(json_file, "--json")
    options.check_report_file(csv_file, "--csv")
    if json_file == csv_file == options.STDOUT:
        raise UsageError("--json - and --csv - would both print on stdout, one after the other",
                         hint="give one of them a file, e.g. --csv bench.csv")
    if json_file is not None and csv_file is not None and json_file.resolve() == csv_file.resolve():
        # The CSV is written second: it would silently replace the JSON report.
        raise UsageError(f"--json and --csv name one file, {json_file}", hint="give each report its own file")
    entries = tuple(entry.strip() for entry in presets.split(",") if entry.strip())
    if not entries:
        raise UsageError("--presets is empty", hint=f"e.g. --presets {DEFAULT_PRESETS}")
    rows = [benchmark.preset_label(entry) for entry in entries]
    twice = next((row for index, row in enumerate(rows) if row in rows[:index]), None)
    if twice is not None:  # --baseline and checklist find a row by its name
        raise UsageError(f"--presets names the row {twice} twice",
                         hint="give each preset once; copy a YAML file under another name to bench it beside "
                              "one with the same stem")
    if baseline is not None and baseline not in rows:  # left out: baseline if it runs, else nothing
        raise UsageError(f"--baseline {baseline} is not one of the rows: {', '.join(rows)}",
                         hint="name a preset given to --presets (a YAML file by its stem)")
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = max(console.width, 120)  # logs and pipes: progress and error lines wrap at 120, not 80
    report = benchmark.run_bench(
        benchmark.BenchOptions(presets=entries, model=model, runs=runs, warmup=warmup, steps=steps,
                               batch_size=batch_size, width=width, height=height, device=device.value,
                               max_vram_gib=max_vram, baseline=baseline or benchmark.BASELINE),
        progress=lambda message: console.print(message, markup=False),
    )
    _print_report(console, report)
    try:  # first: a full disk at --json/--csv loses no measurement
        history = benchmark.save_to_history(report)
        console.print(f"Report saved: {history}", markup=False)
    except OSError as exc:  # the cache copy is for `nitro checklist`: --json/--csv are still written
        history = None
        console.print(f"Warning: could not save the report in {paths.bench_dir()}: {exc.strerror or exc} "
                      "(set NITRO_CACHE_DIR to a writable folder)", markup=False)
    unwritten = []  # each file is tried: a full disk at --json still leaves a --csv written elsewhere
    for path, text in ((json_file, benchmark.json_text), (csv_file, benchmark.csv_text)):
        if path == options.STDOUT:
            streams.write_as_is(sys.stdout, text(report))
        elif path:
            try:
                path.write_text(text(report), encoding="utf-8", newline="")  # the CSV's own \r\n line ends
            except OSError as exc:
                unwritten.append(f"could not write {path}: {exc.strerror or exc}")
    if unwritten:
        failure = RuntimeFailure("; ".join(unwritten), hint=f"the measurements are kept, as JSON, in {history}; or "
                                                             "run again with files in another folder" if history
                                 else "run again with files in another folder")
        if not report.interrupted:
            raise failure
        errors.report(failure)  # told before the interrupt's own line and exit code
    if report.interrupted:
        console.print(f"Interrupted: {len(report.results)} of {len(entries)} presets finished; the report "
                      "keeps them", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.failed:
        names = ", ".join(r.preset for r in report.failed)
        raise RuntimeFailure(f"{len(report.failed)} of {len(report.results)} presets failed: {names}",
                             hint="each failed row in the table says why")
