"""Hardware and package probing: the one place that asks what this machine can do.

`probe()` returns plain data (`Machine`), so doctor, checklist and the pipeline builder all read the
same facts, and tests can hand them a fake machine instead.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    total_vram_mib: int
    free_vram_mib: int
    bf16: bool

    @property
    def fast_fp16(self) -> bool:
        """Pascal (6.x) and the GTX 16xx Turing cards run fp16 at a fraction of fp32 speed, or NaN."""
        if self.compute_capability < (7, 0):
            return self.compute_capability == (6, 0)  # P100 is the one Pascal with fast fp16
        return "GTX 16" not in self.name


@dataclass(frozen=True)
class Machine:
    python: str
    os: str
    packages: dict[str, str | None]
    cuda_available: bool = False
    torch_cuda: str | None = None
    gpus: tuple[GpuInfo, ...] = ()
    compiler_available: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def has_gpu(self) -> bool:
        return self.cuda_available and bool(self.gpus)


PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "xformers",
            "bitsandbytes", "torchao", "onnxruntime", "triton", "nvidia-ml-py")


def package_version(name: str) -> str | None:
    """Installed version from package metadata, without importing the package."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def cpu_name() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what `platform` knows, with the core count."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        name = names[0] if names else name
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical CPUs)"


def _compiler_available(cuda: bool) -> bool:
    """torch.compile's inductor needs Triton for CUDA and a C++ compiler for the CPU."""
    if cuda:
        return is_importable("triton")
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def probe() -> Machine:
    """Look at this machine. Imports torch: call it from commands, never at import time."""
    import torch

    gpus = []
    cuda = torch.cuda.is_available()
    if cuda:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(GpuInfo(
                index=index,
                name=props.name,
                compute_capability=(props.major, props.minor),
                total_vram_mib=total // 2**20,
                free_vram_mib=free // 2**20,
                bf16=(props.major, props.minor) >= (8, 0),
            ))
    return Machine(
        python=platform.python_version(),
        os=f"{platform.system()} {platform.release()} ({platform.machine()})",
        packages={name: package_version(name) for name in PACKAGES},
        cuda_available=cuda,
        torch_cuda=torch.version.cuda,
        gpus=tuple(gpus),
        compiler_available=_compiler_available(cuda),
    )
