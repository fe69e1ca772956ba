"""Reconciliation runs as an operator finds them: read back through the Prefect client (final state, name,
tags, artifact keys, logs) and through `outbound status` / `outbound runs` at 80 and 120 columns.

The deployment-run guard (pause, approve, reject) is in test_reconcile_guard.py; here the CLI's side:
a dry run, a guard stop without --yes, the same plan forced with --yes.
"""

import json
import logging
import time
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import StateType
from sqlmodel import select
from typer.testing import CliRunner

from deployments.cli import app
from helpers import write_config
from models.db import session_scope
from models.events import EventUser
from models.identity import find_user, upsert_user
from models.tables import ReconciliationRun, utcnow

runner = CliRunner()
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def _cli(*args, columns: int = 80):
    result = runner.invoke(app, list(args), env={"COLUMNS": str(columns)})
    return result.exit_code, result.output


def _last_run() -> ReconciliationRun:
    with session_scope() as session:
        return session.exec(select(ReconciliationRun).order_by(ReconciliationRun.started_at.desc())).first()


def _seen_by_prefect(run: ReconciliationRun, expect_log: str = "", timeout: float = 20):
    """(flow run, artifact keys by key, log text) of a reconciliation, as the Prefect UI shows it."""
    flow_run_id = UUID(run.flow_run_id)
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        artifacts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))) if a.key}
        while True:  # logs reach the API in batches
            logs = "\n".join(log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))))
            if expect_log in logs or time.monotonic() > deadline:
                return flow_run, artifacts, logs
            time.sleep(0.5)


@pytest.fixture
def guarded(tmp_path, sqlite_url, scim):
    """12 accounts reconciled, then 3 users deleted locally: 3 deletes > max_deletions (10% of 12 = 1)."""
    config = write_config(tmp_path, scim)
    with session_scope() as session:
        for i in range(12):
            upsert_user(session, EventUser(username=f"user{i}", email=f"user{i}@example.com", given_name="G",
                                           family_name="F"), "example.com", source="api")
    code, out = _cli("reconcile", "--config", str(config))
    assert code == 0, out
    with session_scope() as session:
        for i in range(3):
            find_user(session, "example.com", "PRIMARY", f"user{i}").deleted_at = utcnow()
    return config


@pytest.mark.usefixtures("prefect_harness")
def test_a_cli_dry_run_says_nothing_was_written_and_that_the_guard_would_stop_it(guarded, tmp_path, scim):
    before = len(scim.requests)
    code, out = _cli("reconcile", "--config", str(guarded), "--dry-run", "--report", str(tmp_path / "plan.csv"))
    assert code == 0, out
    assert [r for r in scim.requests[before:] if r[0] in MUTATING] == []
    assert "dry run, nothing written: would apply 3, would fail 0" in out, out
    assert "the real run would stop at the deletion guard: 3 deletions > max 1 (max_deletions)" in out, out
    assert "it needs an approval, or --yes" in out, out
    assert f"plan rows written to {tmp_path / 'plan.csv'}" in out, out
    assert "succeeded" not in out, out  # a dry run succeeds at nothing

    run = _last_run()
    assert run.dry_run and run.decision is None  # the guard decides about real runs only
    flow_run, artifacts, logs = _seen_by_prefect(run, "dry run finished")
    assert flow_run.state.type == StateType.COMPLETED  # green: the dry run did its work, and says where it ends
    assert flow_run.state.message == ("dry run, nothing written: would apply 3, would fail 0; the real run would "
                                      "stop at the deletion guard: 3 deletions > max 1 (max_deletions); it needs "
                                      "an approval, or --yes"), flow_run.state.message
    assert flow_run.name == "reconcile app (dry run: would stop at the guard)"
    assert {"trigger:cli", "connector:app"} <= set(flow_run.tags)
    assert set(artifacts) == {"outbound-app-dry-run-plan", "outbound-app-dry-run-drift", "outbound-app-dry-run-summary"}
    summary = artifacts["outbound-app-dry-run-summary"].data
    assert "Dry run: nothing was written" in summary and "would stop at the deletion guard: 3 deletions > max 1" in summary
    assert "**Status:** succeeded (dry run: the real run would stop at the deletion guard)" in summary
    assert "3 deletions > max 1" in artifacts["outbound-app-dry-run-summary"].description
    assert "| would apply | 3 |" in summary
    assert "dry run finished, nothing written: would apply 3" in logs  # CLI runs keep their logs in Prefect
    _, _, logs = _seen_by_prefect(run, "connector=app the real run would stop at the deletion guard")
    assert "connector=app the real run would stop at the deletion guard: 3 deletions > max 1" in logs, logs


