"""Test helper: write a diffusers SD 1.x pipeline as one original-layout (CompVis/LDM) checkpoint.

Real single-file models (v1-5-pruned.safetensors, nitroDiffusion-v1.ckpt) keep the UNet, VAE and CLIP text
encoder in one state dict under the prefixes of CompVis' LatentDiffusion module. None exists offline, so the
tests make one from a `random:` pipeline and check that `from_single_file` reads it back weight for weight.

The mapping is the inverse of diffusers' `convert_ldm_*_checkpoint`, written from the LDM module layout:
each diffusers sub-module prefix maps to its LDM prefix, then a few leaf names differ inside a module.
Everything is derived from the modules' configs, so the tiny and the real SD 1.5 shapes both work.
"""

from __future__ import annotations

from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# LDM's ResBlock keeps its layers in nn.Sequentials (in_layers = norm, act, conv; out_layers = norm, act,
# dropout, conv); diffusers names them.
UNET_RESNET_LEAVES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                      "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET_LEAVES = {"conv_shortcut": "nin_shortcut"}
# The VAE's mid-block attention: LDM uses 1x1 convs where diffusers uses Linear layers.
VAE_ATTENTION_LEAVES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _int_layers(config) -> int:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):  # SD 1.x has the same count in every block; per-block counts are SDXL-era
        raise ValueError(f"layers_per_block must be an int for SD 1.x, got {layers!r}")
    return layers


