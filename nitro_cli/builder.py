"""Preset + model + device in, tuned diffusers pipeline out.

The only module that knows diffusers' and torch's optimization calls. It reports what it applied and
what it skipped (and why), so that generate, bench and checklist can show it. Where this machine
can't do what a preset asks, it degrades with a one-line warning (fp16 on a CPU runs in fp32); a
preset that asks for something that needs a missing package on purpose (quantization) is an error.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from nitro_cli import hardware, models, onnx_export
from nitro_cli.errors import RuntimeFailure, UsageError, describe
from nitro_cli.presets import Preset, flatten

LICENSE_REMINDER = ("Safety checker off: Nitro-Diffusion's CreativeML OpenRAIL-M license still forbids "
                    "illegal or harmful output, and asks you to pass its terms on with the model.")
_license_reminded = False

# Preset scheduler key -> (diffusers class name, extra config). Built from the model's own config.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

# bitsandbytes through diffusers' pipeline-level quantization config; the VAE has few Linear layers.
# (`fp8_storage` needs no package, see _apply_fp8_storage; `fp8_matmul` uses torchao, see _apply_fp8_matmul.)
QUANTIZATION_BACKENDS = {
    "int8": ("bitsandbytes_8bit", {"load_in_8bit": True}),
    "nf4": ("bitsandbytes_4bit", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}),
}


@dataclass
class BuiltPipeline:
    pipe: Any
    device: str
    dtype: str
    applied: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unet_cache: Any = None  # unet_cache.FeatureCache when `feature_cache_interval` is on
    compiled: bool = False  # torch.compile applied: the first call of each input shape compiles (or loads its cache)

    def skip(self, what: str, why: str) -> None:
        self.skipped.append((what, why))
        print(f"Warning: {what} skipped: {why}", file=sys.stderr)


def resolve_device(requested: str, machine: hardware.Machine) -> str:
    """`auto` is the first CUDA GPU when there is one, else the CPU; `cuda` without one is a usage error."""
    if machine.torch_error:  # nothing runs without torch: say why, not a traceback from the first import
        raise RuntimeFailure(f"torch does not import: {machine.torch_error}",
                             hint=f"{hardware.TORCH_REINSTALL_HINT}; `nitro doctor` checks the rest")
    if requested == "auto":
        return "cuda" if machine.has_gpu else "cpu"
    if requested == "cuda" and not machine.has_gpu:
        raise UsageError("--device cuda, but no CUDA GPU is available to torch",
                         hint="use --device cpu (slow), or run `nitro doctor` to see why no GPU is found")
    return requested


# What this machine can do, as small pure functions: the builder acts on them and `nitro checklist`
# shows them, so both always tell the same story. Each returns None when the setting works here.

def effective_precision(precision: str, device: str, machine: hardware.Machine) -> tuple[str, str | None]:
    """The dtype `precision` runs in on `device`, and why it differs (None when it doesn't)."""
    if precision == "float32":
        return "float32", None
    if device == "cpu":
        if not machine.cpu_amx_bf16:
            # fp16/bf16 are emulated on AVX2 CPUs, tens of times slower than fp32: over 100 s per bf16 UNet step
            # on a 2-vCPU AMD EPYC (plain diffusers, 2026-11-26, docs/reference-measurements.md).
            return "float32", "CPU without native half precision: float32 used"
        # AMX multiplies bf16 and not fp16 (fp16 ran at fp32's speed on a 2-vCPU AMX Xeon, 2026-11-26, in an
        # ad-hoc UNet timing, not kept: docs/benchmarks.md): bf16 is this CPU's fast half precision.
        return "bfloat16", None if precision == "bfloat16" else "CPU with AMX: bfloat16 used, its native half precision"
    gpu = machine.gpus[0]
    if precision == "bfloat16" and not gpu.bf16 and gpu.fast_fp16:
        return "float16", f"{gpu.name} (compute capability {gpu.capability}) has no bf16: float16 used"
    # Neither bf16 nor usable fp16 (GTX 10xx, 16xx): either half precision falls back to float32.
    if not gpu.fast_fp16 and (precision == "float16" or not gpu.bf16):
        return "float32", f"{gpu.name} (compute capability {gpu.capability}): {gpu.fp16_problem}: float32 used"
    return precision, None


def xformers_blocker(device: str, machine: hardware.Machine) -> str | None:
    if device != "cuda":
        return "no CUDA device"
    if machine.packages.get("xformers") is None:
        return "xformers not installed (pip install 'nitro-cli[xformers]')"
    if machine.xformers_test is not None and not machine.xformers_test.ok:
        return f"xformers is broken: {machine.xformers_test.detail}"
    return None


# fp8 tensor cores: Ada Lovelace (8.9), Hopper (9.0) and later; torchao refuses fp8 matmuls below that.
FP8_MATMUL_CAPABILITY = (8, 9)
TORCHAO_MISSING = "torchao not installed"


def quantization_blocker(quantization: str, device: str, machine: hardware.Machine) -> str | None:
    """Why this machine can't apply `quantization` (None: it can). fp8 storage needs no extra package."""
    if quantization == "fp8_matmul":
        return fp8_matmul_hardware_blocker(device, machine) or (
            TORCHAO_MISSING if machine.packages.get("torchao") is None else None)
    if quantization not in QUANTIZATION_BACKENDS:
        return None
    # The device first: without a GPU the builder skips bitsandbytes whether it is installed or not.
    if device != "cuda":
        return "no CUDA device: diffusers' bitsandbytes quantization needs a GPU"
    if machine.packages.get("bitsandbytes") is None:
        return "bitsandbytes not installed"
    if machine.bitsandbytes_test is not None and not machine.bitsandbytes_test.ok:
        return f"bitsandbytes found no CUDA library: {machine.bitsandbytes_test.detail}"
    return None


def fp8_matmul_hardware_blocker(device: str, machine: hardware.Machine) -> str | None:
    if device != "cuda":
        return "no CUDA device: fp8 matmuls need an NVIDIA GPU of compute capability 8.9+ (Ada, Hopper)"
    gpu = machine.gpus[0]
    if gpu.compute_capability < FP8_MATMUL_CAPABILITY:
        return f"{gpu.name} (compute capability {gpu.capability}) has no fp8 tensor cores (8.9+: Ada, Hopper)"
    return None


def cuda_only_blocker(device: str) -> str | None:
    """Settings that only exist on CUDA (cuDNN benchmark, SDPA kernel choice)."""
    return None if device == "cuda" else "no CUDA device: a CUDA-only setting"


def offload_blocker(device: str) -> str | None:
    return "already on the CPU" if device == "cpu" else None


# Triton, torch.compile's code generator for CUDA, compiles for compute capability 7.0+ only: on a Pascal card
# (GTX 10xx, P40) torch raises GPUTooOldForTriton at the first call, with Triton installed or not.
TRITON_CAPABILITY = (7, 0)
TRITON_MISSING = "torch.compile needs Triton"


def compile_blocker(device: str, machine: hardware.Machine) -> str | None:
    if device == "cuda" and machine.gpus[0].compute_capability < TRITON_CAPABILITY:
        gpu = machine.gpus[0]
        return f"{gpu.name} (compute capability {gpu.capability}): torch.compile's Triton needs 7.0+"
    if machine.compiler_available:
        return None
    return TRITON_MISSING if device == "cuda" else "torch.compile needs a C++ compiler"


def compile_extra_blocker(preset: Preset, device: str, machine: hardware.Machine) -> str | None:
    """`compile_vae`, `compile_text_encoder`, `inductor_tuning`: they ride on the UNet's compilation."""
    if preset.compile == "none":
        return "compile is none: set compile to a mode"
    return compile_blocker(device, machine)


# The compile modes whose inductor options turn on CUDA graphs (`triton.cudagraphs`).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def cuda_graphs_blocker(mode: str, device: str) -> str | None:
    """What a compile mode with CUDA graphs does instead on a device without them (None: as asked)."""
    if device == "cuda" or mode not in CUDA_GRAPH_MODES:
        return None
    if mode == "reduce-overhead":
        return "no CUDA device: default mode, without CUDA graphs"
    return f"no CUDA device: {mode} without CUDA graphs"


# FlashAttention and cuDNN attention take fp16/bf16 only, on compute capability 8.0+ (torch's sdp_utils checks):
# held to one of them, a float32 UNet or an older GPU stops at its first attention call ("No available kernel").
HALF_PRECISION_SDPA_KERNELS = ("flash", "cudnn")
HALF_PRECISION_SDPA_CAPABILITY = (8, 0)


def sdpa_backend_blocker(choice: str, attention: str, device: str, dtype: str,
                         machine: hardware.Machine) -> str | None:
    """Why the UNet can't be held to the SDPA kernel `choice` when it runs in `dtype` (None: it can)."""
    if why := cuda_only_blocker(device):
        return f"{why}: the CPU keeps torch's own pick"
    if attention != "sdpa":
        return f"the UNet uses {attention} attention, not SDPA"
    if choice not in HALF_PRECISION_SDPA_KERNELS:
        return None
    if dtype == "float32":
        return f"{choice} attention takes fp16/bf16 only, and the UNet runs in float32: torch's own pick kept"
    gpu = machine.gpus[0]
    if gpu.compute_capability < HALF_PRECISION_SDPA_CAPABILITY:
        return (f"{gpu.name} (compute capability {gpu.capability}): {choice} attention needs 8.0+: "
                "torch's own pick kept")
    return None


def effective_attention(attention: str, device: str, machine: hardware.Machine) -> str:
    """The attention the UNet runs: xformers falls back to SDPA where it can't run."""
    return "sdpa" if attention == "xformers" and xformers_blocker(device, machine) else attention


def effective_quantization(quantization: str, device: str) -> str:
    """The quantization the weights get: bitsandbytes' is skipped off CUDA (see _quantization_config)."""
    return "none" if quantization in QUANTIZATION_BACKENDS and device != "cuda" else quantization


def fuse_qkv_blocker(attention: str, quantization: str) -> str | None:
    """Fusing rewrites the attention processors: only SDPA's (the attention the UNet runs), and not on
    bitsandbytes weights."""
    if attention == "sdpa" and quantization not in QUANTIZATION_BACKENDS:
        return None
    return (f"works with SDPA on weights not quantized by bitsandbytes only "
            f"(attention={attention}, quantization={quantization})")


# Feature caching counts denoising steps by the scheduler's `step_index`, which these lack.
SCHEDULERS_WITHOUT_STEP_INDEX = ("pndm", "ddim")


def feature_cache_blocker(preset: Preset, device: str) -> str | None:
    """Why `feature_cache_interval` can't run with these settings on `device` (the UNet's layout is checked at
    build)."""
    if preset.scheduler in SCHEDULERS_WITHOUT_STEP_INDEX:
        return f"scheduler {preset.scheduler} has no step index to count steps by (DPM++, Euler, LMS, UniPC have)"
    if preset.offload != "none" and offload_blocker(device) is None:  # on a CPU, offloading is skipped
        return "CPU offload wraps the UNet's forward, which the cached steps go around"
    return None


def _quantization_config(built: BuiltPipeline, preset: Preset, machine: hardware.Machine):
    """diffusers' loading-time config for the bitsandbytes back-ends; None for the others (applied after loading)."""
    if preset.quantization not in QUANTIZATION_BACKENDS:
        return None
    if effective_quantization(preset.quantization, built.device) != preset.quantization:
        # diffusers' bitsandbytes quantizer refuses to load without a GPU ("No GPU found"), whatever bnb's build:
        # the machine can't, so degrade; a GPU without bitsandbytes is fixable, so that is an error below.
        built.skip(f"{preset.quantization} quantization", "bitsandbytes in diffusers needs a CUDA GPU: "
                                                          "unquantized weights used")
        return None
    why = quantization_blocker(preset.quantization, built.device, machine)
    if why:
        raise UsageError(f"quantization={preset.quantization}: {why}",
                         hint="pip install 'nitro-cli[quant]'  (or --set quantization=fp8_storage, "
                              "which needs no extra package, or quantization=none)")
    from diffusers import PipelineQuantizationConfig

    backend, kwargs = QUANTIZATION_BACKENDS[preset.quantization]
    if preset.quantization == "nf4":
        kwargs = dict(kwargs, bnb_4bit_compute_dtype=built.dtype)  # bitsandbytes computes in fp32 unless told
    return PipelineQuantizationConfig(quant_backend=backend, quant_kwargs=kwargs,
                                      components_to_quantize=["unet", "text_encoder"])


def set_scheduler(pipe, name: str) -> None:
    import diffusers

    class_name, extra = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **extra)


