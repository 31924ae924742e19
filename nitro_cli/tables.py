"""Rich tables, printed the same way by every command that shows one: no cell is ever cut to "…"."""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text

# In a table narrowed to its console, a word up to this long (a number, a header word, a preset or GPU name) stays
# whole; a longer one (a file name, a path, a URL) folds into lines at least FOLDED_WIDTH wide.
WHOLE_WORD_MAX = 16
FOLDED_WIDTH = 8


def print_table(console, table, *, widen_off_terminal: bool = True) -> None:
    """`table` on `console`, no cell cut. Where that is a log or a pipe and `widen_off_terminal`, as wide as the
    table needs: cut to the console's width there, a GPU bench row (its VRAM column, a variant file's long stem)
    folds, and generate's file names fold across lines that grep can't find. Elsewhere (a terminal; doctor's and
    checklist's reports, which are read at the console's width even in a file), fitted to the console's width."""
    if widen_off_terminal and not console.is_terminal:
        console.width = max(console.width, _natural_width(console, table))
    else:
        fit_to_width(console, table)
    console.print(table)


def _natural_width(console, table) -> int:
    return console.measure(table, options=console.options.update_width(10_000)).maximum


def fit_to_width(console, table) -> None:
    """`table` narrowed to `console`'s width without losing a character. Rich alone shrinks the widest columns until
    the table fits and ends each cell that no longer fits in "…": an 80-column terminal showed a bench row as
    `0.1… 3… 1…`, a 60-column one cut generate's seeds. Here the widest columns shrink first too, but none below its
    longest whole word, so numbers stay whole and headers wrap between words; if that is still too wide, the
    padding goes, then the cells fold, which keeps every character."""
    if _natural_width(console, table) <= console.width:
        return
    for column in table.columns:
        column.overflow, column.no_wrap = "fold", False
    if not _shrink_to_fit(console, table):
        table.padding = 0  # the columns stay apart by their separators (a rule, or a space in borderless tables)
        _shrink_to_fit(console, table)


def _shrink_to_fit(console, table) -> bool:
    """Sets the columns' widths as fit_to_width says, if their least widths fit: False (nothing set) otherwise."""
    least, widths = zip(*(_column_widths(console, table, column) for column in table.columns))
    room = console.width - (_natural_width(console, table) - sum(widths))  # less borders and padding
    if sum(least) > room:
        return False
    widths = list(widths)
    while sum(widths) > room:
        widest = max(width for width, floor in zip(widths, least) if width > floor)
        for index, width in enumerate(widths):
            if width == widest and width > least[index] and sum(widths) > room:
                widths[index] -= 1
    for column, width in zip(table.columns, widths):
        column.width = width
    return True


def _column_widths(console, table, column) -> tuple[int, int]:
    """The column's least width (its longest whole word) and its width with every cell on one line."""
    texts = [column.header] if table.show_header else []
    texts = [text if isinstance(text, Text) else console.render_str(str(text)) for text in [*texts, *column.cells]]
    words = [cell_len(word) for text in texts for word in text.plain.split()]
    least = max((width if width <= WHOLE_WORD_MAX else FOLDED_WIDTH for width in words), default=1)
    return least, max((cell_len(line) for text in texts for line in text.plain.splitlines()), default=1)
