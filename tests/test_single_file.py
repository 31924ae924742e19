"""Single-file SD 1.x checkpoints (`--model x.safetensors` / `x.ckpt`) read back by diffusers and by nitro, offline.

tests/ldm_checkpoint.py writes a `random:` pipeline in the original CompVis/LDM layout; these tests load it
with `StableDiffusionPipeline.from_single_file` and the configs nitro writes (`models.write_configs`), and
compare every weight with the pipeline it came from; then `nitro generate` makes the same picture from the
file as from the built-in model.

What from_single_file needs offline (diffusers 0.42, read from diffusers/loaders/single_file.py):
- `config=<diffusers folder>` is enough (a folder of configs, no weights). With it, the pipeline's model_index.json picks the components;
  the UNet, VAE and text encoder take their configs from the folder and their weights from the file; the
  tokenizer, scheduler and feature extractor load from the folder. Nothing reaches the hub, the model type
  is never inferred (so a 32-wide cross attention is no problem) and no `original_config` is needed.
- `safety_checker=None, requires_safety_checker=False` only keep the pipeline from warning about its absence:
  from_single_file never loads a safety checker from the file.
- Without `config=`, diffusers infers "v1" from the keys and downloads stable-diffusion-v1-5's configs,
  which fails offline (LocalEntryNotFoundError, an OSError): why models.load_pipeline passes SD 1.x's
  configs itself.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_checkpoint import ldm_state_dict, save_single_file
from nitro_cli.cli import app
from tests.conftest import FAST

COMPONENTS = ("unet", "vae", "text_encoder")


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: make sure any hub access fails now, fast.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """random:tiny and its configs as nitro writes them, the `config=` of from_single_file."""
    from nitro_cli.models import build_random_pipeline, write_configs

    folder = tmp_path_factory.mktemp("tiny_config")
    write_configs("random:tiny", folder)
    return build_random_pipeline("random:tiny"), folder


def load_single_file(path, folder):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_single_file(str(path), config=str(folder), safety_checker=None,
                                                    requires_safety_checker=False)


def differing_weights(original, loaded) -> list[str]:
    """The diffusers keys whose loaded tensor is not exactly the original one. A weight the file lacks makes
    the UNet and VAE loaders fail (moving a meta tensor), but the text encoder keeps it on the meta device
    without a word: meta counts as differing."""
    before, after = original.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()

    def same(old, new):
        return not new.is_meta and new.dtype == old.dtype and torch.equal(new, old)
    return sorted(key for key, tensor in before.items() if not same(tensor, after[key]))


def assert_round_trip(pipe, folder, path):
    save_single_file(pipe, path)
    loaded = load_single_file(path, folder)
    for name in COMPONENTS:
        assert differing_weights(getattr(pipe, name), getattr(loaded, name)) == [], name
    return loaded


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_round_trip_tiny(tiny, tmp_path, suffix):
    pipe, folder = tiny
    loaded = assert_round_trip(pipe, folder, tmp_path / f"tiny{suffix}")
    assert loaded.safety_checker is None
    assert type(loaded.tokenizer) is type(pipe.tokenizer) and type(loaded.scheduler) is type(pipe.scheduler)


def test_single_file_comparison_catches_a_wrong_mapping(tiny, tmp_path):
    """The round trip has teeth: two same-shaped tensors swapped in the file, or one left out, show up as
    exactly those diffusers weights."""
    from safetensors.torch import save_file

    pipe, folder = tiny
    state = ldm_state_dict(pipe)
    unet, vae = "model.diffusion_model.", "first_stage_model.encoder.mid.attn_1."
    swaps = [(f"{unet}input_blocks.1.0.in_layers.2.weight", f"{unet}input_blocks.2.0.op.weight"),
             (f"{vae}q.weight", f"{vae}k.weight")]
    for a, b in swaps:
        assert state[a].shape == state[b].shape
        state[a], state[b] = state[b], state[a]
    del state["cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    path = tmp_path / "broken.safetensors"
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, str(path))
    loaded = load_single_file(path, folder)
    assert differing_weights(pipe.unet, loaded.unet) == ["down_blocks.0.downsamplers.0.conv.weight",
                                                         "down_blocks.0.resnets.0.conv1.weight"]
    assert differing_weights(pipe.vae, loaded.vae) == ["encoder.mid_block.attentions.0.to_k.weight",
                                                       "encoder.mid_block.attentions.0.to_q.weight"]
    assert differing_weights(pipe.text_encoder, loaded.text_encoder) == ["final_layer_norm.weight"]


def test_single_file_without_config_needs_the_hub(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    path = tmp_path / "tiny.safetensors"
    save_single_file(tiny[0], path)
    with pytest.raises(OSError, match="outgoing traffic has been disabled"):
        StableDiffusionPipeline.from_single_file(str(path), cache_dir=str(tmp_path / "empty_cache"),
                                                 safety_checker=None, requires_safety_checker=False)


def test_sd15_layout_has_the_original_names_and_shapes():
    """Where diffusers' reader is lenient, the round trip can't tell: it also takes an up-sampler at index 1
    after an attention, and 2-D VAE attention weights. Spot-check SD 1.5's own layout (the CompVis modules;
    weights on the meta device, so this costs nothing): down-samplers `op` at input_blocks 3, 6, 9;
    up-samplers after the attention-free first up block (2.1) and after attention (5.2, 8.2); the VAE
    decoder's `up` indexed by resolution (up.0 is full size, no up-sampler); 1x1-conv VAE attention."""
    from nitro_cli.models import build_random_pipeline

    state = ldm_state_dict(build_random_pipeline("random:sd15", device="meta"))
    shapes = {key: tuple(tensor.shape) for key, tensor in state.items()}
    unet, vae = "model.diffusion_model.", "first_stage_model."
    clip = "cond_stage_model.transformer.text_model."
    expected = {
        f"{unet}input_blocks.0.0.weight": (320, 4, 3, 3),
        f"{unet}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        f"{unet}input_blocks.3.0.op.weight": (320, 320, 3, 3),
        f"{unet}input_blocks.6.0.op.weight": (640, 640, 3, 3),
        f"{unet}input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
        f"{unet}middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        f"{unet}output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        f"{unet}output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        f"{unet}output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        f"{unet}output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),  # diffusers' "v1" marker
        f"{unet}out.2.weight": (4, 320, 3, 3),
        f"{vae}encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        f"{vae}encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        f"{vae}encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        f"{vae}decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        f"{vae}decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        f"{vae}decoder.up.1.block.2.conv2.weight": (256, 256, 3, 3),
        f"{vae}decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        f"{clip}embeddings.position_embedding.weight": (77, 768),
        f"{clip}encoder.layers.11.mlp.fc1.weight": (3072, 768),
    }
    assert {key: shapes.get(key) for key in expected} == expected
    absent = [f"{unet}output_blocks.2.2.conv.weight", f"{unet}output_blocks.11.1.conv.weight",
              f"{vae}encoder.down.3.downsample.conv.weight", f"{vae}decoder.up.0.upsample.conv.weight"]
    assert [key for key in absent if key in shapes] == []


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """random:sd15 (about 4.3 GB of fp32 weights) and SD 1.x's configs as nitro writes them for every single file."""
    from nitro_cli.models import build_random_pipeline, write_configs

    folder = tmp_path_factory.mktemp("sd15_config")
    write_configs("random:sd15", folder)
    return build_random_pipeline("random:sd15"), folder


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_round_trip_sd15(sd15, tmp_path, suffix):
    """The real SD 1.5 shapes: 4 UNet blocks of 2 layers (3 with attention), 512-wide VAE, 12-layer CLIP."""
    pipe, folder = sd15
    assert_round_trip(pipe, folder, tmp_path / f"sd15{suffix}")


