"""Which settings fit a VRAM budget: the measured figures in one table, and a pure rule over them.

No torch here. `doctor` (whose recommendation the checklist shows too) and `--max-vram` pass a number
of GiB (and the size of the job) and get back a preset name, `--set` overrides and a sentence saying
why. The figures are peak *allocated* memory (`torch.cuda.max_memory_allocated`, what `nitro bench`
reports); the CUDA context and the caching allocator's slack come on top, hence `HEADROOM_GIB`.

The estimate for any settings is built from the table alone: what decides memory is where the weights
live (`offload`), whether the safety checker is loaded, whether the VAE decodes in tiles, fp32 or half
precision, and the pixels times images of one call. Each of those is one difference between two
measured rows, so the estimate gives back every measured row (within a few percent).
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any

# CUDA context (about 0.3-0.5 GiB, outside max_memory_allocated) plus the allocator's fragmentation.
HEADROOM_GIB = 0.5
# The estimate's own error (a few percent on the measured rows, more for combinations never measured)
# and other programs on the card: a recommendation that runs out of memory costs more than a slower one.
ESTIMATE_MARGIN = 1.10


@dataclass(frozen=True)
class Footprint:
    """One preset's peak (torch allocator, MiB) for one job size."""

    preset: str
    peak_mib: float
    width: int = 512
    height: int = 512
    batch_size: int = 1
    measured: bool = True

    @property
    def peak_gib(self) -> float:
        return self.peak_mib / 1024


# Measured with `nitro bench` on one NVIDIA H200, random:sd15, 2026-11-26 (25 steps, baseline 50; time does
# not change the peak). Update a row when `nitro bench` measures it again; the rule below follows by itself.
FOOTPRINTS: tuple[Footprint, ...] = (
    Footprint("baseline", 6608),
    Footprint("beginner", 3346),
    Footprint("advanced", 2716),
    Footprint("expert", 2588),
    Footprint("deploy", 6368, batch_size=8),
    Footprint("lowvram", 2039),  # at 1.87x beginner's time
    Footprint("lowvram", 2430, width=1024, height=1024),
    # Not measured yet: minvram's 1.0 GiB target (sequential offload + NF4).
    Footprint("minvram", 1024, measured=False),
)

# `--max-vram` and doctor pick the first of these expected to fit: fastest first. expert and deploy are
# left out: they compile for tens of seconds per process, which only doctor's card-class rule weighs.
FASTEST_FIRST = ("advanced", "lowvram", "minvram")
MEMORY_SAVING = ("lowvram", "minvram")


def _mib(preset: str, width: int = 512, height: int = 512, batch_size: int = 1) -> float:
    """The measured peak of `preset` for this job (its row in FOOTPRINTS)."""
    job = (preset, width, height, batch_size)
    return next(f.peak_mib for f in FOOTPRINTS if (f.preset, f.width, f.height, f.batch_size) == job)


# Each factor of the estimate is the difference between two rows of the table.
# Weights on the GPU: one more 512x512 image costs (deploy, batch 8 - expert, batch 1) / 7.
RESIDENT_PER_IMAGE_MIB = (_mib("deploy", batch_size=8) - _mib("expert")) / 7
# Offloaded weights with a tiled VAE: 1024x1024 (four 512x512 images' pixels) against 512x512.
TILED_OFFLOAD_PER_IMAGE_MIB = (_mib("lowvram", width=1024, height=1024) - _mib("lowvram")) / 3
# The safety checker: beginner (on) against advanced (off); diffusers never offloads it.
SAFETY_CHECKER_MIB = _mib("beginner") - _mib("advanced")
# fp32 against fp16, both with the safety checker: baseline against beginner.
FP32_FACTOR = _mib("baseline") / _mib("beginner")
# Where the weights live decides the fixed part: the measured preset for each offload mode.
OFFLOAD_BASE = {"none": "advanced", "model": "lowvram", "sequential": "minvram"}


@dataclass(frozen=True)
class MemoryLayout:
    """The settings that decide peak memory (see the module docstring)."""

    offload: str = "none"
    safety_checker: bool = False
    vae_tiling: bool = False
    fp32: bool = False

    @classmethod
    def of(cls, settings: Any, fp16_runs_as_fp32: bool = False) -> "MemoryLayout":
        """From a preset's settings; `fp16_runs_as_fp32` for GPUs without fast fp16 (nitro runs fp32 there)."""
        fp32 = settings.precision == "float32" or fp16_runs_as_fp32
        return cls(settings.offload, settings.safety_checker, settings.vae.tiling, fp32)


def estimate_peak_gib(layout: MemoryLayout, width: int = 512, height: int = 512, batch_size: int = 1) -> float:
    """Expected allocator peak for one pipeline call: the fixed part plus the extra images' activations.

    Linear in pixels x images: an upper bound where VAE tiling and slicing cap the decode.
    """
    images = batch_size * (width * height) / (512 * 512)
    base = OFFLOAD_BASE[layout.offload]
    per_image = TILED_OFFLOAD_PER_IMAGE_MIB if layout.offload != "none" and layout.vae_tiling else \
        RESIDENT_PER_IMAGE_MIB
    mib = _mib(base) + per_image * (images - 1)
    if layout.safety_checker:
        mib += SAFETY_CHECKER_MIB
    if layout.fp32:
        mib *= FP32_FACTOR
    return mib / 1024


