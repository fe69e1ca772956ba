"""CLI command: check.

Exit codes (check): 0 every connector checked is usable (warnings allowed); 1 at least one is not;
2 bad input (an unknown connector, a configuration that does not load).
"""

import json
from pathlib import Path
from typing import Optional

import typer

from deployments.cli.console import ConfigOption, fail, read_config

app = typer.Typer()


@app.command()
def check(connector: Optional[str] = typer.Option(None, "--connector", help="Only this connector (default: all enabled)."),
          as_json: bool = typer.Option(False, "--json", help="The capability profiles as one JSON document."),
          config: Optional[Path] = ConfigOption) -> None:
    """Probe each target without changing anything: reachability and TLS, credentials, what it supports.

    The result is stored as the connector's capability profile, which then decides PATCH or PUT,
    bulk sizes and group sync; `outbound status` shows its age and problems.
    """
    from connectors.probe import summary
    from tasks.capabilities import NotStored, refresh

    cfg = read_config(config)
    known = [c.name for c in cfg.connectors]
    if connector and connector not in known:
        fail(f"--connector: no connector {connector!r} in the configuration (have: {', '.join(known) or 'none'})")
    chosen = [c for c in cfg.connectors if (c.name == connector if connector else c.enabled)]
    unsaved = None
    try:
        profiles = refresh(chosen)
    except NotStored as exc:  # the findings still count; say the store could not keep them
        unsaved, profiles = exc.args
    if as_json:
        typer.echo(json.dumps({"connectors": profiles}, default=str))
    else:
        for profile in profiles:
            state = "usable" if profile["usable"] else "NOT USABLE"
            typer.echo(f"{profile['connector']} ({profile['type']}): {state}")
            for line in summary(profile):
                typer.echo(f"  {line}")
            for problem in profile["problems"]:
                typer.echo(f"  {problem['severity']}: {problem['what']}")
                typer.echo(f"    fix: {problem['fix']}")
        if not profiles:
            typer.echo("no enabled connectors to check")
    if unsaved:
        typer.echo(unsaved, err=True)
    raise typer.Exit(0 if all(p["usable"] for p in profiles) else 1)
