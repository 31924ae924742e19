"""The standard streams as scripts and shells hand them to nitro: closed, or with a reader that goes away."""

from __future__ import annotations

import errno
import os
import sys


def is_broken_pipe(exc: OSError) -> bool:
    """The reader of a pipe went away. Windows often says so with EINVAL instead of EPIPE (a write to a pipe being
    closed fails with ERROR_NO_DATA, which its C runtime reports as EINVAL: cpython issue 79935)."""
    return isinstance(exc, BrokenPipeError) or (sys.platform == "win32" and exc.errno == errno.EINVAL)


def to_devnull(stream) -> None:
    """`stream`'s file descriptor pointed at devnull, as Python's docs advise for a broken pipe: no later write
    or flush (at exit) fails again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def write_as_is(stream, text: str) -> None:
    """`text` written to the text stream `stream` with its own line ends: on Windows a text stream writes each \n
    as \r\n, which makes a CSV's \r\n into \r\r\n (a blank row after every row)."""
    stream.flush()
    stream.buffer.write(text.encode(stream.encoding, stream.errors))
    stream.buffer.flush()


class _StderrWithoutReader:
    """sys.stderr, writing to devnull once its reader went away (`nitro generate ... 2>&1 | head -5`): notes,
    warnings and progress are not the work. Python would raise BrokenPipeError at the next one, which would stop
    a run before its first image."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            if not is_broken_pipe(exc):
                raise
            to_devnull(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            if not is_broken_pipe(exc):
                raise
            to_devnull(self._stream)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def prepare() -> None:
    """The streams set up before any command runs."""
    # A stream the shell closed (`<&-`, `>&-`, `2>&-`) is None in Python: `--prompts-file -` and a line for stdout
    # would raise AttributeError, and print(file=sys.stderr) would fall back to stdout, into the --json lines.
    # So are all three under pythonw.exe and GUI front ends on Windows. UTF-8: in the locale's encoding (cp1252 on
    # Windows) a prompt's other letters, in image names or warnings, raise UnicodeEncodeError on the way to devnull.
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode, encoding="utf-8"))
    sys.stderr = _StderrWithoutReader(sys.stderr)
    # Scripts read stdout; one that can't encode a file name (Windows pipes, PYTHONIOENCODING=ascii) gets it
    # backslash-escaped rather than a crash after the image is saved. --json output is ASCII anyway.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
