"""DeepCache-style feature caching for the Stable Diffusion 1.x UNet (Ma et al. 2023, arXiv:2312.00858).

Every `interval`-th denoising step runs the whole UNet and keeps the hidden state that enters the
second-to-last layer of the last up block; the steps in between run only a shallow branch (time
embedding, `conv_in`, the first layer of the first down block, the last two up layers, the output
head) on top of that cached feature. This is DeepCache's default for SD (cache_layer_id=0,
cache_block_id=0): the deep features change slowly between adjacent steps, so the shallow step reuses
them at a small cost in fidelity.

Both paths are explicit functions of tensors (the SD 1.x case of `UNet2DConditionModel.forward`: no
class labels, added conditions, ControlNet/adapter residuals or masks), so `torch.compile(fullgraph=True)`
traces each of them whole. Anything else goes to the UNet's own forward, uncached.
"""

from __future__ import annotations

from typing import Any, Callable

FREEU_ATTRIBUTES = ("s1", "s2", "b1", "b2")


def _freeu_enabled(unet) -> bool:
    # The same test diffusers' up blocks make before applying FreeU.
    return any(all(getattr(block, name, None) for name in FREEU_ATTRIBUTES) for block in unet.up_blocks)


def feature_cache_blocker(unet) -> str | None:
    """None when `unet` has the layout this cache needs (SD1.x-style UNet2DConditionModel: down_blocks[0] with
    resnets, last up block with >= 2 layers and no upsampler, no class embedding / addition embedding /
    encoder_hid_proj / FreeU); else a short reason for users."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.unets.unet_2d_blocks import (
        CrossAttnDownBlock2D,
        CrossAttnUpBlock2D,
        DownBlock2D,
        UpBlock2D,
    )

    if not isinstance(unet, UNet2DConditionModel):
        return f"needs a UNet2DConditionModel, not {type(unet).__name__}"
    if isinstance(getattr(unet, "forward", None), _Dispatcher):
        return "the UNet already has a feature cache"
    if hasattr(unet, "_hf_hook"):
        return "the UNet has accelerate hooks (CPU offload), which the cached paths would bypass"
    if unet.class_embedding is not None:
        return "the UNet has a class embedding (not SD 1.x)"
    if unet.config.addition_embed_type is not None:
        return f"the UNet has an addition embedding ({unet.config.addition_embed_type}, not SD 1.x)"
    if unet.encoder_hid_proj is not None:
        return "the UNet projects its encoder states (encoder_hid_proj, not SD 1.x)"
    if _freeu_enabled(unet):
        return "FreeU is enabled"
    first = unet.down_blocks[0]
    if not isinstance(first, (DownBlock2D, CrossAttnDownBlock2D)) or len(first.resnets) == 0:
        return f"the first down block ({type(first).__name__}) is not an SD 1.x down block"
    last = unet.up_blocks[-1]
    if not isinstance(last, (UpBlock2D, CrossAttnUpBlock2D)):
        return f"the last up block ({type(last).__name__}) is not an SD 1.x up block"
    if len(last.resnets) < 2:
        return "the last up block has fewer than 2 layers"
    if last.upsamplers is not None:
        return "the last up block has an upsampler"
    return None


class _Dispatcher:
    """The UNet's `forward` while the cache is on: full or shallow step, or the UNet's own forward."""

    def __init__(self, cache: FeatureCache):
        self.cache = cache

    def __call__(self, sample, timestep, encoder_hidden_states, class_labels=None, timestep_cond=None,
                 attention_mask=None, cross_attention_kwargs=None, added_cond_kwargs=None,
                 down_block_additional_residuals=None, mid_block_additional_residual=None,
                 down_intrablock_additional_residuals=None, encoder_attention_mask=None, return_dict=True):
        cache = self.cache
        extras = (class_labels, timestep_cond, attention_mask, cross_attention_kwargs, added_cond_kwargs,
                  down_block_additional_residuals, mid_block_additional_residual,
                  down_intrablock_additional_residuals, encoder_attention_mask)
        if any(extra is not None for extra in extras) or _freeu_enabled(cache.unet):
            return cache.original_forward(
                sample, timestep, encoder_hidden_states, class_labels=class_labels,
                timestep_cond=timestep_cond, attention_mask=attention_mask,
                cross_attention_kwargs=cross_attention_kwargs, added_cond_kwargs=added_cond_kwargs,
                down_block_additional_residuals=down_block_additional_residuals,
                mid_block_additional_residual=mid_block_additional_residual,
                down_intrablock_additional_residuals=down_intrablock_additional_residuals,
                encoder_attention_mask=encoder_attention_mask, return_dict=return_dict)
        output = cache.step(sample, timestep, encoder_hidden_states)
        if not return_dict:
            return (output,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=output)


class FeatureCache:
    """Full UNet every `interval`-th step, shallow branch on the cached feature in between."""

    def __init__(self, unet, interval: int, step_index: Callable[[], int | None]):
        if interval < 2:
            raise ValueError(f"interval must be at least 2 (got {interval}): 1 would never use the cache")
        self.unet = unet
        self.interval = interval
        self.step_index = step_index
        self.full_calls = 0
        self.shallow_calls = 0
        # The functions each step calls: the plain paths, or their compiled versions after compile().
        self._full = self.full_path
        self._shallow = self.shallow_path
        self._feature = None
        self._feature_key: tuple | None = None
        self._had_own_forward = "forward" in unet.__dict__
        self.original_forward = unet.forward

    # -- the two paths: pure functions of tensors -------------------------------------------------------

    def _embed(self, sample, timestep):
        """Step 0 and 1 of diffusers' forward for SD 1.x: centered input and the time embedding."""
        unet = self.unet
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        return sample, emb

    def _last_up_layer(self, j: int, hidden, skip, emb, context):
        """Layer `j` of the last up block, as CrossAttnUpBlock2D/UpBlock2D run it (FreeU off)."""
        import torch

        last = self.unet.up_blocks[-1]
        hidden = last.resnets[j](torch.cat([hidden, skip], dim=1), emb)
        if getattr(last, "attentions", None):
            hidden = last.attentions[j](hidden, encoder_hidden_states=context, return_dict=False)[0]
        return hidden

    def _head(self, hidden):
        unet = self.unet
        if unet.conv_norm_out:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)

    def full_path(self, sample, timestep, context):
        """The whole UNet; returns (output, the hidden state entering the last up block's layer n-2)."""
        unet = self.unet
        up_factor = 2 ** unet.num_upsamplers
        forward_upsample_size = any(dim % up_factor != 0 for dim in sample.shape[-2:])
        upsample_size = None
        sample, emb = self._embed(sample, timestep)
        sample = unet.conv_in(sample)
        skips = (sample,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, block_skips = block(hidden_states=sample, temb=emb, encoder_hidden_states=context)
            else:
                sample, block_skips = block(hidden_states=sample, temb=emb)
            skips += block_skips
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                sample = unet.mid_block(sample, emb, encoder_hidden_states=context)
            else:
                sample = unet.mid_block(sample, emb)
        for block in unet.up_blocks[:-1]:
            block_skips, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            if forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=block_skips,
                               encoder_hidden_states=context, upsample_size=upsample_size)
            else:
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=block_skips,
                               upsample_size=upsample_size)
        # The last up block, layer by layer; it has no upsampler (feature_cache_blocker checks).
        layers = len(unet.up_blocks[-1].resnets)
        feature = sample
        for j in range(layers):
            if j == layers - 2:
                feature = sample
            sample = self._last_up_layer(j, sample, skips[-1 - j], emb, context)
        return self._head(sample), feature

    def shallow_path(self, sample, timestep, context, feature):
        """`conv_in`, the first down layer and the last two up layers around the cached `feature`."""
        unet = self.unet
        sample, emb = self._embed(sample, timestep)
        stem = unet.conv_in(sample)
        first = unet.down_blocks[0]
        skip = first.resnets[0](stem, emb)
        if getattr(first, "attentions", None):
            skip = first.attentions[0](skip, encoder_hidden_states=context, return_dict=False)[0]
        layers = len(unet.up_blocks[-1].resnets)
        hidden = self._last_up_layer(layers - 2, feature, skip, emb, context)
        hidden = self._last_up_layer(layers - 1, hidden, stem, emb, context)
        return self._head(hidden)

    # -- dispatch ---------------------------------------------------------------------------------------

    def step(self, sample, timestep, context):
        """One UNet call: full when the step index says so or no cached feature fits, shallow otherwise."""
        # Decided on host values only (the step index, shapes, dtypes): no GPU sync per step.
        key = (tuple(sample.shape), sample.dtype, sample.device,
               tuple(context.shape), context.dtype)
        step = self.step_index() or 0
        if step % self.interval == 0 or self._feature is None or key != self._feature_key:
            output, feature = self._full(sample, timestep, context)
            # A copy outside the compiled function: a CUDA graph's outputs are overwritten by its next replay.
            self._feature = feature.clone()
            self._feature_key = key
            self.full_calls += 1
            return output
        self.shallow_calls += 1
        return self._shallow(sample, timestep, context, self._feature)

    def compile(self, options: dict[str, Any]) -> None:
        """torch.compile both paths (fullgraph) with these inductor options; each compiles when first run."""
        import torch

        self._full = torch.compile(self.full_path, fullgraph=True, options=options)
        self._shallow = torch.compile(self.shallow_path, fullgraph=True, options=options)

    def remove(self) -> None:
        """Give the UNet its own forward back and drop the cached feature."""
        if self._had_own_forward:
            self.unet.forward = self.original_forward
        else:
            del self.unet.forward
        self._feature = None
        self._feature_key = None


def enable_feature_cache(unet, interval: int, step_index: Callable[[], int | None]) -> FeatureCache:
    """Install the cache as `unet.forward` (an instance attribute; `FeatureCache.remove` undoes it)."""
    reason = feature_cache_blocker(unet)
    if reason:
        raise ValueError(f"UNet feature cache unavailable: {reason}")
    cache = FeatureCache(unet, interval, step_index)
    unet.forward = _Dispatcher(cache)
    return cache
