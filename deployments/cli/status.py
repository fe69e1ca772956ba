"""CLI command: status (per connector: the last reconciliation, failures, health, the last check)."""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import typer

from deployments.cli.console import ConfigOption, read_config, when
from deployments.cli.guard import decision_of, guard_line, held_line, status_name
from models.kinds import HealthState

app = typer.Typer()


def status_summary(names: list[str]) -> dict:
    """Per connector: last reconciliation, operations failed in the last day; and the oldest unfinished event."""
    from models.db import session_scope
    from models.runstate import failures_by_connector, last_reconciliations, oldest_unfinished_event, unfinished_count

    since = datetime.now(timezone.utc) - timedelta(days=1)
    from tasks.guard import held_decisions, json_dict

    with session_scope() as session:
        last = last_reconciliations(session)
        held = held_decisions(session)  # from the last real run: a later dry run does not settle them
        failed = failures_by_connector(session, since)
        oldest = oldest_unfinished_event(session)
        unfinished = unfinished_count(session)
    from tasks.health import all_health, as_dict  # whether each connector is quarantined now, and why

    health = all_health()
    from models.capabilities import all_profiles, describe_age

    profiles = all_profiles()
    connectors = []
    for name in dict.fromkeys([*names, *last, *failed, *health, *profiles]):
        profile = profiles.get(name)
        run = last.get(name)
        connectors.append({
            "connector": name,
            "last_reconciliation": None if run is None else {
                "status": status_name(run.get("status")), "dry_run": run.get("dry_run"),
                "started_at": when(run.get("started_at")), "finished_at": when(run.get("finished_at")),
                "counts": json_dict(run.get("counts")), "outcomes": json_dict(run.get("outcomes")),
                "error": run.get("error"), "flow_run_id": run.get("flow_run_id"), "guard": decision_of(run)},
            "held": held.get(name),
            "failed_last_day": failed.get(name, 0),
            "health": as_dict(health.get(name)),
            "capabilities": None if profile is None else {
                "checked_at": when(profile.checked_at), "age": describe_age(profile), "usable": profile.usable,
                "problems": profile.problems}})
    return {"connectors": connectors, "unfinished_events": unfinished,
            "oldest_unfinished_event": None if oldest is None else {
                "id": oldest.id, "type": oldest.type, "status": oldest.status,
                "received_at": when(oldest.received_at)}}


def _checked(profile: Optional[dict]) -> str:
    """The capability profile in a table cell: never checked, or its verdict and age."""
    if profile is None:
        return "never (outbound check)"
    errors = sum(p["severity"] == "error" for p in profile["problems"])
    warnings = len(profile["problems"]) - errors
    verdict = "ok" if profile["usable"] else f"{errors} error{'s' if errors != 1 else ''}"
    if warnings:
        verdict += f", {warnings} warning{'s' if warnings != 1 else ''}"
    return f"{verdict}, {profile['age']}"


@app.command()
def status(config: Optional[Path] = ConfigOption,
           as_json: bool = typer.Option(False, "--json", help="One JSON document."),
           wide: bool = typer.Option(False, "--wide", help="Every column (counts, guard decision, last check).")) -> None:
    """Summarise per connector: last reconciliation and its counts, failures in the last day, health (quarantine), the last `outbound check` (age, problems); the oldest unfinished event."""
    names: list[str] = []
    if config is not None or Path("outbound.yaml").exists():
        names = [c.name for c in read_config(config).connectors]
    summary = status_summary(names)
    if as_json:
        typer.echo(json.dumps(summary, default=str))
        return
    from deployments.cli.tables import console, table
    from tasks.health import IN_WORDS

    out = console()
    columns = [("connector", {"overflow": "fold", "min_width": 8}), ("last run (UTC)", {"no_wrap": True}),
               ("status", {"overflow": "fold", "min_width": 9}), ("failed 24h", {"justify": "right"}),
               ("health", {"overflow": "fold"})]
    if wide:
        columns += [("counts", {"overflow": "fold"}), ("guard", {"overflow": "fold"})]
    grid = table(columns)
    for c in summary["connectors"]:
        run = c["last_reconciliation"]
        row = [c["connector"], run["started_at"][:16] if run else "never",
               (f"{run['status']}{' (dry run)' if run['dry_run'] else ''}" if run else "-"),
               str(c["failed_last_day"]), IN_WORDS.get(c["health"]["state"], c["health"]["state"])]
        if wide:
            counts = ", ".join(f"{k}={v}" for k, v in (run or {}).get("counts", {}).items() if v) if run else ""
            guard = (run or {}).get("guard") or {}
            row += [counts or "-", f"{guard['decision']} by {guard.get('by') or '-'}" if guard else "-"]
        grid.add_row(*row)
    out.print(grid)
    for c in summary["connectors"]:  # decisions and quarantines in full, folded to the terminal's width
        line = guard_line(c["connector"], c["last_reconciliation"]) if c["last_reconciliation"] else None
        if line:
            out.print(line, markup=False, highlight=False)
        if c["held"]:
            out.print(held_line(c["connector"], c["held"]), markup=False, highlight=False)
        if c["health"]["state"] == HealthState.OPEN or c["health"]["consecutive_failures"]:
            out.print(f"health of {c['connector']}: {c['health']['summary']}", markup=False, highlight=False)
        if c["capabilities"]:
            out.print(f"{c['connector']}: last checked: {_checked(c['capabilities'])}", markup=False, highlight=False)
        for problem in (c["capabilities"] or {}).get("problems", []):  # what `outbound check` found, and the fix
            out.print(f"check of {c['connector']}: {problem['severity']}: {problem['what']} (fix: {problem['fix']})",
                      markup=False, highlight=False)
    oldest = summary["oldest_unfinished_event"]
    if oldest:
        out.print(f"unfinished events: {summary['unfinished_events']}; oldest {oldest['id']} ({oldest['type']}, "
                  f"{oldest['status']}) received {oldest['received_at']} UTC", markup=False, highlight=False)
    else:
        out.print("unfinished events: none")
