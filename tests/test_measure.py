"""measure.py's peak memory where /proc is missing (macOS, Windows): the fallbacks, simulated on Linux."""

import sys
from types import SimpleNamespace

from nitro_cli import measure


def test_peak_rss_without_proc_or_resource_is_the_peak_working_set(monkeypatch, tmp_path):
    """Windows has neither /proc nor the `resource` module: every generate and bench call raised
    ModuleNotFoundError there when its first measured region ended."""
    import psutil

    monkeypatch.setattr(measure, "_STATUS", tmp_path / "no-proc-status")
    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` raises ImportError, as on Windows
    monkeypatch.setattr(psutil, "Process",
                        lambda: SimpleNamespace(memory_info=lambda: SimpleNamespace(peak_wset=300 * 2**20)))
    assert measure._peak_rss_mib() == 300


def test_peak_rss_without_proc_is_getrusage_in_its_units(monkeypatch, tmp_path):
    """ru_maxrss is kB on Linux and bytes on macOS."""
    import resource

    monkeypatch.setattr(measure, "_STATUS", tmp_path / "no-proc-status")
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=300 * 2**20))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert measure._peak_rss_mib() == 300
    monkeypatch.setattr(sys, "platform", "linux")
    assert measure._peak_rss_mib() == 300 * 1024


def test_device_memory_without_nvidia_ml_py_is_none(monkeypatch):
    """torch reads device-level memory through pynvml; without nvidia-ml-py the figure is absent, not an error."""
    import torch

    def no_pynvml(device=None):
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed or it can't be imported.")

    monkeypatch.setattr(torch.cuda, "device_memory_used", no_pynvml)
    assert measure._device_used_mib() is None
