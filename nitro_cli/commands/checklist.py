"""`nitro checklist` (not implemented yet: its own issue)."""

from nitro_cli.errors import RuntimeFailure


def checklist() -> None:
    """Not implemented yet."""
    raise RuntimeFailure("`nitro checklist` is not implemented yet")
