"""Models: the built-in random ones, local folders, and errors for models that can't be had."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from nitro_cli import paths
from nitro_cli.cli import app
from nitro_cli.models import build_random_pipeline, clip_tokenizer, resolve_model
from tests.conftest import FAST


def test_tokenizer_splits_like_clip():
    tokenizer = clip_tokenizer()
    # Token ids of OpenAI CLIP's vocabulary, as Nitro-Diffusion's tokenizer gives them.
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer.get_vocab()) == 49408
    assert tokenizer.model_max_length == 77


def test_random_tiny_is_deterministic_and_small():
    first, second = build_random_pipeline("random:tiny"), build_random_pipeline("random:tiny")
    for a, b in zip(first.unet.parameters(), second.unet.parameters()):
        assert a.equal(b)
    size_mb = sum(p.numel() * 4 for m in (first.unet, first.vae, first.text_encoder) for p in m.parameters()) / 1e6
    assert size_mb < 20


def test_random_sd15_has_nitro_diffusions_shapes():
    import torch

    # On the meta device: the shapes of 1.2B parameters without paying for their random values.
    with torch.device("meta"):
        pipe = build_random_pipeline("random:sd15", device="meta")
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert pipe.unet.config.cross_attention_dim == 768
    assert tuple(pipe.unet.config.block_out_channels) == (320, 640, 1280, 1280)
    assert 855e6 < count(pipe.unet) < 865e6  # SD 1.x UNet: 859.5M
    assert 120e6 < count(pipe.text_encoder) < 125e6  # CLIP ViT-L/14 text: 123M
    assert 80e6 < count(pipe.vae) < 85e6  # SD VAE: 83.7M
    assert 300e6 < count(pipe.safety_checker) < 310e6  # CLIP ViT-L/14 vision + projection


def test_saved_folder_loads_as_a_real_model(runner, tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir)).kind == "folder"
    args = [a for a in FAST if a not in ("--model", "random:tiny")]
    result = runner.invoke(app, ["generate", "castle", "--model", str(tiny_model_dir), "--out", str(tmp_path),
                                 "--seed", "1", "--json", *args])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["model"] == str(tiny_model_dir)


def test_a_folder_of_fp16_variant_weights_makes_the_picture_of_the_plain_one(runner, tmp_path):
    """`save_pretrained(variant="fp16")` writes model.fp16.safetensors files alone (so does downloading with
    the diffusers docs' `variant="fp16"`): loaded with no variant asked, such a folder had "no weights"."""
    pipe = build_random_pipeline("random:tiny")
    pipe.save_pretrained(tmp_path / "plain")
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    pipe.unet.save_pretrained(tmp_path / "mixed" / "unet")  # another component's plain files beside fp16 ones
    for component in ("model_index.json", "vae", "text_encoder", "tokenizer", "scheduler", "safety_checker",
                      "feature_extractor"):
        copy = shutil.copy if component.endswith(".json") else shutil.copytree
        copy(tmp_path / "fp16" / component, tmp_path / "mixed" / component)
    assert not list((tmp_path / "fp16" / "unet").glob("diffusion_pytorch_model.safetensors"))
    args = [a for a in FAST if a not in ("--model", "random:tiny")]
    pixels = {}
    for folder in ("plain", "fp16", "mixed"):
        result = runner.invoke(app, ["generate", "castle", "--model", str(tmp_path / folder), "--preset", "baseline",
                                     "--out", str(tmp_path / f"out-{folder}"), "--seed", "1", "--json", *args])
        assert result.exit_code == 0, result.output
        pixels[folder] = Image.open(json.loads(result.stdout.splitlines()[-1])["path"]).tobytes()
    assert pixels["fp16"] == pixels["plain"] == pixels["mixed"]


def test_a_model_without_safety_checker_says_the_presets_checker_is_skipped(runner, tmp_path):
    """beginner asks for the checker; a model that has none can't give it, and the run must say so."""
    pipe = build_random_pipeline("random:tiny")
    pipe.register_modules(safety_checker=None)
    pipe.save_pretrained(tmp_path / "model")
    args = [a for a in FAST if a not in ("--model", "random:tiny")]
    result = runner.invoke(app, ["generate", "castle", "--model", str(tmp_path / "model"), "--preset", "beginner",
                                 "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 0, result.output
    assert f"Warning: safety checker skipped: {tmp_path / 'model'} has none" in result.stderr.replace("\n", "")


@pytest.mark.parametrize("model, expected", [
    ("nitrosocke/not-a-cached-model", "is not in the Hugging Face cache"),
    ("./no/such/folder", "not found"),
    ("D:/models", "model not found: D:/models is neither a folder nor a hub id"),  # a Windows drive's folder
    ("my models/sd", "model not found: my models/sd is neither a folder nor a hub id"),
    ("missing.safetensors", "model file not found"),
    ("random:huge", "unknown built-in model"),
    ("", "--model is empty"),  # a script's unset "$MODEL" must not fall back to the default model's download
])
def test_model_that_cannot_be_had_is_exit_2_without_traceback(runner, tmp_path, model, expected):
    args = [a for a in FAST if a not in ("--model", "random:tiny")]
    result = runner.invoke(app, ["generate", "castle", "--model", model, "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Hint:" in result.output and "Traceback" not in result.output
    assert "stacktrace" not in result.output  # diffusers' pointer to a traceback that is not shown


@pytest.mark.parametrize("name", ["model", "model.ckpt"])
def test_folder_without_model_index_is_exit_2(runner, tmp_path, name):
    """A folder named like a checkpoint file was "model file not found", though it is there."""
    (tmp_path / name).mkdir()
    result = runner.invoke(app, ["generate", "castle", "--model", str(tmp_path / name), "--out", str(tmp_path / "o"),
                                 "--device", "cpu"])
    assert result.exit_code == 2 and "is a folder but not a diffusers pipeline (no model_index.json)" in result.stderr


def test_debug_env_shows_the_traceback(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("NITRO_DEBUG", "1")
    result = runner.invoke(app, ["generate", "castle", "--model", "random:huge", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" in result.output


@pytest.mark.parametrize("name", ["damaged.safetensors", "damaged.ckpt"])
def test_damaged_checkpoint_file_is_a_run_time_failure_naming_it(runner, tmp_path, name):
    (tmp_path / name).write_bytes(b"<html>rate limited</html>" * 40)  # what a failed download can leave
    args = [a for a in FAST if a not in ("--model", "random:tiny")]
    result = runner.invoke(app, ["generate", "castle", "--model", str(tmp_path / name), "--out", str(tmp_path / "o"),
                                 *args])
    assert result.exit_code == 1, result.output
    assert "not a readable checkpoint" in result.output and "damaged or incomplete" in result.output


def test_readable_checkpoint_files_pass_the_check(tmp_path):
    import torch
    from safetensors.torch import save_file

    from nitro_cli.models import check_checkpoint_file

    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "model.ckpt")  # zip format
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    for name in ("model.safetensors", "model.ckpt", "legacy.ckpt"):
        check_checkpoint_file(str(tmp_path / name))


def test_damaged_model_folder_is_a_run_time_failure(runner, tiny_model_dir, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, damaged)
    for weights in (damaged / "unet").glob("*.safetensors"):
        weights.unlink()
    args = [a for a in FAST if a not in ("--model", "random:tiny")]
    result = runner.invoke(app, ["generate", "castle", "--model", str(damaged), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 1, result.output  # the model is there but broken: not bad input
    assert "Error: model" in result.output and "failed to load" in result.output and "Hint:" in result.output
    assert "failed to load: unet has no weights file" in result.stderr  # not the .bin file diffusers looked for last
    # No "Traceback" check here: under CliRunner, diffusers' log handler may still hold an earlier test's
    # closed stderr and print logging's own "--- Logging error ---" traceback. A real process prints
    # diffusers' one-line "An error occurred..." and then our Error/Hint lines (checked by hand).


@pytest.mark.parametrize("command", ["generate", "export"])
def test_a_model_folder_without_its_tokenizer_is_a_run_time_failure_naming_it(runner, tiny_model_dir, tmp_path,
                                                                              command):
    """diffusers loads a missing tokenizer/ as an empty tokenizer of length 1e30: generate ended in an OverflowError
    traceback, and `export onnx` wrote that tokenizer into an export that exited 0."""
    import shutil

    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_dir, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer"))
    args = {"generate": ["generate", "castle", "--model", str(no_tokenizer), "--steps", "1", "--width", "64",
                         "--height", "64", "--out", str(tmp_path / "o")],
            "export": ["export", "onnx", "--model", str(no_tokenizer), "--out", str(tmp_path / "onnx")]}[command]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "its tokenizer's maximum length is not the text encoder's 77 tokens" in result.stderr
    assert "tokenizer/ folder" in result.stderr and "Hint:" in result.stderr
    assert not list(tmp_path.glob("o/*.png")) and not (tmp_path / "onnx" / "unet").exists()


@pytest.mark.parametrize("name", ["model.bin", "model.pt", "MODEL.SAFETENSORS"])
def test_an_existing_file_of_another_kind_is_not_called_missing(tmp_path, name):
    from nitro_cli.errors import UsageError

    (tmp_path / name).write_bytes(b"weights")
    with pytest.raises(UsageError) as error:
        resolve_model(str(tmp_path / name))
    assert "not found" not in error.value.message and "is a file" in error.value.message
    assert ".safetensors" in error.value.hint


def _tiny_sdxl_folder(folder):
    """A few-KB SDXL pipeline (two text encoders, a UNet conditioned on text embeddings and time ids)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=32, norm_num_groups=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=80, cross_attention_dim=64)
    vae = AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
                          projection_dim=32)
    StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(text), text_encoder_2=CLIPTextModelWithProjection(text),
                              tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet,
                              scheduler=EulerDiscreteScheduler()).save_pretrained(folder)


def test_a_model_of_another_architecture_is_a_clear_error(runner, tmp_path):
    _tiny_sdxl_folder(tmp_path / "sdxl")
    args = [a for a in FAST if a not in ("--model", "random:tiny")]
    result = runner.invoke(app, ["generate", "castle", "--model", str(tmp_path / "sdxl"), "--out", str(tmp_path / "o"),
                                 "--preset", "baseline", *args])
    assert result.exit_code == 2, result.output
    assert "not a Stable Diffusion 1.x" in result.stderr and "Hint:" in result.stderr
    assert not list((tmp_path / "o").glob("*.png"))


def test_an_inpainting_unet_is_a_clear_error(runner, tiny_model_dir, tmp_path):
    import shutil

    from diffusers import UNet2DConditionModel

    inpainting = tmp_path / "inpainting"
    shutil.copytree(tiny_model_dir, inpainting)
    config = dict(UNet2DConditionModel.load_config(inpainting / "unet"), in_channels=9)  # latents, mask, masked image
    UNet2DConditionModel.from_config(config).save_pretrained(inpainting / "unet")
    args = [a for a in FAST if a not in ("--model", "random:tiny")]
    result = runner.invoke(app, ["generate", "castle", "--model", str(inpainting), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert "9 input channels" in result.stderr


def test_a_cache_that_cannot_be_written_is_a_usage_error_naming_it(tmp_path, monkeypatch):
    """A random model to quantize is first saved into nitro's cache: an unwritable cache was a traceback."""
    from nitro_cli.errors import UsageError
    from nitro_cli.models import random_model_folder

    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    monkeypatch.setenv("NITRO_CACHE_DIR", str(not_a_folder))
    with pytest.raises(UsageError, match="nitro's cache folder .* can't be written") as error:
        random_model_folder("random:tiny")
    assert "NITRO_CACHE_DIR" in error.value.hint


@pytest.mark.parametrize("env, cache", [
    ({"NITRO_CACHE_DIR": "~/nitro-cache", "XDG_CACHE_HOME": "~/xdg"}, "nitro-cache"),
    ({"NITRO_CACHE_DIR": "", "XDG_CACHE_HOME": "~/xdg"}, "xdg/nitro"),
    ({"XDG_CACHE_HOME": ""}, ".cache/nitro"),
])
def test_the_cache_folder_is_nitro_cache_dir_then_xdg_cache_home_then_home(tmp_path, monkeypatch, env, cache):
    """An empty variable counts as unset (`NITRO_CACHE_DIR= nitro ...` was the current folder), and `~` is the home
    folder even where no shell expanded it (a quoted value, a systemd unit, a .env file)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NITRO_CACHE_DIR")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert paths.cache_dir() == tmp_path / cache


def test_a_cache_folder_without_write_permission_is_a_usage_error(tmp_path, monkeypatch):
    """A cache folder that is there but can't be written (another user's, a read-only mount): mkdir succeeds on
    it, so only the permission check names it before a traceback from deep inside a save."""
    from nitro_cli.errors import UsageError

    real_access = paths.os.access
    # The check itself is what is tested: root (CI containers) may write anywhere, whatever the folder's mode.
    monkeypatch.setattr(paths.os, "access", lambda path, mode, **kwargs: Path(path) != tmp_path
                        and real_access(path, mode, **kwargs))
    with pytest.raises(UsageError, match=f"nitro's cache folder {tmp_path} can't be written"):
        paths.make_cache_folder(tmp_path)


def test_a_cache_entry_is_made_once_and_again_only_when_damaged_or_missing(tmp_path):
    """A whole entry is reused as it is; one with a file deleted by hand is made anew; an interrupted make
    leaves neither the entry nor its staging folder."""
    folder = tmp_path / "models" / "entry"
    made = []

    def make(staging):
        made.append(staging)
        (staging / "weights").write_text("whole")

    def is_complete(candidate):
        return (candidate / "weights").is_file()

    assert paths.made_once(folder, make, is_complete) == folder and len(made) == 1
    paths.made_once(folder, make, is_complete)
    assert len(made) == 1
    (folder / "weights").unlink()
    (folder / "config").write_text("left")
    paths.made_once(folder, make, is_complete)
    assert len(made) == 2 and [p.name for p in folder.iterdir()] == ["weights"]

    def interrupted(staging):
        (staging / "weights").write_text("half")
        raise KeyboardInterrupt

    other = tmp_path / "models" / "other"
    with pytest.raises(KeyboardInterrupt):
        paths.made_once(other, interrupted, is_complete)
    assert [p.name for p in folder.parent.iterdir()] == ["entry"]


def test_staging_folders_killed_processes_left_are_removed_once_stale(tmp_path):
    """kill -9 or the OOM killer during a fill runs no `finally`: each killed run left a hidden staging folder (GBs
    for an SD 1.x ONNX export) that nothing removed. One still being written (another process's) is kept."""
    import os
    import time

    parent = tmp_path / "onnx"
    stale, fresh = parent / ".random-sd15-ab12cd34", parent / ".random-tiny-0123abcd"
    for staging in (stale, fresh):
        (staging / "unet").mkdir(parents=True)
        (staging / "unet" / "model.onnx").write_text("half")
    long_ago = time.time() - paths.STALE_SECONDS - 60
    for path in (stale, stale / "unet", stale / "unet" / "model.onnx"):
        os.utime(path, (long_ago, long_ago))
    (parent / ".not-a-staging-folder").mkdir()

    def make(staging):
        (staging / "weights").write_text("whole")

    paths.made_once(parent / "entry", make, lambda candidate: (candidate / "weights").is_file())
    assert sorted(p.name for p in parent.iterdir()) == [".not-a-staging-folder", fresh.name, "entry"]


def test_a_saved_random_model_missing_a_weights_file_is_saved_again(tmp_path):
    """A cache entry was whole as soon as its model_index.json was there: a weights file deleted by hand failed
    every later load ("unet has no weights file"), with a hint to try --model random:tiny, the model given."""
    from nitro_cli.models import random_model_folder

    folder = random_model_folder("random:tiny")
    [weights] = (folder / "unet").glob("diffusion_pytorch_model.*")
    weights.unlink()
    assert random_model_folder("random:tiny") == folder and weights.is_file()


def test_a_folder_with_plain_and_fp16_weights_loads_the_plain_ones(tmp_path):
    """A full download of an SD 1.x repo holds both: fp32 presets (baseline) must get the full-precision weights."""
    from nitro_cli.models import ModelSource, _weights_variant_of

    for component in ("unet", "vae", "text_encoder"):
        (tmp_path / component).mkdir()
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
            (tmp_path / component / name).write_bytes(b"weights")
    assert _weights_variant_of(ModelSource(str(tmp_path), "folder")) is None
    for weights in (tmp_path / "unet").glob("diffusion_pytorch_model.safetensors"):
        weights.unlink()  # the UNet in fp16 alone: only the fp16 variant has it
    assert _weights_variant_of(ModelSource(str(tmp_path), "folder")) == "fp16"
