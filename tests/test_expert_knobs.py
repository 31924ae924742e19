"""The expert tier's speed knobs: each field validates, each shows in the builder's applied or skipped
list, and compiling on the CPU gives the eager picture (slow: set NITRO_SLOW_TESTS=1)."""

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from nitro_cli import builder, paths
from nitro_cli.builder import BuiltPipeline, build_pipeline
from nitro_cli.errors import UsageError
from nitro_cli.presets import SDPA_BACKENDS, all_keys, load_preset, shipped_dir
from tests import fake_machines
from tests.test_builder import cpu_machine, skipped_names

ROOT = Path(__file__).resolve().parent.parent
GPU_VARIANTS = sorted((ROOT / "docs" / "gpu-variants").glob("*.yaml"))


def _yaml_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        keys += _yaml_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


@pytest.mark.parametrize("override, message", [
    ("compile_vae=yes please", "'compile_vae' must be true or false"),
    ("compile_text_encoder=1", "'compile_text_encoder' must be true or false"),
    ("inductor_tuning=fast", "'inductor_tuning' must be true or false"),
    ("cudnn_benchmark=2", "'cudnn_benchmark' must be true or false"),
    ("sdpa_backend=flsh", "did you mean 'flash'"),
    ("compile=max-autotun", "did you mean 'max-autotune'"),
    # out of range: the whole allowed range is named
    ("feature_cache_interval=0", "'feature_cache_interval' must be at least 1, not 0; allowed: 1 to 10"),
    ("feature_cache_interval=11", "'feature_cache_interval' must be at most 10, not 11; allowed: 1 to 10"),
])
def test_new_fields_reject_bad_values(override, message):
    with pytest.raises(UsageError, match=message):
        load_preset("expert", [override])


def test_new_fields_accept_their_values():
    settings = load_preset("beginner", ["compile=default", "compile_vae=true", "compile_text_encoder=true",
                                        "inductor_tuning=true", "sdpa_backend=cudnn", "cudnn_benchmark=true"]).settings
    assert (settings.compile_vae, settings.compile_text_encoder, settings.inductor_tuning) == (True, True, True)
    assert (settings.sdpa_backend, settings.cudnn_benchmark) == ("cudnn", True)


@pytest.mark.parametrize("path", sorted(shipped_dir().glob("*.yaml")) + GPU_VARIANTS, ids=lambda p: p.name)
def test_preset_files_list_every_field_and_load(path):
    assert sorted(_yaml_keys(yaml.safe_load(path.read_text()))) == sorted(all_keys())
    load_preset(str(path))


def test_gpu_variants_each_change_the_expert_preset():
    expert = yaml.safe_load((shipped_dir() / "expert.yaml").read_text())
    assert len(GPU_VARIANTS) >= 6
    for path in GPU_VARIANTS:
        variant = yaml.safe_load(path.read_text())
        changed = {k for k in all_keys() if k != "tier" and "." not in k and variant[k] != expert[k]}
        assert changed, f"{path.name} is the expert preset unchanged"


def test_sdpa_choices_match_the_builder():
    assert set(SDPA_BACKENDS) == set(builder.SDPA_KERNELS)


def test_compile_knobs_on_cpu_are_applied_with_the_cache_folder():
    settings = load_preset("expert", ["compile_vae=true", "compile_text_encoder=true", "inductor_tuning=true"]).settings
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    folder = str(paths.compile_cache_dir())
    assert f"compile caches in {folder} (a later process reuses them)" in built.applied


    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == folder
    assert "torch.compile VAE decoder (default, no CUDA graphs)" in built.applied
    assert "torch.compile text encoder (default, no CUDA graphs)" in built.applied
    assert any(a.startswith("inductor tuning (conv_1x1_as_mm=True") for a in built.applied)
    for module in (built.pipe.unet, built.pipe.vae.decoder, built.pipe.text_encoder):
        assert module._compiled_call_impl is not None
    assert built.compiled


def test_compile_extras_without_a_compile_mode_are_skipped():
    settings = load_preset("advanced", ["compile_vae=true", "compile_text_encoder=true", "inductor_tuning=true"]).settings
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    assert {"compile_vae", "compile_text_encoder", "inductor_tuning"} <= set(skipped_names(built))
    assert built.pipe.vae.decoder._compiled_call_impl is None
    assert not any("compile" in a for a in built.applied) and not built.compiled


