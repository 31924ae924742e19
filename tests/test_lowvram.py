"""The low-VRAM path: lowvram/minvram presets, quantization back-ends, VAE tiling, and the VRAM rule."""

import dataclasses

import pytest
import yaml

from nitro_cli import hardware, models
from nitro_cli.builder import BuiltPipeline, _quantization_config, build_pipeline
from nitro_cli.errors import UsageError
from nitro_cli.presets import all_keys, load_preset, shipped_dir, shipped_names
from nitro_cli.vram import (FASTEST_FIRST, FOOTPRINTS, MemoryLayout, fits, estimate_peak_gib, plan_for_preset,
                            plan_for_vram)


def cpu_machine() -> hardware.Machine:
    return hardware.Machine(python="3.11", os="test", packages={}, cuda_available=False, compiler_available=True)


def bnb_machine(version: str | None) -> hardware.Machine:
    """A CUDA machine as far as quantization cares: bitsandbytes at `version` (None: not installed)."""
    return hardware.Machine(python="3.11", os="test", packages={"bitsandbytes": version}, cuda_available=True)


def card_gib(total_vram_mib: int) -> float:
    return total_vram_mib / 1024


def skipped_names(built):
    return [what for what, _ in built.skipped]


def fp8_params(module):
    import torch

    return [name for name, p in module.named_parameters() if p.dtype == torch.float8_e4m3fn]


# --- presets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", shipped_names())
def test_every_shipped_preset_lists_every_field(name):
    data = yaml.safe_load((shipped_dir() / f"{name}.yaml").read_text(encoding="utf-8"))
    keys = [f"vae.{k}" for k in data.pop("vae")] + list(data)
    assert sorted(keys) == sorted(all_keys())


def test_lowvram_and_minvram_are_shipped_with_their_memory_knobs():
    low, least = load_preset("lowvram").settings, load_preset("minvram").settings
    assert (low.precision, low.offload, low.quantization) == ("float16", "model", "none")
    assert low.vae.slicing and low.vae.tiling and low.prompt_cache
    assert (least.offload, least.quantization) == ("sequential", "nf4")
    assert least.vae.slicing and least.vae.tiling
    # diffusers keeps the safety checker on the GPU under offload: both leave it off to stay small.
    assert not low.safety_checker and not least.safety_checker


def test_fp8_storage_is_a_quantization_value_and_typos_name_it():
    assert load_preset("beginner", ["quantization=fp8_storage"]).settings.quantization == "fp8_storage"
    with pytest.raises(UsageError) as caught:
        load_preset("beginner", ["quantization=fp8"])
    assert "fp8_storage" in caught.value.message


# --- what the builder applies ----------------------------------------------------------------------

def test_lowvram_on_cpu_applies_vae_knobs_and_cache_and_skips_offload():
    built = build_pipeline(load_preset("lowvram").settings, "random:tiny", "cpu", cpu_machine())
    assert {"VAE slicing", "VAE tiling", "prompt-embedding cache", "no safety checker"} <= set(built.applied)
    assert built.pipe.vae.use_slicing and built.pipe.vae.use_tiling
    assert "model CPU offload" in skipped_names(built)
    assert built.pipe.unet.device.type == "cpu"


def test_minvram_on_cpu_skips_bitsandbytes_with_a_reason_even_when_installed():
    machine = hardware.Machine(python="3.11", os="test", packages={"bitsandbytes": "0.50.0"}, compiler_available=True)
    built = build_pipeline(load_preset("minvram").settings, "random:tiny", "cpu", machine)
    reasons = dict(built.skipped)
    assert "CUDA GPU" in reasons["nf4 quantization"]
    assert "sequential CPU offload" in reasons
    assert not any("quantization" in a for a in built.applied)


