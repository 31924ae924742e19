"""Timing and memory measurement: the one place generate and bench take their numbers from.

Device work is asynchronous, so every timing synchronizes the device before reading the clock.
Peak VRAM is the torch allocator's peak since the region began; peak RSS is sampled by a thread,
since the process-lifetime maximum (getrusage) can't be reset between presets.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_vram_mib: float | None = None
    peak_rss_mib: float = 0.0


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class _RssSampler(threading.Thread):
    def __init__(self, interval_s: float = 0.02):
        super().__init__(daemon=True)
        import psutil

        self._process = psutil.Process()
        self._interval = interval_s
        self._stop_event = threading.Event()
        self.peak_bytes = self._process.memory_info().rss

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak_bytes, self._process.memory_info().rss)


@contextmanager
def measure(device: str):
    """Time the block (device synchronized at both ends) and record its peak VRAM and RSS."""
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = Measurement()
    sampler = _RssSampler()
    sampler.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result.seconds = time.perf_counter() - start
        result.peak_rss_mib = sampler.stop() / 2**20
        if cuda:
            result.peak_vram_mib = torch.cuda.max_memory_allocated() / 2**20
