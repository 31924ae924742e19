"""`nitro generate`: text to PNG files, with A1111 metadata."""

from __future__ import annotations

import json
import random
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from nitro_cli import options
from nitro_cli.errors import UsageError


class Style(str, Enum):
    archer = "archer"
    arcane = "arcane"
    disney = "disney"


def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw.")] = None,
    style: Annotated[Optional[list[Style]], typer.Option("--style", help="Add a Nitro-Diffusion style token (repeatable: mixed styles).")] = None,
    preset: Annotated[str, typer.Option("--preset", "-p", help="Shipped preset name or path to a YAML file.")] = "beginner",
    set_: options.SetOption = None,
    model: options.ModelOption = None,
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "",
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Seed of the first image; image i uses seed+i. Random if unset.")] = None,
    steps: options.StepsOption = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale (CFG).")] = None,
    width: options.WidthOption = None,
    height: options.HeightOption = None,
    num_images: Annotated[int, typer.Option("--num-images", "-n", min=1, help="Images per prompt.")] = 1,
    batch_size: options.BatchSizeOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("outputs"),
    device: options.DeviceOption = options.Device.auto,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout, nothing else there.")] = False,
) -> None:
    """Generate images from a prompt and save them as PNG files with their generation parameters."""
    from nitro_cli.builder import build_pipeline
    from nitro_cli.generation import PromptCache, run_batch
    from nitro_cli.measure import measure
    from nitro_cli.output import image_name, infotext, next_index, save_png
    from nitro_cli.presets import SAMPLER_NAMES, load_preset
    from nitro_cli.prompts import apply_styles

    if not prompt or not prompt.strip():
        raise UsageError("no prompt given", hint='nitro generate "arcane style castle" --model random:tiny')
    flag_overrides = {"steps": steps, "guidance": guidance, "width": width, "height": height, "batch_size": batch_size}
    overrides = list(set_ or []) + [f"{key}={value}" for key, value in flag_overrides.items() if value is not None]
    loaded = load_preset(preset, overrides)
    settings = loaded.settings
    full_prompt = apply_styles(prompt, [s.value for s in style or []])
    first_seed = seed if seed is not None else random.randrange(2**32 - num_images)
    out.mkdir(parents=True, exist_ok=True)

    built = build_pipeline(settings, model, device.value)
    model_name = model or "nitrosocke/Nitro-Diffusion"
    if model_name.startswith("random:"):
        print(f"Note: {model_name} has random weights: its images are noise (for speed, memory and dry runs).",
              file=sys.stderr)
    cache = PromptCache(built.pipe, built.device, enabled=settings.prompt_cache)
    index = next_index(out)
    for start in range(0, num_images, settings.batch_size):
        seeds = [first_seed + i for i in range(start, min(start + settings.batch_size, num_images))]
        with measure(built.device) as taken:
            result = run_batch(built.pipe, cache, [full_prompt] * len(seeds), [negative] * len(seeds), seeds,
                               steps=settings.steps, guidance=settings.guidance,
                               width=settings.width, height=settings.height)
        for image_seed, image in zip(seeds, result.images):
            path = out / image_name(index, image_seed, full_prompt)
            index += 1
            parameters = infotext(full_prompt, negative, {
                "Steps": settings.steps, "Sampler": SAMPLER_NAMES[settings.scheduler],
                "CFG scale": settings.guidance, "Seed": image_seed, "Size": f"{settings.width}x{settings.height}",
                "Model": model_name, "Preset": loaded.name,
            })
            save_png(image, path, parameters)
            seconds = taken.seconds / len(seeds)
            if json_output:
                print(json.dumps({"path": str(path), "prompt": full_prompt, "negative_prompt": negative,
                                  "seed": image_seed, "seconds": round(seconds, 4), "preset": loaded.name,
                                  "model": model_name}))
            else:
                print(f"{path}  ({seconds:.2f} s)")