# Loggers that speak at import time: diffusers imports torchao whenever it is installed, and torchao then
# logs each of its optional kernel libraries this torch build can't load, and torch's pytree a deprecation.
IMPORT_TIME_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_libraries() -> None:
    """diffusers', transformers' and huggingface_hub's info warnings are noise in a CLI, and so are their progress
    bars off a terminal; NITRO_DEBUG keeps them all."""
    if os.environ.get("NITRO_DEBUG"):
        return
    import logging
    import warnings

    for name in IMPORT_TIME_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Compiling a bf16 UNet traces diffusers' cached torch-version check in its upsamplers; dynamo warns about
    # the cache, which changes nothing for a user (a constant answer).
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`-wrapped function",
                            category=UserWarning)
    # Compiling fp8 weights (torchao's Float8Tensor): AOTAutograd's cache hashes them its default way and says so.
    warnings.filterwarnings("ignore", message=".* does not implement _stable_hash_for_caching", category=UserWarning)
    import diffusers
    import huggingface_hub
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    # huggingface_hub says "Could not reach the Hub ... Using cached commit hash" on every offline run of a cached
    # model, even with HF_HUB_OFFLINE set on purpose; a model it can't have is nitro's own one-line error.
    huggingface_hub.utils.logging.set_verbosity_error()
    from rich.console import Console

    if not Console(stderr=True).is_terminal:
        # Bars draw only on a terminal, as nitro's own do: in a log (`2> run.log`, a CI job) each loading bar
        # would leave its frames behind. transformers' switch turns huggingface_hub's download bars off too.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()


def _remind_license() -> None:
    global _license_reminded
    if not _license_reminded:
        print(LICENSE_REMINDER, file=sys.stderr)
        _license_reminded = True


def build_pipeline(preset: Preset, model: str | None, device: str = "auto",
                   machine: hardware.Machine | None = None) -> BuiltPipeline:
    """Load `model` and apply every optimization `preset` asks for that this machine can do."""
    import torch

    quiet_libraries()
    machine = machine or hardware.probe()
    device = resolve_device(device, machine)
    source = models.resolve_model(model)
    if preset.backend == "onnx":
        return _build_onnx(preset, source, device)
    if source.kind == "folder" and onnx_export.is_onnx_folder(source.spec):
        raise UsageError(f"{source.spec} is an ONNX export: only the ONNX backend runs it",
                         hint="add --set backend=onnx (or give the original diffusers model)")
    dtype, why = effective_precision(preset.precision, device, machine)
    built = BuiltPipeline(pipe=None, device=device, dtype=dtype)
    if why:
        built.skip(preset.precision, why)
    quantization = _quantization_config(built, preset, machine)
    pipe = models.load_pipeline(source, torch_dtype=getattr(torch, built.dtype), device=device,
                                with_safety_checker=preset.safety_checker, quantization_config=quantization)
    built.pipe = pipe
    if preset.safety_checker and pipe.safety_checker is None:
        built.skip("safety checker", models.missing_safety_checker_reason(source))
    built.applied.append(f"precision {built.dtype}")
    if quantization is not None:
        built.applied.append(f"{preset.quantization} quantization of unet and text encoder (bitsandbytes)")

    set_scheduler(pipe, preset.scheduler)
    built.applied.append(f"scheduler {preset.scheduler}")

    attention = _apply_attention(built, preset.attention, machine)
    if preset.fuse_qkv:
        # Fusing rewrites the attention processors, so it comes after the attention choice.
        _apply_fuse_qkv(built, attention, preset.quantization)
    if preset.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        built.applied.append("channels_last (unet, vae)")
    if preset.quantization == "fp8_storage":
        _apply_fp8_storage(built)
    elif preset.quantization == "fp8_matmul":
        _apply_fp8_matmul(built, machine)
    if preset.feature_cache_interval > 1:
        # After every change to the UNet's layers, before anything wraps its forward (SDPA kernel choice).
        _apply_feature_cache(built, preset)
    if preset.vae.slicing:
        pipe.vae.enable_slicing()
        built.applied.append("VAE slicing")
    if preset.vae.tiling:
        pipe.vae.enable_tiling()
        built.applied.append("VAE tiling")
    _apply_offload(built, preset.offload)
    _apply_sdpa_backend(built, preset.sdpa_backend, attention, machine)
    _apply_cudnn_benchmark(built, preset.cudnn_benchmark)
    _apply_compile(built, preset, machine)
    _report_safety_checker_and_prompt_cache(built, preset)
    pipe.set_progress_bar_config(disable=True)
    return built


# Preset fields that shape the PyTorch pipeline only: an ONNX export is a fixed fp32 graph.
PYTORCH_ONLY_FIELDS = ("precision", "attention", "offload", "quantization", "compile", "compile_vae",
                       "compile_text_encoder", "inductor_tuning", "channels_last", "fuse_qkv", "sdpa_backend",
                       "cudnn_benchmark", "feature_cache_interval", "vae.slicing", "vae.tiling")


def _build_onnx(preset: Preset, source: models.ModelSource, device: str) -> BuiltPipeline:
    """The `backend: onnx` pipeline: an exported folder run by ONNX Runtime, behind run_batch's interface."""
    onnx_export.require_onnx_packages()
    import onnxruntime

    built = BuiltPipeline(pipe=None, device="cpu", dtype="float32")
    provider = "CPUExecutionProvider"
    if device == "cuda":
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            provider, built.device = "CUDAExecutionProvider", "cuda"
        else:
            built.skip("CUDA", "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu): CPU used")
    settings, defaults = flatten(preset), flatten(Preset())
    for key in PYTORCH_ONLY_FIELDS:
        if settings[key] != defaults[key]:
            built.skip(f"{key}={settings[key]}", "PyTorch backend only (the ONNX export is a fixed float32 graph)")

    folder = onnx_export.exported_folder(source)
    onnx_pipe = onnx_export.load_onnx_pipeline(folder, provider=provider, with_safety_checker=preset.safety_checker)
    built.pipe = onnx_export.OnnxRuntimePipeline(onnx_pipe)
    set_scheduler(built.pipe, preset.scheduler)
    built.applied += [f"ONNX Runtime {onnxruntime.__version__} ({provider})", "precision float32",
                      f"scheduler {preset.scheduler}"]
    if preset.safety_checker and onnx_pipe.safety_checker is None:
        built.skip("safety checker", f"the export in {folder} has none")
    _report_safety_checker_and_prompt_cache(built, preset)
    return built


def _report_safety_checker_and_prompt_cache(built: BuiltPipeline, preset: Preset) -> None:
    """Both back-ends: the loaders leave the checker out and generation.PromptCache does the caching."""
    if not preset.safety_checker:
        built.applied.append("no safety checker")
        _remind_license()
    if preset.prompt_cache:
        built.applied.append("prompt-embedding cache")


def _apply_attention(built: BuiltPipeline, attention: str, machine: hardware.Machine) -> str:
    """Returns the attention the UNet runs (SDPA where xformers falls back)."""
    pipe = built.pipe
    if attention == "xformers":
        why = xformers_blocker(built.device, machine)
        if why:
            built.skip("xformers", f"{why}: SDPA used")
        else:
            try:
                pipe.enable_xformers_memory_efficient_attention()
                built.applied.append("xformers attention")
                return attention
            except Exception as exc:  # a broken xformers build raises many kinds of errors
                built.skip("xformers", f"failed to start ({describe(exc)}): SDPA used")
    elif attention == "sliced":
        pipe.enable_attention_slicing()
        built.applied.append("sliced attention")
        return attention
    built.applied.append("SDPA attention")
    return "sdpa"


def _apply_fuse_qkv(built: BuiltPipeline, attention: str, quantization: str) -> None:
    if why := fuse_qkv_blocker(attention, effective_quantization(quantization, built.device)):
        built.skip("fuse_qkv", why)
    else:
        built.pipe.fuse_qkv_projections()
        built.applied.append("fused QKV projections")


def _apply_fp8_storage(built: BuiltPipeline) -> None:
    """UNet weights kept in fp8 and cast up one layer at a time for compute: half the fp16 weight memory.

    Only the UNet: the pipeline takes its prompt-embedding dtype from the text encoder's parameters, so
    an fp8 text encoder would make fp8 latents (and it is small, and off the GPU under offload anyway).
    diffusers keeps the UNet's norm layers in the compute dtype. After fuse_qkv, so the fused layers are cast too.
    """
    import torch

    built.pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                             compute_dtype=getattr(torch, built.dtype))
    built.applied.append(f"fp8 storage of unet weights (layerwise casting, {built.dtype} compute)")


def _apply_fp8_matmul(built: BuiltPipeline, machine: hardware.Machine) -> None:
    """A speed setting, unlike the other quantizations: fp8 tensor cores do twice the fp16 matmul work per
    cycle. A machine without them degrades (skip); a capable one without torchao is a fixable error.
    After fuse_qkv, so the fused projections are quantized too."""
    why = quantization_blocker("fp8_matmul", built.device, machine)
    if why == TORCHAO_MISSING:
        raise UsageError(f"quantization=fp8_matmul: {why}",
                         hint="pip install 'nitro-cli[fp8]'  (or --set quantization=none)")
    if why:
        built.skip("fp8_matmul quantization", f"{why}: {built.dtype} matmuls used")
        return
    count, scales = quantize_unet_matmuls_fp8(built.pipe.unet, built.dtype)
    built.applied.append(f"fp8 matmuls in the UNet's {count} attention and feed-forward Linear layers "
                         f"(torchao, dynamic {scales} scales, changes the picture)")


def quantize_unet_matmuls_fp8(unet, dtype: str) -> tuple[int, str]:
    """torchao's dynamic fp8: each weight stored in float8 e4m3 with its scale, each activation scaled and cast
    on the fly, the product by `torch._scaled_mm`. Only the Linear layers of the attention blocks, where the
    UNet's matmul work is; the time-embedding layers multiply 2 rows a step, so fp8 would only cost fidelity.
    Per-row scales are more faithful but torchao takes them for bf16 weights only. Returns (layers
    quantized, scale granularity)."""
    import torch
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Float8Tensor, PerRow, PerTensor,
                                      quantize_)

    per_row = dtype == "bfloat16"
    # set_inductor_config=False: torchao would otherwise switch on process-wide inductor flags (coordinate
    # descent tuning: much longer compiles) that outlive this pipeline.
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if per_row else PerTensor(),
                                                       set_inductor_config=False)
    quantize_(unet, config,
              filter_fn=lambda module, name: isinstance(module, torch.nn.Linear) and ".attentions." in f".{name}")
    # torchao leaves a layer whose sizes _scaled_mm can't take (not multiples of 16) as it was.
    count = sum(isinstance(module.weight, Float8Tensor) for module in unet.modules()
                if isinstance(module, torch.nn.Linear))
    return count, "per-row" if per_row else "per-tensor"


def _apply_feature_cache(built: BuiltPipeline, preset: Preset) -> None:
    """DeepCache (nitro_cli/unet_cache.py): fewer UNet FLOPs per step on average, at a cost in fidelity,
    hence opt-in and never in a shipped tier's defaults."""
    from nitro_cli import unet_cache

    interval = preset.feature_cache_interval
    pipe = built.pipe
    why = feature_cache_blocker(preset, built.device) or unet_cache.feature_cache_blocker(pipe.unet)
    if why:
        built.skip(f"feature_cache_interval {interval}", why)
        return
    built.unet_cache = unet_cache.enable_feature_cache(pipe.unet, interval, lambda: pipe.scheduler.step_index)
    built.applied.append(f"UNet feature cache: the whole UNet every {interval} steps, a shallow branch on its "
                         "cached features in between (changes the picture)")


def _apply_offload(built: BuiltPipeline, offload: str) -> None:
    """Where the weights live: on the device, or in CPU memory with diffusers' hooks moving them in when needed."""
    pipe = built.pipe
    if offload != "none" and (why := offload_blocker(built.device)):
        built.skip(f"{offload} CPU offload", why)
        offload = "none"
    if offload == "model":
        pipe.enable_model_cpu_offload(device=offload_device(built.device))
        built.applied.append("model CPU offload")
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=offload_device(built.device))
        built.applied.append("sequential CPU offload")
    else:
        pipe.to(built.device)


def offload_device(device: str) -> str:
    """The GPU that offloaded weights go to: this process's current one, with its index. diffusers' offloading
    reads a bare "cuda" as GPU 0, where `pipe.to("cuda")` means the current GPU, which accelerate and torchrun
    set to each process's own: without the index every process of a multi-GPU run would crowd GPU 0."""
    if device != "cuda":
        return device
    import torch

    return f"cuda:{torch.cuda.current_device()}"


# The one kernel each `sdpa_backend` (presets.SDPA_BACKENDS) other than `auto` allows, by its name in
# torch.nn.attention.SDPBackend; `auto` leaves torch's own pick per call.
SDPA_KERNELS = {
    "auto": None,
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}

def _apply_sdpa_backend(built: BuiltPipeline, choice: str, attention: str, machine: hardware.Machine) -> None:
    if choice == "auto":
        return
    if why := sdpa_backend_blocker(choice, attention, built.device, built.dtype, machine):
        built.skip(f"sdpa_backend {choice}", why)
    else:
        restrict_unet_sdpa(built.pipe.unet, choice)
        built.applied.append(f"SDPA kernel of the UNet: {choice} only")


def restrict_unet_sdpa(unet, choice: str) -> None:
    """Every UNet call runs inside `torch.nn.attention.sdpa_kernel`, so its attention may use one kernel.
    The UNet only: the CLIP text encoder and the safety checker pass attention masks, which FlashAttention
    doesn't take; and no process-wide switch outlives the pipeline. torch.compile traces the context
    manager, so a compiled UNet is built with that kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = getattr(SDPBackend, SDPA_KERNELS[choice])
    unet_forward = unet.forward  # after offloading: accelerate's hooks wrap `forward` the same way

    def forward_with_one_kernel(*args, **kwargs):
        with sdpa_kernel(kernel):
            return unet_forward(*args, **kwargs)

    unet.forward = forward_with_one_kernel


def _apply_cudnn_benchmark(built: BuiltPipeline, wanted: bool) -> None:
    """A process-wide switch, so set on every CUDA build (on or off): one preset's choice never leaks into
    the next preset built in the same process (bench)."""
    import torch

    if why := cuda_only_blocker(built.device):
        if wanted:
            built.skip("cudnn_benchmark", why)
        return
    torch.backends.cudnn.benchmark = wanted
    if wanted:
        built.applied.append("cuDNN benchmark mode (the first call of each shape tries every convolution kernel)")


def use_compile_caches() -> str:
    """Point inductor's on-disk caches (FX graphs, AOTAutograd, Triton kernels) at nitro's cache folder,
    so a later process with the same model, preset and shape loads compiled code instead of compiling.
    Must run before the first compilation; torch reads the variable each time it opens its cache."""
    from nitro_cli import paths

    # Created and checked here: inductor's own mkdir of an unwritable one is a traceback at the first call.
    folder = str(paths.make_cache_folder(paths.compile_cache_dir()))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return folder


# diffusers' fp16 guide recommends these inductor flags with max-autotune. Coordinate-descent tuning
# makes the first compilation much longer, hence opt-in (`inductor_tuning`).
INDUCTOR_TUNING = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False}


def _compile_options(mode: str, tuning: bool, cuda_graphs: bool) -> dict[str, Any]:
    """torch.compile's `mode` as inductor options, so the tuning flags travel with this compilation only
    (`mode=` and `options=` can't be passed together)."""
    from torch._inductor import list_mode_options

    options = dict(list_mode_options(mode))
    if not cuda_graphs:
        options.pop("triton.cudagraphs", None)
    if tuning:
        options.update(INDUCTOR_TUNING)
    return options


def _apply_compile(built: BuiltPipeline, preset: Preset, machine: hardware.Machine) -> None:
    mode = preset.compile
    extras = {"compile_vae": preset.compile_vae, "compile_text_encoder": preset.compile_text_encoder,
              "inductor_tuning": preset.inductor_tuning}
    if mode == "none":
        for name, wanted in extras.items():
            if wanted:
                built.skip(name, compile_extra_blocker(preset, built.device, machine))
        return
    why = compile_blocker(built.device, machine)
    if why:
        built.skip(f"torch.compile ({mode})", f"{why}: eager mode used")
        return

    # CUDA graphs only exist on the GPU; on the CPU the same mode without them is the equivalent.
    cuda_graphs = built.device == "cuda" and mode in CUDA_GRAPH_MODES
    if why := cuda_graphs_blocker(mode, built.device):
        built.skip(f"CUDA graphs ({mode})", why)
        mode = "default" if mode == "reduce-overhead" else mode
    built.applied.append(f"compile caches in {use_compile_caches()} (a later process reuses them)")
    built.compiled = True
    tuning = preset.inductor_tuning
    if tuning:
        built.applied.append("inductor tuning (" + ", ".join(f"{k}={v}" for k, v in INDUCTOR_TUNING.items()) + ")")
    pipe = built.pipe
    if built.unet_cache is not None:
        # Compiling the UNet's forward would trace the cache's step choice: each path compiles on its own.
        built.unet_cache.compile(_compile_options(mode, tuning, cuda_graphs))
        built.applied.append(f"torch.compile unet, full and shallow paths ({mode}): the first call of each compiles")
    else:
        pipe.unet.compile(fullgraph=True, options=_compile_options(mode, tuning, cuda_graphs))
        built.applied.append(f"torch.compile unet ({mode}): the first call compiles")
    if preset.compile_vae:
        # A CUDA graph's output is overwritten by its next replay; sliced or tiled decoding calls the
        # decoder several times and concatenates the outputs afterwards, so it runs without graphs.
        vae_graphs = cuda_graphs and not (preset.vae.slicing or preset.vae.tiling)
        if cuda_graphs and not vae_graphs:
            built.skip("CUDA graphs for the VAE decoder", "VAE slicing/tiling reuses the graph within one decode")
        pipe.vae.decoder.compile(fullgraph=True, options=_compile_options(mode, tuning, vae_graphs))
        built.applied.append(f"torch.compile VAE decoder ({mode}{'' if vae_graphs else ', no CUDA graphs'})")
    if preset.compile_text_encoder:
        # No CUDA graphs: the prompt cache keeps the encoder's outputs across calls, and a replay
        # would overwrite them.
        pipe.text_encoder.compile(fullgraph=True, options=_compile_options(mode, tuning, cuda_graphs=False))
        built.applied.append(f"torch.compile text encoder ({mode}, no CUDA graphs)")
