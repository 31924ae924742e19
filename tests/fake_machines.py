"""Fake machines for doctor and checklist tests: what `hardware.probe()` would return on them."""

from nitro_cli import hardware

PACKAGES = {"torch": "2.13.0+cu130", "diffusers": "0.42.1", "transformers": "5.24.0", "accelerate": "1.15.0",
            "safetensors": "0.8.0", "xformers": None, "bitsandbytes": None}


def machine(*gpus, packages=None, **changes) -> hardware.Machine:
    fields = dict(python="3.11.7", os="Linux test", packages={**PACKAGES, **(packages or {})},
                  cuda_available=bool(gpus), torch_cuda="13.0" if gpus else None, gpus=tuple(gpus),
                  compiler_available=True, hf_offline=False, free_disk_mib=50_000)
    return hardware.Machine(**{**fields, **changes})


def gpu(name, capability, total_mib, index=0, free_mib=None):
    return hardware.GpuInfo(index, name, capability, total_mib, free_mib or total_mib - 300,
                            bf16=capability >= (8, 0), sdpa_kernels=("flash", "mem_efficient", "math"))


GTX_1060 = gpu("NVIDIA GeForce GTX 1060 6GB", (6, 1), 6072)
RTX_3060 = gpu("NVIDIA GeForce RTX 3060", (8, 6), 12045)
A100 = gpu("NVIDIA A100-SXM4-80GB", (8, 0), 81154)

MACHINES = {
    "no GPU": machine(packages={"torch": "2.13.0+cpu"}),
    "GTX 1060 6 GB": machine(GTX_1060),
    "RTX 3060 12 GB": machine(RTX_3060),
    "A100 80 GB": machine(A100),
    "two GPUs": machine(A100, gpu("NVIDIA A100-SXM4-80GB", (8, 0), 81154, index=1)),
    "broken xformers": machine(RTX_3060, packages={"xformers": "0.0.28"},
                               xformers_test=hardware.PackageTest(False, "ImportError: undefined symbol: _ZN3c10")),
}
