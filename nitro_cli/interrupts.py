"""Ctrl-C and SIGTERM, from the first moment of a run. Light on purpose: installed before typer, rich or torch
import, so a stop while they load (the first seconds of every run) is the contract's exit 130, not a traceback."""

from __future__ import annotations

import signal
import sys

from nitro_cli import distributed

stop_signalled = False


def _stop(signum, frame) -> None:
    """Python's Ctrl-C, remembered: a KeyboardInterrupt raised while torch or diffusers imports may come out as the
    library's own error (ImportError "cannot load module more than once per process", RuntimeError "Failed to
    import diffusers.pipelines"), which is the interrupt, exit 130, not a broken install."""
    global stop_signalled
    stop_signalled = True
    raise KeyboardInterrupt


def install() -> None:
    # `kill`, `timeout`, Slurm's preemption and torchrun stop a process with SIGTERM: treated as Ctrl-C, so a
    # run saves its finished images and exits 130, and bench keeps the presets it finished. Unless the process
    # was started ignoring it (`trap '' TERM`, or SIGINT in a background job): that wish stands.
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _stop)


def tell() -> None:
    if distributed.rank() == 0:  # a launched run's processes each stop, and say what they saved: said once
        print("Interrupted.", file=sys.stderr)
