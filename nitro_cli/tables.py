"""Rich tables on stderr, printed the same way by every command that shows one."""

from __future__ import annotations


def print_table(console, table) -> None:
    """`table` on `console`; where that is a log or a pipe, as wide as the table needs. Cut to the console's
    width there, a GPU bench row (its VRAM column, a variant file's long stem) loses numbers to ellipses
    ("0.182…"), and generate's file names fold across lines that grep can't find."""
    if not console.is_terminal:
        needed = console.measure(table, options=console.options.update_width(10_000)).maximum
        console.width = max(console.width, needed)
    console.print(table)
