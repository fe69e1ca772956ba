"""Rich tables for the CLI that fit the terminal (80 columns and up): cells fold or end in an ellipsis."""

from rich import box
from rich.console import Console
from rich.table import Table


def console() -> Console:
    """A console as wide as the terminal ($COLUMNS when set; 80 when not a terminal)."""
    return Console(highlight=False, soft_wrap=False)


def table(columns: list[tuple[str, dict]], expand: bool = False) -> Table:
    """A compact table: a rule under the header, one space between columns; each column's options as given."""
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0), expand=expand, collapse_padding=True)
    for name, options in columns:
        grid.add_column(name, **options)
    return grid
