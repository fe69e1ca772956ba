"""Retention: `outbound prune` and the nightly prune-state deployment, on SQLite and PostgreSQL."""

import json
from datetime import timedelta
from pathlib import Path

import yaml
from sqlmodel import func, select
from typer.testing import CliRunner

from deployments.cli import app
from models.config import RetentionSettings
from models.db import session_scope
from models.retention import prune
from models.tables import Event, Operation, OperationAttempt, ReconciliationRun, utcnow

ROOT = Path(__file__).resolve().parent.parent
OLD, RECENT = 200, 5  # days ago


def ago(days: float):
    return utcnow() - timedelta(days=days)


def seed() -> dict:
    """Operations, attempts, events and reconciliation runs, old and recent; returns the ids that must stay."""
    keep: dict[str, set] = {"operations": set(), "events": set(), "runs": set()}
    with session_scope() as session:
        def op(entity: str, days: float, status: str = "succeeded", connector: str = "app") -> Operation:
            row = Operation(connector=connector, entity_id=entity, entity_name=entity, action="provision",
                            operation="update", status=status, started_at=ago(days), finished_at=ago(days))
            session.add(row)
            session.flush()
            for n in (1, 2):
                session.add(OperationAttempt(operation_id=row.id, number=n, status=status, started_at=ago(days)))
            return row

        op("u1", OLD), op("u1", OLD - 1)            # both superseded by the next one: pruned
        keep["operations"].add(op("u1", RECENT).id)  # recent: kept
        op("u2", OLD)
        keep["operations"].add(op("u2", OLD - 1).id)  # old, but the latest for (u2, app): kept
        keep["operations"].add(op("u2", OLD, connector="other").id)  # the latest for (u2, other): kept
        keep["operations"].add(op("u3", OLD, status="retrying").id)  # still open: kept
        keep["operations"].add(op("u3", RECENT - 1).id)
        for i, (days, status) in enumerate([(OLD, "succeeded"), (OLD, "failed"), (OLD, "accepted"), (OLD, "running"),
                                            (RECENT, "succeeded")]):
            session.add(Event(id=f"e{i}", type="user.created", trigger="api", payload={}, status=status,
                              received_at=ago(days)))
            if status in ("accepted", "running") or days == RECENT:
                keep["events"].add(f"e{i}")
        for i, (connector, days, status) in enumerate([("app", OLD, "succeeded"), ("app", OLD - 1, "failed"),
                                                      ("app", RECENT, "succeeded"), ("other", OLD, "succeeded"),
                                                      ("other", OLD + 2, "running")]):
            session.add(ReconciliationRun(id=f"r{i}", connector=connector, status=status, started_at=ago(days)))
        keep["runs"] = {"r2", "r3", "r4"}
    return keep


def state() -> dict:
    with session_scope() as session:
        return {"operations": set(session.exec(select(Operation.id))), "events": set(session.exec(select(Event.id))),
                "runs": set(session.exec(select(ReconciliationRun.id))),
                "attempts": session.exec(select(func.count()).select_from(OperationAttempt)).one(),
                "attempt_ops": set(session.exec(select(OperationAttempt.operation_id)))}


def test_prune_keeps_the_latest_the_unfinished_and_the_recent(db_url):
    keep = seed()
    before = state()
    dry = prune(RetentionSettings(), dry_run=True)
    assert state() == before  # a dry run changes nothing
    done = prune(RetentionSettings())
    after = state()
    assert after["operations"] == keep["operations"]
    assert after["events"] == keep["events"]
    assert after["runs"] == keep["runs"]
    # Attempts: 30 days. Only the attempts of the recent operations (u1 and u3's latest) remain.
    assert after["attempts"] == 4
    assert (done.operations, done.events, done.reconciliation_runs) == (3, 2, 2)
    assert done.attempts == before["attempts"] - after["attempts"]
    assert (dry.events, dry.operations, dry.attempts, dry.reconciliation_runs) == \
        (done.events, done.operations, done.attempts, done.reconciliation_runs)
    again = prune(RetentionSettings())  # idempotent
    assert (again.events, again.operations, again.attempts, again.reconciliation_runs) == (0, 0, 0, 0)


def test_retention_days_come_from_the_configuration(db_url):
    seed()
    pruned = prune(RetentionSettings(events_days=1, operations_days=1, attempts_days=1, reconciliation_runs_days=1))
    after = state()
    assert after["events"] == {"e2", "e3"}  # unfinished events stay whatever their age
    assert pruned.events == 3 and after["attempts"] == 0


def test_the_cli_prints_counts_and_dry_run_changes_nothing(tmp_path, sqlite_url):
    config = tmp_path / "outbound.yaml"
    config.write_text("tenant_domain: example.com\nretention: {events_days: 30}\n")
    seed()
    before = state()
    runner = CliRunner()
    result = runner.invoke(app, ["prune", "--dry-run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("[dry-run] would prune 2 events, 3 operations, ") and "events 30 d" in result.output
    assert state() == before
    result = runner.invoke(app, ["prune", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"events": 2, "operations": 3, "attempts": before["attempts"] - 4,
                                         "reconciliation_runs": 2, "dry_run": False, "webhook_receipts": 0}


def test_a_bad_retention_is_refused_with_exit_2(tmp_path, sqlite_url):
    config = tmp_path / "outbound.yaml"
    config.write_text("tenant_domain: example.com\nretention: {events_days: -1, keep: forever}\n")
    result = CliRunner().invoke(app, ["prune", "--config", str(config)])
    assert result.exit_code == 2 and "retention.events_days" in result.output and "retention.keep: unknown field" \
        in result.output


def test_the_nightly_deployment_is_declared_in_prefect_yaml_and_serve():
    from deployments.catalog import named
    from deployments.serve import build_deployments

    prune_cron = named("prune-state").cron

    declared = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert declared["prune-state"]["entrypoint"] == "flows/prune.py:prune_state"
    assert declared["prune-state"]["schedules"][0]["cron"] == prune_cron
    served = {d.name: d for d in build_deployments()}
    assert set(served) == set(declared)
    assert served["prune-state"].schedules[0].schedule.cron == prune_cron


def test_the_prune_flow_logs_and_returns_the_counts(tmp_path, sqlite_url, prefect_harness, caplog):
    from flows.prune import prune_state

    config = tmp_path / "outbound.yaml"
    config.write_text("tenant_domain: example.com\n")
    seed()
    with caplog.at_level("INFO"):
        counts = prune_state(config_path=str(config))
    assert (counts["events"], counts["operations"], counts["reconciliation_runs"]) == (2, 3, 2)
    assert "pruned 2 events, 3 operations" in caplog.text
