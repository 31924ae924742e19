"""What `nitro doctor` concludes from a probed machine: checks (ok/warn/fail) and the preset to use.

Plain functions of `hardware.Machine`, so tests hand them fake machines. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from nitro_cli import builder, vram
from nitro_cli.hardware import TORCH_REINSTALL_HINT, GpuInfo, Machine
from nitro_cli.models import DEFAULT_MODEL, finish_download_hint
from nitro_cli.presets import load_preset

OK, WARN, FAIL = "ok", "warn", "fail"

# nitro's own hard dependencies: without any of them no command can generate.
REQUIRED = ("torch", "diffusers", "transformers", "accelerate", "safetensors")

# A card class, not a memory limit (vram.py decides what fits): 16 GB and up marks the fast cards where
# torch.compile's one-off cost pays back. torch reports a card's memory less what the driver keeps (a 12 GB
# RTX 3060: 12045 MiB; a 16 GB card about 16050 MiB), and ECC on a GDDR card keeps 1/16 more (a 16 GB
# Tesla T4 or RTX A4000 with ECC on: about 15100 MiB): 14 GiB is the line between 12 GB and 16 GB cards.
LARGE_VRAM_MIB = 14 * 1024
LOW_DISK_MIB = 1024


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Rule:
    """One row of the recommendation table: the first row whose `applies` is true wins."""

    when: str
    applies: Callable[[Machine], bool]
    preset: str
    reason: str


def vram_plan(machine: Machine, gpu: GpuInfo | None = None) -> vram.VramPlan:
    """vram.py's rule for one GPU (the first by default), at 512x512, batch 1, as nitro would run there."""
    gpu = gpu or machine.gpus[0]
    return vram.plan_for_vram(gpu.total_vram_mib / 1024, **vram.machine_facts(machine, gpu))


def _deploy_fits_every_gpu(machine: Machine) -> bool:
    settings = load_preset("deploy").settings
    return all(vram.fits(vram.estimate_peak_gib(
        vram.MemoryLayout.of(settings, vram.machine_facts(machine, gpu)["fp16_runs_as_fp32"]),
        settings.width, settings.height, settings.batch_size), gpu.total_vram_mib / 1024) for gpu in machine.gpus)


def _large_modern_gpu(machine: Machine) -> bool:
    gpu = machine.gpus[0]
    return (gpu.total_vram_mib >= LARGE_VRAM_MIB and gpu.compute_capability >= (8, 0)
            and builder.compile_blocker("cuda", machine) is None)


# The recommendation rule, top to bottom (docs/doctor.md shows the same table). What fits in VRAM is
# vram.py's rule alone (its measured FOOTPRINTS); the other rows are about the machine, not its memory.
RECOMMENDATION_RULES = (
    Rule("no CUDA GPU", lambda m: not m.has_gpu, "beginner",
         "no CUDA GPU: runs on the CPU (bfloat16 with AMX, else float32: see the cpu check), minutes per image "
         "(`--model random:tiny` for a dry run)"),
    Rule("several GPUs, each expected to fit deploy's batch of 8 (vram.py)",
         lambda m: len(m.gpus) > 1 and _deploy_fits_every_gpu(m), "deploy",
         "several GPUs: the throughput tier; run one nitro process per GPU (CUDA_VISIBLE_DEVICES=i) to use them all"),
    Rule("vram.py's rule picks minvram for the first GPU", lambda m: vram_plan(m).preset == "minvram", "minvram",
         "the smallest-memory settings: the faster presets are not expected to fit this GPU (the VRAM note "
         "says whether these do)"),
    Rule("vram.py's rule picks lowvram for the first GPU", lambda m: vram_plan(m).preset == "lowvram", "lowvram",
         "the faster presets are not expected to fit this GPU: the memory-saving settings"),
    Rule("a 16 GB card or larger (14 GiB or more as torch reports it, so a 16 GB card with ECC on, which keeps "
         "1/16 of it, counts), compute capability 8.0+, torch.compile available", _large_modern_gpu, "expert",
         "large modern GPU: fp16 with torch.compile and CUDA graphs is the fastest single image"),
    Rule("any other GPU", lambda m: True, "advanced",
         "fp16, a fast sampler, no safety checker, no compilation to wait for"),
)


