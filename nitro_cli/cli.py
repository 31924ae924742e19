"""The `nitro` command: wiring only. Each command lives in its own module under `commands/`."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
import traceback

import typer
from typer.core import TyperGroup

from nitro_cli import __version__, distributed, interrupts, paths
from nitro_cli.commands import bench, checklist, doctor, export, generate
from nitro_cli.errors import (EXIT_INTERRUPTED, OUT_OF_MEMORY_HINT, NitroError, RuntimeFailure, UsageError, first_line,
                              report)


class PlainErrors(TyperGroup):
    """Click's own usage errors (a bad option value, an unknown option or command) printed as the contract's
    `Error:`/`Hint:` lines, like nitro's own errors: typer draws them in a box, which scripts reading stderr
    for `Error:` miss. The exit code stays click's (2 for bad usage)."""

    def make_context(self, *args, **kwargs):
        with _plain_click_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        # A subcommand parses its options here, inside the group's invoke.
        with _plain_click_errors():
            return super().invoke(ctx)


# Recent typer carries its own copy of click (typer._click), older ones use click: take the base class of
# click's errors from typer's public BadParameter, so both are caught.
CLICK_ERROR = next(base for base in typer.BadParameter.__mro__ if base.__name__ == "ClickException")


@contextlib.contextmanager
def _plain_click_errors():
    try:
        yield
    except KeyboardInterrupt:  # while typer parses the options (and imports what it needs): it would exit 130 untold
        _interrupted()
    except CLICK_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # not an error: typer shows the help
            raise
        context = getattr(exc, "ctx", None)
        hint = f"see `{context.command_path} --help`" if context is not None else None
        report(UsageError(exc.format_message(), hint=hint))
        raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="nitro",
    cls=PlainErrors,
    help="Run Stable Diffusion 1.x models (Nitro-Diffusion first) as fast and as lean as your GPU allows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


DISK_FULL_HINT = "free disk space, or write to another disk (NITRO_CACHE_DIR moves nitro's cache)"


def _expected_failure(exc: Exception) -> NitroError | None:
    """`exc` as the failure to tell the user, or None for a bug (its traceback stands)."""
    if isinstance(exc, NitroError):
        return exc
    # Out of GPU memory anywhere (loading, compiling, generating) is a run-time failure the
    # user can act on. Matched by name: importing torch here would slow every `--help`.
    if type(exc).__name__ == "OutOfMemoryError":
        return RuntimeFailure(f"out of GPU memory: {first_line(exc)}", hint=OUT_OF_MEMORY_HINT)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # a report to stdout (`> report.json`) included
        return RuntimeFailure(f"could not write {exc.filename or 'the output'}: {exc.strerror}", hint=DISK_FULL_HINT)
    if type(exc).__name__ == "SafetensorError" and os.strerror(errno.ENOSPC) in str(exc):  # Rust's io error: no errno
        return RuntimeFailure(f"could not save weights: {os.strerror(errno.ENOSPC)}", hint=DISK_FULL_HINT)
    return paths.compile_cache_failure(exc)


def guarded(command):
    """Expected failures become `Error:`/`Hint:` lines and the contract's exit code (traceback with NITRO_DEBUG=1)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()
        except typer.Exit:  # a command's own exit code (bench's 130, after saying what it kept), a RuntimeError
            raise
        except Exception as exc:
            if interrupts.stop_signalled:  # the interrupt itself, come out of a library as its own error
                _interrupted()
            failure = _expected_failure(exc)
            if failure is None:
                raise
            if os.environ.get("NITRO_DEBUG"):
                traceback.print_exc()
            report(failure)
            raise typer.Exit(failure.exit_code) from None

    return run


def _interrupted() -> None:
    interrupts.tell()
    raise typer.Exit(EXIT_INTERRUPTED) from None


def main_process_only(name: str, command):
    """Under torchrun or accelerate launch, a command other than generate runs in the main process only and
    the others exit at once (0): N copies of bench would compete for the machine they measure and write the
    same report files, N exports the same folder, and N doctor/checklist reports on one stdout are not one
    JSON document. WORLD_SIZE alone (left in a shell, no launcher) is one process, which runs the command."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        if distributed.launched() and not distributed.missing_launcher_variables():
            if distributed.rank() != 0:
                return None
            print(f"Note: `nitro {name}` runs in one process: of the {os.environ['WORLD_SIZE']} processes this "
                  "launcher started, only the main one (rank 0) runs it.", file=sys.stderr)
        return command(*args, **kwargs)

    return run


def _version(value: bool) -> None:
    if value:
        print(f"nitro {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """Run Stable Diffusion 1.x models (Nitro-Diffusion first) as fast and as lean as your GPU allows."""


app.command("generate")(guarded(generate.generate))
app.command("bench")(guarded(main_process_only("bench", bench.bench)))
app.command("checklist")(guarded(main_process_only("checklist", checklist.checklist)))
app.command("doctor")(guarded(main_process_only("doctor", doctor.doctor)))

export_app = typer.Typer(name="export", help="Convert a model for other runtimes (ONNX for CPU/edge).",
                         no_args_is_help=True)
export_app.command("onnx")(guarded(main_process_only("export onnx", export.onnx)))
app.add_typer(export_app, name="export")
