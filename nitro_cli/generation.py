"""Batch generation: the pipeline-call core that generate and bench share, and generate's run loop.

Prompts are encoded through `PromptCache` (the article's §3.3): with the preset's `prompt_cache` on,
each distinct (prompt, negative prompt) is encoded once and its embeddings reused while it is among the
`PROMPT_CACHE_SIZE` most recently used; off, every call encodes again. Either way the encoding time is
measured apart from denoising.

A run is planned image by image in prompt order (`plan_images`), then images that share size, steps
and CFG scale are grouped into pipeline calls of up to `batch_size` (`group_batches`), across prompts.
Each image has its own generator, so grouping never changes what it depicts; only kernel rounding,
which varies with the batch size, moves a few values by a level or two out of 255.

For throughput (the deploy tier), finished images are encoded and written by `ImageWriter`, a thread
of its own, while the next batch denoises; and with a compiled pipeline a smaller last batch is filled
up to the batch size, since compiled graphs (CUDA graphs above all) are specialised to one batch shape.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nitro_cli import distributed
from nitro_cli.errors import OUT_OF_MEMORY_HINT, RuntimeFailure, UsageError
from nitro_cli.measure import Measurement, measure, timed
from nitro_cli.output import fingerprint, image_name, slug
from nitro_cli.prompts import PromptJob

SEED_MAX = 2**64 - 1  # the largest seed torch.Generator.manual_seed takes
MAX_RUN_IMAGES = 1_000_000  # images one generate run plans (check_run_size)
RESUME_HINT = "finished images are kept: repeat the command with --resume to make the rest"
# Distinct prompts whose embeddings PromptCache keeps (a prompt and its negative: 2 x 77 x 768 values,
# about 0.25 MB in fp16), least recently used first out: a prompts file of many thousands of distinct
# lines would otherwise fill the GPU with embeddings never used again. Repeats come close together
# (a prompt's images are planned in a row; bench repeats one prompt), so a few hundred is plenty.
PROMPT_CACHE_SIZE = 256


class PromptCache:
    def __init__(self, pipe, enabled: bool, size: int = PROMPT_CACHE_SIZE):
        self._pipe = pipe
        # Where the pipeline runs, read once: diffusers' `_execution_device` looks for offload hooks on every
        # module of every component at each read (milliseconds of host time, while the GPU waits).
        self.execution_device = pipe._execution_device
        self.enabled = enabled
        self._size = size
        self._store: OrderedDict[tuple[str, str, bool], tuple[Any, Any]] = OrderedDict()
        self.encode_seconds = 0.0
        self.encodes = 0
        self.hits = 0

    def embeddings(self, prompt: str, negative: str, guidance: float) -> tuple[Any, Any]:
        """(prompt_embeds, negative_prompt_embeds) for one image; the negative is None without guidance."""
        use_guidance = guidance > 1.0  # as the pipeline decides classifier-free guidance
        key = (prompt, negative, use_guidance)
        if self.enabled and key in self._store:
            self.hits += 1
            self._store.move_to_end(key)
            return self._store[key]
        import torch

        # Without autograd: diffusers' encode_prompt, called outside the pipeline's own no_grad, recorded the text
        # encoder's graph, and each cached embedding kept its saved activations alive: 27 MiB per encode of SD 1.x's
        # text encoder in fp16 (counted with saved_tensors_hooks on a CPU), against 0.1 MiB of embeddings.
        with timed(str(self.execution_device)) as encoding, torch.no_grad():
            encoded = self._pipe.encode_prompt(prompt, self.execution_device, 1, use_guidance,
                                               negative_prompt=negative or None)
        self.encode_seconds += encoding.seconds
        self.encodes += 1
        if self.enabled:
            self._store[key] = encoded
            if len(self._store) > self._size:
                self._store.popitem(last=False)
        return encoded

    def stats(self) -> "CacheStats":
        return CacheStats(self.enabled, self.encodes, self.hits, self.encode_seconds)


@dataclass(frozen=True)
class CacheStats:
    """What a run's prompt cache did; `total` adds up those of several processes."""

    enabled: bool
    encodes: int = 0
    hits: int = 0
    encode_seconds: float = 0.0

    @staticmethod
    def total(parts: list["CacheStats"]) -> "CacheStats":
        return CacheStats(any(p.enabled for p in parts), sum(p.encodes for p in parts), sum(p.hits for p in parts),
                          sum(p.encode_seconds for p in parts))


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