def unet_prefixes(config) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers UNet prefix -> (LDM prefix, leaf renames).

    LDM flattens the UNet into numbered sequential blocks: input_blocks[0] is conv_in, then per down block
    `layers` [resnet, attention?] entries and, except after the last block, one downsample entry. The output
    blocks have `layers + 1` entries per up block, the last one carrying the upsampler (after the attention
    when the block has one, hence index 1 or 2).
    """
    layers, n_blocks = _int_layers(config), len(config["block_out_channels"])
    prefixes = {"conv_in.": ("input_blocks.0.0.", {}), "time_embedding.linear_1.": ("time_embed.0.", {}),
                "time_embedding.linear_2.": ("time_embed.2.", {}), "conv_norm_out.": ("out.0.", {}),
                "conv_out.": ("out.2.", {})}
    index = 1
    for block in range(n_blocks):
        down = f"down_blocks.{block}."
        for layer in range(layers):
            prefixes[f"{down}resnets.{layer}."] = (f"input_blocks.{index}.0.", UNET_RESNET_LEAVES)
            prefixes[f"{down}attentions.{layer}."] = (f"input_blocks.{index}.1.", {})
            index += 1
        if block < n_blocks - 1:
            prefixes[f"{down}downsamplers.0.conv."] = (f"input_blocks.{index}.0.op.", {})
            index += 1
    prefixes["mid_block.resnets.0."] = ("middle_block.0.", UNET_RESNET_LEAVES)
    prefixes["mid_block.attentions.0."] = ("middle_block.1.", {})
    prefixes["mid_block.resnets.1."] = ("middle_block.2.", UNET_RESNET_LEAVES)
    index = 0
    for block, block_type in enumerate(config["up_block_types"]):
        up = f"up_blocks.{block}."
        for layer in range(layers + 1):
            prefixes[f"{up}resnets.{layer}."] = (f"output_blocks.{index}.0.", UNET_RESNET_LEAVES)
            prefixes[f"{up}attentions.{layer}."] = (f"output_blocks.{index}.1.", {})
            index += 1
        if block < n_blocks - 1:
            slot = 2 if "CrossAttn" in block_type else 1
            prefixes[f"{up}upsamplers.0.conv."] = (f"output_blocks.{index - 1}.{slot}.conv.", {})
    return prefixes


def vae_prefixes(config) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers AutoencoderKL prefix -> (LDM prefix, leaf renames).

    LDM indexes the decoder's `up` blocks by resolution level, as the encoder's (up[0] is the full-resolution
    block, run last), while diffusers lists them in running order: up_blocks[i] is LDM's up[n - 1 - i].
    The decoder blocks have one resnet more than the encoder blocks.
    """
    layers, n_blocks = _int_layers(config), len(config["block_out_channels"])
    prefixes = {"quant_conv.": ("quant_conv.", {}), "post_quant_conv.": ("post_quant_conv.", {})}
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.conv_in."] = (f"{part}.conv_in.", {})
        prefixes[f"{part}.conv_out."] = (f"{part}.conv_out.", {})
        prefixes[f"{part}.conv_norm_out."] = (f"{part}.norm_out.", {})
        prefixes[f"{part}.mid_block.resnets.0."] = (f"{part}.mid.block_1.", VAE_RESNET_LEAVES)
        prefixes[f"{part}.mid_block.resnets.1."] = (f"{part}.mid.block_2.", VAE_RESNET_LEAVES)
        prefixes[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", VAE_ATTENTION_LEAVES)
    for block in range(n_blocks):
        down, ldm_down = f"encoder.down_blocks.{block}.", f"encoder.down.{block}."
        for layer in range(layers):
            prefixes[f"{down}resnets.{layer}."] = (f"{ldm_down}block.{layer}.", VAE_RESNET_LEAVES)
        prefixes[f"{down}downsamplers.0.conv."] = (f"{ldm_down}downsample.conv.", {})
        up, ldm_up = f"decoder.up_blocks.{block}.", f"decoder.up.{n_blocks - 1 - block}."
        for layer in range(layers + 1):
            prefixes[f"{up}resnets.{layer}."] = (f"{ldm_up}block.{layer}.", VAE_RESNET_LEAVES)
        prefixes[f"{up}upsamplers.0.conv."] = (f"{ldm_up}upsample.conv.", {})
    return prefixes


def to_ldm_key(key: str, prefixes: dict[str, tuple[str, dict[str, str]]]) -> str:
    """One diffusers key in LDM's names. A key no prefix claims is an error: a layout this file doesn't know
    must fail here, not load half-random weights later."""
    for diffusers_prefix, (ldm_prefix, leaves) in prefixes.items():
        if key.startswith(diffusers_prefix):
            leaf = key[len(diffusers_prefix):]
            module, _, param = leaf.rpartition(".")
            return ldm_prefix + (f"{leaves.get(module, module)}.{param}" if module else param)
    raise KeyError(f"no LDM name for {key}")


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder as one original-layout SD 1.x state dict."""
    state = {}
    prefixes = unet_prefixes(pipe.unet.config)
    for key, tensor in pipe.unet.state_dict().items():
        state[UNET_PREFIX + to_ldm_key(key, prefixes)] = tensor
    prefixes = vae_prefixes(pipe.vae.config)
    for key, tensor in pipe.vae.state_dict().items():
        ldm_key = to_ldm_key(key, prefixes)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # Linear [C, C] -> 1x1 conv [C, C, 1, 1]
        state[VAE_PREFIX + ldm_key] = tensor
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); SD files keep the older names.
    for key, tensor in pipe.text_encoder.state_dict().items():
        state[CLIP_PREFIX + ("" if key.startswith("text_model.") else "text_model.") + key] = tensor
    # Real SD 1.x files carry this buffer too (older transformers saved it); diffusers must cope with it.
    positions = pipe.text_encoder.config.max_position_embeddings
    state[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    return state


def save_single_file(pipe, path: Path) -> None:
    """Write `pipe` as `path`: safetensors for .safetensors, torch.save's {"state_dict": ...} for .ckpt."""
    path = Path(path)
    state = {key: tensor.detach().contiguous() for key, tensor in ldm_state_dict(pipe).items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif path.suffix == ".ckpt":
        torch.save({"state_dict": state}, path)
    else:
        raise ValueError(f"{path}: expected a .safetensors or .ckpt suffix")
