"""ONNX for CPU/edge: export a Stable Diffusion 1.x pipeline, and run the export with ONNX Runtime.

The exported folder has the layout diffusers' `OnnxStableDiffusionPipeline.from_pretrained` loads:
`unet/`, `text_encoder/`, `vae_decoder/`, `vae_encoder/` (and `safety_checker/` when the model has
one), each holding a `model.onnx`, beside `tokenizer/`, `scheduler/`, `feature_extractor/` and
`model_index.json`. Input and output names are the ones that pipeline feeds and reads.

Graphs come from the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`), as diffusers'
own conversion script made them: it traces these models in seconds with dynamic batch and image
size. The torch.export-based exporter (the default since torch 2.9) needs ~1 min for the tiny UNet
and fails on its dynamic spatial shapes (torch 2.13).

`OnnxRuntimePipeline` puts the ONNX pipeline behind the interface `generation.run_batch` uses, so
that generate and bench run both backends through one call path: it runs the PyTorch pipeline's
denoising loop around the exported UNet, so every scheduler works and the same seed gives the same
starting noise as the PyTorch pipeline on a CPU (and so nearly the same pixels).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from nitro_cli import hardware, models
from nitro_cli.errors import RuntimeFailure, UsageError, describe, first_line

ONNX_PIPELINE_CLASS = "OnnxStableDiffusionPipeline"
DEFAULT_OPSET = 17  # LayerNormalization as one op; every onnxruntime since 1.14 runs it
DEFAULT_OPSET_HINT = f"leave --opset out for {DEFAULT_OPSET}, which every onnxruntime since 1.14 runs"
ONNX_FILE = "model.onnx"
EXTERNAL_WEIGHTS_FILE = "weights.pb"  # the name diffusers' OnnxRuntimeModel copies along with model.onnx
# Lies in an export folder from the start of `nitro export onnx` until its last file is written: a folder
# with it is a half export (Ctrl-C, a crash), never loaded, and the next export into it may replace it.
PARTIAL_MARKER = ".nitro-export-partial"
SD_VAE_SCALE_FACTOR = 8  # SD 1.x latents are 1/8 of the image side
# SD 1.x VAE latent scale: an export keeps no VAE config, and diffusers' ONNX pipeline hard-codes it too.
SD_VAE_SCALING_FACTOR = 0.18215
EXPORT_HINT = "nitro export onnx --model {model} --out DIR, then --model DIR"
INSTALL_HINT = "pip install 'nitro-cli[onnx]'"
# diffusers' OnnxRuntimeModel ends its deprecation at 0.43.0: from there on, making one raises (and the
# ONNX pipeline is left without its models), hence the `onnx` extra's diffusers<0.43.
DIFFUSERS_WITHOUT_ONNX = (0, 43)


@dataclass
class ExportReport:
    out: Path
    components: dict[str, int] = field(default_factory=dict)  # name -> bytes on disk
    skipped: list[tuple[str, str]] = field(default_factory=list)


def require_onnx_packages() -> None:
    """onnx (export), onnxruntime (run) and a diffusers that still has its ONNX pipeline come with the `onnx`
    extra; without them this is a usage error, before anything is exported or loaded."""
    missing = [name for name in ("onnx", "onnxruntime") if not hardware.is_importable(name)]
    if missing:
        raise UsageError(f"the ONNX backend needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         "not installed", hint=INSTALL_HINT)
    from packaging.version import Version

    diffusers_version = hardware.package_version("diffusers")
    if diffusers_version and Version(diffusers_version).release >= DIFFUSERS_WITHOUT_ONNX:
        raise UsageError(f"the ONNX backend needs diffusers older than 0.43, and {diffusers_version} is installed: "
                         "diffusers' ONNX pipeline stops at 0.42",
                         hint=f"{INSTALL_HINT}, which installs diffusers 0.42; the PyTorch backend "
                              "(backend: pytorch) runs on this diffusers")


def is_onnx_folder(path: str | Path) -> bool:
    """True for a folder that `nitro export onnx` (or diffusers' ONNX conversion script) wrote."""
    index_file = Path(path).expanduser() / "model_index.json"
    if not index_file.is_file() or is_partial_export(path):
        return False
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON (UnicodeDecodeError is a ValueError)
        return False
    return isinstance(index, dict) and index.get("_class_name") == ONNX_PIPELINE_CLASS


def is_partial_export(path: str | Path) -> bool:
    """True for a folder an interrupted `nitro export onnx` left: rerunning the export there replaces it."""
    return (Path(path).expanduser() / PARTIAL_MARKER).exists()


def _mark_partial(out: Path) -> None:
    """Mark `out` as a half export before the first graph is written. An earlier export's model_index.json goes
    too: an interrupted re-export would otherwise leave a folder that looks whole over a mix of old and new graphs."""
    (out / PARTIAL_MARKER).write_text("nitro export onnx did not finish here; run it again\n", encoding="utf-8")
    (out / "model_index.json").unlink(missing_ok=True)


def _export_modules(pipe) -> dict[str, tuple[Any, tuple, list[str], list[str], dict[str, dict[int, str]]]]:
    """Per component: (module, example inputs, input names, output names, dynamic axes)."""
    import torch

    class UNet(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class TextEncoder(torch.nn.Module):
        def __init__(self, text_encoder):
            super().__init__()
            self.text_encoder = text_encoder

        def forward(self, input_ids):
            output = self.text_encoder(input_ids=input_ids)
            return output.last_hidden_state, output.pooler_output

    class VaeEncoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, sample):
            return self.vae.encode(sample, return_dict=False)[0].sample()

    class VaeDecoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):
            return self.vae.decode(latent_sample, return_dict=False)[0]

    class SafetyChecker(torch.nn.Module):
        def __init__(self, checker):
            super().__init__()
            self.checker = checker

        def forward(self, clip_input, images):
            return self.checker.forward_onnx(clip_input, images)

    image = {0: "batch", 2: "height", 3: "width"}
    # A latent side that is not a multiple of the UNet's down-sampling factor makes the traced graph
    # up-sample to the skip connection's size instead of by a fixed 2x: every size the PyTorch
    # pipeline accepts (pixels a multiple of 8) then works.
    latent_side = 9
    image_side = SD_VAE_SCALE_FACTOR * latent_side
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    tokens = text_encoder.config.max_position_embeddings
    latent_channels = vae.config.latent_channels
    specs = {
        "text_encoder": (TextEncoder(text_encoder), (torch.zeros(1, tokens, dtype=torch.int32),), ["input_ids"],
                         ["last_hidden_state", "pooler_output"], {"input_ids": {0: "batch"}}),
        "unet": (UNet(unet), (torch.randn(2, unet.config.in_channels, latent_side, latent_side),
                              torch.tensor([999.0]),
                              torch.randn(2, tokens, unet.config.cross_attention_dim)),
                 ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
                 {"sample": image, "timestep": {0: "timesteps"}, "encoder_hidden_states": {0: "batch"},
                  "out_sample": image}),
        "vae_encoder": (VaeEncoder(vae), (torch.randn(1, vae.config.in_channels, image_side, image_side),),
                        ["sample"], ["latent_sample"], {"sample": image, "latent_sample": image}),
        "vae_decoder": (VaeDecoder(vae), (torch.randn(1, latent_channels, latent_side, latent_side),),
                        ["latent_sample"], ["sample"], {"latent_sample": image, "sample": image}),
    }
    checker = getattr(pipe, "safety_checker", None)
    if checker is not None:
        clip_side = pipe.feature_extractor.crop_size["height"]
        specs["safety_checker"] = (
            SafetyChecker(checker), (torch.randn(1, 3, clip_side, clip_side), torch.rand(1, 64, 64, 3)),
            ["clip_input", "images"], ["out_images", "has_nsfw_concepts"],
            {"clip_input": {0: "batch"}, "images": {0: "batch", 1: "height", 2: "width"},
             "out_images": {0: "batch", 1: "height", 2: "width"}, "has_nsfw_concepts": {0: "batch"}})
    return specs


