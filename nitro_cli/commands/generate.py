"""`nitro generate`: prompts (one, or a prompts file) to PNG files with A1111 metadata."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from nitro_cli import generate_run, options, paths
from nitro_cli.errors import UsageError


class Style(str, Enum):
    archer = "archer"
    arcane = "arcane"
    disney = "disney"


def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw.")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option(
        "--prompts-file", "-f", help="UTF-8 file (- for standard input, read to its end before the first image), one prompt per line (# comments); lines may carry A1111-style "
                                     "overrides: --prompt --negative_prompt --seed --steps --cfg_scale --width --height --style "
                                     "--n_iter --batch_size --sampler_name.")] = None,
    style: Annotated[Optional[list[Style]], typer.Option("--style", metavar="|".join(s.value for s in Style), help="Add a Nitro-Diffusion style token (repeatable: mixed styles).")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", show_default=generate_run.DEFAULT_PRESET,
                                                            help="Shipped preset name or path to a YAML file.")] = None,
    set_: options.SetOption = None,
    model: options.ModelOption = None,
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "",
    seed: Annotated[Optional[int], typer.Option("--seed", min=-1, help="Seed of the first image; image i uses seed+i. Random (and recorded) if unset or -1, as in AUTOMATIC1111.")] = None,
    steps: options.StepsOption = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale, CFG (overrides the preset).")] = None,
    width: options.WidthOption = None,
    height: options.HeightOption = None,
    num_images: Annotated[int, typer.Option("--num-images", "-n", min=1, help="Images per prompt.")] = 1,
    batch_size: options.BatchSizeOption = None,
    out: Annotated[str, typer.Option("--out", "-o", metavar="DIR", help="Output folder.")] = paths.DEFAULT_OUTPUTS,
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted run: same command plus --resume makes only the missing images.")] = False,
    device: options.DeviceOption = options.Device.auto,
    max_vram: options.MaxVramOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout, nothing else there.")] = False,
) -> None:
    """Generate images from a prompt or a prompts file; save them as PNG files with their generation parameters.

    Under `accelerate launch` or `torchrun` each process makes its share of the images (see docs/deploy.md)."""
    from nitro_cli.presets import flag_overrides

    has_prompt = bool(prompt and prompt.strip())
    if has_prompt == (prompts_file is not None):
        raise UsageError("give either a prompt or --prompts-file" + (", not both" if has_prompt else ""),
                         hint='nitro generate "arcane style castle" --model random:tiny')
    options.check_not_blank(preset, "--preset", f"leave it out for {generate_run.DEFAULT_PRESET}, or name a preset "
                                                "(shipped or a .yaml file)")
    options.check_utf8(prompt or "", "the prompt")
    options.check_utf8(negative, "--negative")
    options.check_max_vram(max_vram)
    out_folder = options.out_folder(out)
    generate_run.run(generate_run.GenerateRequest(
        prompt=prompt, prompts_file=prompts_file, styles=[s.value for s in style or []], preset=preset,
        overrides=list(set_ or []) + flag_overrides(steps=steps, guidance=guidance, width=width, height=height,
                                                    batch_size=batch_size),
        model=model, negative=negative, seed=None if seed == -1 else seed, num_images=num_images, out=out_folder,
        resume=resume, device=device.value, max_vram=max_vram, json_output=json_output))
