"""CLI commands: service (`api`, `serve`, `setup`, `status`)."""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import typer

from deployments.catalog import named
from deployments.console import ConfigOption, fail, prefect_ready, prefect_soon, read_config
from models.kinds import HealthState, RunStatus

app = typer.Typer()


@app.command()
def api(host: str = typer.Option("127.0.0.1", help="Address to listen on."),
        port: int = typer.Option(8080, help="Port to listen on."),
        config: Optional[Path] = ConfigOption,
        dispatch: str = typer.Option("auto", help="auto (Prefect event when a server is reachable, else "
                                                  "in-process) | prefect | in-process."),
        workers: int = typer.Option(2, help="In-process: drains at once (each provisions a batch of pending "
                                             "events; 2 suit a 2-core machine).")) -> None:
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


# --- status ----------------------------------------------------------------------------------

def _when(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value[:19]
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if value.tzinfo else str(value)[:19]


def _status_name(status: Optional[str]) -> Optional[str]:
    # Older rows: a CLI guard stop was recorded as awaiting-approval, though nothing waits for one.
    return RunStatus.STOPPED_BY_GUARD if status == RunStatus.AWAITING_APPROVAL else status


def _guard(run: dict) -> Optional[dict]:
    """The deletion guard's decision on the run (approved, rejected, stopped, forced), if the plan tripped it."""
    if not run.get("decision"):
        return None
    return {"decision": run["decision"], "by": run.get("decided_by"), "comment": run.get("decision_comment"),
            "at": _when(run.get("decided_at")), "plan_hash": run.get("plan_hash")}


def held_line(connector: str, held: dict) -> str:
    """The deletions the guard holds back since the last real run, and what settles them."""
    from tasks.guard import STOPPED, decision_words, held_words

    review = f"review with `outbound reconcile --connector {connector} --dry-run --report plan.csv`"
    if held["decision"] == STOPPED:
        return (f"{connector}: held: {held_words(held)}: the last real reconciliation ({held['at']} UTC) stopped at "
                f"the deletion guard, nothing applied: {held.get('message') or 'too many deletions'}. Nothing is "
                f"waiting; {review}, then re-run with --yes.")
    return (f"{connector}: held: {held_words(held)}: deletion guard {decision_words(held)} at {held['at']} UTC, "
            f"nothing applied (plan sha256 {str(held.get('plan_hash') or '')[:12]}). Held until a real run: "
            f"{review}, then `outbound reconcile --connector {connector}` (approve it, or --yes).")


def guard_line(connector: str, run: dict) -> Optional[str]:
    """One sentence on the last run's guard decision (a held one is held_line's)."""
    guard = run.get("guard")
    if not guard or run.get("status") in (RunStatus.STOPPED_BY_GUARD, RunStatus.REJECTED):
        return None
    who = f" by {guard['by']}" if guard.get("by") else ""
    why = f": {guard['comment']}" if guard.get("comment") else ""
    return (f"{connector}: guard {guard['decision']}{who} at {guard['at']} UTC{why} "
            f"(plan sha256 {str(guard.get('plan_hash') or '')[:12]})")


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
                "status": _status_name(run.get("status")), "dry_run": run.get("dry_run"),
                "started_at": _when(run.get("started_at")), "finished_at": _when(run.get("finished_at")),
                "counts": json_dict(run.get("counts")), "outcomes": json_dict(run.get("outcomes")),
                "error": run.get("error"), "flow_run_id": run.get("flow_run_id"), "guard": _guard(run)},
            "held": held.get(name),
            "failed_last_day": failed.get(name, 0),
            "health": as_dict(health.get(name)),
            "capabilities": None if profile is None else {
                "checked_at": _when(profile.checked_at), "age": describe_age(profile), "usable": profile.usable,
                "problems": profile.problems}})
    return {"connectors": connectors, "unfinished_events": unfinished,
            "oldest_unfinished_event": None if oldest is None else {
                "id": oldest.id, "type": oldest.type, "status": oldest.status,
                "received_at": _when(oldest.received_at)}}


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
    from deployments.tables import console, table
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