def test_compile_options_use_real_inductor_names():
    from torch._inductor import config

    known = config.get_config_copy()
    tuned = builder._compile_options("reduce-overhead", tuning=True, cuda_graphs=True)
    assert set(tuned) <= set(known)
    assert tuned["triton.cudagraphs"] is True and tuned["conv_1x1_as_mm"] is True
    assert "triton.cudagraphs" not in builder._compile_options("max-autotune", tuning=False, cuda_graphs=False)
    assert builder._compile_options("default", tuning=False, cuda_graphs=True) == {}


@pytest.fixture
def restore_cudnn_benchmark():
    import torch

    saved = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = saved


def test_sdpa_backend_restricts_the_unet_only():
    """On this CPU only the math and flash kernels exist: a UNet held to `efficient` can't run, which shows
    the restriction is in force, while the text encoder (masked attention) keeps torch's own pick."""
    import torch

    from nitro_cli.models import build_random_pipeline

    pipe = build_random_pipeline("random:tiny")
    latents = torch.randn(1, 4, 8, 8)
    context, _ = pipe.encode_prompt("a castle", "cpu", 1, False)
    plain = pipe.unet(latents, 10, encoder_hidden_states=context).sample
    builder.restrict_unet_sdpa(pipe.unet, "efficient")
    with pytest.raises(RuntimeError, match="No viable backend"):
        pipe.unet(latents, 10, encoder_hidden_states=context)
    del pipe.unet.forward  # back to the UNet's own
    builder.restrict_unet_sdpa(pipe.unet, "math")
    torch.testing.assert_close(pipe.unet(latents, 10, encoder_hidden_states=context).sample, plain)
    torch.testing.assert_close(pipe.encode_prompt("a castle", "cpu", 1, False)[0], context)
    assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()


def test_sdpa_backend_is_skipped_on_cpu_and_with_other_attention():
    built = build_pipeline(load_preset("expert", ["sdpa_backend=math", "compile=none"]).settings,
                           "random:tiny", "cpu", cpu_machine())
    assert "sdpa_backend math" in skipped_names(built)
    assert "forward" not in vars(built.pipe.unet)  # the UNet's own forward, unwrapped
    gpu = BuiltPipeline(pipe=None, device="cuda", dtype="float16")
    builder._apply_sdpa_backend(gpu, "flash", "sliced", cpu_machine())
    assert gpu.skipped == [("sdpa_backend flash", "the UNet uses sliced attention, not SDPA")]


TESLA_T4 = fake_machines.gpu("Tesla T4", (7, 5), 15360)


@pytest.mark.parametrize("choice, dtype, card, applied", [
    ("flash", "float32", fake_machines.A100, False),
    ("cudnn", "float32", fake_machines.A100, False),
    ("flash", "float16", TESLA_T4, False),
    ("cudnn", "float16", TESLA_T4, False),
    ("efficient", "float32", TESLA_T4, True),
    ("math", "float32", TESLA_T4, True),
    ("flash", "bfloat16", fake_machines.A100, True),
    ("cudnn", "float16", fake_machines.A100, True),
])
def test_sdpa_kernel_the_gpu_cannot_run_is_skipped(choice, dtype, card, applied):
    """torch's FlashAttention and cuDNN attention take fp16/bf16 on compute capability 8.0+ only: held to one of
    them elsewhere, the UNet would stop at its first attention call ("No available kernel")."""
    import types

    import torch

    built = BuiltPipeline(pipe=types.SimpleNamespace(unet=torch.nn.Linear(1, 1)), device="cuda", dtype=dtype)
    builder._apply_sdpa_backend(built, choice, "sdpa", fake_machines.machine(card))
    assert ("forward" in vars(built.pipe.unet)) is applied
    assert [what for what, _ in built.skipped] == ([] if applied else [f"sdpa_backend {choice}"])


def test_cudnn_benchmark_is_set_on_every_gpu_build_and_skipped_on_cpu(restore_cudnn_benchmark):
    import torch

    gpu = BuiltPipeline(pipe=None, device="cuda", dtype="float16")
    builder._apply_cudnn_benchmark(gpu, True)
    assert torch.backends.cudnn.benchmark is True and any("cuDNN benchmark" in a for a in gpu.applied)
    builder._apply_cudnn_benchmark(gpu, False)
    assert torch.backends.cudnn.benchmark is False
    built = build_pipeline(load_preset("expert", ["compile=none"]).settings, "random:tiny", "cpu", cpu_machine())
    assert "cudnn_benchmark" in skipped_names(built)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