@pytest.mark.usefixtures("prefect_harness")
def test_a_cli_guard_stop_is_cancelled_and_status_says_re_run_with_yes(guarded, scim):
    code, out = _cli("reconcile", "--config", str(guarded))
    assert code == 3, out
    assert "stopped by the deletion guard" in out and "--yes" in out, out
    assert len(scim.users()) == 12

    run = _last_run()
    assert (run.status, run.decision, run.decided_by) == ("stopped-by-guard", "stopped", None)
    assert len(run.plan_hash) == 64
    flow_run, artifacts, logs = _seen_by_prefect(run, "stopped by the deletion guard")
    assert flow_run.state.type == StateType.CANCELLED
    assert flow_run.state.message.startswith("stopped by the deletion guard: the plan would delete or disable 3")
    assert flow_run.name == "reconcile app (stopped by guard)"
    assert {"trigger:cli", "connector:app"} <= set(flow_run.tags)
    assert {"outbound-app-plan", "outbound-app-drift", "outbound-app-summary"} <= set(artifacts)
    assert "stopped by the deletion guard" in logs

    for columns in (80, 120):
        code, out = _cli("status", "--config", str(guarded), columns=columns)
        assert code == 0, out
        assert "awaiting-approval" not in out and "stopped-by-guard" in out, out
        assert "Nothing is waiting" in out and "--yes" in " ".join(out.split()), out
        assert max(len(line) for line in out.splitlines()) <= columns, out

    # The same plan, forced: applied, and the decision names who forced it.
    stopped_hash = run.plan_hash
    code, out = _cli("reconcile", "--config", str(guarded), "--yes")
    assert code == 0 and "app: succeeded: succeeded 3, failed 0" in out, out
    run = _last_run()
    assert (run.status, run.decision, run.plan_hash) == ("succeeded", "forced", stopped_hash)
    assert run.decided_by.endswith("(--yes)")
    flow_run, _, _ = _seen_by_prefect(run)
    assert flow_run.state.type == StateType.COMPLETED and flow_run.name == "reconcile app (forced with --yes)"
    code, out = _cli("status", "--config", str(guarded), "--wide", columns=120)
    assert "forced by" in " ".join(out.split()), out


@pytest.mark.usefixtures("prefect_harness")
def test_runs_and_status_fit_80_and_120_columns_with_remote_id_and_reason(guarded, scim):
    code, out = _cli("reconcile", "--config", str(guarded), "--yes")
    assert code == 0, out
    with session_scope() as session:
        from models.tables import Operation

        last = session.exec(select(Operation).order_by(Operation.id.desc())).first()
    for columns in (80, 120):
        for args in (["runs", "--limit", "5"], ["runs", "--limit", "5", "--wide"], ["status"], ["status", "--wide"]):
            code, out = _cli(*args, "--config", str(guarded), columns=columns)
            assert code == 0, out
            widest = max(len(line) for line in out.splitlines())
            assert widest <= columns, f"{args} at {columns} columns: a line of {widest}\n{out}"
            if args == ["runs", "--limit", "5"]:
                shown = _column(out, "remote id", "reason")
                if columns < 110:  # shortened to one line; whole in --wide and --json
                    assert last.remote_id[:8] + "…" in shown and last.remote_id not in shown, out
                else:
                    assert last.remote_id in shown, out
                assert "theuserwasdeleted" in _column(out, "reason / error", "\n").replace(" ", "")
                assert "delete" in out and "succeeded" in out
            elif args[0] == "runs":
                assert f"remote id: {last.remote_id}" in out and "reason: the user was deleted" in out, out
            else:
                assert "app" in out and "succeeded" in out and "health" in out, out
    # The narrow default leaves out what --wide shows.
    assert "tries" not in _cli("runs", "--config", str(guarded))[1]
    assert "tries" in _cli("runs", "--wide", "--config", str(guarded), columns=120)[1]


def _column(table: str, header: str, next_header: str) -> str:
    """The text of one column of a rendered table, its folded pieces joined."""
    lines = table.splitlines()
    head = next(line for line in lines if header in line and (next_header == "\n" or next_header in line))
    start = head.index(header)
    end = len(head) if next_header == "\n" else head.index(next_header)
    return "".join(line[start:end].strip() for line in lines[lines.index(head) + 2:])


