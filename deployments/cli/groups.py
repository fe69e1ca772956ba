"""CLI command: nest (which groups a group of the identity store holds).

Exit codes: 0 stored; 2 bad input (nothing changed).
"""

from pathlib import Path
from typing import Optional

import typer

from deployments.cli.console import ConfigOption, fail, read_config

app = typer.Typer()


@app.command()
def nest(group: str = typer.Argument(..., help="The group that holds the others (created if new)."),
         members: Optional[list[str]] = typer.Argument(None, help="The groups nested directly in it; none clears."),
         config: Optional[Path] = ConfigOption) -> None:
    """Set the groups nested directly in GROUP: their members count as GROUP's (see group_nesting)."""
    from models.db import session_scope
    from models.nesting import cycle_problems, nesting, set_member_groups

    read_config(config)  # the store it names, and a configuration that loads
    members = list(members or [])
    bad = [f"{name!r}: a group name is 1 to 255 characters, not blank" for name in [group, *members]
           if not name.strip() or len(name) > 255]
    if group in members:
        bad.append(f"{group!r}: a group cannot be nested in itself")
    if bad:
        fail("nest: " + "; ".join(bad) + " (nothing changed)")
    with session_scope() as session:
        set_member_groups(session, group, members)
        problems = cycle_problems(nesting(session))
    typer.echo(f"{group} holds {', '.join(sorted(set(members))) or 'no groups'}")
    for problem in problems:
        typer.echo(f"problem: {problem}", err=True)
