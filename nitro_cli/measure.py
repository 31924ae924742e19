"""Timing and memory measurement: the one place generate and bench take their numbers from.

Device work is asynchronous, so every timing synchronizes the device before reading the clock.
Peak VRAM is the torch allocator's peak since the region began. Nothing runs beside the measured
work: a sampling thread competes for the GIL with the launch-bound denoising loop (`nitro bench` on an
H200, 2026-11-26, docs/benchmarks.md: a 20 ms RSS/NVML sampler made beginner's fp16 image 1.19 s instead of
0.70 s). So peak RSS is the
kernel's own high-water mark (VmHWM), reset at the start of the region through /proc/self/clear_refs
on Linux (elsewhere the process-lifetime peak: getrusage on macOS, the peak working set on Windows),
and the device-level figure nvidia-smi shows is read from NVML once at the end, when nvidia-ml-py is
installed: the caching allocator keeps what it reserved, so that reading holds the region's reserve
plus the CUDA context (and other processes).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_vram_mib: float | None = None
    peak_rss_mib: float = 0.0
    peak_device_vram_mib: float | None = None  # NVML's used memory on the device; None without nvidia-ml-py


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _reset_peak_rss() -> None:
    try:
        _CLEAR_REFS.write_text("5")  # Linux: "5" resets the peak resident set size (VmHWM) to the current one
    except OSError:
        pass  # not Linux, or not allowed: the lifetime peak is reported instead


def _peak_rss_mib() -> float:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows: no `resource` module; psutil has the peak working set
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _device_used_mib() -> float | None:
    """torch reads it through pynvml, the module nvidia-ml-py installs."""
    import torch

    try:
        return torch.cuda.device_memory_used() / 2**20
    except Exception:  # no pynvml, or NVML unusable (driver, container): the figure is optional
        return None


@contextmanager
def timed(device: str):
    """Time the block (device synchronized at its end) and nothing else: for a part of a `measure` region
    (prompt encoding inside a batch call), whose peak-memory counters a second `measure` would reset."""
    result = Measurement()
    start = time.perf_counter()
    yield result
    synchronize(device)
    result.seconds = time.perf_counter() - start


@contextmanager
def measure(device: str):
    """Time the block (device synchronized at both ends) and record its peak VRAM and RSS."""
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = Measurement()
    _reset_peak_rss()
    start = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result.seconds = time.perf_counter() - start
        result.peak_rss_mib = _peak_rss_mib()
        if cuda:
            result.peak_vram_mib = torch.cuda.max_memory_allocated() / 2**20
            result.peak_device_vram_mib = _device_used_mib()