@dataclass(frozen=True)
class Recommendation:
    preset: str
    reason: str
    notes: tuple[str, ...] = ()
    # --set overrides the preset needs on this machine: minvram's quantization without bitsandbytes (vram.py).
    overrides: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The preset, with the overrides it needs: what a user or script is to run."""
        return self.preset + "".join(f" --set {override}" for override in self.overrides)


def recommend(machine: Machine) -> Recommendation:
    rule = next(r for r in RECOMMENDATION_RULES if r.applies(machine))
    notes, overrides = [], ()
    if machine.has_gpu and rule.preset in vram.MEMORY_SAVING:
        plan = vram_plan(machine)
        notes.append(f"VRAM: {plan.explanation}")
        overrides = plan.overrides
    if machine.has_gpu and not machine.gpus[0].fast_fp16:
        gpu = machine.gpus[0]
        notes.append(f"{gpu.name} (compute capability {gpu.capability}): {gpu.fp16_problem}: fp32 needed. nitro runs "
                     f"half-precision presets in float32 here, which takes about {vram.FP32_FACTOR:.1f}x the memory "
                     "(the VRAM rule counts it)")
    # advanced: what stands between this machine and expert; deploy: it compiles too, or runs eager.
    if rule.preset in ("advanced", "deploy") and machine.has_gpu and (why := builder.compile_blocker("cuda", machine)):
        # Installing Triton helps only where the GPU is new enough for it.
        fix = " (pip install triton)" if why == builder.TRITON_MISSING else ""
        notes.append(f"{why}{fix}: expert and deploy run eager")
    return Recommendation(rule.preset, rule.reason, tuple(notes), tuple(overrides))


def _gpu_label(gpu: GpuInfo) -> str:
    return f"GPU {gpu.index} {gpu.name}"


def _check_packages(machine: Machine) -> list[Check]:
    missing = [name for name in REQUIRED if not machine.packages.get(name)]
    if missing:
        return [Check("packages", FAIL, f"not installed: {', '.join(missing)}", "pip install nitro-cli")]
    if machine.torch_error:
        return [Check("packages", FAIL, f"torch does not import: {machine.torch_error}", TORCH_REINSTALL_HINT)]
    return [Check("packages", OK, ", ".join(f"{name} {machine.packages[name]}" for name in REQUIRED))]


def _check_gpu(machine: Machine) -> list[Check]:
    if machine.torch_error:
        return [Check("cuda", WARN, "unknown: torch does not import (see the packages check)")]
    if machine.has_gpu:
        names = ", ".join(f"{g.name} ({g.total_vram_mib} MiB)" for g in machine.gpus)
        return [Check("cuda", OK, f"CUDA {machine.torch_cuda}: {names}")]
    if machine.torch_cuda is None:
        return [Check("cuda", WARN, f"torch {machine.packages.get('torch')} is a CPU-only build: the CPU path works, "
                                    "slowly", "on an NVIDIA machine, install a CUDA build of torch "
                                              "(https://pytorch.org/get-started/locally/)")]
    return [Check("cuda", WARN, f"torch is built for CUDA {machine.torch_cuda} but sees no GPU: the CPU path works, "
                                "slowly", "check `nvidia-smi`, the driver, and CUDA_VISIBLE_DEVICES")]


def _check_cpu(machine: Machine) -> list[Check]:
    """Without a GPU, what the presets' half precision becomes on this CPU (the builder's rule)."""
    if machine.has_gpu:
        return []
    dtype, _ = builder.effective_precision("float16", "cpu", machine)
    if dtype == "bfloat16":
        return [Check("cpu", OK, "AMX with bf16: half-precision presets run in bfloat16 (2.6-3.1x float32 with "
                                 "advanced on a 2-vCPU AMX Xeon, nitro bench, 2026-11-26, docs/benchmarks.md)")]
    return [Check("cpu", OK, "no AMX: presets run in float32 (half precision is emulated on this CPU, far slower)",
                  "for about 1.4x on the CPU, see ONNX Runtime in docs/deploy.md (1.43x and 1.51x PyTorch's float32 "
                  "on 2-vCPU Xeon and AMD EPYC guests, nitro bench, 2026-11-26/27)")]


def _check_each_gpu(machine: Machine) -> list[Check]:
    checks = []
    for gpu in machine.gpus if machine.has_gpu else ():
        label = _gpu_label(gpu)
        if gpu.fast_fp16:
            checks.append(Check(f"fp16 ({label})", OK, f"fast fp16, bf16 {'yes' if gpu.bf16 else 'no'}"))
        else:
            checks.append(Check(f"fp16 ({label})", WARN,
                                f"compute capability {gpu.capability}: {gpu.fp16_problem}: fp32 needed",
                                "nothing to do: nitro runs it in float32; mind the doubled memory"))
        used = gpu.total_vram_mib - gpu.free_vram_mib
        plan = vram_plan(machine, gpu)
        if plan.preset in vram.MEMORY_SAVING:
            checks.append(Check(f"vram ({label})", WARN, f"{gpu.total_vram_mib} MiB in all: {plan.explanation}",
                                f"--preset {plan.preset}" + "".join(f" --set {o}" for o in plan.overrides)))
        elif used > gpu.total_vram_mib // 2:
            checks.append(Check(f"vram ({label})", WARN, f"{used} of {gpu.total_vram_mib} MiB already in use",
                                "close other programs using the GPU (see nvidia-smi)"))
        else:
            checks.append(Check(f"vram ({label})", OK, f"{gpu.free_vram_mib} of {gpu.total_vram_mib} MiB free"))
        if gpu.sdpa_kernels and set(gpu.sdpa_kernels) <= {"math"}:
            checks.append(Check(f"sdpa ({label})", WARN, "only the math kernel runs: slow, memory-hungry attention",
                                "update torch; or --set attention=xformers with a working xformers"))
        elif gpu.sdpa_kernels:
            checks.append(Check(f"sdpa ({label})", OK, "kernels: " + ", ".join(gpu.sdpa_kernels)))
    if not machine.has_gpu:
        checks.append(Check("sdpa", OK, "kernels: math (CPU)"))
    return checks


def _check_xformers(machine: Machine) -> list[Check]:
    version = machine.packages.get("xformers")
    test = machine.xformers_test
    if version is None:
        return [Check("xformers", OK, "not installed (optional: PyTorch's SDPA is as fast)")]
    if test is None:
        return [Check("xformers", OK, f"{version} installed (not tested)")]
    if test.ok:
        return [Check("xformers", OK, f"{version}: {test.detail}")]
    return [Check("xformers", FAIL, f"{version} is broken with torch {machine.packages.get('torch')}: {test.detail}",
                  "pip uninstall xformers (SDPA needs nothing), or install the xformers build made for this torch")]


def _check_bitsandbytes(machine: Machine) -> list[Check]:
    version = machine.packages.get("bitsandbytes")
    test = machine.bitsandbytes_test
    if version is None:
        return [Check("bitsandbytes", OK, "not installed (optional: only for quantization=int8/nf4)")]
    if not machine.has_gpu:
        return [Check("bitsandbytes", OK, f"{version} installed; its quantization needs a CUDA GPU")]
    if test is None or test.ok:
        return [Check("bitsandbytes", OK, f"{version}: {test.detail if test else 'installed (not tested)'}")]
    return [Check("bitsandbytes", FAIL, f"{version}: {test.detail}",
                  f"pip install -U bitsandbytes (a build for CUDA {machine.torch_cuda}), or pip uninstall bitsandbytes")]


def _check_fp8(machine: Machine) -> list[Check]:
    """Whether `quantization: fp8_matmul` runs on the GPU nitro uses (the first), by the builder's own rule."""
    if not machine.has_gpu:
        return []
    why = builder.quantization_blocker("fp8_matmul", "cuda", machine)
    if why is None:
        return [Check("fp8", OK, f"fp8 tensor cores and torchao {machine.packages['torchao']}: "
                                 "--set quantization=fp8_matmul runs (opt-in: it changes the picture)")]
    if why == builder.TORCHAO_MISSING:
        return [Check("fp8", OK, "fp8 tensor cores; torchao not installed (optional: only for "
                                 "quantization=fp8_matmul)", "pip install 'nitro-cli[fp8]'")]
    return [Check("fp8", OK, f"{why}: quantization=fp8_matmul is skipped here")]


