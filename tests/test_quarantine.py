"""A target that keeps failing is quarantined, left alone, probed, and recovers by itself."""

import json
import os
import time
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import inspect
from sqlmodel import select
from typer.testing import CliRunner

from connectors.base import Account, BatchOp
from connectors.errors import NotFound, RateLimited, TransientError
from connectors.factory import get_connector
from deployments.cli import app
from models.ingest import accept
from helpers import event
from models.config import load_config
from models.db import get_engine, session_scope, upgrade
from models.runstate import get_event
from models.tables import Event, Operation, OperationAttempt
from sandbox.faults import FaultPlan
from sandbox.scim import ScimSandbox
from tasks import health
from tasks.health import Quarantined
from tasks.plan import desired_state
from tasks.provision import provision_batch

runner = CliRunner()
OUTAGE = FaultPlan(rate=1.0, kinds=("5xx",))


def write_config(tmp_path, scim, *, after=3, initial=0.3, cap=1.0, attempts=1, max_delay=0.05):
    env = f"TEST_QUARANTINE_TOKEN_{uuid.uuid4().hex[:8]}"
    os.environ[env] = scim.token
    path = tmp_path / f"outbound-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(f"""tenant_domain: example.com
retry: {{attempts: {attempts}, base_delay: 0.01, max_delay: {max_delay}, jitter: 0.1}}
connectors:
  - name: app
    type: scim2
    quarantine_after: {after}
    quarantine_backoff: {{initial: {initial}, max: {cap}}}
    scim2:
      base_url: {scim.url}
      auth: {{type: bearer, token: env:{env}}}
""")
    return path


def provision_directly(config, username: str):
    """One attempt of the provision task's body for a batch of one, outside Prefect."""
    accepted = accept(event(username=username), config)
    with session_scope() as session:
        user_id = get_event(session, accepted.event_id).user_id
        state = desired_state(session, config, config.connector("app"), [user_id])
    [outcome] = provision_batch("app", replace(state, events={user_id: [accepted.event_id]}), config, "test")
    return outcome


def wait_until_due(connector: str = "app") -> None:
    h = health.get(connector)
    time.sleep(max(0.0, (h.retry_at - health.utcnow()).total_seconds()) + 0.02)


def test_consecutive_transient_failures_quarantine_the_target_until_a_probe_succeeds(tmp_path, sqlite_url):
    plan = FaultPlan(rate=1.0, kinds=("5xx",))
    with ScimSandbox(faults=plan) as scim:
        config = load_config(write_config(tmp_path, scim, after=3, initial=1.0, cap=1.5))
        for i in range(3):  # three failures in a row: the third opens the quarantine
            assert health.get("app") is None or health.get("app").state == "closed"
            with pytest.raises(TransientError) as failed:
                provision_directly(config, "ann")
            assert not isinstance(failed.value, Quarantined)
        h = health.get("app")
        assert (h.state, h.consecutive_failures, h.backoff, h.last_error_code) == ("open", 3, 1.0, "transient")
        assert "503" in h.last_error

        seen = len(scim.requests)
        for _ in range(3):  # while open: refused locally, nothing reaches the target, nothing counted
            with pytest.raises(Quarantined) as refused:
                provision_directly(config, "ann")
            assert 0 < refused.value.retry_after <= 1.0 and refused.value.code == "quarantined"
        assert len(scim.requests) == seen
        assert health.get("app").consecutive_failures == 3

        wait_until_due()
        with pytest.raises(TransientError) as probe:  # the probe goes through, and fails
            provision_directly(config, "ann")
        assert not isinstance(probe.value, Quarantined) and len(scim.requests) == seen + 1
        h = health.get("app")
        assert (h.state, h.consecutive_failures, h.backoff) == ("open", 4, 1.5)  # 1.0 × 2, capped at 1.5
        assert 0 < (h.retry_at - health.utcnow()).total_seconds() <= 1.5
        with pytest.raises(Quarantined):
            provision_directly(config, "ann")
        assert len(scim.requests) == seen + 1

        plan.rate = 0.0  # the target recovers
        wait_until_due()
        outcome = provision_directly(config, "ann")  # the probe succeeds and closes the quarantine
        assert outcome.status == "succeeded" and outcome.operation == "create"
        h = health.get("app")
        assert (h.state, h.consecutive_failures, h.retry_at) == ("closed", 0, None)
        assert [u["userName"] for u in scim.users()] == ["ann"]
        assert provision_directly(config, "bob").status == "succeeded"  # and the gate stays open
    with session_scope() as session:
        codes = [a.error_code for a in session.exec(select(OperationAttempt).order_by(OperationAttempt.id))]
    assert codes.count("quarantined") == 4 and codes.count("transient") == 4