def to_pil_images(pixels) -> list:
    """Images in [0, 1] to PIL images with diffusers' arithmetic (`numpy_to_pil`: float32, times 255, rounded,
    uint8), done on the pixels' own device. On a GPU it takes microseconds and the host only copies bytes,
    where diffusers' numpy path costs the host tens of milliseconds per 512x512 image, during which the GPU
    waits for the next batch."""
    import torch
    from PIL import Image

    arrays = (pixels.float().permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(array) for array in arrays]


def run_batch(pipe, cache: PromptCache, prompts: list[str], negatives: list[str], seeds: list[int], *,
              steps: int, guidance: float, width: int, height: int,
              on_step_end: Callable | None = None) -> BatchResult:
    """Denoise and decode one batch. Each image gets its own generator, so image i depends only on its
    own seed: batched and one-by-one runs give the same pixels but for kernel rounding. The generators
    live on the execution device (`cache.execution_device`, that of `pipe`): ancestral samplers (Euler a)
    draw noise at every step, and noise drawn on the CPU is a blocking copy, a host-device sync per step
    in a launch-bound loop. So a seed's image is the same on every run of one machine, not across CPU and
    GPU. `on_step_end` is diffusers' `callback_on_step_end(pipe, step, timestep, tensors) -> tensors`.

    The pipeline stops at latents so that decoding can be checked (`decode_latents`); the safety
    checker then runs as the pipeline would run it, blacking out what it flags. Seeds past the last
    prompt are filling (`generate_images`' fixed batch shape): they reuse the last prompt's embeddings
    without asking the cache, so its counts stay those of the real images."""
    import torch

    pairs = [cache.embeddings(p, n, guidance) for p, n in zip(prompts, negatives)]
    pairs += [pairs[-1]] * (len(seeds) - len(pairs))
    prompt_embeds = torch.cat([p for p, _ in pairs])
    negative_embeds = torch.cat([n for _, n in pairs]) if pairs[0][1] is not None else None
    with torch.inference_mode():
        latents = pipe(
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
            num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
            generator=[torch.Generator(cache.execution_device).manual_seed(seed) for seed in seeds],
            output_type="latent", callback_on_step_end=on_step_end,
        ).images
        pixels, redecoded = decode_latents(pipe, latents)
        pixels, nsfw = pipe.run_safety_checker(pixels, cache.execution_device, prompt_embeds.dtype)
        nsfw = [bool(flag) for flag in nsfw] if nsfw is not None else [False] * len(seeds)
        images = to_pil_images(pipe.image_processor.postprocess(pixels, output_type="pt",
                                                                do_denormalize=[not f for f in nsfw]))
    pipe.maybe_free_model_hooks()  # model offload: the VAE goes back to the CPU too
    return BatchResult(images=list(images), nsfw=nsfw, redecoded=redecoded)


def request_fingerprint(model: str, settings, jobs: list[PromptJob], num_images: int, seed: int | None) -> str:
    """What decides a run's images, hashed for `--resume` (batch size left out: it changes no pixels)."""
    from nitro_cli.presets import flatten

    pixels_settings = {key: value for key, value in flatten(settings).items() if key != "batch_size"}
    return fingerprint({"model": model, "settings": pixels_settings, "num_images": num_images, "seed": seed,
                        "prompts": [[j.prompt, j.negative, j.seed, j.steps, j.guidance, j.width, j.height, j.images]
                                    for j in jobs]})


@dataclass(frozen=True)
class PlannedImage:
    """One image of a run: its prompt, its seed and the file name it will have."""

    job: PromptJob
    seed: int
    name: str


def _first_seeds(jobs: list[PromptJob], num_images: int, first_seed: int) -> list[int]:
    """Each prompt's first seed; its k-th image has that seed + k. Image i of the run has seed first_seed + i,
    unless its prompt line set `--seed S`: then S is the prompt's first seed."""
    seeds, before = [], 0
    for job in jobs:
        seeds.append(job.seed if job.seed is not None else first_seed + before)
        before += job.image_count(num_images)
    return seeds


