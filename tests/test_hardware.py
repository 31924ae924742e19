"""The deep probe's pieces that run without a GPU, and the whole probe on a GPU where there is one."""

import json
import shutil
from types import SimpleNamespace

import pytest

from nitro_cli import hardware


def fake_hub_cache(root, repo_id, payload: bytes):
    """The layout huggingface_hub writes: blobs, a snapshot of symlinks to them, refs/main."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_bytes(payload)
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").symlink_to(repo / "blobs" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    return repo


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    # huggingface_hub reads HF_HUB_CACHE once, at import: point this process's at the test's.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path


def test_cached_model_found_with_path_and_size(hub_cache):
    repo = fake_hub_cache(hub_cache, "nitrosocke/Nitro-Diffusion", b"x" * (3 * 2**20))
    fake_hub_cache(hub_cache, "someone/other-model", b"y")
    cached = hardware._cached_model()
    assert cached == hardware.CachedModel("nitrosocke/Nitro-Diffusion", str(repo), 3,
                                          "its model_index.json is damaged")
    older = repo / "snapshots" / "fedcba9876543210"  # another revision with the same file: counted once
    older.mkdir()
    (older / "model_index.json").symlink_to(repo / "blobs" / "abc123")
    assert hardware._cached_model().size_mib == 3


@pytest.mark.parametrize("weights, problem", [
    ({"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.bin",
      "text_encoder": "model-00001-of-00002.safetensors"}, None),
    ({"unet": "diffusion_pytorch_model.fp16.safetensors", "vae": "diffusion_pytorch_model.safetensors",
      "text_encoder": "model.fp16-00001-of-00002.safetensors"}, None),  # nitro loads the fp16 variant then
    ({"unet": "diffusion_pytorch_model.non_ema.bin", "vae": "diffusion_pytorch_model.safetensors",
      "text_encoder": "model.safetensors"}, "unet has no weights file"),  # a variant nitro never loads
    ({"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors"},
     "text_encoder has no weights file"),
    ({"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
      "text_encoder": "model.safetensors", "safety_checker": "model.safetensors"}, None),
    ({"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
      "text_encoder": "model.safetensors"}, "safety_checker has no weights file"),
])
def test_a_cached_model_says_what_keeps_it_from_loading(hub_cache, weights, problem):
    """doctor called a snapshot without the UNet's weights "cached", and generate then failed on it. The safety
    checker counts where model_index.json names one (beginner, the default preset, loads it)."""
    names_a_checker = "safety_checker" in weights or problem == "safety_checker has no weights file"
    index = {"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"] if names_a_checker else [None, None]}
    repo = fake_hub_cache(hub_cache, "nitrosocke/Nitro-Diffusion", json.dumps(index).encode())
    snapshot = repo / "snapshots" / "0123456789abcdef"
    for folder, name in weights.items():
        (snapshot / folder).mkdir()
        (snapshot / folder / name).write_bytes(b"weights")
    assert hardware._cached_model().problem == problem


def test_a_first_download_stopped_before_its_snapshot_is_incomplete_not_absent(hub_cache):
    """huggingface_hub writes refs/main and blobs before the snapshot's links: doctor must say "finish the
    download", not "downloaded on first use"."""
    repo = fake_hub_cache(hub_cache, "nitrosocke/Nitro-Diffusion", b"x")
    shutil.rmtree(repo / "snapshots")
    assert hardware._cached_model().problem == "no main revision"


def test_no_cache_folder_means_not_cached(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache / "missing"))
    assert hardware._cached_model() is None
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    fake_hub_cache(hub_cache, "someone/other-model", b"y")
    assert hardware._cached_model() is None