def test_backoff_grows_by_factor_up_to_the_cap(tmp_path, sqlite_url):
    with ScimSandbox(faults=FaultPlan(rate=1.0, kinds=("5xx",))) as scim:
        config = load_config(write_config(tmp_path, scim, after=1, initial=0.1, cap=0.35))
        with pytest.raises(TransientError):
            provision_directly(config, "cyd")
        backoffs = [health.get("app").backoff]
        for _ in range(3):
            wait_until_due()
            with pytest.raises(TransientError):
                provision_directly(config, "cyd")
            backoffs.append(health.get("app").backoff)
    assert backoffs == [0.1, 0.2, 0.35, 0.35]


def test_an_answer_resets_the_counter_and_local_failures_do_not_count(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        config = load_config(write_config(tmp_path, scim, after=3))
    cfg = config.connector("app")
    for _ in range(2):
        health.check("app")
        health.record_failure("app", TransientError("GET /Users: HTTP 503", status=503), cfg)
    assert health.get("app").consecutive_failures == 2
    health.check("app")
    health.record_failure("app", NotFound("GET /Users/x: HTTP 404", status=404), cfg)  # the target answered
    assert health.get("app").consecutive_failures == 0
    health.check("app")
    health.record_failure("app", RateLimited("POST /Users: HTTP 429", status=429, retry_after=1), cfg)  # paced, up
    health.check("app")
    health.record_failure("app", Quarantined("elsewhere", retry_after=1), cfg)
    health.record_failure("app", TransientError("not guarded: no check before it"), cfg)
    health.check("app")
    health.record_failure("app", RuntimeError("a bug of ours"), cfg)
    assert health.get("app").consecutive_failures == 0


def test_chunked_apply_is_gated_and_counts_one_failure_per_batch_call(tmp_path, sqlite_url):
    with ScimSandbox(faults=FaultPlan(rate=1.0, kinds=("5xx",))) as scim:
        cfg = load_config(write_config(tmp_path, scim, after=2, initial=30, cap=60)).connector("app")
        guarded = health.guarded(get_connector(cfg), cfg)
        ops = [BatchOp("create", account=Account(user_name=f"b{i}", external_id=f"x{i}")) for i in range(3)]
        for _ in range(2):
            try:
                results = guarded.apply_batch(ops, max_workers=2)
            except TransientError:  # the capability probe failed: the whole call
                results = [TransientError("whole call")] * 3
            assert all(isinstance(r, TransientError) and not isinstance(r, Quarantined) for r in results)
        assert health.get("app").state == "open" and health.get("app").consecutive_failures == 2
        seen = len(scim.requests)
        with pytest.raises(Quarantined) as refused:
            guarded.apply_batch(ops, max_workers=2)
        assert len(scim.requests) == seen and 29 < refused.value.retry_after <= 30


def test_migration_and_health_rows_on_sqlite_and_postgresql(db_url):
    upgrade(db_url, "0003")
    assert not inspect(get_engine(db_url, migrate=False)).has_table("connector_health")
    upgrade(db_url)
    columns = {c["name"] for c in inspect(get_engine(db_url, migrate=False)).get_columns("connector_health")}
    assert columns == {"connector", "consecutive_failures", "state", "opened_at", "retry_at", "backoff",
                       "last_error_code", "last_error", "updated_at"}
    from models.config import ConnectorConfig

    cfg = ConnectorConfig.model_validate({"name": "app", "type": "scim2", "quarantine_after": 2,
                                          "scim2": {"base_url": "http://127.0.0.1:1/v2",
                                                    "auth": {"type": "bearer", "token": "env:UNUSED"}}})
    for _ in range(2):
        health.check("app")
        health.record_failure("app", TransientError("POST /Users: HTTP 503", status=503), cfg)
    h = health.get("app")
    assert h.state == "open" and h.backoff == 30 and 29 < (h.retry_at - health.utcnow()).total_seconds() <= 30
    with pytest.raises(Quarantined):
        health.check("app")
    with session_scope() as session:  # make it due: exactly one probe is let through
        h = session.get(health.ConnectorHealth, "app")
        h.retry_at = health.utcnow()
        session.add(h)
    health.check("app")
    import threading

    refused = []

    def another_worker():
        try:
            health.check("app", wait=0.2)
        except Quarantined as exc:
            refused.append(exc)

    worker = threading.Thread(target=another_worker)
    worker.start()
    worker.join()
    assert refused and "probe is in flight" in str(refused[0])
    health.record_success("app")
    assert health.get("app").state == "closed"
    health.check("app")  # closed: no probe lease, no wait
    health.record_success("app")


@pytest.mark.usefixtures("prefect_harness")
def test_auth_failure_quarantines_at_once_status_shows_it_and_waiting_work_completes(tmp_path, sqlite_url,
                                                                                   monkeypatch):
    with ScimSandbox() as scim:
        config = write_config(tmp_path, scim, after=5, initial=1.0, cap=5, attempts=6, max_delay=3)
        scim.app.bearer_tokens = {"a-token-that-was-revoked"}  # the target now refuses our credentials
        first = tmp_path / "first.json"
        first.write_text(json.dumps(event(username="dora")))
        result = runner.invoke(app, ["event", str(first), "--config", str(config)])
        assert result.exit_code == 1 and "auth_failed" in result.output, result.output
        h = health.get("app")
        assert (h.state, h.consecutive_failures, h.last_error_code) == ("open", 1, "auth_failed")

        status = runner.invoke(app, ["status", "--config", str(config)])
        assert status.exit_code == 0, status.output
        assert "health of app: quarantined since" in status.output and "retry at" in status.output
        assert "auth_failed" in status.output and scim.token not in status.output
        as_json = json.loads(runner.invoke(app, ["status", "--config", str(config), "--json"]).output)
        assert as_json["connectors"][0]["health"]["state"] == "open"
        # The refused credential also refreshed the capability profile: status says what to change.
        profile = as_json["connectors"][0]["capabilities"]
        assert profile and profile["usable"] is False and scim.token not in json.dumps(profile)

        scim.app.bearer_tokens = {scim.token}  # the operator fixes the credentials on the target

        def set_probe_due(seconds: float) -> None:
            with session_scope() as session:
                h = session.get(health.ConnectorHealth, "app")
                h.retry_at = health.utcnow() + timedelta(seconds=seconds)
                session.add(h)

        # The next event meets the quarantine whatever the run's start-up takes, and the probe falls
        # due only once the gate has refused a try: the refused try and the later probe are both seen.
        set_probe_due(600)
        real_check = health.check

        def check_then_fall_due(connector: str, *args, **kwargs) -> None:
            try:
                real_check(connector, *args, **kwargs)
            except Quarantined:
                set_probe_due(0)
                raise

        monkeypatch.setattr(health, "check", check_then_fall_due)  # observes the real gate; changes nothing it decides
        seen = len(scim.requests)
        waiting = tmp_path / "waiting.json"
        ev = event(username="eve")
        waiting.write_text(json.dumps(ev))
        result = runner.invoke(app, ["event", str(waiting), "--config", str(config)])
        assert result.exit_code == 0 and "create" in result.output, result.output  # waited, then the probe
        assert health.get("app").state == "closed"
        assert "eve" in {u["userName"] for u in scim.users()} and len(scim.requests) > seen
    with session_scope() as session:
        ops = session.exec(select(Operation).where(Operation.event_id == ev["id"], Operation.action == "provision")
                           .order_by(Operation.id)).all()
        tries = session.exec(select(OperationAttempt).where(OperationAttempt.operation_id.in_([o.id for o in ops]))
                             .order_by(OperationAttempt.id)).all()
        assert session.get(Event, ev["id"]).status == "succeeded"
    # Each try is recorded: first refused by the quarantine (nothing sent), last the create that went through.
    assert ops[0].error_code == "quarantined" and ops[-1].status == "succeeded" and ops[-1].operation == "create"
    assert tries[0].error_code == "quarantined" and tries[-1].status == "succeeded"


@pytest.mark.usefixtures("prefect_harness")
def test_the_run_says_quarantined_when_the_wait_outlasts_the_retries(tmp_path, sqlite_url, caplog):
    with ScimSandbox(faults=FaultPlan(rate=1.0, kinds=("5xx",))) as scim:
        config = write_config(tmp_path, scim, after=2, initial=60, cap=60, attempts=3)
        path = tmp_path / "e.json"
        path.write_text(json.dumps(event(username="finn")))
        result = runner.invoke(app, ["event", str(path), "--config", str(config)])
        assert result.exit_code == 1, result.output
        assert "error=quarantined: connector app is quarantined" in result.output, result.output
        assert len(scim.requests) == 2  # two failures opened it; the third attempt sent nothing
    warnings = [(r.name, r.getMessage()) for r in caplog.records if r.levelname == "WARNING"]  # the Prefect run's log
    assert any(name == "prefect.task_runs" and "app quarantined after 2 failures" in m for name, m in warnings)
    assert any(name == "prefect.flow_runs" and "the connector is quarantined" in m for name, m in warnings)


@pytest.mark.usefixtures("prefect_harness")
def test_a_quarantine_opened_mid_run_is_waited_out_and_the_first_chunk_is_the_probe(tmp_path, sqlite_url,
                                                                                      monkeypatch):
    from models.events import EventUser
    from models.identity import upsert_user
    from tasks.apply import progress_listeners

    with ScimSandbox() as scim:
        path = write_config(tmp_path, scim, after=1, initial=4, cap=8, attempts=4, max_delay=5)
        cfg = load_config(path).connector("app")
        with session_scope() as session:
            for i in range(3):
                upsert_user(session, EventUser(username=f"rec{i}", email=f"rec{i}@example.com"), "example.com",
                            source="api")

        def set_probe_due(seconds: float) -> None:
            with session_scope() as session:
                h = session.get(health.ConnectorHealth, "app")
                h.retry_at = health.utcnow() + timedelta(seconds=seconds)
                session.add(h)

        def fail_before_the_first_chunk(done: int, total: int) -> None:
            """The target fails (another worker's call) after this run was admitted and listed it."""
            if done == 0 and health.get("app") is None:
                real_check("app")
                health.record_failure("app", TransientError("POST /Bulk: HTTP 503", status=503), cfg)
                set_probe_due(600)

        # The first chunk meets the quarantine, and the probe falls due (in 1 s) only once the gate has
        # refused it: the refused try and the probe are both seen.
        real_check = health.check

        def check_then_fall_due(connector: str, *args, **kwargs) -> None:
            try:
                real_check(connector, *args, **kwargs)
            except Quarantined:
                set_probe_due(1)
                raise

        monkeypatch.setattr(health, "check", check_then_fall_due)  # observes the real gate; changes nothing it decides
        listeners = progress_listeners + [fail_before_the_first_chunk]  # this test's own list, undone after it
        # flows.reconcile first: imported by the patch after tasks.apply's, it would bind this test's list
        # as its own, and the undo would leave it there for every later test.
        monkeypatch.setattr("flows.reconcile.progress_listeners", listeners)
        monkeypatch.setattr("tasks.apply.progress_listeners", listeners)
        result = runner.invoke(app, ["reconcile", "--config", str(path)])
        assert result.exit_code == 0 and "succeeded 3, failed 0" in result.output, result.output
        assert health.get("app").state == "closed"
        assert sorted(u["userName"] for u in scim.users()) == ["rec0", "rec1", "rec2"]
    with session_scope() as session:  # the chunk was refused once (nothing sent), then went through as the probe
        assert [(o.status, o.attempts) for o in session.exec(select(Operation))] == [("succeeded", 2)] * 3



def test_a_reconciliation_of_a_quarantined_target_ends_at_once_and_the_other_connectors_go_on(tmp_path, sqlite_url):
    """Nothing is sent to the quarantined target, the run fails naming the quarantine and `outbound check`,
    and the next connector is reconciled as usual."""
    from models.events import EventUser
    from models.identity import upsert_user
    from models.tables import ReconciliationRun

    with ScimSandbox() as scim, ScimSandbox() as other:
        path = write_config(tmp_path, scim, after=1, initial=600, cap=600)
        env = f"TEST_QUARANTINE_TOKEN_{uuid.uuid4().hex[:8]}"
        os.environ[env] = other.token
        path.write_text(path.read_text() + f"""  - name: other
    type: scim2
    scim2:
      base_url: {other.url}
      auth: {{type: bearer, token: env:{env}}}
""")
        cfg = load_config(path).connector("app")
        with session_scope() as session:
            upsert_user(session, EventUser(username="qa", email="qa@example.com"), "example.com", source="api")
        health.check("app")
        health.record_failure("app", TransientError("POST /Bulk: HTTP 503", status=503), cfg)
        seen = len(scim.requests)
        started = time.monotonic()
        result = runner.invoke(app, ["reconcile", "--config", str(path)])
        assert time.monotonic() - started < 300  # it did not wait for the 600 s back-off
        assert result.exit_code == 1, result.output
        assert "app: not reconciled: connector app is quarantined" in result.output
        assert "outbound check --connector app" in result.output
        assert "other: succeeded: succeeded 1, failed 0" in result.output, result.output
        assert len(scim.requests) == seen  # not even listed
        assert [u["userName"] for u in other.users()] == ["qa"] and scim.users() == []
        assert health.get("app").consecutive_failures == 1  # refused at the door: not counted as a failure
    with session_scope() as session:
        runs = {r.connector: r for r in session.exec(select(ReconciliationRun))}
    assert runs["app"].status == "failed" and "quarantined" in runs["app"].error
    assert runs["other"].status == "succeeded"
