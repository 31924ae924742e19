"""The `nitro` console script and `python -m nitro_cli`: stop signals first, then the command line."""

import sys

from nitro_cli import interrupts, streams
from nitro_cli.errors import EXIT_INTERRUPTED


def main() -> None:
    streams.prepare()
    interrupts.install()
    try:
        from nitro_cli import cli

        cli.app()  # typer first reads the commands' signatures: outside any command's own handling
    except BaseException as exc:
        # A command's own exit (SystemExit, 130 after a stop included) stands; a library may turn the interrupt
        # into its own error (see interrupts._stop).
        if not (isinstance(exc, KeyboardInterrupt) or (interrupts.stop_signalled and isinstance(exc, Exception))):
            raise
        interrupts.tell()
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
