"""The `nitro` console script and `python -m nitro_cli`: stop signals first, then the command line."""

import sys

from nitro_cli import interrupts, streams
from nitro_cli.errors import EXIT_INTERRUPTED


def main() -> None:
    streams.prepare()
    interrupts.install()
    try:
        from nitro_cli import cli
    except BaseException as exc:
        if not (isinstance(exc, KeyboardInterrupt) or interrupts.stop_signalled):
            raise
        interrupts.tell()
        sys.exit(EXIT_INTERRUPTED)
    cli.app()


if __name__ == "__main__":
    main()