def _check_model(machine: Machine) -> list[Check]:
    cached = machine.model_cache
    if cached is not None and cached.problem:  # generate would fail to load it
        return [Check("model", WARN, f"{cached.repo_id} cached in {cached.path}, but incomplete: {cached.problem}",
                      finish_download_hint(cached.repo_id))]
    if cached is not None:
        return [Check("model", OK, f"{cached.repo_id} cached: {cached.path} ({cached.size_mib} MiB)")]
    if machine.hf_offline:
        return [Check("model", WARN, f"{DEFAULT_MODEL} is not in the local cache and HF_HUB_OFFLINE is set",
                      "unset HF_HUB_OFFLINE once to download it, or pass --model FOLDER_OR_FILE")]
    return [Check("model", OK, f"{DEFAULT_MODEL} not cached yet: downloaded from the hub on first use")]


def _check_disk(machine: Machine) -> list[Check]:
    if machine.free_disk_mib is None:
        return []
    if machine.free_disk_mib < LOW_DISK_MIB:
        return [Check("disk", WARN, f"{machine.free_disk_mib} MiB free for {machine.outputs_dir}",
                      "free some space or use --out on another disk")]
    return [Check("disk", OK, f"{machine.free_disk_mib // 1024} GiB free for {machine.outputs_dir}")]


