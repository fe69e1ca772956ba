"""The event flow end to end: CLI → outbox → Prefect flow → a real SCIM server → the state store."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from sqlmodel import select

from helpers import event, send, write_config
from models.db import session_scope
from models.tables import Event, Mapping, Operation, OperationAttempt
from sandbox.faults import FaultPlan
from sandbox.scim import ScimSandbox

pytestmark = pytest.mark.usefixtures("prefect_harness")


def scim_users(scim):
    return {u["userName"]: u for u in scim.users()}


def test_create_update_delete_and_replay(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim)
    created = event(username="alice", email="alice@example.com", given_name="Alice", family_name="Liddell",
                    display_name="Alice Liddell")
    code, out = send(tmp_path, config, created)
    assert code == 0, out
    assert "app" in out and "create" in out and "succeeded" in out
    alice = scim_users(scim)["alice"]
    assert alice["name"] == {"givenName": "Alice", "familyName": "Liddell"}
    assert alice["emails"][0]["value"] == "alice@example.com" and alice["active"] is True
    assert alice["displayName"] == "Alice Liddell"
    with session_scope() as session:
        mapping = session.exec(select(Mapping)).one()
        assert alice["externalId"] == mapping.local_id and alice["id"] == mapping.remote_id
        op = session.exec(select(Operation).where(Operation.action == "provision")).one()
        assert op.flow_run_id and op.attempts == 1 and op.status == "succeeded"

    requests_before = len(scim.requests)
    code, out = send(tmp_path, config, created)  # the same event again
    assert code == 0 and "not applied again" in out
    assert len(scim.requests) == requests_before

    code, out = send(tmp_path, config, event("user.updated", username="alice", family_name="Hargreaves",
                                             email="alice.h@example.com"))
    assert code == 0 and "update" in out, out
    alice = scim_users(scim)["alice"]
    assert alice["name"]["familyName"] == "Hargreaves" and alice["emails"][0]["value"] == "alice.h@example.com"
    assert alice["name"]["givenName"] == "Alice"  # not in the update: left as it was

    code, out = send(tmp_path, config, event("user.disabled", username="alice"))
    assert code == 0 and scim_users(scim)["alice"]["active"] is False
    code, out = send(tmp_path, config, event("user.deleted", username="alice"))
    assert code == 0 and "delete" in out
    assert scim_users(scim) == {}
    with session_scope() as session:
        assert session.exec(select(Mapping)).all() == []
        assert {e.status for e in session.exec(select(Event))} == {"succeeded"}


def test_an_account_already_there_is_adopted_not_duplicated(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim)
    import requests

    requests.post(f"{scim.url}/Users", headers={"Authorization": f"Bearer {scim.token}"},
                  json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "bob"}).raise_for_status()
    code, out = send(tmp_path, config, event(username="bob"))
    assert code == 0 and "link" in out, out
    assert len(scim.users()) == 1 and scim.users()[0]["name"]["givenName"] == "Bob"


def test_transient_faults_are_retried_and_recorded(tmp_path, sqlite_url):
    plan = FaultPlan(rate=0.5, kinds=("5xx", "429", "drop"), only_methods=("POST",), seed=3, retry_after=0.01)
    with ScimSandbox(faults=plan) as scim:
        config = write_config(tmp_path, scim, attempts=10)
        results = [send(tmp_path, config, event(username=f"user{i}")) for i in range(6)]
        assert [code for code, _ in results] == [0] * 6, results
        assert len(scim.users()) == 6  # exactly once each, despite failures after the create
        assert sum(plan.injected.values()) > 0
    with session_scope() as session:
        ops = session.exec(select(Operation).where(Operation.action == "provision")).all()
        attempts = session.exec(select(OperationAttempt)).all()
    assert all(op.status == "succeeded" for op in ops)
    assert sum(op.attempts for op in ops) == len(attempts) > len(ops)
    assert {a.error_code for a in attempts if a.status == "failed"} <= {"transient", "rate_limited", "outcome_unknown"}


def test_rejection_fails_without_retry_and_exits_1(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector="""  - name: broken
    type: scim2
    scim2:
      base_url: {url}
      auth: {{type: bearer, token: env:WRONG_TOKEN_FOR_TEST}}
""".format(url=scim.url))
    os.environ["WRONG_TOKEN_FOR_TEST"] = "not-the-token"
    code, out = send(tmp_path, config, event(username="carol"))
    assert code == 1
    assert "broken" in out and "auth_failed" in out and "not-the-token" not in out
    with session_scope() as session:
        op = session.exec(select(Operation).where(Operation.connector == "broken")).one()
    assert op.status == "failed" and op.attempts == 1  # an auth failure is not retried


def test_invalid_event_exits_2_and_stores_nothing(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim)
    code, out = send(tmp_path, config, {"id": "e-bad", "type": "user.created", "user": {"username": ""}})
    assert code == 2 and "user.username" in out
    with session_scope() as session:
        assert session.exec(select(Event)).all() == []


def test_flow_on_postgresql(tmp_path, pg_url, scim):
    config = write_config(tmp_path, scim)
    code, out = send(tmp_path, config, event(username="dave"))
    assert code == 0, out
    with session_scope() as session:
        assert session.exec(select(Mapping)).one().remote_name == "dave"


CRASH_AFTER_CREATE = textwrap.dedent("""
    import os, signal, sys
    import connectors.scim2 as scim2
    real_batch = scim2.Scim2Connector.apply_batch
    def create_then_die(self, ops, **kw):
        real_batch(self, ops, **kw)          # the remote account now exists...
        os.kill(os.getpid(), signal.SIGKILL) # ...and the process dies before the store hears of it
    scim2.Scim2Connector.apply_batch = create_then_die
    from deployments.cli import main
    sys.argv = ["outbound", "event", sys.argv[1], "--config", sys.argv[2]]
    main()
""")


def test_killed_between_remote_create_and_db_write_adopts_on_rerun(tmp_path, sqlite_url, scim):
    from prefect.settings import PREFECT_API_URL

    config = write_config(tmp_path, scim)
    ev = event(username="erin")
    path = tmp_path / "erin.json"
    path.write_text(json.dumps(ev))
    script = tmp_path / "crash.py"
    script.write_text(CRASH_AFTER_CREATE)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or ""}
    crashed = subprocess.run([sys.executable, str(script), str(path), str(config)], env=env,
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert len(scim.users()) == 1
    with session_scope() as session:
        assert session.exec(select(Mapping)).all() == []  # the store never heard of the account

    code, out = send(tmp_path, config, ev)  # the same event, run again: it resumes
    assert code == 0 and "link" in out, out
    assert len(scim.users()) == 1
    with session_scope() as session:
        assert session.exec(select(Mapping)).one().remote_id == scim.users()[0]["id"]
        assert session.get(Event, ev["id"]).status == "succeeded"  # the killed run's claim did not block it
