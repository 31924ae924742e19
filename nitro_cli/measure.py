"""Timing and memory measurement: the one place generate and bench take their numbers from.

Device work is asynchronous, so every timing synchronizes the device before reading the clock.
Peak VRAM is the torch allocator's peak since the region began; peak RSS is sampled by a thread,
since the process-lifetime maximum (getrusage) can't be reset between presets. Where nvidia-ml-py is
installed, the same thread samples the device-level figure nvidia-smi shows (allocator cache, CUDA
context and other processes included), which is what decides whether a card runs out of memory.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from nitro_cli.hardware import is_importable


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


def nvml_available() -> bool:
    """torch reads device-level memory through pynvml, the module nvidia-ml-py installs."""
    return is_importable("pynvml")


class _MemorySampler(threading.Thread):
    """Samples RSS, and the device's used memory when `device_level` is on, until stopped."""

    def __init__(self, device_level: bool, interval_s: float = 0.02):
        super().__init__(daemon=True)
        import psutil

        self._process = psutil.Process()
        self._device_level = device_level
        self._interval = interval_s
        self._stop_event = threading.Event()
        self.peak_rss_bytes = 0
        self.peak_device_bytes = 0
        self._sample()

    def _sample(self) -> None:
        self.peak_rss_bytes = max(self.peak_rss_bytes, self._process.memory_info().rss)
        if self._device_level:
            import torch

            try:
                used = torch.cuda.device_memory_used()
            except Exception:  # pynvml present but NVML unusable (driver, container): the figure is optional
                self._device_level = False
                return
            self.peak_device_bytes = max(self.peak_device_bytes, used)

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            self._sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self._sample()


@contextmanager
def measure(device: str):
    """Time the block (device synchronized at both ends) and record its peak VRAM and RSS."""
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = Measurement()
    sampler = _MemorySampler(device_level=cuda and nvml_available())
    sampler.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result.seconds = time.perf_counter() - start
        sampler.stop()
        result.peak_rss_mib = sampler.peak_rss_bytes / 2**20
        if cuda:
            result.peak_vram_mib = torch.cuda.max_memory_allocated() / 2**20
            if sampler.peak_device_bytes:
                result.peak_device_vram_mib = sampler.peak_device_bytes / 2**20