TINY_JOB = ["width=64", "height=64", "steps=2"]


def _first_image(overrides: list[str], device: str, model: str = "random:tiny") -> np.ndarray:
    from nitro_cli.generation import PromptCache, run_batch

    settings = load_preset("expert", [*TINY_JOB, *overrides] if model == "random:tiny" else overrides).settings
    built = build_pipeline(settings, model, device)
    cache = PromptCache(built.pipe, enabled=True)
    result = run_batch(built.pipe, cache, ["arcane style warrior"], [""], [7], steps=settings.steps, guidance=7.5,
                       width=settings.width, height=settings.height)
    return np.asarray(result.images[0])


@pytest.mark.slow
def test_compiled_pipeline_on_cpu_matches_eager_and_fills_the_cache():
    everything = ["compile_vae=true", "compile_text_encoder=true"]
    compiled = _first_image(everything, "cpu")
    eager = _first_image(["compile=none"], "cpu")
    assert _psnr(compiled, eager) >= 35
    assert any((paths.compile_cache_dir() / "fxgraph").rglob("*"))


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["random:tiny", "random:sd15"])  # sd15: the 35 dB, 512x512, 25 steps
def test_compiled_pipeline_with_cuda_graphs_matches_eager(model):
    compiled = _first_image(["compile_vae=true", "cudnn_benchmark=true"], "cuda", model)
    eager = _first_image(["compile=none", "cudnn_benchmark=false"], "cuda", model)
    assert _psnr(compiled, eager) >= 35


@pytest.mark.gpu
@pytest.mark.parametrize("overrides", [["compile=none"], ["compile=none", "feature_cache_interval=2"], []],
                         ids=["eager", "feature-cache", "compiled"])
def test_denoising_steps_after_the_first_never_wait_for_the_gpu(overrides):
    """No host-device sync inside the loop: a launch-bound step can't afford one. The first step may sync
    (the scheduler looks its timestep up once); decoding after the loop must (the pixels are read)."""
    import torch

    from nitro_cli.generation import PromptCache, run_batch

    settings = load_preset("expert", [*TINY_JOB, "steps=4", *overrides]).settings
    built = build_pipeline(settings, "random:tiny", "cuda")
    cache = PromptCache(built.pipe, enabled=True)
    run_batch(built.pipe, cache, ["a castle"], [""], [1], steps=4, guidance=7.5, width=64, height=64)  # warm-up

    def watch_steps(pipe, step, timestep, tensors):
        torch.cuda.set_sync_debug_mode("error" if step < pipe.num_timesteps - 1 else "default")
        return tensors

    try:
        run_batch(built.pipe, cache, ["a castle"], [""], [1], steps=4, guidance=7.5, width=64, height=64,
                  on_step_end=watch_steps)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_flash_attention_for_the_unet_leaves_the_masked_encoders_working():
    image = _first_image(["compile=none", "sdpa_backend=flash", "safety_checker=true"], "cuda")
    assert image.shape == (64, 64, 3)


def test_compiled_unet_traces_the_sdpa_restriction():
    """torch.compile follows the kernel choice into the graph: held to a kernel this CPU lacks, tracing fails."""
    import torch

    from nitro_cli.models import build_random_pipeline

    pipe = build_random_pipeline("random:tiny")
    builder.restrict_unet_sdpa(pipe.unet, "efficient")
    pipe.unet.compile(fullgraph=True)
    context, _ = pipe.encode_prompt("a castle", "cpu", 1, False)
    with pytest.raises(Exception, match="scaled_dot_product_attention"):
        pipe.unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=context)


def test_feature_cache_runs_the_whole_unet_every_nth_step():
    from nitro_cli.generation import PromptCache, run_batch

    settings = load_preset("advanced", ["feature_cache_interval=2", "width=64", "height=64"]).settings
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    assert any(a.startswith("UNet feature cache: the whole UNet every 2 steps") for a in built.applied)
    run_batch(built.pipe, PromptCache(built.pipe, enabled=True), ["a castle"], [""], [1], steps=5,
              guidance=7.5, width=64, height=64)
    assert (built.unet_cache.full_calls, built.unet_cache.shallow_calls) == (3, 2)  # steps 0, 2, 4 in full