def test_fp8_storage_keeps_unet_weights_in_fp8_and_still_makes_an_image():
    import numpy as np
    import torch

    settings = load_preset("beginner", ["quantization=fp8_storage", "safety_checker=false"]).settings
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    assert "fp8 storage of unet weights (layerwise casting, float32 compute)" in built.applied
    unet = built.pipe.unet
    cast = fp8_params(unet)
    assert any("attn1.to_q" in n for n in cast) and any("conv" in n for n in cast)
    assert not any("norm" in n for n in cast)  # diffusers keeps norms in the compute dtype
    assert unet.dtype == torch.float32  # what the pipeline reads for latents: the compute dtype
    assert fp8_params(built.pipe.text_encoder) == []
    image = built.pipe("arcane style", num_inference_steps=2, width=64, height=64, output_type="np",
                       generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_fp8_storage_with_fused_qkv_casts_the_fused_layers():
    settings = load_preset("advanced", ["quantization=fp8_storage"]).settings
    built = build_pipeline(settings, "random:tiny", "cpu", cpu_machine())
    assert "fused QKV projections" in built.applied
    assert any("to_qkv" in n for n in fp8_params(built.pipe.unet))


def fp16_gpu_build() -> BuiltPipeline:
    """A build on a GPU in fp16, before loading: what _quantization_config reads and reports to."""
    return BuiltPipeline(pipe=None, device="cuda", dtype="float16")


@pytest.mark.parametrize("value, backend", [("int8", "bitsandbytes_8bit"), ("nf4", "bitsandbytes_4bit")])
def test_bitsandbytes_config_on_a_gpu(value, backend):
    built = fp16_gpu_build()
    config = _quantization_config(built, load_preset("beginner", [f"quantization={value}"]).settings,
                                  bnb_machine("0.50.0"))
    assert config.quant_backend == backend
    assert config.components_to_quantize == ["unet", "text_encoder"]
    assert config.quant_kwargs.get("bnb_4bit_compute_dtype") == ("float16" if value == "nf4" else None)
    assert built.skipped == []


def test_no_loading_time_config_for_fp8_storage_or_none():
    for value in ("none", "fp8_storage"):
        settings = load_preset("beginner", [f"quantization={value}"]).settings
        assert _quantization_config(fp16_gpu_build(), settings, bnb_machine(None)) is None


def test_missing_bitsandbytes_hint_names_the_extra_and_the_package_free_alternative():
    with pytest.raises(UsageError) as caught:
        _quantization_config(fp16_gpu_build(), load_preset("minvram").settings, bnb_machine(None))
    assert "nitro-cli[quant]" in caught.value.hint and "fp8_storage" in caught.value.hint


# --- random models through the quantizers ----------------------------------------------------------

def test_random_model_is_saved_once_to_the_cache_with_the_same_weights(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("NITRO_CACHE_DIR", str(tmp_path))
    folder = models.random_model_folder("random:tiny", "cpu")
    assert folder == tmp_path / "models" / "random-tiny-cpu" and (folder / "model_index.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == ["random-tiny-cpu"]  # no staging folder left
    built_calls = []
    monkeypatch.setattr(models, "build_random_pipeline", lambda *a, **k: built_calls.append(a))
    assert models.random_model_folder("random:tiny", "cpu") == folder and built_calls == []
    monkeypatch.undo()
    loaded = models.load_pipeline(models.resolve_model(str(folder)), torch_dtype=torch.float32,
                                  with_safety_checker=False)
    fresh = models.build_random_pipeline("random:tiny")
    for (name, saved), (_, original) in zip(loaded.unet.state_dict().items(), fresh.unet.state_dict().items()):
        assert torch.equal(saved, original), name


def test_quantized_random_model_loads_from_its_cached_folder(monkeypatch, tmp_path):
    import diffusers
    import torch

    monkeypatch.setenv("NITRO_CACHE_DIR", str(tmp_path))
    calls = []
    load_unquantized = diffusers.StableDiffusionPipeline.from_pretrained

    def record_and_load(path, **kwargs):
        calls.append((path, kwargs))
        return load_unquantized(path)  # load_pipeline checks the architecture of what it loaded

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", record_and_load)
    marker = object()  # stands in for a PipelineQuantizationConfig: bitsandbytes can't load on a CPU
    pipe = models.load_pipeline(models.resolve_model("random:tiny"), torch_dtype=torch.float16,
                                with_safety_checker=False, quantization_config=marker)
    (path, kwargs), = calls
    assert isinstance(pipe, diffusers.StableDiffusionPipeline) and path == str(tmp_path / "models" / "random-tiny-cpu")
    assert kwargs["quantization_config"] is marker and kwargs["dtype"] == torch.float16
    assert kwargs["safety_checker"] is None


# --- VAE tiling for large images -----------------------------------------------------------------

# About 10 s on a 2-core CPU, nearly all of it the 9 overlapping 512x512 VAE tiles: worth it, so not `slow`.
def test_lowvram_decodes_1024_tile_by_tile_on_cpu(monkeypatch):
    import numpy as np

    built = build_pipeline(load_preset("lowvram").settings, "random:tiny", "cpu", cpu_machine())
    vae = built.pipe.vae
    tiles = []
    original = vae.tiled_decode
    monkeypatch.setattr(vae, "tiled_decode", lambda *a, **k: tiles.append(a[0].shape) or original(*a, **k))
    image = built.pipe("archer style", num_inference_steps=1, guidance_scale=1.0, width=1024, height=1024,
                       output_type="np").images[0]
    assert image.shape == (1024, 1024, 3) and np.isfinite(image).all()
    assert tiles and tiles[0][-2:] == (128, 128)  # the whole 1024x1024 latent went through the tiled path


# --- choosing settings for a VRAM budget ---------------------------------------------------------

@pytest.mark.parametrize("card_mib, expected", [
    (24564, "advanced"),   # RTX 4090
    (6144, "advanced"),    # RTX 2060 / GTX 1060 6 GB: fp16 fits, offload is not needed
    (3072, "lowvram"),     # GTX 1060 3 GB
    (2048, "minvram"),     # GTX 1050
])
def test_vram_plan_on_fake_cards(card_mib, expected):
    plan = plan_for_vram(card_gib(card_mib))
    assert plan.preset == expected and plan.fits
    assert fits(plan.expected_peak_gib, card_gib(card_mib))
    assert expected in plan.explanation


def test_vram_plan_picks_the_fastest_that_fits():
    budget = 3.0
    plan = plan_for_vram(budget)
    faster = FASTEST_FIRST[:FASTEST_FIRST.index(plan.preset)]
    assert faster and all(not fits(estimate_peak_gib(MemoryLayout.of(load_preset(f).settings)), budget)
                          for f in faster)


@pytest.mark.parametrize("row", FOOTPRINTS, ids=lambda f: f"{f.preset}-{f.width}-b{f.batch_size}")
def test_the_estimate_gives_back_every_measured_row(row):
    """The rule is built from differences between rows; it must reproduce each row it was built from."""
    settings = load_preset(row.preset).settings
    estimate = estimate_peak_gib(MemoryLayout.of(settings), row.width, row.height, row.batch_size)
    assert estimate == pytest.approx(row.peak_gib, rel=0.06)


def test_measured_rows_match_the_presets_own_size_and_batch():
    for row in FOOTPRINTS:
        settings = load_preset(row.preset).settings
        if (row.width, row.height) == (512, 512):
            assert row.batch_size == settings.batch_size, row


def test_fp32_doubles_the_estimate_as_baseline_against_beginner():
    beginner = load_preset("beginner").settings
    fp32 = estimate_peak_gib(MemoryLayout.of(beginner, fp16_runs_as_fp32=True))
    baseline = next(f for f in FOOTPRINTS if f.preset == "baseline")
    assert fp32 == pytest.approx(baseline.peak_gib)
    assert plan_for_vram(4.0).preset == "advanced"
    assert plan_for_vram(4.0, fp16_runs_as_fp32=True).preset == "minvram"


# --- --max-vram with a preset given by name ------------------------------------------------------------

def test_preset_that_fits_gets_no_overrides():
    plan = plan_for_preset("beginner", load_preset("beginner").settings, 8)
    assert plan.fits and plan.overrides == () and "as it is" in plan.explanation


def test_preset_too_big_gets_model_offload_first():
    plan = plan_for_preset("advanced", load_preset("advanced").settings, 2.8)
    assert plan.fits and plan.overrides == ("offload=model", "vae.slicing=true", "vae.tiling=true")
    settings = load_preset("advanced", list(plan.overrides)).settings
    assert fits(estimate_peak_gib(MemoryLayout.of(settings)), 2.8)


@pytest.mark.parametrize("bnb, quantization", [(True, "nf4"), (False, "fp8_storage")])
def test_preset_needing_sequential_offload_gets_smaller_weights(bnb, quantization):
    plan = plan_for_preset("advanced", load_preset("advanced").settings, 2.0, bitsandbytes_installed=bnb)
    assert plan.fits and "offload=sequential" in plan.overrides
    assert load_preset("advanced", list(plan.overrides)).settings.quantization == quantization


def test_preset_that_cannot_fit_says_what_would_help():
    plan = plan_for_preset("baseline", load_preset("baseline").settings, 2.0)
    assert not plan.fits and "offload=sequential" in plan.overrides
    assert "safety_checker=false" in plan.explanation and "fp32" in plan.explanation
    lean = plan_for_preset("minvram", load_preset("minvram").settings, 2.0)
    assert lean.fits and lean.overrides == ()  # never steps a leaner preset back up to model offload


def test_the_safety_checker_hint_comes_only_with_the_checker_and_counts_fp32():
    """What --set safety_checker=false would save, said where nothing fits: the estimate's own difference, in fp32
    too (baseline); not said at all where the checker is already off (advanced), where it would change nothing."""
    settings = load_preset("baseline").settings
    plan = plan_for_preset("baseline", settings, 1.5)
    stepped = MemoryLayout("sequential", True, True, True)
    saved = estimate_peak_gib(stepped) - estimate_peak_gib(dataclasses.replace(stepped, safety_checker=False))
    assert not plan.fits and f"saves {saved:.2f} GiB" in plan.explanation
    without = plan_for_preset("advanced", load_preset("advanced").settings, 1.0)
    assert not without.fits and "safety_checker" not in without.explanation


def test_vram_plan_for_a_large_image_steps_down_and_tiles():
    plan = plan_for_vram(4.5, width=1024, height=1024)
    assert plan.preset == "lowvram" and plan.fits  # advanced would need 2.65 + 3 x 0.53 GiB
    roomy = plan_for_vram(24, width=1024, height=1024)
    assert roomy.preset == "advanced" and "vae.tiling=true" in roomy.overrides


def test_vram_plan_adds_only_overrides_that_change_the_preset():
    """The plan's --set list is printed and applied: each one must change something. lowvram already tiles, minvram
    already has NF4 where bitsandbytes is installed; a wide image needs tiling as much as a square one."""
    assert plan_for_vram(4.5, width=1024, height=1024).overrides == ()
    assert plan_for_vram(1.8, bitsandbytes_installed=True).overrides == ()
    assert plan_for_vram(24, width=1024, height=512).overrides == ("vae.tiling=true",)


def test_vram_plan_without_bitsandbytes_uses_fp8_storage_and_the_overrides_are_valid():
    plan = plan_for_vram(1.8, bitsandbytes_installed=False)
    assert plan.preset == "minvram" and plan.overrides == ("quantization=fp8_storage",)
    assert "not measured yet" in plan.explanation
    assert load_preset(plan.preset, list(plan.overrides)).settings.quantization == "fp8_storage"


def test_vram_plan_that_cannot_fit_says_so():
    plan = plan_for_vram(1.0, batch_size=4)
    assert plan.preset == "minvram" and not plan.fits
    assert "smaller images or batches" in plan.explanation
    for budget in (0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            plan_for_vram(budget)


def test_every_footprint_is_a_shipped_preset():
    assert {f.preset for f in FOOTPRINTS} <= set(shipped_names())


# --- on a GPU (run by whoever has one) ----------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("name, quantization", [("lowvram", None), ("minvram", None), ("minvram", "fp8_storage")])
def test_low_vram_presets_on_a_gpu(name, quantization):
    """minvram as shipped (NF4 where bitsandbytes is installed), and with fp8 storage, which --max-vram puts in
    NF4's place without bitsandbytes: layerwise casting under sequential offload's per-layer hooks."""
    if quantization is None and name == "minvram" and not hardware.package_version("bitsandbytes"):
        pytest.skip("bitsandbytes not installed: minvram's NF4 needs it (the fp8_storage case runs)")
    overrides = [f"quantization={quantization}"] if quantization else []
    built = build_pipeline(load_preset(name, overrides).settings, "random:tiny", "cuda")
    wanted = {"lowvram": "model CPU offload", "minvram": "sequential CPU offload"}[name]
    assert wanted in built.applied and built.skipped == []
    image = built.pipe("arcane style", num_inference_steps=2, width=512, height=512, output_type="np").images[0]
    assert image.shape == (512, 512, 3)


@pytest.mark.parametrize("name, method", [("lowvram", "enable_model_cpu_offload"),
                                          ("minvram", "enable_sequential_cpu_offload")])
def test_offload_goes_to_this_process_gpu_not_gpu_0(monkeypatch, name, method):
    """Under accelerate/torchrun each process's current GPU is its own; diffusers' offloading reads a bare
    "cuda" as GPU 0, so every process would crowd GPU 0. Faked on the CPU: this process's GPU is 1."""
    import torch
    from diffusers import StableDiffusionPipeline

    from fake_machines import RTX_3060, machine

    load = models.load_pipeline
    monkeypatch.setattr(models, "load_pipeline", lambda source, **kw: load(source, **{**kw, "device": "cpu"}))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    asked = []
    monkeypatch.setattr(StableDiffusionPipeline, method, lambda pipe, gpu_id=None, device=None: asked.append(device))
    settings = load_preset(name, ["quantization=fp8_storage", "width=64", "height=64"]).settings
    build_pipeline(settings, "random:tiny", "cuda", machine(RTX_3060))
    assert asked == ["cuda:1"]
