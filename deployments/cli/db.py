"""CLI commands: db (the state store)."""

import typer

from deployments.cli.console import fail

app = typer.Typer(no_args_is_help=True, help="The state store.")


@app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply the schema migrations (also done automatically on first use)."""
    from sqlalchemy.exc import SQLAlchemyError

    from models.db import current_revision, database_url, redacted, upgrade

    try:
        upgrade(revision=revision)
    except SQLAlchemyError as exc:  # an unreachable or unwritable store: say so, no traceback
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        fail(f"{redacted(database_url())}: cannot upgrade the schema: {type(exc).__name__}: {reason}", 1)
    typer.echo(f"{redacted(database_url())}: schema at revision {current_revision()}")