def _export_one(module, example: tuple, inputs: list[str], outputs: list[str], axes: dict, folder: Path,
                opset: int) -> int:
    """Trace one component into `folder/model.onnx` (weights over 2 GB in one `weights.pb` beside it)."""
    import onnx
    import torch

    # An earlier export's files go first: onnx appends external weights to a `weights.pb` already there (a
    # re-export of SD 1.x's 3.4 GB UNet would double it), and a stale one would be counted in the size.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="nitro-onnx-") as scratch:
        traced = Path(scratch) / ONNX_FILE
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # The TorchScript exporter warns that it is deprecated and that Python branches were traced as
            # constants; both are expected here (see the module docstring and the latent size above).
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), example, str(traced), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        # Over 2 GB the exporter writes one file per tensor: gather them into one file, as diffusers does.
        if len(list(Path(scratch).iterdir())) > 1:
            graph = onnx.load(str(traced))
            onnx.save_model(graph, str(folder / ONNX_FILE), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=EXTERNAL_WEIGHTS_FILE)
        else:
            shutil.move(str(traced), folder / ONNX_FILE)
    return sum(f.stat().st_size for f in folder.iterdir())


def check_opset(opset: int) -> None:
    """`opset` is one this torch's exporter writes (torch 2.13: up to 23, fewer than the onnx package knows):
    a one-layer module is exported with it in milliseconds, so that an opset torch can't write is a usage
    error before the model loads, not an export failure (exit 1) of its first component minutes later."""
    import torch

    # torch's TorchScript exporter turns its C++ log on for every export (its `setup_onnx_logging` reads
    # `_jit_is_onnx_log_enabled` without calling it) and logs a failed export's whole graph to stdout, which is
    # the exported folder's alone (`DIR=$(nitro export onnx ...)`).
    torch._C._jit_set_onnx_log_output_stream("stderr")
    with tempfile.TemporaryDirectory(prefix="nitro-onnx-") as scratch, warnings.catch_warnings(), \
            torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(torch.nn.Linear(1, 1), (torch.zeros(1, 1),), str(Path(scratch) / ONNX_FILE),
                              opset_version=opset, dynamo=False)
        except Exception as exc:  # RuntimeError (unsupported), TypeError (too large for the C++ side), ...
            raise UsageError(f"--opset {opset}: torch {torch.__version__} does not export it ({first_line(exc)})",
                             hint=DEFAULT_OPSET_HINT) from None


