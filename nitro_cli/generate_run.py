"""One `nitro generate` run, from the request to the summary: settings chosen (with `--max-vram`), prompts
read and checked, images planned and named, shared out among processes (`accelerate launch`,
`torchrun`), generated, and the summary printed by the main process.

Everything a user can get wrong (preset, prompts file, `--resume`) is checked before the model loads.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nitro_cli.presets import LoadedPreset
    from nitro_cli.prompts import PromptJob

DEFAULT_PRESET = "beginner"


@dataclass(frozen=True)
class GenerateRequest:
    """What `nitro generate` was asked for: exactly one of `prompt` and `prompts_file`."""

    prompt: str | None
    prompts_file: Path | None
    styles: list[str]
    preset: str | None
    overrides: list[str]  # --set pairs, then the flags' own (--steps, --width, ...)
    model: str | None
    negative: str
    seed: int | None
    num_images: int
    out: Path
    resume: bool
    device: str
    max_vram: float | None
    json_output: bool


@dataclass(frozen=True)
class CheckedRequest:
    """A request whose preset, prompts, seeds, model and device were checked: what the run goes on with."""

    loaded: LoadedPreset
    jobs: list[PromptJob]
    model_name: str
    run_device: str


def run(request: GenerateRequest) -> None:
    from nitro_cli import distributed, hardware
    from nitro_cli.builder import resolve_device

    # Probed once, when first needed: a --max-vram estimate depends on the GPU (fp32 where fp16 is slow),
    # and without one a bad preset or prompts file fails before torch is even imported.
    machine = functools.cache(hardware.probe)
    if not distributed.launched():
        checked = _check(request, machine, show=True)
        with distributed.Processes() as processes:
            _make(request, checked, processes, machine)
        return
    # Several processes join before checking the request: a mistake in it, which every process finds, is then
    # told once, by the main process, not once per process and cut off by the launcher's "Interrupted." (it
    # stops the others when the first fails). Joining needs the device: a device error (--device cuda without a
    # GPU) is told by every process, since the first to exit gets the main one stopped, perhaps before it told it.
    run_device = resolve_device(request.device, machine())
    with distributed.processes(cpu=run_device == "cpu") as processes:
        checked = processes.on_every(lambda: _check(request, machine, show=processes.is_main))
        _make(request, checked, processes, machine)


def _check(request: GenerateRequest, machine, show: bool) -> CheckedRequest:
    """Everything a user can get wrong, checked before the model loads. `show`: print the --max-vram choice."""
    from nitro_cli import distributed, vram
    from nitro_cli.builder import resolve_device
    from nitro_cli.errors import UsageError
    from nitro_cli.generation import check_run_size, check_seeds
    from nitro_cli.models import DEFAULT_MODEL, resolve_model
    from nitro_cli.presets import load_preset
    from nitro_cli.prompts import STDIN, read_prompts_text

    preset, overrides = request.preset, request.overrides
    if request.prompts_file == STDIN and distributed.launched():
        raise UsageError("--prompts-file - (standard input) reaches only one of the processes of this run",
                         hint="save the prompts to a file and give its path")
    prompts_text = read_prompts_text(request.prompts_file) if request.prompts_file is not None else None
    if request.max_vram is not None:
        # A prompts file's lines may ask for their own sizes (the plan never changes a size): fit the largest.
        sizes = [(job.width, job.height) for job in _read_jobs(request, prompts_text,
                                                               load_preset(preset or DEFAULT_PRESET, overrides).settings)]
        preset, overrides, plan = vram.fit_request(request.max_vram, preset, overrides, default_preset=DEFAULT_PRESET,
                                                   machine=machine(), device=resolve_device(request.device, machine()),
                                                   largest_image=max(sizes, key=lambda size: size[0] * size[1]))
        if show:
            print(vram.describe_choice(request.max_vram, preset, plan), file=sys.stderr)
    loaded = load_preset(preset or DEFAULT_PRESET, overrides)
    jobs = _read_jobs(request, prompts_text, loaded.settings)
    check_run_size(jobs, request.num_images)
    check_seeds(jobs, request.num_images, request.seed)
    resolve_model(request.model)  # a mistyped path or built-in name fails before the run record is replaced
    return CheckedRequest(loaded, jobs, request.model or DEFAULT_MODEL, resolve_device(request.device, machine()))


def _make(request: GenerateRequest, checked: CheckedRequest, processes, machine) -> None:
    """The images: planned by the main process, shared out, generated, and summed up by the main process."""
    from nitro_cli import output
    from nitro_cli.generation import CacheStats, group_batches

    loaded, jobs, model_name, run_device = checked.loaded, checked.jobs, checked.model_name, checked.run_device
    record, pending = processes.from_main(lambda: _images_to_make(request, model_name, loaded.settings, jobs))
    if not pending:
        return
    # Shares are contiguous and the main process's comes first, so it always has images (and a display).
    mine = [image for batch in processes.share(group_batches(pending, loaded.settings.batch_size))
            for image in batch]
    results, cache_stats, display = [], CacheStats(loaded.settings.prompt_cache), None
    # A model that fails to load on any process stops them all, each told once.
    built = processes.on_every(lambda: _load(request, loaded.settings, model_name, jobs, run_device, machine(),
                                             show=processes.is_main) if mine else None)
    if not request.resume:
        # Only now: a model that fails to load, or Ctrl-C while it loads, leaves the last run resumable. And
        # before any process saves an image: an interrupted run is always the one --resume finds.
        processes.from_main(lambda: output.record_run(request.out, record))
    start = time.perf_counter()  # the summary's time is generation's, loading apart
    if mine:
        results, cache_stats, display = _generate_share(request, loaded, built, model_name, mine,
                                                       show=processes.is_main)
    everyone = processes.gather((results, cache_stats))
    if processes.is_main:
        display.summary([r for part, _ in everyone for r in part], CacheStats.total([c for _, c in everyone]),
                        time.perf_counter() - start, run_device,
                        processes=[len(part) for part, _ in everyone] if processes.count > 1 else None)


def _read_jobs(request: GenerateRequest, prompts_text: str | None, settings):
    """The prompts (`prompts_text`: the prompts file's, if any), each with the preset's values where its
    line sets none."""
    from nitro_cli.presets import SAMPLER_NAMES
    from nitro_cli.prompts import PromptJob, apply_styles, parse_prompts

    defaults = PromptJob(prompt="", negative=request.negative, seed=None, steps=settings.steps,
                         guidance=settings.guidance, width=settings.width, height=settings.height)
    if prompts_text is not None:
        return parse_prompts(prompts_text, request.prompts_file, defaults, request.styles,
                             sampler=SAMPLER_NAMES[settings.scheduler])
    return [replace(defaults, prompt=apply_styles(request.prompt, request.styles))]


def _images_to_make(request: GenerateRequest, model_name: str, settings, jobs):
    """The run record and the images missing from it: names and seeds fixed before the model loads (a bad
    --resume costs nothing)."""
    from nitro_cli import output
    from nitro_cli.generation import plan_images, request_fingerprint

    total = sum(job.image_count(request.num_images) for job in jobs)
    record = output.start_run(request.out, request_fingerprint(model_name, settings, jobs, request.num_images,
                                                               request.seed), total, request.seed, request.resume)
    planned = plan_images(jobs, request.num_images, record.first_index, record.first_seed)
    if not request.resume:
        # Numbered past every image in the folder: none is there yet. Looking (a stat per planned image) would
        # take most of a million-image run's planning; a name another run takes meanwhile is caught when saving.
        return record, planned
    pending = [image for image in planned if not (request.out / image.name).exists()]
    print(f"Resuming: {total - len(pending)} of {total} images already in {request.out}; making {len(pending)}.",
          file=sys.stderr)
    return record, pending


def _load(request: GenerateRequest, settings, model_name: str, jobs, run_device: str, machine, show: bool):
    from nitro_cli.builder import build_pipeline
    from nitro_cli.prompts import truncation_warnings

    built = build_pipeline(settings, request.model, run_device, machine=machine)
    if show:
        if model_name.startswith("random:"):
            print(f"Note: {model_name} has random weights: its images are noise (for speed, memory and "
                  "dry runs).", file=sys.stderr)
        for warning in truncation_warnings(built.pipe.tokenizer, jobs):
            print(f"Warning: {warning}", file=sys.stderr)
    return built


def _generate_share(request: GenerateRequest, loaded, built, model_name: str, mine, show: bool):
    """This process's images, generated and saved: (results, prompt-cache stats, the display)."""
    from nitro_cli import output
    from nitro_cli.generation import PromptCache, generate_images
    from nitro_cli.presets import SAMPLER_NAMES, SCHEDULE_TYPES
    from nitro_cli.progress import RunDisplay

    settings = loaded.settings
    cache = PromptCache(built.pipe, enabled=settings.prompt_cache)
    save = functools.partial(output.save_image, folder=request.out, sampler=SAMPLER_NAMES[settings.scheduler],
                             schedule_type=SCHEDULE_TYPES.get(settings.scheduler), model=model_name,
                             preset=loaded.name, overrides=loaded.overrides)
    display = RunDisplay(len(mine), json_output=request.json_output, model=model_name, preset=loaded.name, bars=show,
                         compiled=built.compiled)
    with display:
        # A compiled pipeline is specialised to its batch shape: keep every call at batch_size.
        results = generate_images(built.pipe, cache, built.device, mine, batch_size=settings.batch_size,
                                  save=save, observer=display, fixed_batch_shape=built.compiled)
    return results, cache.stats(), display
