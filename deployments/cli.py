"""The operator's command line: `outbound …`.

Exit codes: 0 everything succeeded or was skipped by policy; 1 an operation failed; 2 bad input
(a clear message naming the field; nothing stored).
"""

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

# Before Prefect is imported: no phoning home, and the CLI's own output stays readable.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Outbound provisioning: push users from the identity store to Google, Salesforce and SCIM 2.0.")
db_app = typer.Typer(no_args_is_help=True, help="The state store.")
app.add_typer(db_app, name="db")

ConfigOption = typer.Option(None, "--config", "-c", help="Configuration file (default: $OUTBOUND_CONFIG or ./outbound.yaml).")


def fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _quiet_prefect(verbose: bool) -> None:
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


def prefect_ready() -> None:
    """Make sure flows have a Prefect API (starting this process's temporary one), or exit 1 saying why."""
    from deployments.prefect_api import PrefectUnavailable, ensure_prefect_api

    try:
        ensure_prefect_api(lambda line: typer.echo(line, err=True))
    except PrefectUnavailable as exc:
        fail(str(exc), 1)


def _load(config: Optional[Path]):
    from models.config import load_config
    from models.validation import InvalidInput

    try:
        return load_config(config)
    except InvalidInput as exc:
        fail(str(exc))


def print_outcomes(outcomes: list[dict]) -> None:
    for o in outcomes:
        line = (f"{o['connector']:<16} {o['action']:<11} {o['operation']:<7} {o['status']:<9} "
                f"remote_id={o.get('remote_id') or '-'}")
        if o.get("remote_name"):
            line += f" username={o['remote_name']}"
        if o.get("error"):
            line += f" error={o['error']}"
        else:
            line += f" ({o['reason']})"
        typer.echo(line)


def run_flow(event_id: str, config: Optional[Path]) -> list[dict]:
    """Provision the event (with whatever else is pending), then read its outcomes from the store."""
    import asyncio

    from flows.provision import provision_user

    # A run that ends Failed (some user failed) is read from the store like any other.
    asyncio.run(provision_user(event_id=event_id, config_path=str(config) if config else None, return_state=True))
    return stored_outcomes(event_id)


def stored_outcomes(event_id: str) -> list[dict]:
    from models.db import session_scope
    from models.runstate import operations_of_event

    with session_scope() as session:
        ops = [op for op in operations_of_event(session, event_id)
               if op.action != "verify" and op.entity_type == "user"]
        latest = {op.connector: op for op in ops}  # the last operation per connector
        return [{"connector": op.connector, "action": op.action, "operation": op.operation or "none",
                 "status": op.status, "remote_id": op.remote_id, "remote_name": op.remote_name,
                 "reason": op.reason or "", "error": f"{op.error_code}: {op.error_message}" if op.error_code else None}
                for op in latest.values()]