def generated_pixels(runner, folder, model, *options):
    result = runner.invoke(app, ["generate", "castle", "--model", str(model), "--seed", "1", "--out", str(folder),
                                 *[a for a in FAST if a not in ("--model", "random:tiny")], *options])
    assert result.exit_code == 0, result.output
    [image] = folder.glob("*.png")
    return np.asarray(Image.open(image)), result.stderr.replace("\n", "")


@pytest.fixture
def tiny_configs_for_single_files(monkeypatch):
    """nitro reads every single file with SD 1.x's configs; a random:tiny file needs random:tiny's."""
    from nitro_cli import models

    write_configs = models.write_configs
    monkeypatch.setattr(models, "write_configs", lambda name, folder: write_configs("random:tiny", folder))


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_generate_from_a_single_file_makes_the_picture_of_the_model_saved_in_it(
        runner, tiny, tmp_path, suffix, tiny_configs_for_single_files):
    save_single_file(tiny[0], tmp_path / f"tiny{suffix}")
    from_file, _ = generated_pixels(runner, tmp_path / "file", tmp_path / f"tiny{suffix}", "--preset", "advanced")
    built_in, _ = generated_pixels(runner, tmp_path / "built-in", "random:tiny", "--preset", "advanced")
    assert np.array_equal(from_file, built_in)


