"""CLI commands: event, retry, runs."""

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from deployments.cli.console import (ConfigOption, action_name, connector_types, fail, prefect_ready, prefect_soon,
                                     quiet_prefect, read_config)
from deployments.outcomes import stored_outcomes
from models.kinds import NOT_DONE, Action, EventStatus

app = typer.Typer()
GROUP_OPERATIONS = (Action.GROUP_CREATE, Action.MEMBER_ADD, Action.MEMBER_REMOVE)


def print_outcomes(outcomes: list[dict]) -> None:
    for o in outcomes:
        line = (f"{o['connector']:<16} {o['action']:<11} {o['operation']:<7} {o['status']:<9} "
                f"remote_id={o.get('remote_id') or '-'}")
        if o.get("remote_name"):
            line += f" {'group' if o['operation'] in GROUP_OPERATIONS else 'username'}={o['remote_name']}"
        if o.get("error"):
            line += f" error={o['error']}"
        else:
            line += f" ({o['reason']})"
        typer.echo(line)


def run_flow(event_id: str, config: Optional[Path]) -> list[dict]:
    """Provision the event (with whatever else is pending), then read its outcomes from the store."""
    import asyncio

    from flows.provision import provision_user

    from tasks.explain import run_url

    # A run that ends Failed (some user failed) is read from the store like any other.
    state = asyncio.run(provision_user(event_id=event_id, config_path=str(config) if config else None,
                                       return_state=True))
    if state.state_details.flow_run_id:
        typer.echo(f"run: {run_url(state.state_details.flow_run_id)}")
    return stored_outcomes(event_id)


@app.command()
def event(file: str = typer.Argument(..., help="Event JSON file, or - for standard input."),
          config: Optional[Path] = ConfigOption,
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs.")) -> None:
    """Store an identity event, apply it to the identity store and provision it."""
    prefect_soon()  # it starts while the event is stored
    quiet_prefect(verbose)
    cfg = read_config(config)
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    from models.ingest import accept
    from models.validation import InvalidInput

    try:
        accepted = accept(raw, cfg)
    except InvalidInput as exc:
        fail(str(exc))
    if not accepted.new and accepted.status in (EventStatus.SUCCEEDED, EventStatus.FAILED):
        typer.echo(f"event {accepted.event_id} was already processed ({accepted.status}); not applied again")
        outcomes = stored_outcomes(accepted.event_id)
    else:
        prefect_ready()
        outcomes = run_flow(accepted.event_id, config)
    print_outcomes(outcomes)
    raise typer.Exit(1 if any(o["status"] in NOT_DONE for o in outcomes) else 0)


@app.command()
def retry(event_id: str = typer.Argument(..., help="The event's id."),
          config: Optional[Path] = ConfigOption,
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs.")) -> None:
    """Run an event again now: a failed one after its cause was fixed, or one waiting for its next retry."""
    prefect_soon()
    from models.outbox import retry_now

    quiet_prefect(verbose)
    read_config(config)
    before = retry_now(event_id)
    if before is None:
        fail(f"no event {event_id!r} in the outbox")
    typer.echo(f"event {event_id} was {before}; running it again")
    prefect_ready()
    outcomes = run_flow(event_id, config)
    print_outcomes(outcomes)
    raise typer.Exit(1 if any(o["status"] in NOT_DONE for o in outcomes) else 0)


@app.command()
def runs(status: Optional[str] = typer.Option(None, help="Only operations with this status (e.g. failed, outcome_unknown)."),
         connector: Optional[str] = typer.Option(None, help="Only this connector."),
         limit: int = typer.Option(50, help="How many operations, newest first (the runs of one event's "
                                            "retries are one row of the table)."),
         as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
         wide: bool = typer.Option(False, "--wide", help="Every field (event, action, tries, flow run), one block each."),
         config: Optional[Path] = ConfigOption) -> None:
    """List recorded operations, newest first: who, what, the outcome, the remote id and the reason."""
    from deployments.cli.tables import console, table
    from models.db import session_scope
    from models.runstate import recent_operations

    with session_scope() as session:
        rows = [op.model_dump(mode="json") for op in recent_operations(session, limit, status, connector)]
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
    # Narrow (80 columns): user and connector share a cell, so do operation and status; remote ids are
    # shortened below 110 columns (whole in --wide and --json); the runs of one event's retries are one
    # row, the newest, counting them; reasons fold rather than push the table off the screen.
    full_ids = out.width >= 110
    grid = table([("id", {"justify": "right", "no_wrap": True}), ("when (UTC)", {"no_wrap": True}),
                  ("user / connector", {"overflow": "fold", "max_width": 20}),
                  ("op / status", {"overflow": "fold", "max_width": 11}),
                  ("remote id", {"overflow": "fold", "max_width": 36 if full_ids else SHORT_ID + 1}),
                  ("reason / error", {"overflow": "fold", "ratio": 1, "min_width": 16})], expand=True)
    folded = fold_retries(rows)
    for r, runs in folded:
        kind = types.get(r["connector"])
        why = f"{r['error_code']}: {r['error_message']}" if r["error_code"] else (r["reason"] or "")
        when = (r["started_at"] or "")[5:16].replace("T", " ")  # MM-DD HH:MM
        remote = r["remote_id"] or "-"
        if not full_ids and len(remote) > SHORT_ID + 1:
            remote = remote[:SHORT_ID] + "…"
        grid.add_row(str(r["id"]), when, f"{r['entity_name']}\non {r['connector']}",
                     f"{action_name(r['operation'] or '-', kind)}\n{r['status']}" + (f"\n{runs} runs" if runs > 1 else ""),
                     remote, why)
    out.print(grid)
    if any(runs > 1 for _, runs in folded):
        out.print("N runs: the event was run N times (its retries); the row is the newest; --wide or --json "
                  "lists each.",
                  markup=False, highlight=False)


SHORT_ID = 8  # characters of a remote id the narrow table shows


def fold_retries(rows: list[dict]) -> list[tuple[dict, int]]:
    """(newest row, how many runs) per event, connector, user and action: an event run again (a retry, or
    `outbound retry`) records an operation each time, and those are one line of history. Rows newest first;
    a reconciliation's rows are each their own."""
    out: list[list] = []
    index: dict[tuple, int] = {}
    for r in rows:
        event = r.get("event_id") or ""
        if not event or event.startswith("reconcile:"):
            out.append([r, 1])
            continue
        key = (event, r["connector"], r["entity_type"], r["entity_id"], r["action"])
        if key in index:
            out[index[key]][1] += 1
        else:
            index[key] = len(out)
            out.append([r, 1])
    return [(r, n) for r, n in out]
