"""The pipeline builder: every shipped preset builds on a CPU, degrading what this machine can't do."""

import dataclasses
import sys

import pytest

from nitro_cli import hardware
from nitro_cli.builder import BuiltPipeline, _apply_attention, build_pipeline, effective_precision, resolve_device
from nitro_cli.hardware import cpu_has_amx_bf16 as probe_amx_bf16  # the real one: conftest pins the module's to False
from nitro_cli.errors import UsageError
from nitro_cli.presets import SAMPLER_NAMES, load_preset

from fake_machines import RTX_3060, machine as fake_machine


def cpu_machine(**changes) -> hardware.Machine:
    machine = hardware.Machine(python="3.11", os="test", packages={}, cuda_available=False, compiler_available=True)
    return dataclasses.replace(machine, **changes)


def skipped_names(built):
    return [what for what, _ in built.skipped]


@pytest.mark.parametrize("name", ["baseline", "beginner", "advanced", "expert", "deploy"])
def test_shipped_preset_builds_random_tiny(name):
    built = build_pipeline(load_preset(name).settings, "random:tiny", "cpu", cpu_machine())
    assert built.device == "cpu" and built.dtype == "float32"
    assert built.pipe.unet.device.type == "cpu"
    assert any(a.startswith("scheduler ") for a in built.applied)
    # bench's CSV joins these lists with '; ': a text holding one would split into two entries there.
    assert not any("; " in text for text in [*built.applied, *(f"{w} {why}" for w, why in built.skipped)])


def test_half_precision_on_cpu_degrades_to_fp32_with_a_reason(capsys):
    built = build_pipeline(load_preset("beginner").settings, "random:tiny", "cpu", cpu_machine())
    assert built.dtype == "float32"
    assert next(b for b in built.pipe.unet.parameters()).dtype.is_floating_point
    assert str(next(built.pipe.unet.parameters()).dtype) == "torch.float32"
    assert ("float16", "CPU without native half precision: float32 used") in built.skipped
    assert "Warning: float16 skipped" in capsys.readouterr().err


@pytest.mark.parametrize("precision, dtype, reason", [
    ("float16", "bfloat16", "CPU with AMX: bfloat16 used, its native half precision"),
    ("bfloat16", "bfloat16", None),
    ("float32", "float32", None),
])
def test_half_precision_on_an_amx_cpu_is_bf16(precision, dtype, reason):
    assert effective_precision(precision, "cpu", cpu_machine(cpu_amx_bf16=True)) == (dtype, reason)


def test_an_amx_cpu_builds_and_runs_the_pipeline_in_bf16():
    """On a CPU without AMX this runs bf16 emulated: slow, but the tiny model makes it milliseconds."""
    import numpy as np
    import torch

    from nitro_cli.generation import PromptCache, run_batch

    built = build_pipeline(load_preset("advanced").settings, "random:tiny", "cpu", cpu_machine(cpu_amx_bf16=True))
    assert built.dtype == "bfloat16" and "precision bfloat16" in built.applied
    assert {p.dtype for p in built.pipe.unet.parameters()} == {torch.bfloat16}
    result = run_batch(built.pipe, PromptCache(built.pipe, enabled=True), ["a castle"], [""], [1], steps=2,
                       guidance=7.5, width=64, height=64)
    image = np.asarray(result.images[0])
    assert image.shape == (64, 64, 3) and image.std() > 0  # a picture, not a flat (NaN-guarded) fill


def test_amx_is_read_from_the_cpu_flags_as_torch_sees_it():
    import torch

    # torch's own (private) detection, as a cross-check of the /proc/cpuinfo reading: the same answer here.
    assert probe_amx_bf16() == (sys.platform == "linux" and torch.cpu._is_amx_tile_supported())


