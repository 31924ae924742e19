"""`nitro doctor`: what this machine has, what is broken, and which preset to use."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from nitro_cli import __version__

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def _device_dict(gpu) -> dict[str, Any]:
    return {"index": gpu.index, "name": gpu.name, "compute_capability": gpu.capability,
            "total_vram_mib": gpu.total_vram_mib, "free_vram_mib": gpu.free_vram_mib, "bf16": gpu.bf16,
            "fast_fp16": gpu.fast_fp16, "sdpa_kernels": list(gpu.sdpa_kernels)}


def summary_line(machine, checks, recommendation) -> str:
    """One line to paste into a bug report."""
    gpus = "; ".join(f"{g.name} {g.total_vram_mib} MiB cc {g.capability}" for g in machine.gpus) or "no GPU"
    packages = machine.packages
    counts = {status: sum(c.status == status for c in checks) for status in ("fail", "warn")}
    return (f"nitro {__version__} | {machine.os} | Python {machine.python} | torch {packages.get('torch')} "
            f"(CUDA {machine.torch_cuda or 'none'}, cuDNN {machine.torch_cudnn or 'none'}) | "
            f"diffusers {packages.get('diffusers')} | {gpus} | driver {machine.driver_version or 'n/a'} | "
            f"xformers {packages.get('xformers') or 'none'} | bitsandbytes {packages.get('bitsandbytes') or 'none'} | "
            f"{counts['fail']} fail, {counts['warn']} warn | recommended {recommendation.label}")


def report(machine, checks, recommendation) -> dict[str, Any]:
    """The contract's `doctor --json` object, plus the details behind it."""
    cached = machine.model_cache
    return {
        "python": machine.python,
        "os": machine.os,
        "torch": machine.packages.get("torch"),
        "torch_cuda": machine.torch_cuda,
        "torch_cudnn": machine.torch_cudnn,
        "diffusers": machine.packages.get("diffusers"),
        "cuda_available": machine.cuda_available,
        "driver_version": machine.driver_version,
        "devices": [_device_dict(gpu) for gpu in machine.gpus],
        "packages": dict(machine.packages),
        "xformers_test": vars(machine.xformers_test) if machine.xformers_test else None,
        "bitsandbytes_test": vars(machine.bitsandbytes_test) if machine.bitsandbytes_test else None,
        "model_cache": vars(cached) if cached else None,
        "hf_hub_offline": machine.hf_offline,
        "outputs_dir": machine.outputs_dir,
        "free_disk_mib": machine.free_disk_mib,
        "compile_cache_dir": machine.compile_cache_dir,
        "checks": [vars(check) for check in checks],
        "recommended_preset": recommendation.preset,
        "recommended_overrides": list(recommendation.overrides),
        "recommendation": {"preset": recommendation.preset, "overrides": list(recommendation.overrides),
                           "reason": recommendation.reason, "notes": list(recommendation.notes)},
        "summary": summary_line(machine, checks, recommendation),
    }


def _show(machine, checks, recommendation) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    from nitro_cli.tables import print_table

    console = Console()  # the report is the command's output (`nitro doctor > doctor.txt`); errors go to stderr
    packages = machine.packages
    info = Table(title="Machine", show_header=False)
    info.add_column()
    info.add_column()
    info.add_row("OS", machine.os)
    info.add_row("Python", machine.python)
    info.add_row("torch", f"{packages.get('torch')} (CUDA build {machine.torch_cuda or 'none'}, "
                          f"cuDNN {machine.torch_cudnn or 'none'})")
    info.add_row("NVIDIA driver", machine.driver_version or "unknown (NVML: pip install nvidia-ml-py)")
    info.add_row("packages", ", ".join(f"{name} {version or '-'}" for name, version in packages.items()
                                       if name != "torch"))
    info.add_row("HF_HUB_OFFLINE", "set" if machine.hf_offline else "not set")
    info.add_row("compile cache", escape(machine.compile_cache_dir))
    print_table(console, info, widen_off_terminal=False)
    if machine.gpus:
        gpus = Table(title="CUDA devices")
        for column in ("#", "name", "compute capability", "VRAM total / free (MiB)", "bf16", "fast fp16", "SDPA kernels"):
            gpus.add_column(column)
        for g in machine.gpus:
            gpus.add_row(str(g.index), escape(g.name), g.capability,
                         f"{g.total_vram_mib} / {g.free_vram_mib}",
                         "yes" if g.bf16 else "no", "yes" if g.fast_fp16 else "[yellow]no[/]",
                         ", ".join(g.sdpa_kernels) or "not tested")
        print_table(console, gpus, widen_off_terminal=False)
    table = Table(title="Checks")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column)
    for check in checks:
        style = STATUS_STYLE[check.status]
        # Details and fixes are text, not markup: `pip install 'nitro-cli[fp8]'` must keep its [fp8].
        table.add_row(escape(check.name), f"[{style}]{check.status}[/]", escape(check.detail),
                      escape(check.fix))
    print_table(console, table, widen_off_terminal=False)
    notes = "".join(f"\nNote: {escape(note)}" for note in recommendation.notes)
    console.print(Panel(f"[bold]--preset {escape(recommendation.label)}[/]: {escape(recommendation.reason)}{notes}",
                        title="Recommended preset", expand=False))
    console.print("For bug reports:", style="dim")
    console.print(summary_line(machine, checks, recommendation), soft_wrap=True, markup=False, highlight=False)


def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object on stdout.")] = False,
) -> None:
    """Check this machine: GPU, packages, model cache, disk; recommend a preset. Exit 1 if a check fails."""
    from nitro_cli import diagnosis, hardware

    machine = hardware.probe(deep=True)
    checks = diagnosis.run_checks(machine)
    recommendation = diagnosis.recommend(machine)
    if json_output:
        print(json.dumps(report(machine, checks, recommendation), indent=2))
    else:
        _show(machine, checks, recommendation)
    if diagnosis.failed(checks):
        from nitro_cli.errors import RuntimeFailure

        names = [check.name for check in checks if check.status == diagnosis.FAIL]
        raise RuntimeFailure(f"{len(names)} check(s) failed: {', '.join(names)}",
                             hint="the checks table (or the JSON's `checks`) says how to fix each")