def fits(peak_gib: float, max_vram_gib: float) -> bool:
    return peak_gib * ESTIMATE_MARGIN + HEADROOM_GIB <= max_vram_gib


@dataclass(frozen=True)
class VramPlan:
    preset: str
    overrides: tuple[str, ...]
    expected_peak_gib: float
    fits: bool
    explanation: str


def is_budget(max_vram_gib: float) -> bool:
    """A budget is a positive, finite number of GiB: nan passes `<= 0`, and nan and inf are not JSON (reports)."""
    return math.isfinite(max_vram_gib) and max_vram_gib > 0


def _check_budget(max_vram_gib: float) -> None:
    if not is_budget(max_vram_gib):
        raise ValueError(f"max_vram_gib must be a positive, finite number, not {max_vram_gib}")


def _basis(preset: str, width: int, height: int, batch_size: int, fp32: bool) -> str:
    row = next(f for f in FOOTPRINTS if f.preset == preset)  # every preset the rule picks has a row
    basis = "measured" if row.measured else "not measured yet"
    if (width, height, batch_size) != (512, 512, 1):
        basis += ", scaled by pixels and images"
    if fp32:
        basis += f", x{FP32_FACTOR:.2f} for fp32"
    return basis


def _gib(value: float) -> str:
    """A budget as people write it: `--max-vram 6` stays 6, a card's 3910 MiB is 3.82 (not 3.81836)."""
    return f"{round(value, 2):g}"


def _verdict(preset: str, peak: float, max_vram_gib: float, basis: str) -> str:
    margins = f"{ESTIMATE_MARGIN - 1:.0%} + {HEADROOM_GIB} GiB headroom"
    if fits(peak, max_vram_gib):
        return f"expected peak {peak:.2f} GiB ({basis}) + {margins} fits {_gib(max_vram_gib)} GiB"
    return (f"even {preset} is expected to need {peak:.2f} GiB ({basis}) + {margins}, over "
            f"{_gib(max_vram_gib)} GiB: use smaller images or batches")


def _quantization_override(bitsandbytes_installed: bool) -> tuple[str, str]:
    # NF4 needs bitsandbytes; fp8 storage halves the streamed weights instead, with no extra package.
    if bitsandbytes_installed:
        return "quantization=nf4", ""
    return "quantization=fp8_storage", "bitsandbytes is not installed, so fp8 weight storage replaces NF4"


def plan_for_vram(max_vram_gib: float, *, width: int = 512, height: int = 512, batch_size: int = 1,
                  bitsandbytes_installed: bool = True, fp16_runs_as_fp32: bool = False,
                  user_overrides: tuple[str, ...] = ()) -> VramPlan:
    """The fastest preset expected to fit in `max_vram_gib`, with the overrides it needs here.

    `user_overrides` (the user's --set, applied after the plan's) count in the estimate: `precision=float32`
    doubles it whichever preset is chosen.
    """
    from nitro_cli.presets import load_preset

    _check_budget(max_vram_gib)
    job = f"{width}x{height}, batch {batch_size}"
    for preset in FASTEST_FIRST:
        layout = MemoryLayout.of(load_preset(preset, list(user_overrides)).settings, fp16_runs_as_fp32)
        peak = estimate_peak_gib(layout, width, height, batch_size)
        if fits(peak, max_vram_gib):
            break
    overrides: list[str] = []
    notes: list[str] = []
    if preset == "minvram" and not bitsandbytes_installed:
        override, note = _quantization_override(bitsandbytes_installed)
        overrides.append(override)
        notes.append(note)
    if max(width, height) >= 1024 and not layout.vae_tiling:
        # Decoding 1024x1024 and up is where the VAE's own peak grows; tiling caps it at little cost.
        overrides.append("vae.tiling=true")
        notes.append("VAE tiling for the large image")
    ok = fits(peak, max_vram_gib)
    explanation = f"{preset} for {job}: " + _verdict(preset, peak, max_vram_gib,
                                                     _basis(preset, width, height, batch_size, layout.fp32))
    if preset != FASTEST_FIRST[0] and ok:
        explanation += "; faster presets need more memory"
    if notes:
        explanation += "; " + "; ".join(notes)
    return VramPlan(preset, tuple(overrides), round(peak, 2), ok, explanation)


# What `--max-vram` adds to a preset given by name, in order, until it is expected to fit.
OFFLOAD_ORDER = ("none", "model", "sequential")
FIT_STEPS = (
    ("model CPU offload", "model", ("offload=model", "vae.slicing=true", "vae.tiling=true")),
    ("sequential CPU offload and smaller weights", "sequential",
     ("offload=sequential", "vae.slicing=true", "vae.tiling=true")),
)


