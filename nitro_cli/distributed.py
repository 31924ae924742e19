"""One run over several processes: `accelerate launch` or `torchrun` start N copies of `nitro generate`.

accelerate's `PartialState` joins them (NCCL between GPUs, gloo between CPUs; each process on its own
local GPU). The main process alone decides the run: the manifest, the first file number and seed, what
is left to make under `--resume`; the others receive that decision, so every image keeps the name and
seed a single process would give it. The batches (as `group_batches` forms them) are split into
contiguous shares, one per process; each process writes its own images; the main process gathers
every process's results and prints the one summary.

Launch is detected by `WORLD_SIZE` > 1, which torchrun and accelerate's launchers set. Without it
nothing here imports torch or accelerate, and `Processes` is a single process.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, TypeVar

from nitro_cli.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, RuntimeFailure, UsageError, first_line

T = TypeVar("T")


def launched() -> bool:
    world_size = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(world_size) > 1
    except ValueError:  # `export WORLD_SIZE=$N` with N unset: a usage error, not int()'s traceback
        raise UsageError(f"WORLD_SIZE={world_size!r} is not a number of processes",
                         hint="unset WORLD_SIZE to run one process, or start the run with torchrun or accelerate "
                              "launch (see docs/deploy.md)") from None


def rank() -> int:
    """This process's global rank (0 without a launcher), read without joining the others."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def local_rank() -> int:
    """This process's rank on its own machine (0 without a launcher). Each machine of a run has its own
    terminal, network and Hugging Face cache: what concerns them (a hub that doesn't answer, a download) its
    first process says."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


# What torchrun and accelerate launch set besides WORLD_SIZE, and joining the other processes needs.
LAUNCHER_VARIABLES = ("RANK", "MASTER_ADDR")


def missing_launcher_variables() -> list[str]:
    """The variables of LAUNCHER_VARIABLES not set: none under torchrun or accelerate launch."""
    return [name for name in LAUNCHER_VARIABLES if not os.environ.get(name)]


def check_launcher() -> None:
    """WORLD_SIZE > 1 left in a shell or a job script, without a launcher: a usage error, not accelerate's
    traceback (or a wait for processes that were never started)."""
    missing = missing_launcher_variables()
    if missing:
        raise UsageError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} says this is one of several processes, but "
                         f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: "
                         "it was not started by torchrun or accelerate launch",
                         hint="start the run with `torchrun --nproc_per_node N -m nitro_cli generate ...` "
                              "(see docs/deploy.md), or unset WORLD_SIZE to run one process")


class Processes:
    """The processes of this run; this base class is the single-process case."""

    index = 0
    count = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def from_main(self, decide: Callable[[], T]) -> T:
        """`decide()` run on the main process only; its value reaches every process."""
        return decide()

    def on_every(self, work: Callable[[], T]) -> T:
        """`work()` run on every process; if it fails on any, every process stops."""
        return work()

    def share(self, batches: list[list[T]]) -> list[list[T]]:
        """This process's contiguous share of `batches`."""
        return batches

    def gather(self, value: Any) -> list:
        """Every process's `value`, in process order."""
        return [value]

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc_info) -> None: ...


def _exit_code(error: BaseException | None) -> int:
    """The contract's exit code `error` ends the run with (0: none)."""
    if error is None:
        return 0
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return getattr(error, "exit_code", EXIT_RUNTIME)


@contextlib.contextmanager
def _with_the_others():
    """A step every process takes together. When another process has failed or was stopped, torch raises a
    RuntimeError here (gloo: "Connection closed by peer"): this process's share is saved, and the other's own
    error, printed by that process, says what went wrong; a traceback here would bury it."""
    try:
        yield
    except RuntimeError as exc:
        raise RuntimeFailure("lost touch with another process of this run: it failed or was stopped "
                             "(its own error says why)",
                             hint="images already saved are kept: after fixing the cause, repeat the command "
                                  "with --resume to make the rest") from exc


class _PartialStateProcesses(Processes):
    def __init__(self, cpu: bool):
        from accelerate import PartialState

        # cpu=True makes it join CPU processes with gloo; without it, on a machine without GPUs, it
        # would ignore the launch. On GPUs it sets this process's CUDA device to its local GPU, which
        # the builder's "cuda" then means.
        try:
            self._state = PartialState(cpu=cpu)
        except RuntimeError as exc:  # nothing was made yet: "lost touch" and --resume would mislead
            raise RuntimeFailure(f"could not join the other processes of this run: {first_line(exc)}",
                                 hint="check MASTER_ADDR and MASTER_PORT (a port another job holds?) and that "
                                      "every process was started; see docs/deploy.md") from exc
        self.index, self.count = self._state.process_index, self._state.num_processes

    def from_main(self, decide: Callable[[], T]) -> T:
        from accelerate.utils import broadcast_object_list

        value, error = None, None
        if self.is_main:
            try:
                value = decide()
            except BaseException as exc:  # the others must still hear of it, or they would wait forever
                error = exc
        box = [(value, _exit_code(error))]
        with _with_the_others():
            broadcast_object_list(box)
        if error is not None:
            raise error
        value, exit_code = box[0]
        if exit_code:
            raise SystemExit(exit_code)  # the main process reports the error; once is enough
        return value

    def on_every(self, work: Callable[[], T]) -> T:
        """Each failure is told once: by the main process when it failed (the others, given the same request,
        failed alike and keep quiet), else by each process it failed in (a file missing on one machine only).
        Every process then exits with the code of the error told."""
        value, error = None, None
        try:
            value = work()
        except BaseException as exc:  # the others must still hear of it, or they would wait forever
            error = exc
        codes = self.gather(_exit_code(error))
        if not any(codes):
            return value
        if error is not None and (self.is_main or not codes[0]):
            raise error
        raise SystemExit(codes[0] or next(code for code in codes if code))

    def share(self, batches: list[list[T]]) -> list[list[T]]:
        with self._state.split_between_processes(batches) as mine:
            return list(mine)

    def gather(self, value: Any) -> list:
        from accelerate.utils import gather_object

        with _with_the_others():
            return gather_object([value])

    def __exit__(self, exc_type, *exc_info) -> None:
        if exc_type is None:
            # Every process leaves together: one that tears down gloo while another is still in its last step
            # can abort that one at exit (-6, "terminate called without an active exception"). A failed process
            # skips this: the others' last collective has already failed ("lost touch"), and they must not wait
            # for it here.
            with contextlib.suppress(RuntimeError):
                self._state.wait_for_everyone()
        self._state.destroy_process_group()


def processes(cpu: bool) -> Processes:
    """The processes of this launched run, joined through accelerate. `cpu`: the run's device is the CPU."""
    check_launcher()
    return _PartialStateProcesses(cpu)
