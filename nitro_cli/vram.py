"""Which settings fit a VRAM budget: the measured figures in one table, and a pure rule over them.

No torch here: `--max-vram` and `doctor` pass a number of GiB (and the size of the job) and get back a
preset name, `--set` overrides and a sentence saying why. The figures are peak *allocated* memory
(`torch.cuda.max_memory_allocated`) at 512x512, batch 1, 25 steps; the CUDA context and the caching
allocator's slack come on top, hence `HEADROOM_GIB`.
"""

from __future__ import annotations

from dataclasses import dataclass

MEASURED_H200 = "shared/reference/measured-h200.md (one H200, random weights with SD 1.5's shapes)"

# CUDA context (about 0.3-0.5 GiB, outside max_memory_allocated) plus the allocator's fragmentation.
HEADROOM_GIB = 0.5

# Activations and VAE decode of one more 512x512 image, fp16: the batch-8 run peaked at 6.82 GiB
# against 2.66 GiB for batch 1, (6.82 - 2.66) / 7 per image.
FP16_PER_IMAGE_GIB = (6.82 - 2.66) / 7


@dataclass(frozen=True)
class Footprint:
    """One preset's memory and time at 512x512, batch 1, and where those figures come from."""

    preset: str
    peak_gib: float
    seconds_per_image: float | None
    per_image_gib: float
    source: str
    measured: bool = True


# Fastest first: the rule takes the first one that fits. `lowvram` and `minvram` come last because they
# are slower, not because the others are unmeasured. Update a row when `nitro bench` measures it.
FOOTPRINTS: tuple[Footprint, ...] = (
    Footprint("advanced", 2.66, 0.675, FP16_PER_IMAGE_GIB,
              f"fp16, DPM++ 2M Karras 25 steps, no safety checker: {MEASURED_H200}"),
    Footprint("beginner", 3.21, 0.655, FP16_PER_IMAGE_GIB,
              f"fp16, Euler a 25 steps, safety checker on: {MEASURED_H200}"),
    Footprint("lowvram", 1.77, 1.263, FP16_PER_IMAGE_GIB,
              f"fp16 + enable_model_cpu_offload(): {MEASURED_H200}"),
    Footprint("minvram", 1.0, None, FP16_PER_IMAGE_GIB,
              "the 1.0 GiB target of issue 7 (sequential offload + NF4), not yet measured on a GPU",
              measured=False),
)


@dataclass(frozen=True)
class VramPlan:
    preset: str
    overrides: tuple[str, ...]
    expected_peak_gib: float
    fits: bool
    explanation: str


def expected_peak_gib(footprint: Footprint, width: int = 512, height: int = 512, batch_size: int = 1) -> float:
    """Peak at this size and batch: the fixed part (weights) plus activations scaled by pixels x images.

    Linear scaling is an upper bound for presets with VAE tiling and slicing, which cap the decode.
    """
    images = batch_size * (width * height) / (512 * 512)
    return footprint.peak_gib + footprint.per_image_gib * (images - 1)


def plan_for_vram(max_vram_gib: float, *, width: int = 512, height: int = 512, batch_size: int = 1,
                  bitsandbytes_installed: bool = True) -> VramPlan:
    """The fastest preset expected to fit in `max_vram_gib`, with the overrides it needs here."""
    if max_vram_gib <= 0:
        raise ValueError(f"max_vram_gib must be positive, not {max_vram_gib}")
    usable = max_vram_gib - HEADROOM_GIB
    job = f"{width}x{height}, batch {batch_size}"
    chosen, peak = FOOTPRINTS[-1], expected_peak_gib(FOOTPRINTS[-1], width, height, batch_size)
    for footprint in FOOTPRINTS:
        estimate = expected_peak_gib(footprint, width, height, batch_size)
        if estimate <= usable:
            chosen, peak = footprint, estimate
            break
    fits = peak <= usable
    overrides: list[str] = []
    notes: list[str] = []
    if chosen.preset == "minvram" and not bitsandbytes_installed:
        # NF4 needs bitsandbytes; fp8 storage halves the streamed weights instead, with no extra package.
        overrides.append("quantization=fp8_storage")
        notes.append("bitsandbytes is not installed, so fp8 weight storage replaces NF4")
    if max(width, height) >= 1024 and chosen.preset not in ("lowvram", "minvram"):
        # Decoding 1024x1024 and up is where the VAE's own peak grows; tiling caps it at little cost.
        overrides.append("vae.tiling=true")
        notes.append("VAE tiling for the large image")
    basis = "measured" if chosen.measured else "not measured yet"
    if (width, height, batch_size) != (512, 512, 1):
        basis += " at 512x512 batch 1, scaled by pixels and images"
    verdict = (f"expected peak {peak:.2f} GiB ({basis}) + {HEADROOM_GIB} GiB headroom fits {max_vram_gib:g} GiB"
               if fits else
               f"even {chosen.preset} is expected to need {peak:.2f} GiB + {HEADROOM_GIB} GiB headroom, over "
               f"{max_vram_gib:g} GiB: use smaller images or batches")
    explanation = f"{chosen.preset} for {job}: {verdict}"
    if chosen is not FOOTPRINTS[0] and fits:
        explanation += "; faster presets need more memory"
    if notes:
        explanation += "; " + "; ".join(notes)
    return VramPlan(chosen.preset, tuple(overrides), round(peak, 2), fits, explanation + f" [{chosen.source}]")
