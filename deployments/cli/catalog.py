"""CLI commands: deployments (the catalog of deployments/catalog.py)."""

import typer

app = typer.Typer(no_args_is_help=True, help="The deployments (declared in deployments/catalog.py).")


@app.command("yaml")
def as_yaml() -> None:
    """Print prefect.yaml as the catalog declares it: `outbound deployments yaml > prefect.yaml`."""
    from deployments.catalog import prefect_yaml

    typer.echo(prefect_yaml(), nl=False)
