"""Where pipelines come from: the built-in `random:` models, hub ids, local folders and single files.

The `random:` models are built from a fixed seed, so every process (and every preset inside one
bench run) gets the same weights, and need no download. `random:sd15` has Nitro-Diffusion's exact
architecture, so its speed and memory are the real model's; its pictures are noise.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from nitro_cli import distributed, paths
from nitro_cli.errors import RuntimeFailure, UsageError, first_line

DEFAULT_MODEL = "nitrosocke/Nitro-Diffusion"
RANDOM_MODELS = ("random:tiny", "random:sd15")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
CLIP_MAX_TOKENS = 77
CLIP_VOCAB_SIZE = 49408
RANDOM_SEED = 0
# The SD 1.x safety checker on its own: what diffusers' loaders use for a single-file checkpoint, which has none.
SAFETY_CHECKER_REPO = "CompVis/stable-diffusion-safety-checker"
# The one weights variant SD 1.x repos publish (half-size files), loaded where a model has nothing else.
FP16_VARIANT = "fp16"

# Nitro-Diffusion's scheduler_config.json (PNDM, as its model card ships it).
NITRO_SCHEDULER_CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "skip_prk_steps": True, "steps_offset": 1,
    "set_alpha_to_one": False, "clip_sample": False,
}


@dataclass(frozen=True)
class ModelSource:
    """What `--model` named, classified once: `kind` is random, folder, single_file or hub."""

    spec: str
    kind: str

    @property
    def is_random(self) -> bool:
        return self.kind == "random"


def resolve_model(spec: str | None) -> ModelSource:
    """Classify `--model` without loading anything; a bad local path is a usage error (exit 2)."""
    if spec is not None and not spec.strip():  # a script's unset "$MODEL": never fall back to a 2 GB download
        raise UsageError("--model is empty", hint=f"leave it out for {DEFAULT_MODEL}, or name a model")
    spec = spec or DEFAULT_MODEL
    if spec.startswith("random:"):
        if spec not in RANDOM_MODELS:
            raise UsageError(f"unknown built-in model '{spec}'", hint=f"built-in models: {', '.join(RANDOM_MODELS)}")
        return ModelSource(spec, "random")
    path = Path(spec).expanduser()
    if path.suffix in SINGLE_FILE_SUFFIXES and not path.is_dir():  # a folder so named is taken as a folder
        if not path.is_file():
            raise UsageError(f"model file not found: {spec}", hint="check the path, or try --model random:tiny for a dry run")
        return ModelSource(str(path), "single_file")
    if path.is_file():
        raise UsageError(f"{spec} is a file, but not a .safetensors or .ckpt checkpoint",
                         hint="give a single-file SD 1.x checkpoint (.safetensors/.ckpt), a diffusers folder, "
                              "owner/name, or random:tiny")
    if path.is_dir():
        from nitro_cli.onnx_export import is_partial_export  # here: onnx_export imports this module

        if is_partial_export(path):  # with or without an earlier export's model_index.json: half of it is new
            raise UsageError(f"{spec} is an unfinished ONNX export (`nitro export onnx` stopped half way)",
                             hint="run the same `nitro export onnx --out` into it again")
        if not (path / "model_index.json").is_file():
            raise UsageError(f"{spec} is a folder but not a diffusers pipeline (no model_index.json)",
                             hint="save one with pipe.save_pretrained(DIR), or give a hub id or a .safetensors file")
        return ModelSource(str(path), "folder")
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1 or not _is_hub_id(spec):
        raise UsageError(f"model not found: {spec} is neither a folder nor a hub id (owner/name)",
                         hint="give a diffusers folder, a .safetensors/.ckpt file, owner/name, or random:tiny")
    return ModelSource(spec, "hub")


def _is_hub_id(spec: str) -> bool:
    """Whether `spec` is spelled as the hub spells repo ids: a missing folder such as `D:/models` or
    `my models/sd` is not one (huggingface_hub would raise its validation error deep in the loading)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, rebuilt from its BPE file the way CLIP itself builds them."""
    raw = (resources.files("nitro_cli") / "assets" / "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:CLIP_VOCAB_SIZE - 256 * 2 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def clip_tokenizer():
    """A CLIPTokenizer equal to Nitro-Diffusion's (same vocabulary, merges and 77-token limit)."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_TOKENS)


