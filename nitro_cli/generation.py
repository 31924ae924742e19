"""Batch generation: the pipeline-call core that generate and bench share, and generate's run loop.

Prompts are encoded through `PromptCache` (the article's §3.3): with the preset's `prompt_cache` on,
each distinct (prompt, negative prompt) is encoded once per run and its embeddings reused; off, every
call encodes again. Either way the encoding time is measured apart from denoising.

A run is planned image by image in prompt order (`plan_images`), then images that share size, steps
and CFG scale are grouped into pipeline calls of up to `batch_size` (`group_batches`), across prompts.
Each image has its own generator, so grouping never changes its pixels.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nitro_cli.errors import RuntimeFailure
from nitro_cli.measure import Measurement, measure, synchronize
from nitro_cli.output import fingerprint, image_name
from nitro_cli.prompts import PromptJob

OOM_HINT = ("lighter settings that fit: --batch-size 1, --set offload=model (or sequential), or --preset lowvram; "
            "finished images are kept: repeat the command with --resume to make the rest")


class PromptCache:
    def __init__(self, pipe, device: str, enabled: bool):
        self._pipe = pipe
        self._device = device
        self.enabled = enabled
        self._store: dict[tuple[str, str, bool], tuple[Any, Any]] = {}
        self.encode_seconds = 0.0
        self.encodes = 0
        self.hits = 0

    def embeddings(self, prompt: str, negative: str, guidance: float) -> tuple[Any, Any]:
        """(prompt_embeds, negative_prompt_embeds) for one image; the negative is None without guidance."""
        use_guidance = guidance > 1.0  # as the pipeline decides classifier-free guidance
        key = (prompt, negative, use_guidance)
        if self.enabled and key in self._store:
            self.hits += 1
            return self._store[key]
        start = time.perf_counter()
        encoded = self._pipe.encode_prompt(prompt, self._pipe._execution_device, 1, use_guidance,
                                           negative_prompt=negative or None)
        synchronize(self._device)
        self.encode_seconds += time.perf_counter() - start
        self.encodes += 1
        if self.enabled:
            self._store[key] = encoded
        return encoded


@dataclass
class BatchResult:
    images: list          # PIL images, one per seed
    nsfw: list[bool]      # the safety checker's verdict per image (all False without a checker)
    redecoded: list[bool] = field(default_factory=list)  # decoded again with the VAE in fp32 (NaN guard)


def _is_broken(pixels) -> bool:
    """NaN/inf, or every pixel at black: what an fp16 VAE overflow produces."""
    import torch

    return not bool(torch.isfinite(pixels).all()) or bool((pixels <= -1.0).all())


def decode_latents(pipe, latents) -> tuple[Any, list[bool]]:
    """Pixels in [-1, 1] from latents. An image that comes out NaN or black from a half-precision VAE
    is decoded again with the VAE in fp32, which stays fp32 for the rest of the run (as AUTOMATIC1111's
    automatic VAE precision does); the flags say which images were."""
    import torch

    vae = pipe.vae
    scale = vae.config.scaling_factor
    pixels = vae.decode(latents.to(vae.dtype) / scale, return_dict=False)[0]
    broken = [i for i in range(len(pixels)) if _is_broken(pixels[i])]
    if not broken or vae.dtype == torch.float32:
        return pixels, [False] * len(pixels)
    vae.to(torch.float32)
    pixels = pixels.float()
    pixels[broken] = vae.decode(latents[broken].float() / scale, return_dict=False)[0]
    return pixels, [i in broken for i in range(len(pixels))]


def run_batch(pipe, cache: PromptCache, prompts: list[str], negatives: list[str], seeds: list[int], *,
              steps: int, guidance: float, width: int, height: int,
              on_step_end: Callable | None = None) -> BatchResult:
    """Denoise and decode one batch. Each image gets its own generator, so image i depends only on its
    own seed: batched and one-by-one runs give the same pixels. The generators live on the execution
    device: ancestral samplers (Euler a) draw noise at every step, and noise drawn on the CPU is a
    blocking copy, a host-device sync per step in a launch-bound loop. So a seed's image is the same
    on every run of one machine, not across CPU and GPU. `on_step_end` is
    diffusers' `callback_on_step_end(pipe, step, timestep, tensors) -> tensors`.

    The pipeline stops at latents so that decoding can be checked (`decode_latents`); the safety
    checker then runs as the pipeline would run it, blacking out what it flags."""
    import torch

    pairs = [cache.embeddings(p, n, guidance) for p, n in zip(prompts, negatives)]
    prompt_embeds = torch.cat([p for p, _ in pairs])
    negative_embeds = torch.cat([n for _, n in pairs]) if pairs[0][1] is not None else None
    kwargs: dict[str, Any] = {}
    if on_step_end is not None:
        kwargs["callback_on_step_end"] = on_step_end
    with torch.inference_mode():
        latents = pipe(
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
            num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
            generator=[torch.Generator(pipe._execution_device).manual_seed(seed) for seed in seeds],
            output_type="latent", **kwargs,
        ).images
        pixels, redecoded = decode_latents(pipe, latents)
        pixels, nsfw = pipe.run_safety_checker(pixels, pipe._execution_device, prompt_embeds.dtype)
        nsfw = [bool(flag) for flag in nsfw] if nsfw is not None else [False] * len(seeds)
        images = pipe.image_processor.postprocess(pixels, output_type="pil", do_denormalize=[not f for f in nsfw])
    pipe.maybe_free_model_hooks()  # model offload: the VAE goes back to the CPU too
    return BatchResult(images=list(images), nsfw=nsfw, redecoded=redecoded)


def request_fingerprint(model: str, settings, jobs: list[PromptJob], num_images: int, seed: int | None) -> str:
    """What decides a run's images, hashed for `--resume` (batch size left out: it changes no pixels)."""
    from nitro_cli.presets import flatten

    pixels_settings = {key: value for key, value in flatten(settings).items() if key != "batch_size"}
    return fingerprint({"model": model, "settings": pixels_settings, "num_images": num_images, "seed": seed,
                        "prompts": [[j.prompt, j.negative, j.seed, j.steps, j.guidance, j.width, j.height] for j in jobs]})


