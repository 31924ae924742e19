"""`nitro generate`: prompts (one, or a prompts file) to PNG files with A1111 metadata."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Annotated, Optional

import typer

from nitro_cli import options
from nitro_cli.errors import UsageError


DEFAULT_PRESET = "beginner"


class Style(str, Enum):
    archer = "archer"
    arcane = "arcane"
    disney = "disney"


def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw.")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option(
        "--prompts-file", "-f", help="UTF-8 file, one prompt per line (# comments); lines may carry A1111-style "
                                     "overrides: --prompt --negative_prompt --seed --steps --cfg_scale --width --height --style.")] = None,
    style: Annotated[Optional[list[Style]], typer.Option("--style", help="Add a Nitro-Diffusion style token (repeatable: mixed styles).")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Shipped preset name or path to a YAML file. "
                                                                        "[default: beginner]")] = None,
    set_: options.SetOption = None,
    model: options.ModelOption = None,
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "",
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Seed of the first image; image i uses seed+i. Random (and recorded) if unset.")] = None,
    steps: options.StepsOption = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale (CFG).")] = None,
    width: options.WidthOption = None,
    height: options.HeightOption = None,
    num_images: Annotated[int, typer.Option("--num-images", "-n", min=1, help="Images per prompt.")] = 1,
    batch_size: options.BatchSizeOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("outputs"),
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted run: same command plus --resume makes only the missing images.")] = False,
    device: options.DeviceOption = options.Device.auto,
    max_vram: options.MaxVramOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout, nothing else there.")] = False,
) -> None:
    """Generate images from a prompt or a prompts file; save them as PNG files with their generation parameters.

    Under `accelerate launch` or `torchrun` each process makes its share of the images (see docs/deploy.md)."""
    from nitro_cli import distributed, hardware, output, vram
    from nitro_cli.builder import build_pipeline, resolve_device
    from nitro_cli.generation import (CacheStats, PromptCache, generate_images, group_batches, plan_images,
                                      request_fingerprint)
    from nitro_cli.models import DEFAULT_MODEL
    from nitro_cli.presets import SAMPLER_NAMES, flag_overrides, load_preset
    from nitro_cli.progress import RunDisplay
    from nitro_cli.prompts import PromptJob, apply_styles, read_prompts_file, truncation_warnings

    has_prompt = bool(prompt and prompt.strip())
    if has_prompt == (prompts_file is not None):
        raise UsageError("give either a prompt or --prompts-file" + (", not both" if has_prompt else ""),
                         hint='nitro generate "arcane style castle" --model random:tiny')
    overrides = list(set_ or []) + flag_overrides(steps=steps, guidance=guidance, width=width, height=height,
                                                  batch_size=batch_size)
    options.check_max_vram(max_vram)
    machine = run_device = None
    if max_vram is not None:
        # The budget's estimate depends on the GPU (fp32 where fp16 is slow), so probe before choosing.
        machine = hardware.probe()
        run_device = resolve_device(device.value, machine)
        preset, overrides, plan = vram.fit_request(max_vram, preset, overrides, default_preset=DEFAULT_PRESET,
                                                   machine=machine, device=run_device)
        print(vram.describe_choice(max_vram, preset, plan), file=sys.stderr)
    loaded = load_preset(preset or DEFAULT_PRESET, overrides)
    settings = loaded.settings
    styles = [s.value for s in style or []]
    defaults = PromptJob(prompt="", negative=negative, seed=None, steps=settings.steps, guidance=settings.guidance,
                         width=settings.width, height=settings.height)
    if prompts_file is not None:
        jobs = read_prompts_file(prompts_file, defaults, styles)
    else:
        jobs = [replace(defaults, prompt=apply_styles(prompt, styles))]
    model_name = model or DEFAULT_MODEL

    def images_to_make():
        """Names and seeds, fixed before the model loads (a bad --resume costs nothing), and what is missing."""
        total = len(jobs) * num_images
        run = output.start_run(out, request_fingerprint(model_name, settings, jobs, num_images, seed), total, seed, resume)
        planned = plan_images(jobs, num_images, run.first_index, run.first_seed)
        pending = [image for image in planned if not (out / image.name).exists()]
        if resume:
            print(f"Resuming: {total - len(pending)} of {total} images already in {out}; making {len(pending)}.",
                  file=sys.stderr)
        return pending

    if machine is None:
        machine = hardware.probe()
        run_device = resolve_device(device.value, machine)
    with distributed.processes(cpu=run_device == "cpu") as processes:
        pending = processes.from_main(images_to_make)
        if not pending:
            return
        # Shares are contiguous and the main process's comes first, so it always has images (and a display).
        mine = [image for batch in processes.share(group_batches(pending, settings.batch_size)) for image in batch]
        results, cache_stats = [], CacheStats(settings.prompt_cache)
        if mine:
            built = build_pipeline(settings, model, run_device, machine=machine)
            if processes.is_main:
                if model_name.startswith("random:"):
                    print(f"Note: {model_name} has random weights: its images are noise (for speed, memory and "
                          "dry runs).", file=sys.stderr)
                for warning in truncation_warnings(built.pipe.tokenizer, jobs):
                    print(f"Warning: {warning}", file=sys.stderr)
            cache = PromptCache(built.pipe, built.device, enabled=settings.prompt_cache)
            save = partial(output.save_image, folder=out, sampler=SAMPLER_NAMES[settings.scheduler],
                           model=model_name, preset=loaded.name)
            start = time.perf_counter()
            display = RunDisplay(len(mine), json_output=json_output, model=model_name, preset=loaded.name,
                                 bars=processes.is_main)
            with display:
                # A compiled pipeline is specialised to its batch shape: keep every call at batch_size.
                results = generate_images(built.pipe, cache, built.device, mine, batch_size=settings.batch_size,
                                          save=save, observer=display,
                                          fixed_batch_shape=settings.compile != "none" and settings.backend == "pytorch")
            cache_stats = cache.stats()
        everyone = processes.gather((results, cache_stats))
        if processes.is_main:
            display.summary([r for part, _ in everyone for r in part], CacheStats.total([c for _, c in everyone]),
                            time.perf_counter() - start, run_device,
                            processes=[len(part) for part, _ in everyone] if processes.count > 1 else None)
