"""One pipeline call for a batch of images: the core that generate and bench share.

Prompts are encoded through `PromptCache` (the article's §3.3): with the preset's `prompt_cache` on,
each distinct (prompt, negative prompt) is encoded once per run and its embeddings reused; off, every
call encodes again. Either way the encoding time is measured apart from denoising.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from nitro_cli.measure import synchronize


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


def run_batch(pipe, cache: PromptCache, prompts: list[str], negatives: list[str], seeds: list[int], *,
              steps: int, guidance: float, width: int, height: int,
              on_step_end: Callable | None = None) -> BatchResult:
    """Denoise and decode one batch. Each image gets its own CPU generator, so image i depends only on
    its own seed: batched and one-by-one runs give the same pixels, on any device."""
    import torch

    pairs = [cache.embeddings(p, n, guidance) for p, n in zip(prompts, negatives)]
    prompt_embeds = torch.cat([p for p, _ in pairs])
    negative_embeds = torch.cat([n for _, n in pairs]) if pairs[0][1] is not None else None
    kwargs: dict[str, Any] = {}
    if on_step_end is not None:
        kwargs["callback_on_step_end"] = on_step_end
    with torch.inference_mode():
        result = pipe(
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
            num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds], **kwargs,
        )
    nsfw = result.nsfw_content_detected or [False] * len(seeds)
    return BatchResult(images=list(result.images), nsfw=[bool(flag) for flag in nsfw])