@pytest.mark.parametrize("overrides, reason", [
    (["scheduler=pndm"], "scheduler pndm has no step index"),
    (["scheduler=ddim"], "scheduler ddim has no step index"),
])
def test_feature_cache_without_a_step_index_is_skipped(overrides, reason):
    settings = load_preset("advanced", ["feature_cache_interval=3", *overrides]).settings
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    assert dict(built.skipped)["feature_cache_interval 3"].startswith(reason)
    assert built.unet_cache is None and "forward" not in vars(built.pipe.unet)


def test_schedulers_without_step_index_are_the_ones_diffusers_has():
    import diffusers

    lacking = {key for key, (name, _) in builder.SCHEDULERS.items()
               if not hasattr(getattr(diffusers, name), "step_index")}
    assert lacking == set(builder.SCHEDULERS_WITHOUT_STEP_INDEX)


def test_feature_cache_with_offload_is_refused_by_the_rule_checklist_shares():
    settings = load_preset("lowvram", ["feature_cache_interval=2", "scheduler=euler"]).settings
    assert "CPU offload" in builder.feature_cache_blocker(settings, "cuda")
    assert builder.feature_cache_blocker(settings, "cpu") is None  # offloading is skipped there, so no conflict
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    assert built.unet_cache is not None and "feature_cache_interval 2" not in skipped_names(built)


def test_compile_with_feature_cache_compiles_each_path_not_the_unet():
    settings = load_preset("expert", ["feature_cache_interval=3"]).settings
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    assert "torch.compile unet, full and shallow paths (default): the first call of each compiles" in built.applied
    assert built.pipe.unet._compiled_call_impl is None  # tracing the forward would trace the step choice


@pytest.mark.slow
@pytest.mark.parametrize("interval", [1, 3], ids=["unet", "feature-cache"])
def test_prompt_seed_steps_and_guidance_never_recompile(interval):
    """What docs/presets.md promises: after the first call, only the size, the batch or the model's own
    settings compile again (torch.compile raises here at any recompilation)."""
    import torch

    from nitro_cli.generation import PromptCache, run_batch

    settings = load_preset("expert", [*TINY_JOB, f"feature_cache_interval={interval}"]).settings
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    cache = PromptCache(built.pipe, enabled=True)
    job = dict(width=64, height=64)
    run_batch(built.pipe, cache, ["arcane style castle"], [""], [1], steps=4, guidance=7.5, **job)
    with torch._dynamo.config.patch(error_on_recompile=True):
        run_batch(built.pipe, cache, ["archer style portrait of a spy"], ["blurry"], [2], steps=7, guidance=5.0, **job)


# --- fp8 matmuls (quantization: fp8_matmul, torchao) -------------------------------------------------

H100 = fake_machines.gpu("NVIDIA H100 80GB HBM3", (9, 0), 81559)


@pytest.mark.parametrize("device, machine, reason", [
    ("cpu", cpu_machine(), "no CUDA device: fp8 matmuls need an NVIDIA GPU of compute capability 8.9+"),
    ("cuda", fake_machines.machine(fake_machines.A100, packages={"torchao": "0.18.0"}),
     "NVIDIA A100-SXM4-80GB (compute capability 8.0) has no fp8 tensor cores"),
])
def test_fp8_matmul_is_skipped_where_the_gpu_has_no_fp8_tensor_cores(device, machine, reason):
    built = BuiltPipeline(pipe=None, device=device, dtype="float16")  # skipped before the pipeline is touched
    builder._apply_fp8_matmul(built, machine)
    assert dict(built.skipped)["fp8_matmul quantization"].startswith(reason)
    assert builder.quantization_blocker("fp8_matmul", device, machine).startswith(reason)  # what checklist shows


def test_fp8_matmul_on_an_fp8_gpu_without_torchao_names_the_extra():
    machine = fake_machines.machine(H100, packages={"torchao": None})
    assert builder.quantization_blocker("fp8_matmul", "cuda", machine) == "torchao not installed"
    with pytest.raises(UsageError, match="torchao not installed") as caught:
        builder._apply_fp8_matmul(BuiltPipeline(pipe=None, device="cuda", dtype="float16"), machine)
    assert "nitro-cli[fp8]" in caught.value.hint
    machine = fake_machines.machine(H100, packages={"torchao": "0.18.0"})
    assert builder.quantization_blocker("fp8_matmul", "cuda", machine) is None