@dataclass(frozen=True)
class PlannedImage:
    """One image of a run: its place in prompt order, its seed and the file name it will have."""

    index: int
    job: PromptJob
    seed: int
    name: str


def plan_images(jobs: list[PromptJob], num_images: int, first_index: int, first_seed: int) -> list[PlannedImage]:
    """Every image of the run in prompt order. Image i has file number first_index + i and seed
    first_seed + i, unless its prompt line set `--seed S`: then that prompt's k-th image has S + k."""
    planned = []
    for job in jobs:
        for k in range(num_images):
            i = len(planned)
            seed = job.seed + k if job.seed is not None else first_seed + i
            planned.append(PlannedImage(i, job, seed, image_name(first_index + i, seed, job.prompt)))
    return planned


def group_batches(images: list[PlannedImage], batch_size: int) -> list[list[PlannedImage]]:
    """Pipeline calls: images sharing size, steps and CFG scale go together (any prompts), in plan order."""
    groups: dict[tuple, list[PlannedImage]] = {}
    for image in images:
        groups.setdefault((image.job.width, image.job.height, image.job.steps, image.job.guidance), []).append(image)
    return [group[start:start + batch_size] for group in groups.values() for start in range(0, len(group), batch_size)]


class StopAfterStep:
    """Ctrl-C handling for a run: the first SIGINT only sets a flag, checked after each denoising step
    and between batches, so the run stops cleanly (KeyboardInterrupt) with every finished image saved;
    a second SIGINT interrupts at once. Outside the main thread signals can't be caught: a no-op."""

    def __init__(self):
        self.requested = False
        self._installed = threading.current_thread() is threading.main_thread()
        self._previous = signal.getsignal(signal.SIGINT)

    def __enter__(self) -> "StopAfterStep":
        if self._installed:
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("Stopping after the current step (Ctrl-C again to stop at once)...", file=sys.stderr)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


@dataclass
class ImageResult:
    planned: PlannedImage
    path: Path | None          # None when the safety checker blocked it (nothing saved)
    seconds: float             # the batch's time shared by its images
    it_per_s: float            # denoising steps per second of the batch call
    batch_size: int
    measurement: Measurement
    blocked: bool = False
    redecoded: bool = False


class RunObserver:
    """What the run loop reports to (progress display, JSON lines): every method optional to override."""

    def batch_started(self, batch: list[PlannedImage]) -> None: ...
    def step_done(self, step: int, total: int) -> None: ...
    def image_done(self, result: ImageResult) -> None: ...


def generate_images(pipe, cache: PromptCache, device: str, images: list[PlannedImage], *, batch_size: int,
                    save: Callable[[PlannedImage, Any], Path], observer: RunObserver) -> list[ImageResult]:
    """Generate and save `images` batch by batch. Ctrl-C stops after the current step (KeyboardInterrupt,
    finished images kept); CUDA out of memory is a RuntimeFailure naming lighter settings."""
    import torch

    results = []
    with StopAfterStep() as stop:
        def on_step_end(pipe, step, timestep, tensors):
            observer.step_done(step + 1, pipe.num_timesteps)
            stop.check()
            return tensors

        for batch in group_batches(images, batch_size):
            stop.check()
            observer.batch_started(batch)
            job = batch[0].job
            try:
                with measure(device) as taken:
                    result = run_batch(pipe, cache, [i.job.prompt for i in batch], [i.job.negative for i in batch],
                                       [i.seed for i in batch], steps=job.steps, guidance=job.guidance,
                                       width=job.width, height=job.height, on_step_end=on_step_end)
            except torch.OutOfMemoryError:
                raise RuntimeFailure(f"CUDA out of memory generating {len(batch)} image(s) of "
                                     f"{job.width}x{job.height}", hint=OOM_HINT) from None
            for planned, image, blocked, redecoded in zip(batch, result.images, result.nsfw, result.redecoded):
                path = None if blocked else save(planned, image)
                done = ImageResult(planned, path, taken.seconds / len(batch), job.steps / taken.seconds,
                                   len(batch), taken, blocked=blocked, redecoded=redecoded)
                results.append(done)
                observer.image_done(done)
    return results
