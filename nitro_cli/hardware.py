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
from dataclasses import dataclass, replace
from pathlib import Path

from nitro_cli import paths
from nitro_cli.errors import describe
from nitro_cli.models import DEFAULT_MODEL, cached_snapshot, hub_cache_folder, snapshot_problem


# What to do when `import torch` fails (Machine.torch_error): doctor reports it, generate, bench and
# checklist stop on it.
TORCH_REINSTALL_HINT = "reinstall torch, the build for this machine's CUDA (https://pytorch.org/get-started/locally/)"


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    total_vram_mib: int
    free_vram_mib: int
    bf16: bool
    # SDPA kernels a tiny fp16 call ran with: "flash", "mem_efficient", "math". Empty: not tested.
    sdpa_kernels: tuple[str, ...] = ()

    @property
    def fp16_problem(self) -> str:
        """Why Stable Diffusion can't run in fp16 here ("" where it can): each family has its own problem."""
        if self.compute_capability < (7, 0) and self.compute_capability != (6, 0):  # P100: the fast-fp16 Pascal
            return "no fast fp16 (a fraction of fp32's speed)"
        if "GTX 16" in self.name:
            # Turing without tensor cores: fp16 is fast, but SD's UNet/VAE produce NaNs (black images) there.
            return "GTX 16xx: fp16 gives NaNs (black images)"
        return ""

    @property
    def fast_fp16(self) -> bool:
        return not self.fp16_problem

    @property
    def capability(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass(frozen=True)
class PackageTest:
    """Whether an optional package did real work on this machine, not just imported."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    path: str
    size_mib: int
    problem: str | None = None  # what keeps its main revision from loading (models.snapshot_problem)


@dataclass(frozen=True)
class Machine:
    python: str
    os: str
    packages: dict[str, str | None]
    cuda_available: bool = False
    torch_cuda: str | None = None
    gpus: tuple[GpuInfo, ...] = ()
    compiler_available: bool = False
    cpu_amx_bf16: bool = False  # see cpu_has_amx_bf16
    torch_cudnn: int | None = None
    hf_offline: bool = False
    outputs_dir: str = paths.DEFAULT_OUTPUTS  # where doctor looks for free disk
    compile_cache_dir: str = ""
    # Why `import torch` failed (a missing package, a CUDA build without its libraries); None when it imports.
    torch_error: str | None = None
    # Filled by `probe(deep=True)` only (doctor, checklist); None means "not looked at" or "not there".
    driver_version: str | None = None
    xformers_test: PackageTest | None = None
    bitsandbytes_test: PackageTest | None = None
    model_cache: CachedModel | None = None
    free_disk_mib: int | None = None
    cache_problem: str | None = None  # why nitro's cache folder can't be written (paths.unwritable)
    cache_free_disk_mib: int | None = None  # where ONNX exports, compiled code and saved models go

    @property
    def has_gpu(self) -> bool:
        return self.cuda_available and bool(self.gpus)


PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "huggingface_hub", "xformers",
            "bitsandbytes", "torchao", "onnxruntime", "optimum", "triton", "nvidia-ml-py")


def package_version(name: str) -> str | None:
    """Installed version from package metadata, without importing the package."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cpuinfo(field: str) -> str | None:
    """The first value of `field` in Linux's /proc/cpuinfo; None elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what `platform` knows, with the core count."""
    name = _cpuinfo("model name") or platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} logical CPUs)"


def cpu_has_amx_bf16() -> bool:
    """Intel's AMX with bf16 (Xeon 4th generation and later): bf16 matrix units, which oneDNN uses for torch's
    bf16 matmuls and convolutions. Linux only (its /proc/cpuinfo flags); elsewhere False, the safe answer."""
    return "amx_bf16" in (_cpuinfo("flags") or "").split()