def _random_configs(name: str) -> dict[str, dict[str, Any]]:
    """Component configs: SD 1.x's real shapes for sd15, a few-MB miniature for tiny."""
    if name == "random:sd15":
        return {
            "unet": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),  # SD 1.x defaults otherwise
            "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        sample_size=512, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4),
            "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         projection_dim=768, hidden_act="quick_gelu"),
            "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
        }
    return {
        "unet": dict(sample_size=64, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                     attention_head_dim=4, norm_num_groups=8,
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
        # Four VAE blocks, as in SD: 8x downscaling keeps 512x512 at 64x64 latents, cheap on a CPU.
        "vae": dict(block_out_channels=(8, 16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                    sample_size=512, down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4),
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     projection_dim=32),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=224, patch_size=32, projection_dim=32),
    }


def build_random_pipeline(name: str, device: str = "cpu"):
    """A StableDiffusionPipeline with seeded random weights, built directly on `device` (fp32)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig

    configs = _random_configs(name)
    text_config = CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=CLIP_MAX_TOKENS,
                                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, **configs["text"])
    # Built on the target device with a fixed seed: same weights in every process, no slow CPU init on a GPU.
    with torch.device(device):
        torch.manual_seed(RANDOM_SEED)
        unet = UNet2DConditionModel(**configs["unet"])
        torch.manual_seed(RANDOM_SEED + 1)
        vae = AutoencoderKL(**configs["vae"])
        torch.manual_seed(RANDOM_SEED + 2)
        text_encoder = CLIPTextModel(text_config)
        torch.manual_seed(RANDOM_SEED + 3)
        safety_checker = StableDiffusionSafetyChecker(CLIPConfig(
            text_config=text_config.to_dict(), vision_config=CLIPVisionConfig(**configs["vision"]).to_dict(),
            projection_dim=configs["vision"]["projection_dim"]))
    image_size = configs["vision"]["image_size"]
    return StableDiffusionPipeline(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=clip_tokenizer(),
        scheduler=PNDMScheduler.from_config(NITRO_SCHEDULER_CONFIG),
        safety_checker=safety_checker.eval(),
        feature_extractor=CLIPImageProcessor(crop_size=image_size, size={"shortest_edge": image_size}),
        requires_safety_checker=False,
    )


def random_model_folder(name: str, device: str = "cpu") -> Path:
    """`name` saved once as a diffusers folder in nitro's cache, with the weights it has when built on `device`.

    The same seed gives different weights on a CPU and a GPU, hence one folder per device. The folder is
    written under a temporary name and renamed when complete, so a reader never sees half a model.
    """
    folder = paths.cache_dir() / "models" / f"{name.replace(':', '-')}-{device}"
    return _saved_once(folder, lambda: build_random_pipeline(name, device=device))


def single_file_folder(path: str, torch_dtype) -> Path:
    """A single-file checkpoint saved once as a diffusers folder in nitro's cache, in `torch_dtype`, without a
    safety checker (it has none). Keyed by the file's path, size and modification time, so a replaced file
    is converted again."""
    stat = Path(path).stat()
    identity = f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{torch_dtype}"
    folder = paths.cache_dir() / "models" / f"{Path(path).stem}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    if not (folder / "model_index.json").is_file():
        print(f"Saving {path} once as a diffusers folder, in {folder} (quantization reads a folder's weight "
              "files) ...", file=sys.stderr)
    return _saved_once(folder, lambda: _from_single_file(path, dtype=torch_dtype, safety_checker=None,
                                                         requires_safety_checker=False))


def _saved_once(folder: Path, build) -> Path:
    """`folder`, saved from the pipeline `build()` gives unless it is already there whole (see paths.made_once):
    one with a weights file deleted by hand, or a damaged model_index.json, is saved again."""
    return paths.made_once(folder, lambda staging: build().save_pretrained(staging),
                           lambda saved: snapshot_problem(saved) is None)


def checkpoint_globals() -> list:
    """What SD 1.x `.ckpt` files hold besides weights, which torch's weights-only loading (how diffusers reads a
    `.ckpt`) refuses, so that such files failed to load (diffusers#8874: v1-5-pruned-emaonly.ckpt): PyTorch
    Lightning's ModelCheckpoint class, the key of a training checkpoint's callback state, and a numpy
    `global_step`. AUTOMATIC1111 allows the same. Each is allowed by the name the file gives it (torch matches
    `__module__`.`__qualname__`): Lightning's class as an empty class of that name, never Lightning's code;
    numpy's scalar and dtypes rebuild numbers only, `numpy.core` being where numpy 1 saved the scalar."""
    import numpy
    from numpy._core.multiarray import scalar

    class ModelCheckpoint:
        pass

    def numpy1_scalar(dtype, data=None):
        return scalar(dtype, data)

    named = {ModelCheckpoint: ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
             numpy1_scalar: ("numpy.core.multiarray", "scalar")}
    for stand_in, (module, name) in named.items():
        stand_in.__module__, stand_in.__name__, stand_in.__qualname__ = module, name, name
    dtypes = [getattr(numpy.dtypes, name) for name in dir(numpy.dtypes) if name.endswith("DType")]
    return [*named, scalar, numpy.dtype, *dtypes]


def _from_single_file(path: str, **kwargs):
    import torch
    from diffusers import StableDiffusionPipeline

    check_checkpoint_file(path)
    with tempfile.TemporaryDirectory(prefix="nitro-sd1-config-") as config, \
            torch.serialization.safe_globals(checkpoint_globals()):
        write_configs("random:sd15", Path(config))
        return StableDiffusionPipeline.from_single_file(path, config=config, **kwargs)


def write_configs(name: str, folder: Path) -> None:
    """Built-in model `name`'s diffusers configs in `folder` (model_index.json, each component's config, the
    CLIP tokenizer), without weights: what `from_single_file` needs beside a checkpoint. random:sd15's are
    SD 1.x's, so a single file loads offline instead of fetching stable-diffusion-v1-5's."""
    pipe = build_random_pipeline(name, device="meta")  # shapes only: nothing is allocated
    pipe.save_config(folder)  # model_index.json
    for component_name, component in pipe.components.items():
        if component is None:  # optional components SD 1.x has not (image_encoder)
            continue
        if hasattr(component, "save_config"):  # diffusers models and the scheduler
            component.save_config(folder / component_name)
        elif hasattr(component, "can_generate"):  # transformers models: their config alone
            component.config.save_pretrained(folder / component_name)
        else:  # the tokenizer and the image processor are small files anyway
            component.save_pretrained(folder / component_name)


def load_safety_checker(torch_dtype):
    """The SD 1.x safety checker for a pipeline loaded without one, or None where it can't be had (not in the
    Hugging Face cache, and the hub offline or silent)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    answer = ask_hub(SAFETY_CHECKER_REPO)
    snapshot = cached_snapshot(SAFETY_CHECKER_REPO)
    if answer.found and (snapshot is None or not _weights_files(snapshot, None)):
        _say_downloading(SAFETY_CHECKER_REPO)
    try:
        return StableDiffusionSafetyChecker.from_pretrained(SAFETY_CHECKER_REPO, dtype=torch_dtype,
                                                            local_files_only=answer.silence is not None)
    except OSError:
        return None


def missing_safety_checker_reason(source: ModelSource) -> str:
    if source.kind == "single_file":
        return (f"a single-file checkpoint has none, and {SAFETY_CHECKER_REPO} is not in the Hugging Face cache: "
                f"`hf download {SAFETY_CHECKER_REPO}` once online")
    return f"{source.spec} has none"


def check_checkpoint_file(path: str) -> None:
    """A run-time failure unless `path` starts like a checkpoint diffusers can read: a safetensors header, or
    torch.save's zip (or older pickle) format. diffusers itself reports a damaged file in words that point at
    the missing-config case."""
    import zipfile

    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt"):  # reads the header only
                return
        except Exception as exc:  # safetensors raises its own SafetensorsError on a bad header
            why = first_line(exc)
    else:
        with open(path, "rb") as file:
            pickle_protocol = file.read(1) == b"\x80"
        if pickle_protocol or zipfile.is_zipfile(path):
            return
        why = "neither torch.save's zip format nor a pickle"
    raise RuntimeFailure(f"model '{path}' failed to load: not a readable checkpoint ({why})",
                         hint="the file is damaged or incomplete: download it again, or try --model random:tiny "
                              "for a dry run")


DAMAGED_FOLDER_HINT = ("check that the files are complete (re-download or re-save them), or try --model random:tiny "
                       "for a dry run")


def load_pipeline(source: ModelSource, *, torch_dtype, with_safety_checker: bool, device: str = "cpu",
                  quantization_config=None):
    """The pipeline behind `source`, in `torch_dtype`. A model that can't be had is exit 2 with a hint."""
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError  # a file without a component's weights

    if source.is_random and quantization_config is not None:
        # Quantizers work while reading a folder's weight files, so the random model is loaded from its saved copy.
        source = ModelSource(str(random_model_folder(source.spec, device)), "folder")
    if source.is_random:
        pipe = build_random_pipeline(source.spec, device=device).to(dtype=torch_dtype)
        if not with_safety_checker:
            pipe.safety_checker = None
        return pipe
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "variant": _weights_variant_of(source)}
    if source.kind == "hub":
        kwargs["local_files_only"] = _from_cache_alone(source.spec, with_safety_checker=with_safety_checker)
    if not with_safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    # A folder without a component's weights: diffusers' error names the .bin file it looked for last.
    problem = snapshot_problem(Path(source.spec), with_safety_checker=with_safety_checker) \
        if source.kind == "folder" else None
    if problem is not None:
        raise RuntimeFailure(f"model '{source.spec}' failed to load: {problem}", hint=DAMAGED_FOLDER_HINT)
    try:
        if source.kind == "single_file" and quantization_config is None:
            pipe = _from_single_file(source.spec, **kwargs)
        elif source.kind == "single_file":  # diffusers' from_single_file takes no pipeline quantization config
            pipe = StableDiffusionPipeline.from_pretrained(single_file_folder(source.spec, torch_dtype), **kwargs)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(source.spec, **kwargs)
        if source.kind == "single_file" and with_safety_checker:
            # diffusers never loads a checker for a single file (it has none): take the SD 1.x one.
            checker = load_safety_checker(torch_dtype)
            if checker is not None:
                pipe.register_modules(safety_checker=checker)
    except (OSError, ValueError, SingleFileComponentError) as exc:
        # A hub id not downloadable or not cached: bad input, exit 2 (huggingface_hub's not-found and
        # offline errors are OSError subclasses). A model that is here but breaks while loading (a damaged
        # folder, a checkpoint of another architecture) is a run-time failure, exit 1.
        if source.kind == "hub" and isinstance(exc, OSError):
            raise hub_model_error(source.spec, exc, with_safety_checker=with_safety_checker) from exc
        refused = refused_global(exc)
        if refused is not None:  # not a damaged file: downloading it again changes nothing
            raise RuntimeFailure(f"model '{source.spec}' failed to load: it holds {refused} beside its weights, "
                                 "which torch's weights-only loading refuses (unpickling it could run code)",
                                 hint="use the model's .safetensors file, or convert this one with a tool you "
                                      "trust") from exc
        hint = ("nitro reads SD 1.x checkpoints; a damaged file needs downloading again, or try --model random:tiny "
                "for a dry run" if source.kind == "single_file" else DAMAGED_FOLDER_HINT)
        raise RuntimeFailure(f"model '{source.spec}' failed to load: {load_failure_reason(exc, source)}",
                             hint=hint) from exc
    check_text_to_image_unet(pipe, source.spec)
    check_tokenizer(pipe, source.spec)
    return pipe