def test_free_disk_is_measured_at_the_nearest_existing_folder(tmp_path):
    free = hardware._free_disk_mib(tmp_path / "not" / "yet" / "outputs")
    assert free is not None and free > 0


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)])
def test_offline_mode_is_read_now(monkeypatch, value, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert hardware._hf_offline() is offline


def test_cpu_probe_has_no_gpu_facts():
    machine = hardware.probe(deep=True)
    if machine.has_gpu:
        pytest.skip("this machine has a GPU")
    assert machine.gpus == () and machine.bitsandbytes_test is None
    assert machine.free_disk_mib and machine.cache_free_disk_mib and machine.compile_cache_dir.endswith("torch-compile")


@pytest.mark.gpu
def test_gpu_probe_tests_the_sdpa_kernels_and_optional_packages():
    machine = hardware.probe(deep=True)
    gpu = machine.gpus[0]
    assert "math" in gpu.sdpa_kernels
    assert 0 < gpu.free_vram_mib <= gpu.total_vram_mib
    if machine.packages["xformers"]:
        assert machine.xformers_test is not None
    if machine.packages["bitsandbytes"]:
        assert machine.bitsandbytes_test is not None


@pytest.mark.parametrize("environ, count, expected", [
    ({}, 4, [0, 1, 2, 3]),
    ({"WORLD_SIZE": "1", "LOCAL_RANK": "0"}, 4, [0, 1, 2, 3]),
    ({"WORLD_SIZE": "4", "LOCAL_RANK": "2"}, 4, [2]),
    ({"WORLD_SIZE": "4", "LOCAL_RANK": "3"}, 1, [0]),  # one visible GPU per process
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, 1, [0]),  # the rank equals the count: still out of range
    ({"WORLD_SIZE": "4"}, 4, [0, 1, 2, 3]),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, 0, []),
])
def test_probed_gpu_indices(monkeypatch, environ, count, expected):
    for name in ("WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert list(hardware.probed_gpu_indices(count)) == expected


def test_distributed_probe_opens_only_its_own_gpu(monkeypatch):
    """probe() asks torch.cuda about the process's own GPU only (mem_get_info opens a context there)."""
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: asked.append(("props", i)) or SimpleNamespace(name=f"GPU{i}", major=9, minor=0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: asked.append(("mem", i)) or (2**30, 2**31))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    machine = hardware.probe()
    assert [(g.index, g.name) for g in machine.gpus] == [(2, "GPU2")]
    assert asked == [("props", 2), ("mem", 2)]
    monkeypatch.delenv("WORLD_SIZE")
    asked.clear()
    assert len(hardware.probe().gpus) == 4 and {i for _, i in asked} == {0, 1, 2, 3}


@pytest.mark.parametrize("name, capability, fast", [
    ("Tesla P100-PCIE-16GB", (6, 0), True),  # the one Pascal with fast fp16
    ("NVIDIA GeForce GTX 1080", (6, 1), False),
    ("Tesla T4", (7, 5), True),
])
def test_fast_fp16_by_compute_capability(name, capability, fast):
    assert hardware.GpuInfo(0, name, capability, 16000, 15000, bf16=False).fast_fp16 is fast


def test_probe_gives_bf16_from_compute_capability_8_0(monkeypatch):
    import torch

    capabilities = [(8, 0), (7, 5)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name=f"GPU{i}", major=capabilities[i][0], minor=capabilities[i][1]))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (2**30, 2**31))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert [gpu.bf16 for gpu in hardware.probe().gpus] == [True, False]


def test_transformers_offline_counts_as_offline(monkeypatch):
    """huggingface_hub reads TRANSFORMERS_OFFLINE as HF_HUB_OFFLINE: doctor must too."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hardware._hf_offline() is True


def test_a_cpu_without_a_cpp_compiler_has_no_torch_compile(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert hardware._compiler_available(cuda=False) is False
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/clang++" if name == "clang++" else None)
    assert hardware._compiler_available(cuda=False) is True


def installed_as(monkeypatch, distribution, modules):
    """`distribution` looks installed, its modules replaced by these fakes: no real import, no GPU needed."""
    import sys

    real_version = hardware.package_version
    monkeypatch.setattr(hardware, "package_version",
                        lambda name: "1.0" if name == distribution else real_version(name))
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_an_xformers_that_imports_but_fails_to_run_is_broken(monkeypatch):
    """A wheel built for another torch imports fine and fails at its first call: on a GPU it must be run, on a
    CPU (no kernels to run) importing is all there is to test."""
    from types import ModuleType

    def mismatched_build(*args):
        raise RuntimeError("No operator found for `memory_efficient_attention_forward`")

    ops = SimpleNamespace(memory_efficient_attention=mismatched_build)
    package = ModuleType("xformers")
    package.ops = ops
    installed_as(monkeypatch, "xformers", {"xformers": package, "xformers.ops": ops})
    import torch

    monkeypatch.setattr(torch, "randn", lambda *args, **kwargs: "q")  # the failure is xformers', on any machine
    assert hardware._test_xformers(cuda=True).ok is False
    assert hardware._test_xformers(cuda=False).ok is True


@pytest.mark.parametrize("lib, cuda, expected", [
    (SimpleNamespace(compiled_with_cuda=True), True, True),
    (SimpleNamespace(compiled_with_cuda=False, error_msg="CUDA Setup failed\nmore"), True, False),
    (SimpleNamespace(), True, False),  # an older bitsandbytes without the attribute: no CUDA library either
    (SimpleNamespace(compiled_with_cuda=False), False, None),  # no GPU: nothing for it to do, nothing to report
])
def test_bitsandbytes_is_usable_only_with_its_cuda_library(monkeypatch, lib, cuda, expected):
    from types import ModuleType

    extension = ModuleType("bitsandbytes.cextension")
    extension.lib = lib
    installed_as(monkeypatch, "bitsandbytes", {"bitsandbytes": ModuleType("bitsandbytes"),
                                               "bitsandbytes.cextension": extension})
    test = hardware._test_bitsandbytes(cuda)
    assert test is None if expected is None else test.ok is expected