def _check_cache(machine: Machine) -> list[Check]:
    if machine.cache_problem is not None:
        return [Check("cache", WARN, f"nitro's cache folder can't be written ({machine.cache_problem}): what keeps "
                                     "files there (compiled presets, single-file checkpoints, ONNX, bench reports) "
                                     "fails", "set NITRO_CACHE_DIR to a folder you can write to")]
    free = machine.cache_free_disk_mib
    if free is not None and free < LOW_DISK_MIB:  # an SD 1.x ONNX export alone is GBs; outputs may be elsewhere
        return [Check("cache", WARN, f"{free} MiB free for nitro's cache: ONNX exports, compiled code and saved "
                                     "models go there",
                      "free some space, or set NITRO_CACHE_DIR to a folder on another disk")]
    return []


def _check_compile(machine: Machine) -> list[Check]:
    """Whether expert's and deploy's torch.compile runs, by the builder's own rule."""
    needs = "Triton" if machine.has_gpu else "a C++ compiler"
    why = builder.compile_blocker("cuda" if machine.has_gpu else "cpu", machine)
    if why is None:
        return [Check("torch.compile", OK, f"{needs} found; compile caches in {machine.compile_cache_dir}")]
    if machine.has_gpu and why != builder.TRITON_MISSING:  # the GPU is too old for Triton: no package fixes that
        return [Check("torch.compile", WARN, f"{why}: expert and deploy run eager")]
    fix = "pip install triton" if machine.has_gpu else "install g++ (e.g. apt install g++)"
    return [Check("torch.compile", WARN, f"needs {needs}, not found: expert and deploy run eager", fix)]


CHECKS = (_check_packages, _check_gpu, _check_cpu, _check_each_gpu, _check_xformers, _check_bitsandbytes,
          _check_fp8, _check_model, _check_disk, _check_cache, _check_compile)


def run_checks(machine: Machine) -> list[Check]:
    return [check for run in CHECKS for check in run(machine)]


def failed(checks: list[Check]) -> bool:
    return any(check.status == FAIL for check in checks)