def fetch_hub_model(repo_id: str, *, with_safety_checker: bool) -> None:
    """`repo_id`'s pipeline files in the Hugging Face cache, downloaded now where missing (the files
    `from_pretrained` would fetch), or a UsageError saying why they can't be had."""
    from diffusers import StableDiffusionPipeline

    from_cache_alone = _from_cache_alone(repo_id, with_safety_checker=with_safety_checker)
    try:
        folder = StableDiffusionPipeline.download(repo_id, variant=_weights_variant(cached_snapshot(repo_id)),
                                                  local_files_only=from_cache_alone,
                                                  **({} if with_safety_checker else {"safety_checker": None}))
    except OSError as exc:
        raise hub_model_error(repo_id, exc, with_safety_checker=with_safety_checker) from exc
    # Offline, diffusers hands back the cached snapshot as it is: a download stopped half way fails only when
    # each preset loads it, a failed row apiece.
    problem = snapshot_problem(Path(folder), with_safety_checker=with_safety_checker)
    if problem is not None:
        raise _incomplete_snapshot_error(repo_id, problem, Path(folder))


def _from_cache_alone(repo_id: str, *, with_safety_checker: bool) -> bool:
    """Whether model `repo_id` loads from the Hugging Face cache alone: the hub gave no answer (a warning says
    so). Not cached, or cached in part, with no answer to be had (silent or offline): a usage error. A download
    gets a line first."""
    from huggingface_hub import constants

    answer = ask_hub(repo_id)
    snapshot = cached_snapshot(repo_id)
    loadable = snapshot is not None and snapshot_problem(snapshot, with_safety_checker=with_safety_checker) is None
    if (answer.silence is not None or constants.HF_HUB_OFFLINE) and not loadable:
        # Now, rather than after diffusers' own logged error (and a warning that it loads from the cache).
        raise hub_model_error(repo_id, ConnectionError(answer.silence or "HF_HUB_OFFLINE is set"),
                              with_safety_checker=with_safety_checker)
    if answer.silence is not None:
        _warn_once(f"the Hugging Face hub was not reached ({answer.silence}): {repo_id} loads from its cached copy; "
                   "HF_HUB_OFFLINE=1 skips asking")
    elif answer.found and not loadable:
        _say_downloading(repo_id)
    return answer.silence is not None


