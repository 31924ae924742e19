"""Presets measured side by side: one process, one model, one prompt, seed and size for every preset.

Each preset is built with the pipeline builder and called through the same batch runner that
`generate` uses (its prompt cache included, so the cache's effect shows). Per preset: a load, then
`warmup` calls not counted (the first of them is reported apart: torch.compile pays there), then
`runs` timed calls. Every number comes from `measure`, which synchronizes the device around each
call. Each pipeline is freed before the next preset loads, so one preset's memory can't raise the
next one's peak. A preset that fails becomes a result with its error; the others still run. Ctrl-C
ends the run with the presets finished so far as the report (`interrupted`).
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from nitro_cli import __version__, hardware, models, output, paths, vram
from nitro_cli.errors import NitroError, describe

DEFAULT_PRESETS = ("baseline", "beginner", "advanced", "expert")
BASELINE = "baseline"
BENCH_PROMPT = "arcane style warrior, detailed"
BENCH_SEED = 42
RANDOM_MODEL_NOTE = ("random weights: speed and memory only; the images are noise, so PSNR shows numerical "
                     "drift between presets, not picture quality")


@dataclass(frozen=True)
class BenchOptions:
    presets: tuple[str, ...] = DEFAULT_PRESETS
    model: str | None = None
    runs: int = 3
    warmup: int = 1
    # None keeps each preset's own value; a value overrides every preset.
    steps: int | None = None
    batch_size: int | None = None
    width: int | None = None
    height: int | None = None
    device: str = "auto"
    # A GPU memory budget (GiB): each preset runs with what vram.py says it needs to fit, or fails its row.
    max_vram_gib: float | None = None
    # The row the others are compared with (`speedup_vs_baseline`, `psnr_vs_baseline_db`).
    baseline: str = BASELINE


@dataclass
class PresetResult:
    """One row. Times are seconds; `median_s`, `min_s`, `max_s` are per image over the timed calls."""

    preset: str
    source: str | None = None
    # A shipped preset (by name, or its file by path), not a user's file with the same stem: for `checklist`.
    shipped: bool | None = None
    steps: int | None = None
    scheduler: str | None = None
    precision: str | None = None
    batch_size: int | None = None
    width: int | None = None
    height: int | None = None
    runs: int = 0
    median_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    it_per_s: float | None = None
    load_s: float | None = None
    first_call_s: float | None = None
    peak_vram_mib: float | None = None
    peak_device_vram_mib: float | None = None
    peak_rss_mib: float | None = None
    images_per_min: float | None = None
    speedup_vs_baseline: float | None = None
    psnr_vs_baseline_db: float | None = None
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # With --max-vram: the overrides added to fit the budget, and why (None without a budget); the added `--set`
    # pairs alone for checklist, which says the tier was measured with them.
    vram_plan: str | None = None
    vram_overrides: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class BenchReport:
    environment: dict[str, Any]
    results: list[PresetResult]

    @property
    def interrupted(self) -> bool:
        return bool(self.environment.get("interrupted"))

    @property
    def failed(self) -> list[PresetResult]:
        return [r for r in self.results if r.error]

    def to_dict(self) -> dict[str, Any]:
        return {"environment": self.environment,
                "results": [{key: _json_value(key, value) for key, value in dataclasses.asdict(r).items()}
                            for r in self.results]}


def _json_value(key: str, value: Any) -> Any:
    """Identical images have infinite PSNR, which JSON can't hold: it is written as the string "inf"."""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        # Ratios, times and rates to significant digits: a 0.084x slow-down is not 0.08x, a fast preset's 0.00236
        # s/image is not 0.0024, a slow one's 1.333 images/min is not 1.33 (60 / median_s must still give
        # images_per_min, and the medians' ratio the speed-up).
        if key in ("speedup_vs_baseline", "images_per_min") or key.endswith("_s"):
            return float(f"{value:.4g}")
        return round(value, 2)
    return value


