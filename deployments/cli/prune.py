"""CLI command: prune.

Exit codes: 0 pruned (or counted, with --dry-run); 1 the state store failed; 2 bad configuration.
"""

import json
from pathlib import Path
from typing import Optional

import typer

from deployments.cli.console import ConfigOption, fail, read_config

app = typer.Typer()


@app.command()
def prune(dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be pruned; delete nothing."),
          config: Optional[Path] = ConfigOption,
          as_json: bool = typer.Option(False, "--json", help="The counts as one JSON object.")) -> None:
    """Delete run state older than the configuration's `retention:` (unfinished events are always kept)."""
    from sqlalchemy.exc import SQLAlchemyError

    from models.db import database_url, redacted
    from models.retention import prune as prune_state

    cfg = read_config(config)
    try:
        pruned = prune_state(cfg.retention, dry_run=dry_run)
    except SQLAlchemyError as exc:  # an unreachable or locked store: say so, no traceback
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        fail(f"{redacted(database_url())}: cannot prune: {type(exc).__name__}: {reason}", 1)
    if as_json:
        typer.echo(json.dumps(pruned.as_dict()))
        return
    r = cfg.retention
    typer.echo(("[dry-run] " if dry_run else "") + pruned.summary() +
               f" (retention: events {r.events_days} d, operations {r.operations_days} d, attempts "
               f"{r.attempts_days} d, reconciliation runs {r.reconciliation_runs_days} d)")
