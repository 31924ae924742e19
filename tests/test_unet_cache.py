"""DeepCache-style UNet feature cache (nitro_cli/unet_cache.py) on tiny random UNets, on the CPU."""

from __future__ import annotations

import pytest
import torch

from nitro_cli.models import build_random_pipeline
from nitro_cli.unet_cache import FeatureCache, enable_feature_cache, feature_cache_blocker

CROSS_DIM = 32


def sd_like_unet(**overrides):
    """SD 1.x's layout in miniature: cross-attention in the first down / last up block, 3-layer up blocks."""
    from diffusers import UNet2DConditionModel

    config = dict(sample_size=16, block_out_channels=(16, 32), layers_per_block=2,
                  cross_attention_dim=CROSS_DIM, attention_head_dim=4, norm_num_groups=8,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    torch.manual_seed(0)
    return UNet2DConditionModel(**(config | overrides)).eval()


@pytest.fixture(scope="module")
def tiny_pipe():
    return build_random_pipeline("random:tiny")


@pytest.fixture(params=["tiny", "sd_like"])
def unet(request, tiny_pipe):
    return tiny_pipe.unet if request.param == "tiny" else sd_like_unet()


def unet_inputs(batch=2, height=8, width=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, height, width, generator=generator)
    context = torch.randn(batch, 7, CROSS_DIM, generator=generator)
    return sample, torch.tensor(500 + seed), context


class Steps:
    """A stand-in for the scheduler's step_index: the test sets `.index` before each UNet call."""

    def __init__(self):
        self.index = None

    def __call__(self):
        return self.index


@pytest.mark.parametrize("size", [(8, 8), (7, 9)], ids=["even", "odd"])
def test_full_path_equals_unet_forward(unet, size):
    assert unet.num_upsamplers > 0  # so 7x9 takes the upsample_size branch of the forward
    sample, timestep, context = unet_inputs(height=size[0], width=size[1])
    cache = FeatureCache(unet, 2, lambda: None)
    with torch.no_grad():
        expected = unet(sample, timestep, context).sample
        output, feature = cache.full_path(sample, timestep, context)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    assert feature.shape[0] == sample.shape[0] and feature.shape[2:] == sample.shape[2:]


def test_shallow_step_on_its_own_feature_gives_the_full_output(unet):
    sample, timestep, context = unet_inputs()
    steps = Steps()
    cache = enable_feature_cache(unet, 3, steps)
    try:
        with torch.no_grad():
            steps.index = 0
            full = unet(sample, timestep, context).sample
            steps.index = 1
            shallow_same = unet(sample, timestep, context).sample
            steps.index = 2
            other_sample, other_timestep, other_context = unet_inputs(seed=1)
            shallow_other = unet(other_sample, other_timestep, other_context, return_dict=False)[0]
            uncached_other = cache.full_path(other_sample, other_timestep, other_context)[0]
    finally:
        cache.remove()
    assert (cache.full_calls, cache.shallow_calls) == (1, 2)
    torch.testing.assert_close(shallow_same, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shallow_other, full, atol=1e-3)
    # The shallow step approximates, it doesn't recompute: on new inputs it differs from a full step too.
    assert not torch.allclose(shallow_other, uncached_other, atol=1e-3)


def test_changed_batch_or_size_falls_back_to_a_full_step(unet):
    steps = Steps()
    cache = enable_feature_cache(unet, 4, steps)
    try:
        with torch.no_grad():
            for index, (batch, height, width) in enumerate([(2, 8, 8), (1, 8, 8), (1, 8, 16)]):
                steps.index = index
                sample, timestep, context = unet_inputs(batch, height, width, seed=index)
                output = unet(sample, timestep, context).sample
                torch.testing.assert_close(output, cache.original_forward(sample, timestep, context).sample,
                                           rtol=1e-5, atol=1e-5)
    finally:
        cache.remove()
    assert (cache.full_calls, cache.shallow_calls) == (3, 0)


def test_arguments_the_cache_does_not_handle_go_to_the_unets_own_forward(tiny_pipe):
    unet = tiny_pipe.unet
    sample, timestep, context = unet_inputs()
    mask = torch.ones(2, 7)
    mask[:, 5:] = 0
    steps = Steps()
    cache = enable_feature_cache(unet, 2, steps)
    try:
        with torch.no_grad():
            masked = unet(sample, timestep, context, encoder_attention_mask=mask).sample
            plain = unet(sample, timestep, context).sample
    finally:
        cache.remove()
    with torch.no_grad():
        own = unet(sample, timestep, context, encoder_attention_mask=mask).sample
    torch.testing.assert_close(masked, own)
    assert not torch.allclose(masked, plain, atol=1e-4)
    assert (cache.full_calls, cache.shallow_calls) == (1, 0)


def test_freeu_turned_on_later_bypasses_the_cache(tiny_pipe):
    unet = tiny_pipe.unet
    sample, timestep, context = unet_inputs()
    steps = Steps()
    cache = enable_feature_cache(unet, 2, steps)
    unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    try:
        with torch.no_grad():
            unet(sample, timestep, context)
    finally:
        unet.disable_freeu()
        cache.remove()
    assert (cache.full_calls, cache.shallow_calls) == (0, 0)


def latents(pipe, steps=4, seed=0):
    return pipe("a lighthouse at dusk", num_inference_steps=steps, height=64, width=64, guidance_scale=7.5,
                output_type="latent", generator=torch.Generator().manual_seed(seed)).images


def test_pipeline_alternates_full_and_shallow_steps_and_remove_restores_it():
    from diffusers import DPMSolverMultistepScheduler

    pipe = build_random_pipeline("random:tiny")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    uncached = latents(pipe)

    cache = enable_feature_cache(pipe.unet, 2, lambda: pipe.scheduler.step_index)
    cached = latents(pipe)
    assert (cache.full_calls, cache.shallow_calls) == (2, 2)
    assert torch.isfinite(cached).all()
    assert not torch.allclose(cached, uncached, atol=1e-4)  # the shallow steps did run
    # A new call resets the scheduler's step index: it starts with a full step again.
    torch.testing.assert_close(latents(pipe), cached)
    assert (cache.full_calls, cache.shallow_calls) == (4, 4)

    cache.remove()
    assert "forward" not in vars(pipe.unet)
    torch.testing.assert_close(latents(pipe), uncached)


def test_blocker_accepts_sd_layouts_and_names_what_it_cannot_cache(tiny_pipe):
    assert feature_cache_blocker(tiny_pipe.unet) is None
    assert feature_cache_blocker(sd_like_unet()) is None

    assert "class embedding" in feature_cache_blocker(sd_like_unet(class_embed_type="timestep"))
    # Reasons become builder skip texts, which bench's CSV joins with '; ': none may hold one.
    text_embedding = feature_cache_blocker(sd_like_unet(addition_embed_type="text", addition_embed_type_num_heads=4))
    projected = feature_cache_blocker(sd_like_unet(encoder_hid_dim=CROSS_DIM, encoder_hid_dim_type="text_proj"))
    assert "addition embedding (text" in text_embedding and "encoder_hid_proj" in projected
    assert "; " not in text_embedding + projected
    one_layer = sd_like_unet()
    one_layer.up_blocks[-1].resnets = one_layer.up_blocks[-1].resnets[:1]
    assert "fewer than 2 layers" in feature_cache_blocker(one_layer)
    freeu = sd_like_unet()
    freeu.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    assert "FreeU" in feature_cache_blocker(freeu)
    # The shallow step runs the last up block's layers itself: an upsampler after them would be skipped.
    upsampling = sd_like_unet()
    upsampling.up_blocks[-1].upsamplers = upsampling.up_blocks[0].upsamplers
    assert "upsampler" in feature_cache_blocker(upsampling)
    # The shallow step calls these blocks' layers itself: another block type's layers take other arguments.
    assert "first down block (ResnetDownsampleBlock2D) is not an SD 1.x" in feature_cache_blocker(
        sd_like_unet(down_block_types=("ResnetDownsampleBlock2D", "DownBlock2D")))
    assert "last up block (ResnetUpsampleBlock2D) is not an SD 1.x" in feature_cache_blocker(
        sd_like_unet(up_block_types=("UpBlock2D", "ResnetUpsampleBlock2D")))
    hooked = sd_like_unet()  # CPU offload's hooks move the weights in within the forward the cached paths go around
    hooked._hf_hook = object()
    assert "accelerate hooks" in feature_cache_blocker(hooked)
    assert "UNet2DConditionModel" in feature_cache_blocker(tiny_pipe.vae)

    cached = sd_like_unet()
    cache = enable_feature_cache(cached, 2, lambda: None)
    assert "already" in feature_cache_blocker(cached)
    with pytest.raises(ValueError, match="already"):
        enable_feature_cache(cached, 2, lambda: None)
    cache.remove()
    with pytest.raises(ValueError, match="interval"):
        enable_feature_cache(cached, 1, lambda: None)


@pytest.mark.slow
def test_compiled_paths_match_the_eager_cache():
    from diffusers import DPMSolverMultistepScheduler
    from torch._inductor import list_mode_options

    pipe = build_random_pipeline("random:tiny")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    cache = enable_feature_cache(pipe.unet, 2, lambda: pipe.scheduler.step_index)
    eager = latents(pipe, steps=2)
    cache.compile(dict(list_mode_options("default")))
    compiled = latents(pipe, steps=2)
    assert (cache.full_calls, cache.shallow_calls) == (2, 2)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
    cache.remove()


def test_the_cached_forward_returns_what_the_unets_own_returns():
    """A tuple for return_dict=False (callers unpack it: `noise_pred, = unet(..., return_dict=False)`), else
    diffusers' output class."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    unet = build_random_pipeline("random:tiny").unet
    sample, timestep, context = unet_inputs()
    cache = enable_feature_cache(unet, 2, Steps())
    try:
        with torch.no_grad():
            as_tuple = unet(sample, timestep, context, return_dict=False)
            as_output = unet(sample, timestep, context)
    finally:
        cache.remove()
    assert type(as_tuple) is tuple and len(as_tuple) == 1 and as_tuple[0].shape == sample.shape
    assert isinstance(as_output, UNet2DConditionOutput) and torch.equal(as_output.sample, as_tuple[0])