def psnr_db(image, reference) -> float:
    """Peak signal-to-noise ratio of two 8-bit RGB images in dB; inf when every pixel is equal."""
    import numpy as np

    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    b = np.asarray(reference.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def preset_label(entry: str) -> str:
    """A row's name: a shipped name, or a YAML file's stem (`variants/fp16-compile.yaml` -> fp16-compile)."""
    return Path(entry).stem


def _describe(exc: BaseException) -> str:
    exc = paths.compile_cache_failure(exc) or exc
    if isinstance(exc, NitroError):
        return f"{exc.message} (hint: {exc.hint})" if exc.hint else exc.message
    return describe(exc)


def _release(device: str) -> None:
    """Free what the last preset left: its pipeline, compiled graphs and the allocator's cached blocks."""
    import torch

    torch.compiler.reset()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _import_libraries() -> None:
    """Import what building a pipeline imports, before the first load is timed: those seconds are paid once
    per process, and would otherwise be counted in the first preset's `load_s` alone (baseline's, usually)."""
    from nitro_cli.builder import quiet_libraries

    quiet_libraries()  # first: it quiets the loggers that speak while diffusers imports
    import diffusers
    import transformers

    # Both packages import their classes lazily, when a name is first looked up.
    diffusers.StableDiffusionPipeline, transformers.CLIPTextModel


def _flag_overrides(options: BenchOptions) -> list[str]:
    """--steps, --batch-size, --width and --height as `--set` pairs, for every preset."""
    from nitro_cli.presets import flag_overrides

    return flag_overrides(steps=options.steps, batch_size=options.batch_size, width=options.width,
                          height=options.height)


def _measure_preset(entry: str, result: PresetResult, options: BenchOptions, device: str,
                    machine: hardware.Machine, progress: Callable[[str], None]):
    """Fill `result` step by step (so a failure keeps what was measured) and return the first image.
    `progress` gets a line after the build and after each call: outside the timed calls, and no thread that
    would compete with a launch-bound loop for the GIL."""
    from nitro_cli.builder import build_pipeline
    from nitro_cli.generation import PromptCache, run_batch
    from nitro_cli.measure import measure
    from nitro_cli.presets import load_preset

    overrides = _flag_overrides(options)
    if options.max_vram_gib is not None:
        _, overrides, plan = vram.fit_request(options.max_vram_gib, entry, overrides, default_preset=entry,
                                              machine=machine, device=device)
        result.vram_plan = vram.describe_choice(options.max_vram_gib, result.preset, plan)
        result.vram_overrides = list(plan.overrides)
    loaded = load_preset(entry, overrides)
    settings = loaded.settings
    result.source = loaded.source
    result.shipped = loaded.shipped
    result.steps, result.scheduler = settings.steps, settings.scheduler
    result.batch_size, result.width, result.height = settings.batch_size, settings.width, settings.height

    with measure(device) as loading:
        built = build_pipeline(settings, options.model, device, machine)
    result.load_s = loading.seconds
    result.precision = built.dtype
    result.applied = list(built.applied)
    result.skipped = [f"{what}: {why}" for what, why in built.skipped]
    progress(f"{result.preset}: built in {loading.seconds:.1f} s"
             + ("; its first call compiles (a minute or more)" if built.compiled else ""))

    cache = PromptCache(built.pipe, enabled=settings.prompt_cache)
    seeds = [BENCH_SEED + i for i in range(settings.batch_size)]
    calls, timed = [], []
    for index in range(options.warmup + options.runs):
        with measure(device) as call:
            batch = run_batch(built.pipe, cache, [BENCH_PROMPT] * len(seeds), [""] * len(seeds), seeds,
                              steps=settings.steps, guidance=settings.guidance,
                              width=settings.width, height=settings.height)
        calls.append(call)
        counted = index >= options.warmup
        if counted:
            timed.append(call.seconds)
        kind = "timed" if counted else "warm-up"
        progress(f"{result.preset}: {kind} call {index + 1}/{options.warmup + options.runs}: {call.seconds:.2f} s")

    per_image = [seconds / settings.batch_size for seconds in timed]
    result.runs = len(timed)
    result.first_call_s = calls[0].seconds
    result.median_s, result.min_s, result.max_s = statistics.median(per_image), min(per_image), max(per_image)
    # One iteration = one denoising step for the whole batch (as A1111 counts it), over the whole call.
    result.it_per_s = settings.steps / statistics.median(timed)
    result.images_per_min = 60.0 / result.median_s
    result.peak_rss_mib = max(c.peak_rss_mib for c in calls)
    if device.startswith("cuda"):
        result.peak_vram_mib = max(c.peak_vram_mib for c in calls)
        device_peaks = [c.peak_device_vram_mib for c in calls if c.peak_device_vram_mib is not None]
        result.peak_device_vram_mib = max(device_peaks) if device_peaks else None
    return batch.images[0]


def _compare_with_baseline(results: list[PresetResult], images: dict[int, Any], name: str) -> None:
    baseline = next((i for i, r in enumerate(results) if r.preset == name and not r.error), None)
    if baseline is None:
        return
    reference = images[baseline]
    for index, result in enumerate(results):
        if result.error:
            continue
        result.speedup_vs_baseline = results[baseline].median_s / result.median_s
        if images[index].size == reference.size:  # a preset with its own size has no pixel-wise match
            result.psnr_vs_baseline_db = psnr_db(images[index], reference)


def _environment(options: BenchOptions, device: str, machine: hardware.Machine,
                 is_random: bool) -> dict[str, Any]:
    import torch

    return {
        "device": machine.gpus[0].name if device == "cuda" else hardware.cpu_name(),
        "device_type": device,
        "torch": torch.__version__,
        "diffusers": machine.packages.get("diffusers"),
        "transformers": machine.packages.get("transformers"),
        "python": machine.python,
        "nitro": __version__,
        "model": options.model or models.DEFAULT_MODEL,
        "note": RANDOM_MODEL_NOTE if is_random else None,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "prompt": BENCH_PROMPT,
        "seed": BENCH_SEED,
        "runs": options.runs,
        "warmup": options.warmup,
        "steps_override": options.steps,
        "batch_size_override": options.batch_size,
        "size_override": [options.width, options.height],
        "max_vram_gib": options.max_vram_gib,
        "baseline": options.baseline,
        "interrupted": False,
        "it_per_s_definition": "denoising steps per second of a whole pipeline call (a step covers the batch)",
    }


def run_bench(options: BenchOptions, progress: Callable[[str], None] = lambda message: None) -> BenchReport:
    """Run every preset in turn. A bad model, device, preset or size is a usage error before any preset
    runs."""
    from nitro_cli.builder import resolve_device
    from nitro_cli.presets import load_preset

    # A misspelled name must not cost the other presets' runs first.
    presets = [load_preset(entry, _flag_overrides(options)).settings for entry in options.presets]
    source = models.resolve_model(options.model)
    machine = hardware.probe()
    device = resolve_device(options.device, machine)
    environment = _environment(options, device, machine, source.is_random)
    _import_libraries()
    # ONNX presets run an export (`nitro export onnx`), never the hub model's own weights.
    pytorch_presets = [preset for preset in presets if preset.backend != "onnx"]
    if source.kind == "hub" and pytorch_presets:
        # Once, before the presets: a model that can't be had is one usage error, not a failed row per preset,
        # and no row's load time holds the download.
        progress(f"Model {source.spec}: checking the Hugging Face cache (downloading what is missing) ...")
        with_safety_checker = any(preset.safety_checker for preset in pytorch_presets)
        models.fetch_hub_model(source.spec, with_safety_checker=with_safety_checker)

    results: list[PresetResult] = []
    images: dict[int, Any] = {}
    try:
        for number, entry in enumerate(options.presets, start=1):
            result = PresetResult(preset=preset_label(entry))
            progress(f"[{number}/{len(options.presets)}] {result.preset}")
            try:
                images[len(results)] = _measure_preset(entry, result, options, device, machine, progress)
            except Exception as exc:  # out of memory, a missing package, a failed load: this row fails
                result.error = _describe(exc)
                progress(f"{result.preset} failed: {result.error}")
            results.append(result)
            _release(device)  # after the except block, so no traceback still holds the pipeline
    except KeyboardInterrupt:  # Ctrl-C: the finished rows are the report; the preset it stopped is left out
        if not results:
            raise
        environment["interrupted"] = True
    _compare_with_baseline(results, images, options.baseline)
    return BenchReport(environment=environment, results=results)


def json_text(report: BenchReport) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"


def save_to_history(report: BenchReport) -> Path:
    """Keep a copy as `bench_dir()/bench-YYYYmmdd-HHMMSS.json`, where `nitro checklist` finds the newest."""
    folder = paths.bench_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(report.environment["date"]).strftime("%Y%m%d-%H%M%S")
    path = folder / f"bench-{stamp}.json"
    suffix = 1
    while path.exists():  # two runs in the same second
        suffix += 1
        path = folder / f"bench-{stamp}-{suffix}.json"
    # Whole or not at all: a report cut short by a full disk would be the newest, and checklist would read none.
    output.write_atomically(path, lambda temporary: temporary.write_text(json_text(report), encoding="utf-8"))
    return path


def newest_in_history() -> Path | None:
    """The report `save_to_history` kept last, or None."""
    reports = []
    for path in paths.bench_dir().glob("bench-*.json"):
        try:
            reports.append((path.stat().st_mtime, path.name, path))
        except OSError:  # a link to nothing, or a report removed while this looked: not a report to read
            continue
    return max(reports)[2] if reports else None


def _csv_cell(value: Any) -> Any:
    """A result field as the CSV writes it: lists joined with '; ', null empty, booleans as the JSON spells
    them (Python's True/False would read differently from the same report's JSON)."""
    if isinstance(value, list):
        return "; ".join(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return json.dumps(value)
    return value


def csv_text(report: BenchReport) -> str:
    """One row per preset, the JSON's result fields as columns."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[f.name for f in dataclasses.fields(PresetResult)])
    writer.writeheader()
    for row in report.to_dict()["results"]:
        writer.writerow({key: _csv_cell(value) for key, value in row.items()})
    return text.getvalue()
