"""CLI commands: sandbox, demo."""

import os
from pathlib import Path

import typer

from deployments.cli.console import prefect_ready, quiet_prefect

app = typer.Typer()


@app.command()
def sandbox(port: int = typer.Option(0, help="Port for the SCIM server (0: any free port).")) -> None:
    """Start the sandbox targets and print their URLs, for manual trials (Ctrl-C stops)."""
    from sandbox.servers import run_forever

    run_forever(scim_port=port)


@app.command()
def demo(users: int = typer.Option(50, help="How many sample users to provision."),
         database: str = typer.Option("sqlite:///outbound-demo.db", help="Where the run state goes."),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Provision sample users into the sandbox targets, then update, disable and delete some."""
    quiet_prefect(verbose)
    if not os.environ.get("PREFECT_API_URL"):
        # Prefect's ephemeral API keeps its runs here, so `PREFECT_HOME=.prefect-demo prefect server start`
        # shows them in the UI afterwards; its SQLite answers 503 under bursts, so the client retries more.
        os.environ.setdefault("PREFECT_HOME", str(Path(".prefect-demo").resolve()))
        os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "10")
    prefect_ready()
    from deployments.demo import run_demo

    raise typer.Exit(run_demo(users, database))