def plan_images(jobs: list[PromptJob], num_images: int, first_index: int, first_seed: int) -> list[PlannedImage]:
    """Every image of the run in prompt order (`num_images` of each prompt, or its line's own count): image i
    has file number first_index + i and the seed `_first_seeds` gives. A prompt's slug is made once, not per
    image (`-n 1000000` of one prompt)."""
    planned = []
    for job, start in zip(jobs, _first_seeds(jobs, num_images, first_seed)):
        prompt_slug = slug(job.prompt)
        for seed in range(start, start + job.image_count(num_images)):
            planned.append(PlannedImage(job, seed, image_name(first_index + len(planned), seed, prompt_slug)))
    return planned


def check_run_size(jobs: list[PromptJob], num_images: int) -> None:
    """A run's images are planned (and seeds checked) one by one before the model loads: `-n 10**20` would
    plan forever and fill memory, and past 2**32 images no seed range is left to draw from. A million
    images plan in seconds and about 300 MB (a day of a fast GPU); a larger set is several runs into the
    same --out, which numbers on."""
    total = sum(job.image_count(num_images) for job in jobs)
    if total > MAX_RUN_IMAGES:
        if any(job.images is not None for job in jobs):
            per = "counting the prompts file's --n_iter x --batch_size"
        else:
            per = f"{len(jobs)} prompts x {num_images}" if len(jobs) > 1 else f"--num-images {num_images}"
        raise UsageError(f"a run makes at most {MAX_RUN_IMAGES} images, not {total} ({per})",
                         hint="split the work into several runs with the same --out: their file numbers follow on")


def check_seeds(jobs: list[PromptJob], num_images: int, seed: int | None) -> None:
    """Every seed the plan gives (a prompt's k-th image: its first seed + k) fits the generator: a UsageError
    before anything is written or loaded. Drawn seeds are small; only given ones can be too large. Checked
    per prompt, from its last seed, without planning every image: a million-image run would plan twice."""
    for job, start in zip(jobs, _first_seeds(jobs, num_images, seed or 0)):
        if start + job.image_count(num_images) - 1 > SEED_MAX:
            from_line = job.seed is not None and job.line
            where = f"prompts file line {job.line}: " if from_line else ""
            raise UsageError(f"{where}seed {max(start, SEED_MAX + 1)} is too large: seeds go up to {SEED_MAX} "
                             "(2**64 - 1)",
                             hint=f"image i of a prompt uses its seed + i: give a smaller --seed"
                                  f"{' on that line' if from_line else ''}")


def group_batches(images: list[PlannedImage], batch_size: int) -> list[list[PlannedImage]]:
    """Pipeline calls: images sharing size, steps and CFG scale go together (any prompts), in plan order."""
    groups: dict[tuple, list[PlannedImage]] = {}
    for image in images:
        groups.setdefault((image.job.width, image.job.height, image.job.steps, image.job.guidance), []).append(image)
    return [group[start:start + batch_size] for group in groups.values() for start in range(0, len(group), batch_size)]


class StopAfterStep:
    """Ctrl-C (and SIGTERM, which `kill`, `timeout` and job schedulers send) for a run: the first signal
    only sets a flag, checked after each denoising step and between batches, so the run stops cleanly
    (KeyboardInterrupt) with every finished image saved; a second one acts as it did before the run (for
    `nitro`: stop at once). Outside the main thread signals can't be caught: a no-op. A signal the process
    was started ignoring stays ignored: a shell script's `nitro generate ... &` is shielded from the terminal's
    Ctrl-C that way (as `nohup` shields it from SIGHUP), and Python keeps SIG_IGN too."""

    SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self):
        self.requested = False
        self._installed = threading.current_thread() is threading.main_thread()
        self._previous = {signum: previous for signum in self.SIGNALS
                          if (previous := signal.getsignal(signum)) != signal.SIG_IGN}

    def __enter__(self) -> "StopAfterStep":
        if self._installed:
            for signum in self._previous:
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._installed:
            self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            # None: a handler not set from Python; the interpreter's own default stands in for it.
            fallback = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            signal.signal(signum, previous if previous is not None else fallback)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self._restore()
        if distributed.rank() == 0:  # a terminal's Ctrl-C reaches every process of a launched run: said once
            name = self.SIGNALS[signum]
            print(f"{name}: stopping after the current step (a second {name} stops at once)...", file=sys.stderr)

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