def test_fp8_matmul_on_a_cpu_is_skipped_and_the_rest_builds():
    settings = load_preset("expert", [*TINY_JOB, "quantization=fp8_matmul", "compile=none"]).settings
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    assert "fp8_matmul quantization" in skipped_names(built)
    assert not any("fp8" in applied for applied in built.applied)


@pytest.fixture
def fp8_without_gpu_check(monkeypatch):
    """torchao refuses fp8 below compute capability 8.9 before looking at the tensors, yet its fp8 layers
    run on a CPU (torch._scaled_mm has a CPU kernel): lifting that one check tests the quantized UNet here."""
    pytest.importorskip("torchao", reason="torchao not installed (pip install 'nitro-cli[fp8]')")
    import torchao.quantization.quant_api as quant_api

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)


def test_fp8_matmul_quantizes_the_attention_layers_and_keeps_the_picture(fp8_without_gpu_check):
    import torch

    from nitro_cli.generation import PromptCache, run_batch

    settings = load_preset("advanced", [*TINY_JOB, "steps=4"]).settings  # fused QKV on
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())

    def first_image():
        result = run_batch(built.pipe, PromptCache(built.pipe, enabled=False), ["arcane style warrior"],
                           [""], [7], steps=4, guidance=7.5, width=64, height=64)
        return np.asarray(result.images[0])

    unquantized = first_image()
    count, scales = builder.quantize_unet_matmuls_fp8(built.pipe.unet, "float32")
    fp8 = {name for name, module in built.pipe.unet.named_modules()  # torchao's weight: fp8 data and a scale
           if isinstance(module, torch.nn.Linear) and getattr(module.weight, "qdata", None) is not None
           and module.weight.qdata.dtype == torch.float8_e4m3fn}
    assert scales == "per-tensor" and count == len(fp8) > 0
    assert any(name.endswith("attn1.to_qkv") for name in fp8) and any(".ff." in name for name in fp8)
    assert not any("time_emb" in name for name in fp8)  # 2-row matmuls: fidelity cost, no speed
    quantized = first_image()
    assert 30 <= _psnr(quantized, unquantized) < float("inf")  # changed, and only a little


@pytest.mark.slow
def test_compiled_fp8_unet_on_cpu_matches_eager_fp8(fp8_without_gpu_check, monkeypatch):
    import warnings

    monkeypatch.setattr(builder, "fp8_matmul_hardware_blocker", lambda device, machine: None)
    with warnings.catch_warnings(record=True) as caught:  # what a user would see: none of the compiler's notes
        compiled = _first_image(["quantization=fp8_matmul"], "cpu")
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    assert _psnr(compiled, _first_image(["quantization=fp8_matmul", "compile=none"], "cpu")) >= 35


@pytest.mark.gpu
def test_fp8_matmul_on_an_fp8_gpu_runs_compiled_with_cuda_graphs():
    import torch

    if torch.cuda.get_device_capability() < builder.FP8_MATMUL_CAPABILITY:
        pytest.skip(f"{torch.cuda.get_device_name()} has no fp8 tensor cores (compute capability 8.9+)")
    pytest.importorskip("torchao", reason="torchao not installed (pip install 'nitro-cli[fp8]')")
    assert _psnr(_first_image(["quantization=fp8_matmul"], "cuda"), _first_image([], "cuda")) >= 30


@pytest.mark.parametrize("compiled, main_process, announced", [(True, True, ["64x64", "64x96"]), (False, True, []),
                                                                (True, False, [])])
def test_the_first_batch_of_each_size_says_it_compiles(capsys, compiled, main_process, announced):
    """Else the steps bar sits at 0 during a minute of compiling and looks hung."""
    from nitro_cli.generation import PlannedImage
    from nitro_cli.progress import RunDisplay
    from nitro_cli.prompts import PromptJob

    display = RunDisplay(4, json_output=True, model="random:tiny", preset="expert", bars=main_process,
                         compiled=compiled)
    for width, height in ((64, 64), (64, 64), (64, 96), (64, 64)):
        job = PromptJob(prompt="a castle", negative="", seed=None, steps=2, guidance=7.5, width=width, height=height)
        display.batch_started([PlannedImage(job, 1, "00000-1-a-castle.png")])
    said = [line.split()[2] for line in capsys.readouterr().err.splitlines() if line.startswith("Compiling for")]
    assert said == announced


