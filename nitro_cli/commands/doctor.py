"""`nitro doctor` (not implemented yet: its own issue)."""

from nitro_cli.errors import RuntimeFailure


def doctor() -> None:
    """Not implemented yet."""
    raise RuntimeFailure("`nitro doctor` is not implemented yet")
