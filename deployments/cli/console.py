"""What the `outbound` commands share: the --config option, exiting with a message, Prefect's console and API."""

import os
import sys
from datetime import timezone
from pathlib import Path
from typing import Optional

import typer

from models.kinds import Action

# Before Prefect is imported: no phoning home, and the CLI's own output stays readable.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

ConfigOption = typer.Option(None, "--config", "-c", help="Configuration file (default: $OUTBOUND_CONFIG or ./outbound.yaml).")


def fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def quiet_prefect(verbose: bool) -> None:
    """Keep Prefect's logs off the terminal unless -v, while they still reach the Prefect API.

    The log level stays INFO (the run's Logs tab in the UI keeps every line); only the console
    handler is raised above anything Prefect logs. Before Prefect is imported the environment
    setting does it (Prefect reads PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL when it configures
    logging); in a process where it already is, the handlers are changed in place.
    """
    level = "NOTSET" if verbose else "CRITICAL"
    if "prefect" not in sys.modules:
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = level
    else:
        import logging

        from prefect.logging.handlers import PrefectConsoleHandler

        loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
        for logger in loggers:
            for handler in getattr(logger, "handlers", ()):
                if isinstance(handler, PrefectConsoleHandler):
                    handler.setLevel(level)


def prefect_soon() -> None:
    """Start this command's temporary Prefect API now, in the background (call before importing flows)."""
    from deployments.prefect_api import launch_prefect_api

    launch_prefect_api()


def prefect_ready() -> None:
    """Make sure flows have a Prefect API (starting this process's temporary one), or exit 1 saying why."""
    from deployments.prefect_api import PrefectUnavailable, ensure_prefect_api

    try:
        ensure_prefect_api(lambda line: typer.echo(line, err=True))
    except PrefectUnavailable as exc:
        fail(str(exc), 1)


def read_config(config: Optional[Path]):
    """The configuration, or exit 2 naming what is wrong with it."""
    from models.config import load_config
    from models.validation import InvalidInput

    try:
        return load_config(config)
    except InvalidInput as exc:
        fail(str(exc))


def connector_types(config: Optional[Path]) -> dict[str, str]:
    """Connector name -> type from the configuration, when there is one (for the targets' own words)."""
    if config is None and not Path("outbound.yaml").exists() and not os.environ.get("OUTBOUND_CONFIG"):
        return {}
    return {c.name: c.type for c in read_config(config).connectors}


def action_name(action: str, connector_type: Optional[str]) -> str:
    """The target's own word for an action: Google calls a disable `suspend` (and an enable `unsuspend`)."""
    if connector_type == "google":
        return {Action.DISABLE: "suspend", Action.ENABLE: "unsuspend"}.get(action, action)
    return action


def when(value) -> str:
    """A stored time as `YYYY-MM-DD HH:MM:SS` (UTC), whatever type the store returned it as; `-` for none."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value[:19]
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if value.tzinfo else str(value)[:19]