def plan_for_preset(preset: str, settings: Any, max_vram_gib: float, *, bitsandbytes_installed: bool = True,
                    fp16_runs_as_fp32: bool = False) -> VramPlan:
    """A chosen preset (its settings, with the user's overrides) fitted into `max_vram_gib`.

    As it is if it is expected to fit; else with the first step of `FIT_STEPS` that is; else the last
    step's overrides with `fits` false and what else would help.
    """
    _check_budget(max_vram_gib)
    width, height, batch_size = settings.width, settings.height, settings.batch_size
    layout = MemoryLayout.of(settings, fp16_runs_as_fp32)
    job = f"{width}x{height}, batch {batch_size}"
    peak = estimate_peak_gib(layout, width, height, batch_size)
    basis = _basis(OFFLOAD_BASE[layout.offload], width, height, batch_size, layout.fp32)
    if fits(peak, max_vram_gib):
        return VramPlan(preset, (), round(peak, 2), True,
                        f"{preset} as it is for {job}: " + _verdict(preset, peak, max_vram_gib, basis))
    for what, offload, overrides in FIT_STEPS:
        if OFFLOAD_ORDER.index(offload) < OFFLOAD_ORDER.index(layout.offload):
            continue  # never trade a leaner setting the preset already has for a heavier one
        stepped = MemoryLayout(offload, layout.safety_checker, True, layout.fp32)
        peak = estimate_peak_gib(stepped, width, height, batch_size)
        step_overrides = list(overrides)
        if offload == "sequential" and settings.quantization == "none":
            step_overrides.append(_quantization_override(bitsandbytes_installed)[0])
        explanation = f"{preset} with {what} for {job}: " + _verdict(
            preset, peak, max_vram_gib, _basis(OFFLOAD_BASE[offload], width, height, batch_size, stepped.fp32))
        if fits(peak, max_vram_gib):
            return VramPlan(preset, tuple(step_overrides), round(peak, 2), True, explanation)
    if layout.safety_checker:
        saved = SAFETY_CHECKER_MIB * (FP32_FACTOR if layout.fp32 else 1) / 1024
        explanation += f"; the safety checker stays on the GPU: --set safety_checker=false saves {saved:.2f} GiB"
    return VramPlan(preset, tuple(step_overrides), round(peak, 2), False, explanation)


def machine_facts(machine: Any, gpu: Any = None) -> dict[str, bool]:
    """What the rule needs to know of a machine, as keyword arguments of plan_for_vram and plan_for_preset:
    whether nitro runs half precision as fp32 on `gpu` (no fast fp16 there; None: no GPU used), and
    whether bitsandbytes is installed (else fp8 storage stands in for NF4)."""
    return {"fp16_runs_as_fp32": gpu is not None and not gpu.fast_fp16,
            "bitsandbytes_installed": bool(machine.packages.get("bitsandbytes"))}


def fit_request(max_vram_gib: float, preset: str | None, overrides: list[str], *, default_preset: str,
                machine: Any, device: str, largest_image: tuple[int, int] | None = None
                ) -> tuple[str, list[str], VramPlan]:
    """`--max-vram`: the preset and overrides to run with, and the plan that chose them.

    No preset given: the fastest preset expected to fit (`plan_for_vram`) at the size and batch the
    request asks for, with the user's overrides after the plan's. A preset given: that preset plus
    what it needs to fit (`plan_for_preset`), added after the user's overrides. Nothing fits: a usage
    error saying why, before anything loads. `largest_image` (width, height): the largest image the
    run makes, where a prompts file's line asks for its own size; the plan is made for that one.
    """
    from nitro_cli.errors import UsageError
    from nitro_cli.presets import load_preset

    facts = machine_facts(machine, machine.gpus[0] if device == "cuda" and machine.has_gpu else None)
    # Only for the estimate: the run itself keeps each image's own size.
    estimate_overrides = list(overrides)
    if largest_image:
        estimate_overrides += [f"width={largest_image[0]}", f"height={largest_image[1]}"]
    if preset is None:
        job = load_preset(default_preset, estimate_overrides).settings
        plan = plan_for_vram(max_vram_gib, width=job.width, height=job.height, batch_size=job.batch_size,
                             user_overrides=tuple(estimate_overrides), **facts)
        chosen, final = plan.preset, list(plan.overrides) + list(overrides)
    else:
        plan = plan_for_preset(preset, load_preset(preset, estimate_overrides).settings, max_vram_gib, **facts)
        chosen, final = preset, list(overrides) + list(plan.overrides)
    if not plan.fits:
        raise UsageError(f"--max-vram {max_vram_gib:g}: {plan.explanation}",
                         hint="use smaller --width/--height or --batch-size, or a larger --max-vram")
    return chosen, final, plan


def describe_choice(max_vram_gib: float, preset: str, plan: VramPlan) -> str:
    """One stderr line: what --max-vram chose and why."""
    added = "".join(f" --set {o}" for o in plan.overrides)
    return f"--max-vram {max_vram_gib:g} GiB: --preset {preset}{added}. {plan.explanation}."