@app.command()
def event(file: str = typer.Argument(..., help="Event JSON file, or - for standard input."),
          config: Optional[Path] = ConfigOption,
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs.")) -> None:
    """Store an identity event, apply it to the identity store and provision it."""
    _quiet_prefect(verbose)
    cfg = _load(config)
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    from deployments.ingest import accept
    from models.validation import InvalidInput

    try:
        accepted = accept(raw, cfg)
    except InvalidInput as exc:
        fail(str(exc))
    if not accepted.new and accepted.status in ("succeeded", "failed"):
        typer.echo(f"event {accepted.event_id} was already processed ({accepted.status}); not applied again")
        outcomes = stored_outcomes(accepted.event_id)
    else:
        prefect_ready()
        outcomes = run_flow(accepted.event_id, config)
    print_outcomes(outcomes)
    raise typer.Exit(1 if any(o["status"] == "failed" for o in outcomes) else 0)


def connector_types(config: Optional[Path]) -> dict[str, str]:
    """Connector name -> type from the configuration, when there is one (for the targets' own words)."""
    if config is None and not Path("outbound.yaml").exists() and not os.environ.get("OUTBOUND_CONFIG"):
        return {}
    return {c.name: c.type for c in _load(config).connectors}


@app.command()
def retry(event_id: str = typer.Argument(..., help="The event's id."),
          config: Optional[Path] = ConfigOption,
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs.")) -> None:
    """Run an event again now: a failed one after its cause was fixed, or one waiting for its next retry."""
    from models.outbox import retry_now

    _quiet_prefect(verbose)
    _load(config)
    before = retry_now(event_id)
    if before is None:
        fail(f"no event {event_id!r} in the outbox")
    typer.echo(f"event {event_id} was {before}; running it again")
    prefect_ready()
    outcomes = run_flow(event_id, config)
    print_outcomes(outcomes)
    raise typer.Exit(1 if any(o["status"] == "failed" for o in outcomes) else 0)


@app.command()
def runs(status: Optional[str] = typer.Option(None, help="Only operations with this status (e.g. failed)."),
         connector: Optional[str] = typer.Option(None, help="Only this connector."),
         limit: int = typer.Option(50, help="How many, newest first."),
         as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
         wide: bool = typer.Option(False, "--wide", help="Every field (event, action, tries, flow run), one block each."),
         config: Optional[Path] = ConfigOption) -> None:
    """List recorded operations, newest first: who, what, the outcome, the remote id and the reason."""
    from sqlmodel import select

    from deployments.commands_reconcile import action_name
    from deployments.tables import console, table
    from models.db import session_scope
    from models.tables import Operation

    with session_scope() as session:
        query = select(Operation).order_by(Operation.id.desc()).limit(limit)
        if status:
            query = query.where(Operation.status == status)
        if connector:
            query = query.where(Operation.connector == connector)
        rows = [op.model_dump(mode="json") for op in session.exec(query)]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    types = connector_types(config)
    out = console()
    if wide:  # every field: one block per operation, wrapped to the terminal rather than a table of 12 columns
        for r in rows:
            kind = types.get(r["connector"])
            out.print(f"#{r['id']}  {(r['started_at'] or '')[:19].replace('T', ' ')} UTC  {r['entity_name']} on "
                      f"{r['connector']}", markup=False, highlight=False)
            for label, value in (("event", r["event_id"]), ("action", action_name(r["action"], kind)),
                                 ("operation", action_name(r["operation"] or "-", kind)), ("status", r["status"]),
                                 ("tries", r["attempts"]), ("remote id", r["remote_id"]),
                                 ("remote name", r["remote_name"]), ("reason", r["reason"]),
                                 ("error", f"{r['error_code']}: {r['error_message']}" if r["error_code"] else None),
                                 ("flow run", r["flow_run_id"])):
                if value not in (None, ""):
                    out.print(f"    {label}: {value}", markup=False, highlight=False)
        return
    # Narrow (80 columns): user and connector share a cell, so do operation and status; long ids and
    # reasons fold rather than push the table off the screen.
    grid = table([("id", {"justify": "right", "no_wrap": True}), ("when (UTC)", {"no_wrap": True}),
                  ("user / connector", {"overflow": "fold", "max_width": 20}),
                  ("op / status", {"overflow": "fold", "max_width": 11}),
                  ("remote id", {"overflow": "fold", "max_width": 36 if out.width >= 110 else 10}),
                  ("reason / error", {"overflow": "fold", "ratio": 1, "min_width": 16})], expand=True)
    for r in rows:
        kind = types.get(r["connector"])
        why = f"{r['error_code']}: {r['error_message']}" if r["error_code"] else (r["reason"] or "")
        when = (r["started_at"] or "")[5:16].replace("T", " ")  # MM-DD HH:MM
        grid.add_row(str(r["id"]), when, f"{r['entity_name']}\non {r['connector']}",
                     f"{action_name(r['operation'] or '-', kind)}\n{r['status']}", r["remote_id"] or "-", why)
    out.print(grid)


@db_app.command("upgrade")
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
    _quiet_prefect(verbose)
    if not os.environ.get("PREFECT_API_URL"):
        # Prefect's ephemeral API keeps its runs here, so `PREFECT_HOME=.prefect-demo prefect server start`
        # shows them in the UI afterwards; its SQLite answers 503 under bursts, so the client retries more.
        os.environ.setdefault("PREFECT_HOME", str(Path(".prefect-demo").resolve()))
        os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "10")
    prefect_ready()
    from deployments.demo import run_demo

    raise typer.Exit(run_demo(users, database))


# Commands that live in their own modules register themselves on `app` when imported.
from deployments import (commands_check, commands_policy, commands_prune, commands_reconcile,  # noqa: E402,F401
                         commands_service)


def main() -> None:
    from deployments.prefect_api import exit_on_sigterm

    exit_on_sigterm()  # a stopped command still stops the temporary Prefect API it started
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