def test_advanced_applies_its_eager_optimizations():
    built = build_pipeline(load_preset("advanced").settings, "random:tiny", "cpu", cpu_machine())
    assert "fused QKV projections" in built.applied
    assert "channels_last (unet, vae)" in built.applied
    assert "no safety checker" in built.applied and built.pipe.safety_checker is None
    assert type(built.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert built.pipe.scheduler.config.use_karras_sigmas is True


def test_xformers_on_cpu_falls_back_to_sdpa():
    settings = load_preset("beginner", ["attention=xformers"]).settings
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    assert "xformers" in skipped_names(built)
    assert "SDPA attention" in built.applied


def test_compile_without_a_compiler_runs_eager():
    built = build_pipeline(load_preset("expert").settings, "random:tiny", "cpu", cpu_machine(compiler_available=False))
    assert "torch.compile (reduce-overhead)" in skipped_names(built)
    assert not any("torch.compile" in a for a in built.applied)


def test_reduce_overhead_on_cpu_compiles_in_default_mode():
    built = build_pipeline(load_preset("expert").settings, "random:tiny", "cpu", cpu_machine())
    assert "CUDA graphs (reduce-overhead)" in skipped_names(built)
    assert "torch.compile unet (default): the first call compiles" in built.applied


def test_offload_on_cpu_is_skipped():
    built = build_pipeline(load_preset("beginner", ["offload=model"]).settings, "random:tiny", "cpu", cpu_machine())
    assert "model CPU offload" in skipped_names(built)


def test_vae_slicing_and_tiling_are_applied():
    settings = load_preset("beginner", ["vae.slicing=true", "vae.tiling=true"]).settings
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    assert built.pipe.vae.use_slicing and built.pipe.vae.use_tiling
    assert {"VAE slicing", "VAE tiling"} <= set(built.applied)


def test_quantization_without_bitsandbytes_is_a_usage_error_with_install_hint():
    # On a GPU machine (faked: the error comes before anything is loaded); on a CPU bnb is skipped instead.
    gpu = hardware.GpuInfo(0, "NVIDIA GeForce RTX 2060", (7, 5), 6144, 6000, bf16=False)
    with pytest.raises(UsageError) as caught:
        build_pipeline(load_preset("beginner", ["quantization=int8"]).settings, "random:tiny", "cuda",
                       cpu_machine(cuda_available=True, gpus=(gpu,)))
    assert "bitsandbytes" in caught.value.message
    assert "nitro-cli[quant]" in caught.value.hint


def test_cuda_without_a_gpu_is_a_usage_error():
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_device("cuda", cpu_machine())
    assert resolve_device("auto", cpu_machine()) == "cpu"


def test_fp16_on_a_card_without_fast_fp16_uses_fp32():
    gtx = hardware.GpuInfo(0, "NVIDIA GeForce GTX 1660 SUPER", (7, 5), 6144, 6000, bf16=False)
    machine = cpu_machine(cuda_available=True, gpus=(gtx,))
    dtype, why = effective_precision(load_preset("beginner").settings.precision, "cuda", machine)
    assert dtype == "float32" and "GTX 1660 SUPER" in why


@pytest.mark.parametrize("scheduler", list(SAMPLER_NAMES))
def test_every_scheduler_runs(scheduler):
    import torch

    built = build_pipeline(load_preset("beginner", [f"scheduler={scheduler}"]).settings, "random:tiny", "cpu",
                           cpu_machine())
    image = built.pipe("castle", num_inference_steps=3, width=64, height=64, output_type="np",
                       generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and torch.isfinite(torch.from_numpy(image)).all()


def test_bf16_runs_in_bf16_on_a_gpu_that_has_it_and_in_fp16_on_one_without():
    from tests import fake_machines

    a100 = fake_machines.machine(fake_machines.A100)
    assert effective_precision("bfloat16", "cuda", a100) == ("bfloat16", None)
    t4 = fake_machines.machine(fake_machines.gpu("Tesla T4", (7, 5), 15360))
    dtype, why = effective_precision("bfloat16", "cuda", t4)
    assert dtype == "float16" and why == "Tesla T4 (compute capability 7.5) has no bf16: float16 used"


def test_torch_compile_runs_from_compute_capability_7_0():
    from nitro_cli.builder import compile_blocker
    from tests import fake_machines

    v100 = fake_machines.machine(fake_machines.gpu("Tesla V100-SXM2-16GB", (7, 0), 16151))
    assert compile_blocker("cuda", v100) is None
    assert "Triton needs 7.0+" in compile_blocker("cuda", fake_machines.MACHINES["GTX 1060 6 GB"])


def test_sliced_attention_slices_the_unets_attention():
    built = build_pipeline(load_preset("beginner", ["attention=sliced"]).settings, "random:tiny", "cpu",
                           cpu_machine())
    assert "sliced attention" in built.applied
    assert {type(p).__name__ for p in built.pipe.unet.attn_processors.values()} == {"SlicedAttnProcessor"}


def test_channels_last_lays_out_the_unet_and_vae_weights():
    import torch

    built = build_pipeline(load_preset("advanced").settings, "random:tiny", "cpu", cpu_machine())
    for conv in (built.pipe.unet.conv_in, built.pipe.vae.decoder.conv_in):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_license_reminder_is_printed_once_per_process(capsys, monkeypatch):
    """docs/presets.md: safety checker off prints the license reminder once (bench builds several presets)."""
    from nitro_cli import builder

    monkeypatch.setattr(builder, "_license_reminded", False)
    for _ in range(2):
        build_pipeline(load_preset("advanced").settings, "random:tiny", "cpu", cpu_machine())
    assert capsys.readouterr().err.count(builder.LICENSE_REMINDER) == 1


@pytest.mark.parametrize("error, shown", [(RuntimeError("no kernel image for sm_120"), "RuntimeError: no kernel image for sm_120"),
                                          (NotImplementedError(), "NotImplementedError")])
def test_xformers_that_fails_to_start_falls_back_to_sdpa_and_says_why(error, shown, capsys):
    class Pipe:
        def enable_xformers_memory_efficient_attention(self):
            raise error

    built = BuiltPipeline(pipe=Pipe(), device="cuda", dtype="float16")
    assert _apply_attention(built, "xformers", fake_machine(RTX_3060, packages={"xformers": "0.0.28"})) == "sdpa"
    assert built.skipped == [("xformers", f"failed to start ({shown}): SDPA used")]
    assert built.applied == ["SDPA attention"]
    assert f"Warning: xformers skipped: failed to start ({shown})" in capsys.readouterr().err