def test_google_suspend_is_called_suspend():
    from deployments.cli.reconcile import _print_result, plan_line
    from deployments.cli.console import action_name

    result = {"connector": "gw", "status": "succeeded", "dry_run": False, "counts": {"create": 1, "disable": 2},
              "deletions": 2, "threshold": 5, "desired_count": 3, "target_count": 4, "unmanaged": 0,
              "outcomes": {"succeeded": 2, "failed": 1, "skipped": 0},
              "failures": [{"action": "disable", "user": "bob@PRIMARY", "error": "rejected: no"}]}
    assert action_name("disable", "google") == "suspend" and action_name("disable", "scim2") == "disable"
    line = plan_line(result, "google")
    assert "suspend 2" in line and "deletes+suspends 2" in line and "disable" not in line
    out = CliRunner().invoke(_typer_app(lambda: _print_result(result, "google"))).output
    assert "failed suspend bob@PRIMARY" in out and "disable" not in out


def _typer_app(fn):
    import typer

    one = typer.Typer()
    one.command()(fn)
    return one


@pytest.mark.usefixtures("prefect_harness")
def test_cli_keeps_prefect_logs_off_the_terminal_but_in_the_api(guarded):
    from prefect.logging.handlers import PrefectConsoleHandler

    def console_levels():
        loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
        return {h.level for lg in loggers for h in getattr(lg, "handlers", ()) if isinstance(h, PrefectConsoleHandler)}

    try:
        code, out = _cli("reconcile", "--config", str(guarded), "--yes")
        assert code == 0, out
        assert console_levels() == {logging.CRITICAL}  # the terminal hears nothing from Prefect
        assert logging.getLogger("prefect").getEffectiveLevel() <= logging.INFO  # the API still does
        assert "Finished in state" not in out and "connector=app" not in out
        _, _, logs = _seen_by_prefect(_last_run(), "status=succeeded")
        assert "connector=app status=succeeded" in logs
        code, out = _cli("reconcile", "--config", str(guarded), "-v")
        assert code == 0, out
        assert console_levels() == {logging.NOTSET}
    finally:
        from deployments.cli.console import quiet_prefect

        quiet_prefect(True)


