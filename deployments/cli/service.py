"""CLI commands: service (`api`, `serve`, `setup`)."""

from pathlib import Path
from typing import Optional

import typer

from deployments.catalog import named
from deployments.cli.console import ConfigOption, fail, prefect_ready, prefect_soon, read_config

app = typer.Typer()


@app.command()
def api(host: str = typer.Option("127.0.0.1", help="Address to listen on."),
        port: int = typer.Option(8080, help="Port to listen on."),
        config: Optional[Path] = ConfigOption,
        dispatch: str = typer.Option("auto", help="auto (Prefect event when a server is reachable, else "
                                                  "in-process: a drain process the API starts) | prefect | in-process."),
        workers: int = typer.Option(2, help="In-process: drains at once in the drain process (each provisions a "
                                             "batch of pending events; 2 suit a 2-core machine).")) -> None:
    """Serve the HTTP event API (POST /v1/events, GET /v1/events/{id}, GET /healthz)."""
    if dispatch != "prefect":
        prefect_soon()  # it starts while the API is built
    import uvicorn

    from deployments.api import create_app
    from models.secrets import SecretError
    from models.validation import InvalidInput

    if dispatch not in ("auto", "prefect", "in-process"):
        fail(f"--dispatch: expected auto, prefect or in-process, got {dispatch!r}")
    cfg = read_config(config)
    if dispatch != "prefect":
        prefect_ready()  # one Prefect API for the process, started before the first request needs it
    try:
        application = create_app(cfg, str(config) if config else None, dispatch=dispatch, workers=workers)
    except (InvalidInput, SecretError) as exc:
        fail(str(exc))
    uvicorn.run(application, host=host, port=port, log_level="info")


@app.command()
def serve(config: Optional[Path] = ConfigOption,
          reconcile_cron: str = typer.Option(named("reconcile-all").cron, help="When reconcile-all runs."),
          sweep_after: float = typer.Option(named("sweep-events").parameters["older_than_seconds"],
                                            help="sweep-events re-dispatches events unfinished this long (s)."),
          limit: Optional[int] = typer.Option(None, help="At most this many flow runs at once.")) -> None:
    """Serve every deployment (provision-user, reconcile-all, reconcile-connector, sweep-events) from this process."""
    from deployments.serve import serve_all

    read_config(config)  # refuse a bad configuration now rather than at the first run
    serve_all(str(config.resolve()) if config else None, limit=limit, reconcile_cron=reconcile_cron,
              sweep_after_seconds=sweep_after)


@app.command()
def setup(config: Optional[Path] = ConfigOption) -> None:
    """Create or update the Prefect limits `outbound:<connector>` and the notification automations."""
    from tasks.limits import apply_limits
    from tasks.notify import NotificationSetupError, apply_automations, check_block

    cfg = read_config(config)
    try:
        check_block(cfg)  # a missing block is refused before anything is changed
    except NotificationSetupError as exc:
        fail(str(exc))
    done = apply_limits(cfg)
    for name, slots, decay in done:
        kind = f"rate limit, {decay:g} slots/s" if decay else "concurrency limit"
        typer.echo(f"{name:<32} {slots:>5} slots ({kind})")
    if not done:
        typer.echo("no connector sets max_concurrency or requests_per_second: no limits to create")
    try:
        automations = apply_automations(cfg)
    except NotificationSetupError as exc:
        fail(str(exc))
    if automations is None:
        typer.echo("no notifications.block configured: no automations created, nobody is told of a paused "
                   "approval or a quarantined connector (see docs/operations.md, Notifications)")
        return
    for name, what in automations:
        typer.echo(f"{name:<32} automation {what}, notifies through {cfg.notifications.block}")