def _compiler_available(cuda: bool) -> bool:
    """torch.compile's inductor needs Triton for CUDA and a C++ compiler for the CPU."""
    if cuda:
        return is_importable("triton")
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def _sdpa_kernels(index: int) -> tuple[str, ...]:
    """Run one tiny fp16 attention call per SDPA backend; the ones that don't raise are usable."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 2, 64, 64, device=f"cuda:{index}", dtype=torch.float16)
    usable = []
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("mem_efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("math", SDPBackend.MATH)):
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            usable.append(name)
        except RuntimeError:
            pass
    return tuple(usable)


def _test_xformers(cuda: bool) -> PackageTest | None:
    """A prebuilt xformers wheel only works with the torch it was built for: import it and run it."""
    if package_version("xformers") is None:
        return None
    try:
        import xformers.ops

        if not cuda:
            return PackageTest(True, "imports (its kernels need a CUDA GPU)")
        import torch

        q = torch.randn(1, 16, 2, 40, device="cuda", dtype=torch.float16)  # (batch, tokens, heads, dim)
        xformers.ops.memory_efficient_attention(q, q, q)
        return PackageTest(True, "imports and runs a fp16 attention call")
    except Exception as exc:  # a mismatched build fails in many ways: ImportError, OSError, RuntimeError
        return PackageTest(False, describe(exc))


def _test_bitsandbytes(cuda: bool) -> PackageTest | None:
    """bitsandbytes imports fine without its CUDA library and fails only at the first quantized layer."""
    if package_version("bitsandbytes") is None or not cuda:
        return None
    try:
        from bitsandbytes.cextension import lib
    except Exception as exc:
        return PackageTest(False, describe(exc))
    if getattr(lib, "compiled_with_cuda", False):
        return PackageTest(True, "CUDA library loaded")
    reason = getattr(lib, "error_msg", "") or "no CUDA library for this torch"
    return PackageTest(False, reason.strip().splitlines()[0])


def _driver_version() -> str | None:
    """The NVIDIA driver, through NVML (nvidia-ml-py) when it is installed."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no pynvml, no driver, or no permission: simply unknown
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def _hf_offline() -> bool:
    """Read like huggingface_hub does, but now: its constant is frozen when it is first imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def _cached_model() -> CachedModel | None:
    """The default model in the Hugging Face cache: its folder, its size on disk (each blob once, however many
    revisions link it) and what keeps its main revision from loading."""
    repo = hub_cache_folder(DEFAULT_MODEL)
    if not repo.is_dir():
        return None
    snapshot = cached_snapshot(DEFAULT_MODEL)
    problem = snapshot_problem(snapshot) if snapshot else "no main revision"
    blobs = {file.resolve() for file in repo.glob("snapshots/**/*") if file.is_file()}
    return CachedModel(DEFAULT_MODEL, str(repo), sum(blob.stat().st_size for blob in blobs) // 2**20, problem)


def _free_disk_mib(folder: Path) -> int | None:
    """Free space where outputs go (the nearest existing folder: the output folder may not exist yet)."""
    folder = folder.resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free // 2**20
    except OSError:
        return None


def probed_gpu_indices(device_count: int) -> range | list[int]:
    """The GPUs this process looks at: all of them, or under a distributed launch only its own.

    `torch.cuda.mem_get_info(i)` opens a CUDA context on device i (a few hundred MiB there), so N
    processes probing N GPUs would each leave a context on every GPU. torchrun and accelerate set
    LOCAL_RANK to the process's GPU; a launcher that shows each process one GPU makes that GPU 0.
    """
    from nitro_cli import distributed

    local_rank = os.environ.get("LOCAL_RANK")
    if not distributed.launched() or local_rank is None or device_count == 0:
        return range(device_count)
    rank = int(local_rank)
    return [rank if rank < device_count else 0]


def probe(deep: bool = False) -> Machine:
    """Look at this machine. Imports torch: call it from commands, never at import time.

    `deep` also runs what doctor and checklist need and a pipeline build does not: tiny xformers and
    SDPA calls, bitsandbytes' library check, NVML, the default model in the Hugging Face cache and free disk.
    """
    torch_error = None
    try:
        import torch
    except Exception as exc:  # ImportError, or OSError from a CUDA build without its libraries: doctor says
        torch, torch_error = None, describe(exc)
    gpus = []
    cuda = torch is not None and torch.cuda.is_available()
    if cuda:
        for index in probed_gpu_indices(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(GpuInfo(
                index=index,
                name=props.name,
                compute_capability=(props.major, props.minor),
                total_vram_mib=total // 2**20,
                free_vram_mib=free // 2**20,
                bf16=(props.major, props.minor) >= (8, 0),
                sdpa_kernels=_sdpa_kernels(index) if deep else (),
            ))
    machine = Machine(
        python=platform.python_version(),
        os=f"{platform.system()} {platform.release()} ({platform.machine()})",
        packages={name: package_version(name) for name in PACKAGES},
        cuda_available=cuda,
        torch_cuda=torch.version.cuda if torch else None,
        gpus=tuple(gpus),
        compiler_available=_compiler_available(cuda),
        cpu_amx_bf16=cpu_has_amx_bf16(),
        torch_cudnn=torch.backends.cudnn.version() if torch and torch.backends.cudnn.is_available() else None,
        torch_error=torch_error,
        hf_offline=_hf_offline(),
        compile_cache_dir=str(paths.compile_cache_dir()),
    )
    if not deep:
        return machine
    return replace(
        machine,
        driver_version=_driver_version(),
        xformers_test=_test_xformers(cuda),
        bitsandbytes_test=_test_bitsandbytes(cuda),
        model_cache=_cached_model(),
        free_disk_mib=_free_disk_mib(Path(machine.outputs_dir)),
        cache_problem=paths.unwritable(paths.cache_dir()),
        cache_free_disk_mib=_free_disk_mib(paths.cache_dir()),
    )