def _say_downloading(repo_id: str) -> None:
    """A line before a download that may take minutes: the hub's own bars show only on a terminal. Every process
    of a launched run downloads (the hub's file locks share the work); each machine's first one says so."""
    if distributed.local_rank() == 0:
        print(f"Downloading {repo_id} into the Hugging Face cache ...", file=sys.stderr)


@lru_cache(maxsize=None)  # bench loads the model once per preset
def _warn_once(warning: str) -> None:
    if distributed.local_rank() == 0:  # every process of a launched run asks the hub: one warning per machine
        print(f"Warning: {warning}", file=sys.stderr)


@dataclass(frozen=True)
class HubAnswer:
    """What the hub said about a repo: `found` it, or not (an answer such as not found or gated, which the load
    that follows reports, or no question asked: HF_HUB_OFFLINE). `silence`: why no answer came at all."""
    found: bool
    silence: str | None = None


def ask_hub(repo_id: str) -> HubAnswer:
    """What the hub says about model `repo_id`, within huggingface_hub's time limit on metadata requests.
    diffusers and transformers ask it with no time limit before they load a repo, even one in the cache: a hub,
    proxy or firewall that takes the connection and never answers would hang the load for ever, unless told
    to use the cache alone."""
    from huggingface_hub import constants

    return HubAnswer(found=False) if constants.HF_HUB_OFFLINE else _ask_hub(constants.ENDPOINT, repo_id)


