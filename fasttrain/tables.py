"""Tables for people on stdout (rich): piped output is never squeezed, and in a narrow terminal whole columns
are left out (and named) rather than every cell cut to "…"; the first column, what one types, is never cut."""

from __future__ import annotations

import sys
from typing import Sequence

PIPED_WIDTH = 250  # piped or redirected output has no width: wide enough that no cell is cut


def table_console():
    """A rich Console for tables: the terminal's width, or PIPED_WIDTH when stdout is not a terminal."""
    from rich.console import Console

    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPED_WIDTH)


def _width(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """Characters of a rich table with these columns and cells: each column its widest cell (or header)
    plus one space either side and a border, plus the closing border."""
    return 1 + sum(3 + max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[str] = (),
                console=None) -> list[str]:
    """Prints `rows` (strings, one per column) under `columns`, given most important first: in a terminal too
    narrow for all of them the last ones are left out and named below the table (--json shows everything).
    Cells are plain text (no rich markup). Returns the columns shown."""
    from rich.table import Table
    from rich.text import Text

    console = console or table_console()
    shown = len(columns)
    while shown > 1 and _width(columns[:shown], [r[:shown] for r in rows]) > console.width:
        shown -= 1
    table = Table(title=title)
    for i, col in enumerate(columns[:shown]):
        table.add_column(col, justify="right" if col in right else "left", no_wrap=i == 0)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row[:shown]))
    console.print(table)
    if shown < len(columns):
        console.print(f"left out at {console.width} columns: {', '.join(columns[shown:])} (a wider terminal, "
                      f"or --json, shows them)", highlight=False)
    return list(columns[:shown])
