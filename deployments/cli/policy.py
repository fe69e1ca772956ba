"""CLI command: explain (why a user is, or is not, on each connector)."""

import json
from pathlib import Path
from typing import Optional

import typer

from deployments.cli.console import ConfigOption, fail, read_config

app = typer.Typer()


@app.command()
def explain(username: str = typer.Argument(..., help="The local username (STORE/name is accepted too)."),
            user_store: str = typer.Option("PRIMARY", "--user-store", "-s", help="The user's user store."),
            connector: Optional[str] = typer.Option(None, "--connector", help="Only this connector."),
            config: Optional[Path] = ConfigOption,
            as_json: bool = typer.Option(False, "--json", help="One JSON document.")) -> None:
    """Explain, per connector, whether a user is provisioned there, under which username, and why."""
    from models.db import session_scope
    from models.identity import find_user, view
    from tasks.explain import as_dicts, directory_origin, explain as explain_user, label_runs, render_text

    cfg = read_config(config)
    if "/" in username:  # WSO2's STORE/name form, as events accept it
        store, _, name = username.partition("/")
        if store and name:
            user_store, username = store.upper(), name
    if connector is not None and connector not in {c.name for c in cfg.connectors}:
        fail(f"--connector: no connector {connector!r} in the configuration "
             f"({', '.join(c.name for c in cfg.connectors) or 'none configured'})")
    with session_scope() as session:
        user = find_user(session, cfg.tenant_domain, user_store, username)
        if user is None:
            fail(f"no user {username!r} in user store {user_store!r} of tenant {cfg.tenant_domain!r} "
                 f"(use --user-store for a secondary user store)")
        user_view = view(session, user)
        items = explain_user(session, user_view, cfg, connector)
        origin = directory_origin(session, user_view, cfg)
    label_runs(items)  # the runs' names and states, from the Prefect API when one is set
    if as_json:
        typer.echo(json.dumps({"user": user_view.qualified_name, "tenant": user_view.tenant,
                               "source": user_view.source, "idps": list(user_view.idps),
                               "roles": sorted(user_view.roles), "groups": sorted(user_view.groups),
                               "deleted": user_view.deleted, "active": user_view.active,
                               **({"directory": origin} if origin else {}),
                               "connectors": as_dicts(items)}, indent=2, default=str))
        return
    typer.echo(render_text(user_view, items, origin))