def save_training_checkpoint(pipe, path, monkeypatch) -> None:
    """`pipe` as a 2022 SD 1.x training run saved it: torch's legacy (non-zip) format, beside the weights a numpy
    `global_step` saved under numpy 1 (`numpy.core.multiarray.scalar`) and PyTorch Lightning's callback state,
    keyed by its ModelCheckpoint class."""
    import types

    model_checkpoint = type("ModelCheckpoint", (), {"__module__": "pytorch_lightning.callbacks.model_checkpoint"})
    with monkeypatch.context() as lightning:  # a stand-in for pickle to find the class by its name, while saving
        for name in ("pytorch_lightning", "pytorch_lightning.callbacks", model_checkpoint.__module__):
            lightning.setitem(sys.modules, name, types.ModuleType(name))
        sys.modules[model_checkpoint.__module__].ModelCheckpoint = model_checkpoint
        state = {key: tensor.detach().contiguous() for key, tensor in ldm_state_dict(pipe).items()}
        torch.save({"state_dict": state, "global_step": np.int64(470000),
                    "callbacks": {model_checkpoint: {"best_model_path": "last.ckpt"}}},
                   path, _use_new_zipfile_serialization=False)
    saved = path.read_bytes()
    assert saved.count(b"numpy._core.multiarray\nscalar") == 1  # a text GLOBAL: renamed as numpy 1 wrote it
    path.write_bytes(saved.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))


def test_a_training_checkpoint_with_lightning_and_numpy_state_loads(runner, tiny, tmp_path, monkeypatch,
                                                                    tiny_configs_for_single_files):
    """diffusers reads a .ckpt with torch's weights-only loading, which refused the numpy and Lightning objects of
    SD 1.x training checkpoints ("failed to load ... a damaged file needs downloading again")."""
    save_training_checkpoint(tiny[0], tmp_path / "trained.ckpt", monkeypatch)
    from_file, _ = generated_pixels(runner, tmp_path / "file", tmp_path / "trained.ckpt", "--preset", "advanced")
    built_in, _ = generated_pixels(runner, tmp_path / "built-in", "random:tiny", "--preset", "advanced")
    assert np.array_equal(from_file, built_in)


