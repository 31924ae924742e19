"""measure.py: peak RSS from /proc, reset per region, and its fallbacks where /proc is missing (macOS, Windows,
simulated on Linux); the seconds of a region and of a part of one."""

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


def test_peak_rss_is_read_from_proc_in_kib(monkeypatch, tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 9999 kB\nVmHWM:\t    3072 kB\nVmRSS:\t 1024 kB\n")
    monkeypatch.setattr(measure, "_STATUS", status)
    assert measure._peak_rss_mib() == 3


def test_a_region_resets_the_peak_rss_at_its_start_and_times_by_the_clock(monkeypatch, tmp_path):
    """The peak is the region's own, not the process's lifetime one (a model load before it would dominate)."""
    clear_refs, status = tmp_path / "clear_refs", tmp_path / "status"
    status.write_text("VmHWM:\t2048 kB\n")
    monkeypatch.setattr(measure, "_CLEAR_REFS", clear_refs)
    monkeypatch.setattr(measure, "_STATUS", status)
    clock = iter([10.0, 12.5, 20.0, 20.25])
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    with measure.measure("cpu") as region:
        assert clear_refs.read_text() == "5"
        with measure.timed("cpu") as part:
            pass
    assert (part.seconds, region.seconds) == (7.5, 10.25)  # the clock read at each start and end
    assert region.peak_rss_mib == 2 and region.peak_vram_mib is None


def test_a_peak_rss_that_cannot_be_reset_is_no_error(monkeypatch, tmp_path):
    monkeypatch.setattr(measure, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")  # not Linux, or not allowed
    with measure.measure("cpu") as region:
        pass
    assert region.peak_rss_mib > 0
