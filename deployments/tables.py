"""Rich tables for the CLI that fit the terminal (80 columns and up): cells fold or end in an ellipsis."""

from rich import box
from rich.console import Console
from rich.table import Table


def console() -> Console:
    """A console as wide as the terminal ($COLUMNS when set; 80 when not a terminal)."""
    return Console(highlight=False, soft_wrap=False)


def table(columns: list[tuple[str, dict]]) -> Table:
    """A compact table: simple rules, one space of padding; each column's options as given (overflow, no_wrap…)."""
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), expand=False)
    for name, options in columns:
        grid.add_column(name, **options)
    return grid
