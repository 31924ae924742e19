"""Expected failures: each carries what to tell the user and the contract's exit code."""

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
