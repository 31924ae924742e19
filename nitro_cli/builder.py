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
from nitro_cli.errors import UsageError
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

    def skip(self, what: str, why: str) -> None:
        self.skipped.append((what, why))
        print(f"Warning: {what} skipped: {why}", file=sys.stderr)


def resolve_device(requested: str, machine: hardware.Machine) -> str:
    """`auto` is the first CUDA GPU when there is one, else the CPU; `cuda` without one is a usage error."""
    if requested == "auto":
        return "cuda" if machine.has_gpu else "cpu"
    if requested == "cuda" and not machine.has_gpu:
        raise UsageError("--device cuda, but no CUDA GPU is available to torch",
                         hint="use --device cpu (slow), or run `nitro doctor` to see why no GPU is found")
    return requested


def _pick_dtype(preset: Preset, device: str, machine: hardware.Machine, built_skip) -> str:
    if preset.precision == "float32":
        return "float32"
    if device == "cpu":
        # Measured on AVX2 CPUs: fp16/bf16 are emulated, tens of times slower than fp32.
        built_skip(preset.precision, "CPU without native half precision: float32 used")
        return "float32"
    gpu = machine.gpus[0]
    if preset.precision == "bfloat16" and not gpu.bf16:
        built_skip("bfloat16", f"{gpu.name} (compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]}) "
                               "has no bf16: float16 used")
        return "float16"
    if preset.precision == "float16" and not gpu.fast_fp16:
        built_skip("float16", f"{gpu.name} has no fast fp16 (black images, slow): float32 used")
        return "float32"
    return preset.precision


def _quantization_config(preset: Preset):
    if preset.quantization == "none":
        return None
    if hardware.package_version("bitsandbytes") is None:
        raise UsageError(f"quantization={preset.quantization} needs bitsandbytes, which is not installed",
                         hint="pip install 'nitro-cli[quant]'  (or --set quantization=none)")
    from diffusers import PipelineQuantizationConfig

    backend, kwargs = QUANTIZATION_BACKENDS[preset.quantization]
    return PipelineQuantizationConfig(quant_backend=backend, quant_kwargs=kwargs,
                                      components_to_quantize=["unet", "text_encoder"])


def set_scheduler(pipe, name: str) -> None:
    import diffusers

    class_name, extra = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **extra)


def _quiet_libraries() -> None:
    """diffusers' and transformers' info warnings and progress bars are noise in a CLI; NITRO_DEBUG keeps them."""
    if os.environ.get("NITRO_DEBUG"):
        return
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def _remind_license() -> None:
    global _license_reminded
    if not _license_reminded:
        print(LICENSE_REMINDER, file=sys.stderr)
        _license_reminded = True


def build_pipeline(preset: Preset, model: str | None, device: str = "auto",
                   machine: hardware.Machine | None = None) -> BuiltPipeline:
    """Load `model` and apply every optimization `preset` asks for that this machine can do."""
    import torch

    _quiet_libraries()
    machine = machine or hardware.probe()
    device = resolve_device(device, machine)
    source = models.resolve_model(model)
    if preset.backend == "onnx":
        return _build_onnx(preset, source, device)
    if source.kind == "folder" and onnx_export.is_onnx_folder(source.spec):
        raise UsageError(f"{source.spec} is an ONNX export: only the ONNX backend runs it",
                         hint="add --set backend=onnx (or give the original diffusers model)")
    built = BuiltPipeline(pipe=None, device=device, dtype="float32")
    built.dtype = _pick_dtype(preset, device, machine, built.skip)
    quantization = _quantization_config(preset)
    offload = preset.offload
    if offload != "none" and device == "cpu":
        built.skip(f"{offload} CPU offload", "already on the CPU")
        offload = "none"

    pipe = models.load_pipeline(source, torch_dtype=getattr(torch, built.dtype), device=device,
                                with_safety_checker=preset.safety_checker, quantization_config=quantization)
    built.pipe = pipe
    built.applied.append(f"precision {built.dtype}")
    if quantization is not None:
        built.applied.append(f"{preset.quantization} quantization of unet and text encoder (bitsandbytes)")
    if not preset.safety_checker:
        built.applied.append("no safety checker")
        _remind_license()

    set_scheduler(pipe, preset.scheduler)
    built.applied.append(f"scheduler {preset.scheduler}")

    _apply_attention(built, preset.attention)
    if preset.fuse_qkv:
        # Fusing rewrites the attention processors, so it comes after the attention choice.
        if preset.attention == "sdpa" and quantization is None:
            pipe.fuse_qkv_projections()
            built.applied.append("fused QKV projections")
        else:
            built.skip("fuse_qkv", f"works with SDPA on unquantized weights only (attention={preset.attention})")
    if preset.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        built.applied.append("channels_last (unet, vae)")
    if preset.vae.slicing:
        pipe.vae.enable_slicing()
        built.applied.append("VAE slicing")
    if preset.vae.tiling:
        pipe.vae.enable_tiling()
        built.applied.append("VAE tiling")

    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
        built.applied.append("model CPU offload")
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
        built.applied.append("sequential CPU offload")
    else:
        pipe.to(device)

    _apply_compile(built, preset.compile, machine)
    if preset.prompt_cache:
        built.applied.append("prompt-embedding cache")
    pipe.set_progress_bar_config(disable=True)
    return built