def test_a_checkpoint_holding_other_python_objects_is_named_as_such(runner, tiny, tmp_path,
                                                                   tiny_configs_for_single_files):
    """Told "a damaged file needs downloading again", which changes nothing: torch refused an object in it."""
    import fractions

    state = {key: tensor.detach().contiguous() for key, tensor in ldm_state_dict(tiny[0]).items()}
    torch.save({"state_dict": state, "learning_rate": fractions.Fraction(1, 3)}, tmp_path / "odd.ckpt")
    args = [a for a in FAST if a not in ("--model", "random:tiny")]
    result = runner.invoke(app, ["generate", "castle", "--model", str(tmp_path / "odd.ckpt"),
                                 "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 1, result.output
    assert "failed to load: it holds fractions.Fraction beside its weights, which torch's weights-only loading " \
           "refuses" in result.stderr.replace("\n", " ")
    assert "Hint: use the model's .safetensors file" in result.stderr and "downloading again" not in result.stderr


def test_a_single_file_with_no_safety_checker_to_be_had_says_so(runner, tiny, tmp_path, tiny_configs_for_single_files):
    """beginner asks for the checker, which a single file lacks; offline with an empty cache it can't be had."""
    save_single_file(tiny[0], tmp_path / "tiny.safetensors")
    _, stderr = generated_pixels(runner, tmp_path / "out", tmp_path / "tiny.safetensors", "--preset", "beginner")
    assert ("Warning: safety checker skipped: a single-file checkpoint has none, and "
            "CompVis/stable-diffusion-safety-checker is not in the Hugging Face cache") in stderr


def unet_weights_only(pipe, path):
    """What a user may take for a model: one component's weights (here the UNet's, as a LoRA or a bare UNet
    file would be), in LDM names."""
    from safetensors.torch import save_file

    state = ldm_state_dict(pipe)
    save_file({key: value for key, value in state.items() if key.startswith("model.diffusion_model.")}, path)


@pytest.mark.parametrize("save, reason", [
    (save_single_file, "not an SD 1.x checkpoint: its embeddings.position_embedding.weight has shape [77, 32], "
                       "SD 1.x's is [77, 768]"),
    (unet_weights_only, "it has no CLIPTextModel weights: not a whole SD 1.x model"),
], ids=["other-shapes", "one-component"])
def test_a_file_that_is_not_a_whole_sd1_model_is_one_error_line(runner, tiny, tmp_path, save, reason):
    """random:tiny's file read with the SD 1.x configs nitro uses for every single file: one error, no traceback."""
    save(tiny[0], tmp_path / "model.safetensors")
    result = runner.invoke(app, ["generate", "castle", "--model", str(tmp_path / "model.safetensors"),
                                 "--out", str(tmp_path / "out"),
                                 *[a for a in FAST if a not in ("--model", "random:tiny")]])
    assert result.exit_code == 1, result.output
    assert f"Error: model '{tmp_path / 'model.safetensors'}' failed to load: {reason}" in result.stderr.replace("\n", "")
    assert "Hint: nitro reads SD 1.x checkpoints" in result.stderr and "Traceback" not in result.output
    assert "ignore_mismatched_sizes" not in result.stderr and not list((tmp_path / "out").glob("*.png"))


@pytest.mark.slow
def test_generate_from_an_sd15_single_file_with_nitros_own_configs(runner, sd15, tmp_path):
    """The real thing's shapes, end to end: the configs nitro writes read a full SD 1.5 file."""
    pipe, _ = sd15
    save_single_file(pipe, tmp_path / "sd15.safetensors")
    from_file, _ = generated_pixels(runner, tmp_path / "file", tmp_path / "sd15.safetensors", "--preset", "advanced",
                                    "--steps", "1")
    built_in, _ = generated_pixels(runner, tmp_path / "built-in", "random:sd15", "--preset", "advanced", "--steps", "1")
    assert np.array_equal(from_file, built_in)


def test_a_single_file_to_quantize_is_saved_once_as_a_folder(tiny, tmp_path, monkeypatch, tiny_configs_for_single_files):
    """bitsandbytes quantizes while reading a folder's weight files, and diffusers' from_single_file takes no
    pipeline quantization config: the file is saved once as a folder, which from_pretrained reads with it."""
    import os

    from diffusers import StableDiffusionPipeline

    from nitro_cli import models

    pipe, _ = tiny
    path = tmp_path / "tiny.safetensors"
    save_single_file(pipe, path)
    folder = models.single_file_folder(str(path), torch.float32)
    assert models.single_file_folder(str(path), torch.float32) == folder  # reused, not converted again
    saved = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    for name in COMPONENTS:
        assert differing_weights(getattr(pipe, name), getattr(saved, name)) == [], name
    os.utime(path, ns=(1, 1))  # a replaced file is converted again
    assert models.single_file_folder(str(path), torch.float32) != folder

    asked = {}
    real_from_pretrained = StableDiffusionPipeline.from_pretrained.__func__

    def recording_from_pretrained(cls, spec, **kwargs):
        asked.update(spec=spec, quantization_config=kwargs.pop("quantization_config"))
        return real_from_pretrained(cls, spec, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(recording_from_pretrained))
    quantization = object()  # bitsandbytes needs a GPU: what matters here is where the config goes
    models.load_pipeline(models.ModelSource(str(path), "single_file"), torch_dtype=torch.float32,
                         with_safety_checker=False, quantization_config=quantization)
    assert asked == {"spec": models.single_file_folder(str(path), torch.float32), "quantization_config": quantization}