@lru_cache(maxsize=None)  # asked once per process: bench loads the model once per preset
def _ask_hub(endpoint: str, repo_id: str) -> HubAnswer:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    asked = time.monotonic()
    try:
        HfApi(endpoint=endpoint).model_info(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        return HubAnswer(found=False)
    except json.JSONDecodeError:  # json's own words ("Expecting value: line 1 column 1") would say nothing
        return HubAnswer(found=False, silence=f"{endpoint} answered with a page that is not the hub's, such as a "
                                              "network's login page")
    except Exception as exc:  # no answer: the network, the time limit
        # By name: the exception types are those of whichever HTTP library huggingface_hub ships with. The time
        # waited, not the time limit: huggingface_hub may first ask the same silent hub something of its own
        # (its agent-harness list, 3 s).
        waited = time.monotonic() - asked
        return HubAnswer(found=False, silence=(f"no answer from {endpoint} in {waited:.0f} s"
                                               if "Timeout" in type(exc).__name__ else first_line(exc)))
    return HubAnswer(found=True)


def hub_model_error(repo_id: str, exc: BaseException, *, with_safety_checker: bool = True) -> UsageError:
    """Why hub model `repo_id` can't be had, in one line, and what to do. diffusers words each case for a Python
    caller (`pass local_files_only=False`, a stacktrace above) and says "outgoing traffic has been disabled" for
    a hub it could not reach. `with_safety_checker`: whether the failed load or fetch wanted the checker."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    causes = _exception_chain(exc)
    download = f"`hf download {repo_id}` once online"
    if any(isinstance(cause, GatedRepoError) for cause in causes):
        return UsageError(f"model '{repo_id}' is gated: the hub asks you to accept its terms first",
                          hint=f"accept them on https://huggingface.co/{repo_id}, then set HF_TOKEN or run `hf auth login`")
    if any(isinstance(cause, RepositoryNotFoundError) for cause in causes):
        return UsageError(f"model '{repo_id}' not found on the hub",
                          hint="check the spelling (owner/name); a private repo needs HF_TOKEN or `hf auth login`")
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None and not (snapshot / "model_index.json").is_file():
        return UsageError(f"model '{repo_id}' is not a diffusers pipeline: its cached copy {snapshot} has no "
                          "model_index.json",
                          hint=f"give a diffusers SD 1.x repo, or {download} if the download stopped half way; a repo "
                               "of a single .ckpt/.safetensors file: pass that file's path")
    if snapshot is not None:  # diffusers names the weights file it looked for last (.bin), not the one missing
        what = snapshot_problem(snapshot, with_safety_checker=with_safety_checker) or first_line(exc)
        return _incomplete_snapshot_error(repo_id, what, snapshot)
    refusal = next((cause for cause in causes if isinstance(cause, HfHubHTTPError)), None)
    if constants.HF_HUB_OFFLINE or any(isinstance(cause, OfflineModeIsEnabled) for cause in causes):
        why, fix = "HF_HUB_OFFLINE is set", f"{download} (or unset HF_HUB_OFFLINE)"
    elif refusal is not None:  # an answer, but an error (a bad token, too many requests, a server fault)
        why = f"the hub answered with an error ({first_line(refusal)})"
        fix = ("check your token (HF_TOKEN or `hf auth login`; `hf auth whoami` says whose it is)"
               if getattr(refusal.response, "status_code", None) in (401, 403) else "try again later")
    else:
        why, fix = f"the hub could not be reached ({first_line(causes[-1])})", download
    return UsageError(f"model '{repo_id}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}",
                      hint=f"{fix}; a model in another cache needs HF_HOME pointing there; --model random:tiny for a "
                           "dry run")


def _incomplete_snapshot_error(repo_id: str, what: str, snapshot: Path) -> UsageError:
    return UsageError(f"model '{repo_id}' is incomplete in the Hugging Face cache ({what}: {snapshot})",
                      hint=finish_download_hint(repo_id))


def finish_download_hint(repo_id: str) -> str:
    """What to do about a model cached in part: generate's and bench's error, doctor's warning."""
    return f"finish the download: `hf download {repo_id}` once online"


def snapshot_problem(snapshot: Path, *, with_safety_checker: bool = True) -> str | None:
    """What keeps the pipeline in a Hugging Face cache snapshot from loading, or None: no model_index.json, or
    a model without a weights file (plain or fp16-variant: see _weights_variant).
    `with_safety_checker`: whether the safety checker is loaded too, where the pipeline has one."""
    if not (snapshot / "model_index.json").is_file():
        return "no model_index.json (not a diffusers pipeline, or its download stopped half way)"
    try:
        index = json.loads((snapshot / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "its model_index.json is damaged"
    # The safety checker where the pipeline has one: the presets that keep it on (baseline, beginner) load it.
    names_checker = isinstance(index, dict) and (index.get("safety_checker") or [None])[0] is not None
    with_checker = with_safety_checker and names_checker
    for name in ("unet", "vae", "text_encoder", *(["safety_checker"] if with_checker else [])):
        if not (_weights_files(snapshot / name, None) or _weights_files(snapshot / name, FP16_VARIANT)):
            return f"{name} has no weights file"
    return None


def _weights_variant(folder: Path | None) -> str | None:
    """The weights variant to load the pipeline in `folder` with: "fp16" where a component has fp16-variant files
    alone (`model.fp16.safetensors`: what `save_pretrained(..., variant="fp16")` writes and the diffusers docs'
    `from_pretrained(..., variant="fp16")` downloads), else None. Asked for "fp16", diffusers loads each
    component's fp16 files where it has them and its plain files elsewhere; asked for none, it finds no weights
    in a component with fp16 files alone. No folder (a hub model not cached yet): None, the plain files."""
    components = [path for path in folder.iterdir() if path.is_dir()] if folder and folder.is_dir() else []
    fp16_alone = any(_weights_files(component, FP16_VARIANT) and not _weights_files(component, None)
                     for component in components)
    return FP16_VARIANT if fp16_alone else None


def _weights_variant_of(source: ModelSource) -> str | None:
    """_weights_variant of a model folder, or of a hub model's snapshot in the Hugging Face cache."""
    if source.kind == "folder":
        return _weights_variant(Path(source.spec))
    return _weights_variant(cached_snapshot(source.spec)) if source.kind == "hub" else None


def _weights_files(component: Path, variant: str | None) -> list[Path]:
    """`component`'s weights files of `variant` (None: the plain ones): model.safetensors, model.fp16.safetensors,
    and shards such as model-00001-of-00002.safetensors or model.fp16-00001-of-00002.safetensors."""
    return [path for path in component.glob("*") if path.suffix in (".safetensors", ".bin")
            and (path.stem.split("-")[0].partition(".")[2] or None) == variant]


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from, outermost first."""
    chain = [exc]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    return chain


def hub_cache_folder(repo_id: str) -> Path:
    """Where the Hugging Face cache keeps model `repo_id`, whether or not it is there."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of `repo_id`'s main revision in the Hugging Face cache, if one is there."""
    from huggingface_hub import constants

    repo = hub_cache_folder(repo_id)
    try:
        snapshot = repo / "snapshots" / (repo / "refs" / constants.DEFAULT_REVISION).read_text().strip()
    except OSError:
        return None
    return snapshot if snapshot.is_dir() else None


def refused_global(exc: BaseException) -> str | None:
    """The Python object a `.ckpt` holds that torch's weights-only loading refused, or None: diffusers reports it
    as "Unable to load weights from checkpoint file", raised from torch's UnpicklingError."""
    for link in _exception_chain(exc):
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(link))
        if refused:
            return refused.group(1)
    return None


def load_failure_reason(exc: BaseException, source: ModelSource) -> str:
    """diffusers' loading error in one line. Its shape-mismatch message ends with advice to overwrite the
    weights with random ones (`ignore_mismatched_sizes`), which nitro does not offer: the shapes are the news.
    Its missing-component message goes on with code to load that component separately."""
    missing = re.match(r"Failed to load (\w+)\. Weights for this component appear to be missing", str(exc))
    if missing:
        return (f"it has no {missing.group(1)} weights: not a whole SD 1.x model (a LoRA, an embedding or a "
                "VAE alone?)")
    mismatch = re.search(r"because (\S+) expected shape torch\.Size\((\[.*?\])\), but got torch\.Size\((\[.*?\])\)",
                         str(exc))
    if mismatch is None:
        return first_line(exc)
    weight, expected, got = mismatch.groups()
    if source.kind == "single_file":
        return f"not an SD 1.x checkpoint: its {weight} has shape {got}, SD 1.x's is {expected}"
    return f"{weight} has shape {got}, its config says {expected}"


def check_tokenizer(pipe, spec: str) -> None:
    """A run-time failure unless the tokenizer pads to the text encoder's length. A missing or empty `tokenizer/`
    loads without a word as a tokenizer of no vocabulary and a length of 1e30, and the first prompt then fails
    with an OverflowError traceback (and `export onnx` would copy it)."""
    length, positions = pipe.tokenizer.model_max_length, pipe.text_encoder.config.max_position_embeddings
    if length <= positions:
        return
    raise RuntimeFailure(f"model '{spec}' failed to load: its tokenizer's maximum length is not the text encoder's "
                         f"{positions} tokens (a missing or incomplete tokenizer/ folder?)", hint=DAMAGED_FOLDER_HINT)


def check_text_to_image_unet(pipe, spec: str) -> None:
    """A usage error unless the UNet takes only what SD 1.x text-to-image gives it: latents, a timestep and
    text embeddings. diffusers loads an SDXL or inpainting model into StableDiffusionPipeline without a word,
    and it then fails in the first denoising step."""
    unet_config = pipe.unet.config
    latent_channels = pipe.vae.config.latent_channels
    extra = unet_config.get("addition_embed_type") or unet_config.get("class_embed_type")
    if extra:
        why = f"its UNet needs extra conditioning ({extra}): an SDXL or other later model"
    elif unet_config.get("in_channels") != latent_channels:
        why = (f"its UNet takes {unet_config.get('in_channels')} input channels, not the {latent_channels} "
               "latent channels of text-to-image (an inpainting or depth model?)")
    else:
        return
    raise UsageError(f"model '{spec}' is not a Stable Diffusion 1.x text-to-image model: {why}",
                     hint=f"give an SD 1.x model such as {DEFAULT_MODEL}, or --model random:tiny for a dry run")
