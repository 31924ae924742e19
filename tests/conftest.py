"""Shared fixtures: every test runs offline, with its own Hugging Face cache and a temporary folder."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

# Tiny settings so that one image costs well under a second on a CPU.
FAST = ["--model", "random:tiny", "--steps", "2", "--width", "64", "--height", "64", "--device", "cpu"]


def assert_same_but_for_batch_rounding(got, want, name: str = "") -> None:
    """Pixels of one image made at two batch sizes: CPU kernels may round by batch size, by a level on a few of
    a 64x64 image's 12288 values (seen on AMX and AVX2-only CPUs); a wrong seed or prompt changes nearly all."""
    import numpy as np

    difference = np.abs(np.asarray(got).astype(int) - np.asarray(want).astype(int))
    assert difference.max() <= 1 and np.count_nonzero(difference) <= 12, name


@pytest.fixture(autouse=True)
def offline_env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    monkeypatch.setenv("NITRO_CACHE_DIR", str(tmp_path_factory.mktemp("nitro_cache")))
    monkeypatch.delenv("NITRO_DEBUG", raising=False)
    # The builder points torch's compile cache at NITRO_CACHE_DIR; give the variable back after each test.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")


@pytest.fixture(autouse=True)
def cpu_without_amx(monkeypatch):
    """Every test sees a CPU without AMX, where half-precision presets run in fp32: the same numbers on every
    machine (on an AMX CPU they run in bf16, whose kernels round differently by batch size). The bf16 rule
    has its own tests, on fake machines with AMX."""
    from nitro_cli import hardware

    monkeypatch.setattr(hardware, "cpu_has_amx_bf16", lambda: False)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def fake_probe(monkeypatch):
    """`fake_probe(machine)`: commands see `machine` instead of this one (see tests/fake_machines.py)."""
    from nitro_cli import hardware

    def use(fake):
        monkeypatch.setattr(hardware, "probe", lambda deep=False: fake)
    return use


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """`random:tiny` saved as an ordinary diffusers folder: the real-model loading path, offline."""
    from nitro_cli.models import build_random_pipeline

    folder = tmp_path_factory.mktemp("tiny_model")
    build_random_pipeline("random:tiny").save_pretrained(folder)
    return folder


def pytest_collection_modifyitems(config, items):
    import os

    import torch

    # Slow tests (compiling on the CPU: minutes) run only when asked, so the default suite stays fast.
    if not os.environ.get("NITRO_SLOW_TESTS"):
        skip_slow = pytest.mark.skip(reason="slow; set NITRO_SLOW_TESTS=1 to run")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip_slow)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