# Preset fields that shape the PyTorch pipeline only: an ONNX export is a fixed fp32 graph.
PYTORCH_ONLY_FIELDS = ("precision", "attention", "offload", "quantization", "compile", "channels_last", "fuse_qkv",
                       "vae.slicing", "vae.tiling")


def _build_onnx(preset: Preset, source: models.ModelSource, device: str) -> BuiltPipeline:
    """The `backend: onnx` pipeline: an exported folder run by ONNX Runtime, behind run_batch's interface."""
    onnx_export.require_onnx_packages()
    if preset.scheduler not in onnx_export.ONNX_SCHEDULERS:
        raise UsageError(f"scheduler '{preset.scheduler}' does not run on the ONNX backend",
                         hint=f"--set scheduler=NAME, one of: {', '.join(onnx_export.ONNX_SCHEDULERS)}")
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
    set_scheduler(onnx_pipe, preset.scheduler)
    onnx_pipe.set_progress_bar_config(disable=True)
    built.pipe = onnx_export.OnnxRuntimePipeline(onnx_pipe)
    built.applied += [f"ONNX Runtime {onnxruntime.__version__} ({provider})", "precision float32",
                      f"scheduler {preset.scheduler}"]
    if not preset.safety_checker:
        built.applied.append("no safety checker")
        _remind_license()
    elif onnx_pipe.safety_checker is None:
        built.skip("safety checker", f"the export in {folder} has none")
    if preset.prompt_cache:
        built.applied.append("prompt-embedding cache")
    return built


def _apply_attention(built: BuiltPipeline, attention: str) -> None:
    pipe = built.pipe
    if attention == "xformers":
        if built.device != "cuda":
            built.skip("xformers", "needs a CUDA GPU: SDPA used")
        elif not hardware.is_importable("xformers"):
            built.skip("xformers", "not installed (pip install 'nitro-cli[xformers]'): SDPA used")
        else:
            try:
                pipe.enable_xformers_memory_efficient_attention()
                built.applied.append("xformers attention")
                return
            except Exception as exc:  # a broken xformers build raises many kinds of errors
                built.skip("xformers", f"failed to start ({type(exc).__name__}: {exc}): SDPA used")
    elif attention == "sliced":
        pipe.enable_attention_slicing()
        built.applied.append("sliced attention")
        return
    built.applied.append("SDPA attention")


def _apply_compile(built: BuiltPipeline, mode: str, machine: hardware.Machine) -> None:
    if mode == "none":
        return
    if not machine.compiler_available:
        needs = "Triton" if built.device == "cuda" else "a C++ compiler"
        built.skip(f"torch.compile ({mode})", f"needs {needs}: eager mode used")
        return
    import torch

    # CUDA graphs (reduce-overhead) only exist on the GPU; inductor's default mode is the CPU equivalent.
    if mode == "reduce-overhead" and built.device != "cuda":
        built.skip("CUDA graphs (reduce-overhead)", "no CUDA device: torch.compile default mode used")
        mode = "default"
    built.pipe.unet = torch.compile(built.pipe.unet, mode=mode, fullgraph=True)
    built.applied.append(f"torch.compile unet ({mode}); the first call compiles")