def test_migration_0007_stores_guard_decisions_and_statuses_longer_than_16(db_url):
    """`awaiting-approval` (17 characters, older rows) did not fit varchar(16): PostgreSQL refused it."""
    from alembic import command
    from sqlalchemy import inspect

    from models.db import alembic_config, current_revision, get_engine, upgrade

    upgrade(db_url, revision="0007")
    engine = get_engine(db_url, migrate=False)
    with engine.begin() as conn:  # down and up again: the migration is reversible on an empty table
        cfg = alembic_config(db_url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
        assert "plan_hash" not in {c["name"] for c in inspect(conn).get_columns("reconciliation_runs")}
        command.upgrade(cfg, "0007")
    assert current_revision(db_url) == "0007"
    with session_scope(db_url) as session:
        session.add(ReconciliationRun(connector="app", status="awaiting-approval"))
        session.add(ReconciliationRun(connector="app", status="stopped-by-guard", decision="rejected",
                                      decided_by="Dana Ops", decision_comment="too many", decided_at=utcnow(),
                                      plan_hash="a" * 64))
    with session_scope(db_url) as session:
        rows = {r.status: r for r in session.exec(select(ReconciliationRun))}
    assert set(rows) == {"awaiting-approval", "stopped-by-guard"}
    assert rows["stopped-by-guard"].decided_by == "Dana Ops" and rows["stopped-by-guard"].plan_hash == "a" * 64


@pytest.mark.usefixtures("prefect_harness")
def test_status_keeps_the_held_deletions_until_a_real_run_settles_them(guarded, scim):
    code, out = _cli("reconcile", "--config", str(guarded))
    assert code == 3, out
    held_by = _last_run()
    code, out = _cli("reconcile", "--config", str(guarded), "--dry-run")  # a dry run settles nothing
    assert code == 0, out
    assert _last_run().dry_run
    for columns in (80, 120):
        code, out = _cli("status", "--config", str(guarded), columns=columns)
        assert code == 0, out
        text = " ".join(out.split())
        assert "(dry run)" in text, out  # the last run is the dry run ...
        assert "app: held: " in text and " 3: the last real reconciliation" in text, out  # ... the held 3 stay
        assert "stopped at the deletion guard" in text and "re-run with --yes" in text, out
        assert max(len(line) for line in out.splitlines()) <= columns, out
    code, out = _cli("status", "--config", str(guarded), "--json")
    held = json.loads(out)["connectors"][0]["held"]
    assert held["decision"] == "stopped" and sum(held["held"].values()) == 3, held
    assert held["run_id"] == held_by.id and held["flow_run_id"] == held_by.flow_run_id

    # A rejection in the UI holds them the same way, named with who rejected and why.
    with session_scope() as session:
        session.add(ReconciliationRun(connector="app", status="rejected", decision="rejected", decided_by="Dana Ops",
                                      decision_comment="not before the audit", decided_at=utcnow(),
                                      counts={"disable": 6}, plan_hash="ab" * 32, finished_at=utcnow()))
        session.add(ReconciliationRun(connector="app", dry_run=True, status="succeeded", finished_at=utcnow()))
    code, out = _cli("status", "--config", str(guarded), columns=120)
    text = " ".join(out.split())
    assert "app: held: disable 6: deletion guard rejected by Dana Ops: not before the audit at " in text, out
    assert "Held until a real run" in text, out

    code, out = _cli("reconcile", "--config", str(guarded), "--yes")  # the real run settles them
    assert code == 0, out
    code, out = _cli("status", "--config", str(guarded), "--json")
    assert json.loads(out)["connectors"][0]["held"] is None
    assert "held:" not in _cli("status", "--config", str(guarded))[1]


@pytest.mark.usefixtures("prefect_harness")
def test_explain_names_the_held_decision_and_the_runs_by_name_and_state(guarded, scim):
    created_by = _last_run()
    code, out = _cli("reconcile", "--config", str(guarded))
    assert code == 3, out
    stopped = _last_run()
    code, out = _cli("explain", "user0", "--config", str(guarded), columns=200)
    assert code == 0, out
    held = next(line for line in out.splitlines() if line.strip().startswith("held:"))
    assert "held held: deletion guard stopped in run reconcile app (stopped by guard) at " in held.replace(
        "disable", "held").replace("delete", "held"), held  # the connector's deprovision mode, then the run
    assert f"/runs/flow-run/{stopped.flow_run_id}" in held, held
    # The run that created the account, by name and state, with what it did to this user.
    assert f"reconcile app, Completed (create succeeded here): http" in out, out
    assert f"/runs/flow-run/{created_by.flow_run_id}" in out, out
    # A user the plan does not deprovision has nothing held.
    code, out = _cli("explain", "user5", "--config", str(guarded), columns=200)
    assert code == 0 and "held:" not in out, out

    with session_scope() as session:  # an operator's rejection in the UI, named with who and why
        session.add(ReconciliationRun(connector="app", status="rejected", decision="rejected", decided_by="Dana Ops",
                                      decision_comment="not before the audit", decided_at=utcnow(),
                                      counts={"delete": 3}, finished_at=utcnow()))
    code, out = _cli("explain", "user0", "--config", str(guarded), "--json")
    assert code == 0, out
    app_ = json.loads(out)["connectors"][0]
    assert "deletion guard rejected in run reconcile app (rejected) at " in app_["held"], app_["held"]
    assert "by Dana Ops: not before the audit" in app_["held"], app_["held"]
    assert app_["recent_runs"][0]["name"] == "reconcile app" and app_["recent_runs"][0]["state"] == "Completed"


def test_runs_folds_an_events_retries_into_one_row_at_80_columns(tmp_path, sqlite_url):
    from models.runstate import record_operations
    from tasks.apply import operation_row

    remote = "0123456789abcdef0123456789abcdef"
    rows = [operation_row("app", "u-1", "carol@PRIMARY", "provision", operation="create", status=status,
                          error_code="transient" if status == "failed" else None,
                          error_message="GET /Users: connection failed" if status == "failed" else None,
                          remote_id=remote if status == "succeeded" else None, event_id="evt-carol-1")
            for status in ("failed", "failed", "succeeded")]
    rows.append(operation_row("app", "u-2", "dave@PRIMARY", "provision", operation="create", status="succeeded",
                              event_id="evt-dave-1", remote_id="r-dave"))
    with session_scope() as session:
        record_operations(session, rows)
    code, out = _cli("runs", columns=80)
    assert code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert out.count("carol@PRIMARY") == 1 and out.count("dave@PRIMARY") == 1, out
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if "carol@PRIMARY" in line)
    assert "create" in lines[at] and "succeeded" in lines[at + 1] and "3 runs" in lines[at + 2], out  # the newest, counted
    assert "01234567…" in out and remote not in out, out
    assert "N runs: the event was run N times" in out, out
    code, out = _cli("runs", "--json")
    assert len(out.splitlines()) == 4 and remote in out  # every operation, ids whole