class ImageWriter:
    """Saves finished images on a thread of its own, so PNG encoding and disk writes overlap the next
    batch's denoising. The queue holds at most `capacity` images, so a disk slower than the GPU holds
    the run back instead of filling memory. Images are saved and reported (`observer.image_done`) in the
    order they were handed over.

    A failure on the thread is raised in the calling thread at the next `put` or on leaving the `with`
    block; meanwhile the thread keeps draining the queue, so `put` never waits on a dead writer. Leaving
    the block, even by Ctrl-C, waits for every image handed over; the thread is not a daemon, so even a
    second Ctrl-C during that wait lets it finish them before the process exits."""

    def __init__(self, save: Callable[[PlannedImage, Any], Path], observer: RunObserver, capacity: int):
        self._save, self._observer = save, observer
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._closing = threading.Event()
        self._error: BaseException | None = None
        self.results: list[ImageResult] = []
        self._thread = threading.Thread(target=self._run, name="nitro-image-writer")

    def __enter__(self) -> "ImageWriter":
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        # An event, not a sentinel in the queue: setting it never waits, so an interrupt can't lose it.
        self._closing.set()
        self._thread.join()
        if exc_type is None:
            self._raise_if_failed()

    def put(self, result: ImageResult, image) -> None:
        self._raise_if_failed()
        self._queue.put((result, image))

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            try:
                result, image = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            if self._error is None:
                try:
                    self._write(result, image)
                except BaseException as exc:  # raised again in the calling thread
                    self._error = exc

    def _write(self, result: ImageResult, image) -> None:
        if not result.blocked:
            try:
                result.path = self._save(result.planned, image)
            except FileExistsError as exc:  # the file was left as it is: another run wrote it meanwhile
                raise RuntimeFailure(f"{exc.filename} appeared while this run was making it: another run is "
                                     "writing to the same --out",
                                     hint="give each run its own --out; finished images are kept: repeat the "
                                          "command with --resume when the other run is done") from exc
            except OSError as exc:
                raise RuntimeFailure(f"could not write {result.planned.name}: {exc.strerror or exc}",
                                     hint="check free disk space and write permission of the --out folder; "
                                          "finished images are kept: repeat the command with --resume") from exc
        self.results.append(result)
        self._observer.image_done(result)


def generate_images(pipe, cache: PromptCache, device: str, images: list[PlannedImage], *, batch_size: int,
                    save: Callable[[PlannedImage, Any], Path], observer: RunObserver,
                    fixed_batch_shape: bool = False) -> list[ImageResult]:
    """Generate and save `images` batch by batch; saving runs on an `ImageWriter` thread. Ctrl-C stops
    after the current step (KeyboardInterrupt, every image already denoised saved); CUDA out of memory
    is a RuntimeFailure naming lighter settings.

    `fixed_batch_shape`: every pipeline call gets `batch_size` images. A smaller batch is filled with
    copies of its last image (same prompt, same seed), whose outputs are dropped: for a compiled
    pipeline one more batch of work is cheaper than compiling for a new shape. Each image has its own
    generator, so the filling changes no real image's pixels."""
    import torch

    with StopAfterStep() as stop, ImageWriter(save, observer, capacity=2 * batch_size) as writer:
        def on_step_end(pipe, step, timestep, tensors):
            observer.step_done(step + 1, pipe.num_timesteps)
            stop.check()
            return tensors

        for batch in group_batches(images, batch_size):
            stop.check()
            observer.batch_started(batch)
            job = batch[0].job
            called = batch + [batch[-1]] * (batch_size - len(batch)) if fixed_batch_shape else batch
            try:
                with measure(device) as taken:
                    result = run_batch(pipe, cache, [i.job.prompt for i in batch], [i.job.negative for i in batch],
                                       [i.seed for i in called], steps=job.steps, guidance=job.guidance,
                                       width=job.width, height=job.height, on_step_end=on_step_end)
            except torch.OutOfMemoryError:
                raise RuntimeFailure(f"CUDA out of memory generating {len(called)} image(s) of "
                                     f"{job.width}x{job.height}", hint=f"{OUT_OF_MEMORY_HINT}; {RESUME_HINT}") from None
            # zip stops at the real images: the filling's outputs are dropped here.
            for planned, image, blocked, redecoded in zip(batch, result.images, result.nsfw, result.redecoded):
                writer.put(ImageResult(planned, None, taken.seconds / len(batch), job.steps / taken.seconds,
                                       len(batch), taken, blocked=blocked, redecoded=redecoded), image)
    return writer.results
