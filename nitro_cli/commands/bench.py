"""`nitro bench` (not implemented yet: its own issue)."""

from nitro_cli.errors import RuntimeFailure


def bench() -> None:
    """Not implemented yet."""
    raise RuntimeFailure("`nitro bench` is not implemented yet")