def check_onnxruntime_runs(out: Path, components: list[str], opset: int) -> None:
    """A run-time failure unless this onnxruntime has a CPU kernel for every op of each exported graph: torch
    writes opsets whose ops onnxruntime may not run yet (onnxruntime 1.32: the VAE encoder's RandomNormalLike at
    opset 22), and the export would only fail at its first generate. Making a session, unoptimized, finds it in
    a second; the default opset runs on every onnxruntime since 1.14, so its exports skip this."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    for name in components:
        try:
            onnxruntime.InferenceSession(str(out / name / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types
            raise RuntimeFailure(f"onnxruntime {onnxruntime.__version__} can't run the {name} exported at --opset "
                                 f"{opset}: {first_line(exc)}",
                                 hint=DEFAULT_OPSET_HINT) from None


def export_onnx(model: str | None, out: Path, *, opset: int = DEFAULT_OPSET) -> ExportReport:
    """Load `model` in fp32 on the CPU and write it to `out` as an ONNX pipeline folder."""
    require_onnx_packages()
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder", hint="give a new or empty folder")
    if out.exists() and any(out.iterdir()) and not (is_onnx_folder(out) or is_partial_export(out)):
        raise UsageError(f"--out {out} is not empty and is not an ONNX export",
                         hint="give a new or empty folder (an earlier export there is replaced)")
    source = models.resolve_model(model)
    if source.kind == "folder" and is_onnx_folder(source.spec):
        raise UsageError(f"{source.spec} is already an ONNX export",
                         hint=f"use it directly: --model {shlex.quote(source.spec)} --set backend=onnx")
    check_opset(opset)  # before --out is created: a bad opset leaves no empty folder behind
    # Checked before the model loads (minutes for SD 1.x), and so not blamed on the exporter later.
    made = [folder for folder in (out, *out.parents) if not folder.exists()]  # `--out new/a/b`: three, deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: the folder can't be created ({exc.strerror or exc})",
                         hint="give a folder you can write to") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {out}: the folder is not writable", hint="give a folder you can write to")
    from nitro_cli.builder import quiet_libraries

    quiet_libraries()  # first: it quiets the loggers that speak while diffusers imports
    import torch
    from diffusers import OnnxRuntimeModel, OnnxStableDiffusionPipeline

    try:
        pipe = models.load_pipeline(source, torch_dtype=torch.float32, with_safety_checker=True, device="cpu")
    except BaseException:  # a model that can't be had (or Ctrl-C while it loads) leaves no empty folders behind
        with contextlib.suppress(OSError):  # one no longer empty (written to meanwhile) stays, and those above it
            for folder in made:
                folder.rmdir()
        raise
    # Only now: a model that fails to load (or Ctrl-C during the minutes it takes) leaves an earlier export whole.
    _mark_partial(out)
    report = ExportReport(out=out)
    for name, (module, example, inputs, outputs, axes) in _export_modules(pipe).items():
        print(f"Exporting {name} ...", file=sys.stderr)
        try:
            report.components[name] = _export_one(module, example, inputs, outputs, axes, out / name, opset)
        except Exception as exc:  # the tracer and onnx raise many kinds of errors; name the component
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise  # told as a full disk, not as the exporter's failure with an --opset hint
            # The first line only: the exporter's messages go on with the whole traced graph.
            raise RuntimeFailure(f"ONNX export of the {name} failed: {describe(exc)}",
                                 hint="run with NITRO_DEBUG=1 for the traceback; try another --opset") from exc
    if opset != DEFAULT_OPSET:
        check_onnxruntime_runs(out, list(report.components), opset)
    if "safety_checker" not in report.components:
        report.skipped.append(("safety_checker", "the model has none"))
        shutil.rmtree(out / "safety_checker", ignore_errors=True)  # an earlier export's (1.2 GB for SD 1.x)

    def onnx_model(name: str):
        # Unloaded: save_pretrained only records the class in model_index.json; the file is already in place.
        return OnnxRuntimeModel(model=None, model_save_dir=out / name) if name in report.components else None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers marks its ONNX classes deprecated after 0.43
        onnx_pipe = OnnxStableDiffusionPipeline(
            vae_encoder=onnx_model("vae_encoder"), vae_decoder=onnx_model("vae_decoder"),
            text_encoder=onnx_model("text_encoder"), tokenizer=pipe.tokenizer, unet=onnx_model("unet"),
            scheduler=pipe.scheduler, safety_checker=onnx_model("safety_checker"),
            feature_extractor=pipe.feature_extractor, requires_safety_checker="safety_checker" in report.components)
        onnx_pipe.save_pretrained(out)
    _save_scheduler_as_given(pipe.scheduler, out / "scheduler")
    (out / PARTIAL_MARKER).unlink()  # the last step: only now is the folder a whole export
    return report


def _save_scheduler_as_given(scheduler, folder: Path) -> None:
    """Write only the scheduler settings the model set, not the defaults diffusers filled in.

    `save_pretrained` writes every default too (PNDM's `timestep_spacing: leading`); a preset's
    scheduler built from that file would inherit it, while the same scheduler built from the
    in-memory model uses its own default (`linspace` for DPM++): other timesteps, other images.
    """
    import diffusers

    config = dict(scheduler.config)
    defaults = set(config.pop("_use_default_values", []))
    given = {key: value for key, value in config.items() if key not in defaults}
    given.update(_class_name=type(scheduler).__name__, _diffusers_version=diffusers.__version__)
    (folder / "scheduler_config.json").write_text(json.dumps(given, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def exported_folder(source: models.ModelSource) -> Path:
    """The ONNX folder behind `--model` for the ONNX backend: an export, or a cached one of a `random:` model.

    `random:` models have fixed seeded weights, so their export is made once and reused from the cache.
    Any other model is exported by the user, once, with `nitro export onnx` (minutes and GBs for SD 1.x).
    """
    from nitro_cli.paths import cache_dir, made_once

    if source.kind == "folder" and is_onnx_folder(source.spec):
        return Path(source.spec)
    if not source.is_random:
        raise UsageError(f"backend onnx needs an ONNX export, and {source.spec} is not one",
                         hint=EXPORT_HINT.format(model=shlex.quote(source.spec)))
    folder = cache_dir() / "onnx" / source.spec.replace(":", "-")
    if not is_onnx_folder(folder):
        print(f"Exporting {source.spec} to ONNX once, into {folder} ...", file=sys.stderr)
    return made_once(folder, lambda staging: export_onnx(source.spec, staging), _is_complete_export)


def _is_complete_export(folder: Path) -> bool:
    """A cached export whole: a file in it deleted by hand is exported again, not an error at every run."""
    return is_onnx_folder(folder) and not missing_files(folder, with_safety_checker=True)


def _export_again_hint(folder: Path) -> str:
    """How to replace a broken export: the cache's own is made again once deleted; the user's, by exporting."""
    from nitro_cli.paths import cache_dir

    if folder.resolve().is_relative_to(cache_dir().resolve()):
        return f"delete {shlex.quote(str(folder))}: the next run exports it again"
    return "export it again: " + EXPORT_HINT.format(model="MODEL")


def missing_files(folder: Path, *, with_safety_checker: bool) -> list[str]:
    """The files of the export in `folder` that its model_index.json names but that are not there.

    Checked before loading: diffusers loads an empty tokenizer folder without a word, and the tokenizer then
    fails at the first prompt with a traceback (OverflowError)."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    needed = ["tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"]
    for name, entry in index.items():
        if name == "safety_checker" and not with_safety_checker:
            continue
        if isinstance(entry, list) and entry[-1] == "OnnxRuntimeModel":
            needed.append(f"{name}/{ONNX_FILE}")
    return [path for path in needed if not (folder / path).is_file()]


def load_onnx_pipeline(folder: Path, *, provider: str, with_safety_checker: bool):
    """OnnxStableDiffusionPipeline on one ONNX Runtime execution provider."""
    require_onnx_packages()
    missing = missing_files(folder, with_safety_checker=with_safety_checker)
    if missing:
        raise RuntimeFailure(f"the ONNX export {folder} is incomplete: no {', '.join(missing)}",
                             hint=_export_again_hint(folder))
    from diffusers import OnnxStableDiffusionPipeline
    from diffusers.utils import logging

    logging.disable_progress_bar()  # the "Loading pipeline components" bar: noise for a local folder
    # An empty options dict per provider: without it diffusers passes a mismatched list and onnxruntime
    # prints an "EP Error" (on stdout) before retrying.
    kwargs: dict[str, Any] = {"provider": provider, "provider_options": {}}
    if not with_safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return OnnxStableDiffusionPipeline.from_pretrained(str(folder), **kwargs)
    except Exception as exc:  # onnxruntime raises its own exception types for broken or foreign graphs
        raise RuntimeFailure(f"ONNX Runtime could not load {folder}: {first_line(exc)}",
                             hint=_export_again_hint(folder)) from exc


class OnnxVaeDecoder:
    """The exported VAE decoder with the parts of diffusers' `AutoencoderKL` that `generation.decode_latents` uses.

    An export is a float32 graph, so `dtype` is float32 and the fp32 re-decode of the NaN guard never runs.
    """

    def __init__(self, session):
        self.session = session
        self.config = SimpleNamespace(scaling_factor=SD_VAE_SCALING_FACTOR)

    @property
    def dtype(self):
        import torch

        return torch.float32

    def decode(self, latents, return_dict: bool = False) -> tuple:
        """Pixels in [-1, 1], as a one-item tuple (what `AutoencoderKL.decode(..., return_dict=False)` returns)."""
        import torch

        if return_dict:
            raise ValueError("the ONNX VAE decoder returns a tuple only: call decode(..., return_dict=False)")
        return (torch.from_numpy(self.session(latent_sample=latents.numpy())[0]),)


class OnnxRuntimePipeline:
    """An `OnnxStableDiffusionPipeline` with the calls `generation.run_batch` makes on a diffusers pipeline.

    The denoising loop is StableDiffusionPipeline's, in torch, with the exported UNet as the noise
    predictor: the scheduler steps on torch tensors, so every scheduler runs (diffusers' numpy ONNX
    loop fails on Euler, Euler a and LMS), the starting noise is drawn from the torch CPU generators
    exactly as the PyTorch pipeline draws it on a CPU (a seed gives the same image on both backends
    there, within float error; on a GPU the PyTorch pipeline's generators live on the GPU, so its noise
    differs), and Euler a takes its per-step noise from the same generators. The call stops at
    latents; `vae`, `run_safety_checker` and `image_processor` then decode, check and convert as
    run_batch does for the PyTorch pipeline.
    """

    def __init__(self, onnx_pipe):
        from diffusers.image_processor import VaeImageProcessor

        self.onnx_pipe = onnx_pipe
        self.scheduler = onnx_pipe.scheduler  # the loop's own: builder.set_scheduler replaces it here
        self._execution_device = "cpu"  # where the torch side (embeddings, latents) lives; ONNX Runtime copies
        self.vae = OnnxVaeDecoder(onnx_pipe.vae_decoder)
        self.image_processor = VaeImageProcessor(vae_scale_factor=SD_VAE_SCALE_FACTOR)
        self._num_timesteps = 0

    @property
    def tokenizer(self):
        return self.onnx_pipe.tokenizer

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the current (or last) call, as diffusers' pipelines report it to step callbacks."""
        return self._num_timesteps

    def encode_prompt(self, prompt: str, device, num_images_per_prompt: int, do_classifier_free_guidance: bool,
                      negative_prompt: str | None = None):
        import numpy as np
        import torch

        embeds = self.onnx_pipe._encode_prompt(prompt, num_images_per_prompt, do_classifier_free_guidance,
                                               negative_prompt)
        if not do_classifier_free_guidance:
            return torch.from_numpy(embeds), None
        negative, positive = np.split(embeds, 2)  # the ONNX pipeline stacks [negative, positive]
        return torch.from_numpy(positive), torch.from_numpy(negative)

    def __call__(self, *, prompt_embeds, negative_prompt_embeds, num_inference_steps: int, guidance_scale: float,
                 width: int, height: int, generator: list, output_type: str,
                 callback_on_step_end: Callable | None = None):
        """Denoise to latents (`output_type="latent"`, the only one: decoding is run_batch's)."""
        import inspect

        import numpy as np
        import torch
        from diffusers.pipelines.onnx_utils import ORT_TO_NP_TYPE
        from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
        from diffusers.utils.torch_utils import randn_tensor

        if output_type != "latent":
            raise ValueError(f"OnnxRuntimePipeline returns latents only, not output_type={output_type!r}")
        unet, scheduler = self.onnx_pipe.unet, self.scheduler
        guided = guidance_scale > 1.0  # as StableDiffusionPipeline decides classifier-free guidance
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if guided else prompt_embeds
        embeds = embeds.numpy()

        scheduler.set_timesteps(num_inference_steps, device="cpu")
        timesteps = scheduler.timesteps
        self._num_timesteps = len(timesteps)
        inputs = {i.name: i for i in unet.model.get_inputs()}
        shape = (prompt_embeds.shape[0], inputs["sample"].shape[1], height // SD_VAE_SCALE_FACTOR,
                 width // SD_VAE_SCALE_FACTOR)
        latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        latents = latents * scheduler.init_noise_sigma
        timestep_dtype = ORT_TO_NP_TYPE[inputs["timestep"].type]
        step_parameters = inspect.signature(scheduler.step).parameters
        step_kwargs = {key: value for key, value in (("eta", 0.0), ("generator", generator)) if key in step_parameters}

        for i, t in enumerate(timesteps):
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            timestep = np.array([t.item()], dtype=timestep_dtype)
            noise_pred = torch.from_numpy(unet(sample=model_input.numpy(), timestep=timestep,
                                               encoder_hidden_states=embeds)[0])
            if guided:
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
            if callback_on_step_end is not None:
                latents = callback_on_step_end(self, i, t, {"latents": latents}).pop("latents", latents)
        return StableDiffusionPipelineOutput(images=latents, nsfw_content_detected=None)

    def run_safety_checker(self, pixels, device, dtype):
        """(pixels, NSFW flags) as StableDiffusionPipeline.run_safety_checker returns them, flagged images zeroed;
        (pixels, None) without a checker. `device` and `dtype` are the torch pipeline's; the graph is fp32 on ORT."""
        import numpy as np
        import torch

        checker = self.onnx_pipe.safety_checker
        if checker is None:
            return pixels, None
        clip_input = self.onnx_pipe.feature_extractor(self.image_processor.postprocess(pixels, output_type="pil"),
                                                      return_tensors="np").pixel_values.astype(np.float32)
        images = np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy())  # the graph takes NHWC, as exported
        checked, flags = [], []
        for i in range(len(images)):  # one at a time: the traced graph's NSFW mask broadcasts over batch 1 only
            image, flag = checker(clip_input=clip_input[i:i + 1], images=images[i:i + 1])
            checked.append(image)
            flags.append(bool(flag[0]))
        return torch.from_numpy(np.concatenate(checked)).permute(0, 3, 1, 2), flags

    def maybe_free_model_hooks(self) -> None:
        """Nothing to free: ONNX Runtime sessions have no CPU-offload hooks."""
