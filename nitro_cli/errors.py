"""Expected failures: each carries what to tell the user and the contract's exit code."""

import sys

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none): for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def describe(exc: BaseException) -> str:
    """`Type: first line of the message` (the type alone when there is no message): for error rows."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


OUT_OF_MEMORY_HINT = ("lighter settings: --batch-size 1, --set offload=model (or sequential), --preset lowvram, "
                      "or --max-vram GiB to pick settings that fit; `nitro doctor` recommends a preset for this GPU")


class NitroError(Exception):
    """A failure the user can act on. Printed as `Error:`/`Hint:` lines, never as a traceback."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(NitroError):
    """Bad options, preset, prompts file or model path: nothing was generated."""

    exit_code = EXIT_USAGE


class RuntimeFailure(NitroError):
    """The work failed while running: out of memory, a model that failed to load, ..."""

    exit_code = EXIT_RUNTIME


def report(failure: NitroError) -> None:
    """The failure as the contract prints it: `Error:` and `Hint:` lines on stderr."""
    print(f"Error: {failure.message}", file=sys.stderr)
    if failure.hint:
        print(f"Hint: {failure.hint}", file=sys.stderr)