def test_fuse_qkv_applies_when_xformers_falls_back_to_sdpa():
    """No xformers on a CPU: the UNet runs SDPA, so fusing works and is not skipped for xformers' sake."""
    built = build_pipeline(load_preset("advanced", ["attention=xformers"]).settings, "random:tiny", "cpu",
                           cpu_machine())
    assert "xformers" in skipped_names(built) and "fuse_qkv" not in skipped_names(built)
    assert "fused QKV projections" in built.applied


def test_fuse_qkv_applies_when_bitsandbytes_is_skipped_on_a_cpu():
    """int8 on a CPU loads unquantized weights, which fusing takes: it is not skipped for int8's sake."""
    built = build_pipeline(load_preset("advanced", ["quantization=int8"]).settings, "random:tiny", "cpu",
                           cpu_machine())
    assert "int8 quantization" in skipped_names(built) and "fuse_qkv" not in skipped_names(built)
    assert "fused QKV projections" in built.applied


class CompileRecorder:
    """A module stand-in that keeps the inductor options it is compiled with."""

    def __init__(self):
        self.options = None

    def compile(self, fullgraph, options):
        self.options = options


@pytest.mark.parametrize("mode, vae_graphs_skipped", [("default", False), ("reduce-overhead", True)])
def test_vae_graphs_are_reported_skipped_only_for_a_mode_with_cuda_graphs(mode, vae_graphs_skipped):
    """compile=default has no CUDA graphs: a tiled VAE on a GPU gave up nothing, so nothing is reported skipped."""
    import types

    settings = load_preset("lowvram", [f"compile={mode}", "compile_vae=true"]).settings
    pipe = types.SimpleNamespace(unet=CompileRecorder(), vae=types.SimpleNamespace(decoder=CompileRecorder()))
    built = BuiltPipeline(pipe=pipe, device="cuda", dtype="float16")
    builder._apply_compile(built, settings, fake_machines.machine(fake_machines.A100))
    assert ("CUDA graphs for the VAE decoder" in skipped_names(built)) is vae_graphs_skipped
    assert f"torch.compile VAE decoder ({mode}, no CUDA graphs)" in built.applied
    assert "triton.cudagraphs" not in pipe.vae.decoder.options


def test_cuda_graph_modes_are_the_modes_whose_inductor_options_record_graphs():
    from torch._inductor import list_mode_options

    from nitro_cli.presets import COMPILE_MODES

    with_graphs = {mode for mode in COMPILE_MODES if mode != "none" and list_mode_options(mode).get("triton.cudagraphs")}
    assert with_graphs == set(builder.CUDA_GRAPH_MODES)


def test_the_text_encoder_compiles_without_cuda_graphs():
    """The prompt cache keeps the text encoder's outputs across calls; a CUDA graph's replay would overwrite them."""
    import types

    overrides = ["compile=reduce-overhead", "compile_text_encoder=true", "compile_vae=false"]
    settings = load_preset("expert", overrides).settings
    pipe = types.SimpleNamespace(unet=CompileRecorder(), text_encoder=CompileRecorder())
    built = BuiltPipeline(pipe=pipe, device="cuda", dtype="float16")
    builder._apply_compile(built, settings, fake_machines.machine(fake_machines.A100))
    assert pipe.unet.options["triton.cudagraphs"] is True
    assert "triton.cudagraphs" not in pipe.text_encoder.options


def test_sdpa_backend_auto_leaves_torchs_pick_on_a_gpu():
    import types

    import torch

    built = BuiltPipeline(pipe=types.SimpleNamespace(unet=torch.nn.Linear(1, 1)), device="cuda", dtype="float16")
    builder._apply_sdpa_backend(built, "auto", "sdpa", fake_machines.machine(fake_machines.A100))
    assert "forward" not in vars(built.pipe.unet) and built.skipped == [] and built.applied == []


def test_compile_caches_in_a_cache_folder_that_cannot_be_written_are_a_usage_error(tmp_path, monkeypatch):
    """Inductor made the folder itself at the first compiled call: NotADirectoryError, a traceback (exit 1)."""
    in_the_way = tmp_path / "cache"
    in_the_way.write_text("")
    monkeypatch.setenv("NITRO_CACHE_DIR", str(in_the_way))
    with pytest.raises(UsageError, match=r"cache folder .*torch-compile can't be written"):
        builder.use_compile_caches()
