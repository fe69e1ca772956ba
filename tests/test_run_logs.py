"""What an operator reads in the Prefect UI, read back through the Prefect client: each user's
outcome in the run's log, tags that name the connectors that acted and failed, messages that say
what to do next."""

import os
import re
import time
import uuid

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from deployments.cli import app
from helpers import event, send, write_config
from models.db import session_scope
from models.events import EventUser
from models.identity import upsert_user
from models.tables import ReconciliationRun
from sandbox.faults import FaultPlan
from sandbox.scim import ScimSandbox

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run_of(event_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=event_id)))
        assert len(runs) == 1, [r.name for r in runs]
        return runs[0]


def logs_of(flow_run_id, *until: str, timeout: float = 30) -> list[tuple[int, str]]:
    """The run's log lines (level, message), once a line containing each of `until` has reached the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline, lines = time.monotonic() + timeout, []
    while time.monotonic() < deadline:  # the run's logs are shipped to the server in the background
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                    limit=200)
        lines = [(log.level, log.message) for log in logs]
        if all(any(u in m for _, m in lines) for u in until):
            return lines
        time.sleep(0.3)
    raise AssertionError(f"no log line with {until!r} in {lines}")


def broken_connector(down) -> str:
    os.environ["BROKEN_TOKEN"] = down.token
    return f"""  - name: broken
    type: scim2
    scim2:
      base_url: {down.url}
      auth: {{type: bearer, token: env:BROKEN_TOKEN}}
"""


def test_an_event_run_logs_each_users_outcome_and_is_tagged_with_what_acted_and_failed(tmp_path, sqlite_url):
    with ScimSandbox() as good, ScimSandbox(faults=FaultPlan(rate=1.0, kinds=("5xx",))) as down:
        config = write_config(tmp_path, good, attempts=2, extra_connector=broken_connector(down))
        name = f"logs{uuid.uuid4().hex[:6]}"
        ev = event(username=name)
        code, out = send(tmp_path, config, ev)
        assert code == 1, out
        remote_id = good.users()[0]["id"]

    run = run_of(ev["id"])
    lines = logs_of(run.id, f"user={name}@PRIMARY connector=broken", f"user={name}@PRIMARY connector=app")
    assert (20, f"user={name}@PRIMARY connector=app create succeeded remote_id={remote_id}") in lines, lines
    failed = [(level, m) for level, m in lines if m.startswith(f"user={name}@PRIMARY connector=broken ")]
    assert failed and failed[0][0] == 30 and "failed error=transient" in failed[0][1], failed
    assert {"connector:app", "connector:broken", "failed:broken"} <= set(run.tags), run.tags
    assert "failed:app" not in run.tags
    # The message says where, whether and when it is tried again, and what to run.
    assert f"broken at {down.url.rstrip('/')}" in run.state.message, run.state.message
    assert "attempt 1 of 8, next at " in run.state.message and f"`outbound retry {ev['id']}`" in run.state.message
    assert f"run: http://" in out and f"/runs/flow-run/{run.id}" in out, out
    # `outbound status` counts the retrying event as outstanding, and says health in words.
    status = CliRunner().invoke(app, ["status", "--config", str(config)])
    assert status.exit_code == 0, status.output
    assert f"unfinished events: 1; oldest {ev['id']} (user.created, retrying)" in status.output, status.output
    assert "healthy" in status.output and "closed" not in status.output, status.output


def test_a_refused_credential_says_to_check_the_connector(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim)
    os.environ["WRONG_TOKEN"] = "not-the-token"
    config.write_text(re.sub(r"env:TEST_SCIM_TOKEN_\d+", "env:WRONG_TOKEN", config.read_text()))
    ev = event(username=f"auth{uuid.uuid4().hex[:6]}")
    code, out = send(tmp_path, config, ev)
    assert code == 1 and "auth_failed" in out, out
    message = run_of(ev["id"]).state.message
    assert "`outbound check --connector app`" in message and f"`outbound retry {ev['id']}`" in message, message


def test_a_reconciliation_logs_the_first_outcomes_and_counts_the_rest(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim)
    with session_scope() as session:
        for i in range(55):
            upsert_user(session, EventUser(username=f"rec{i}", email=f"rec{i}@example.com", given_name="G",
                                           family_name="F"), "example.com", source="api")
    result = CliRunner().invoke(app, ["reconcile", "--config", str(config)])
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        run = session.exec(select(ReconciliationRun).order_by(ReconciliationRun.started_at.desc())).first()
    lines = [m for _, m in logs_of(run.flow_run_id, "… and 5 more")]
    outcomes = [m for m in lines if m.startswith("user=rec")]
    assert len(outcomes) == 50, lines
    assert all(" connector=app create succeeded remote_id=" in m for m in outcomes), outcomes
    assert f"app: run http://" in result.output and f"/runs/flow-run/{run.flow_run_id}" in result.output


def test_the_drainer_fails_when_a_run_it_started_failed(tmp_path, sqlite_url):
    import asyncio

    from models.ingest import accept
    from flows.provision import drain_events
    from models.config import load_config

    with ScimSandbox(faults=FaultPlan(rate=1.0, kinds=("5xx",))) as down:
        config = write_config(tmp_path, down, attempts=1)
        accept(event(username=f"drain{uuid.uuid4().hex[:6]}"), load_config(config))
        state = asyncio.run(drain_events(config_path=str(config), run_for_seconds=1, poll_seconds=0.1,
                                         return_state=True))
    assert state.is_failed(), state
    assert state.message.startswith("1 provision run it started failed") and "transient" in state.message, state.message


def test_a_failed_reconciliation_is_tagged_failed_and_says_what_to_do(tmp_path, sqlite_url):
    from prefect.client.orchestration import get_client

    with ScimSandbox(faults=FaultPlan(rate=1.0, kinds=("5xx",), only_methods=("POST",))) as refusing:
        config = write_config(tmp_path, refusing, attempts=1)
        with session_scope() as session:
            upsert_user(session, EventUser(username="recfail", email="recfail@example.com"), "example.com",
                        source="api")
        result = CliRunner().invoke(app, ["reconcile", "--config", str(config)])
        url = refusing.url.rstrip("/")
    assert result.exit_code != 0, result.output
    with session_scope() as session:
        run = session.exec(select(ReconciliationRun).order_by(ReconciliationRun.started_at.desc())).first()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run.flow_run_id)
    assert {"connector:app", "failed:app"} <= set(flow_run.tags), flow_run.tags
    message = flow_run.state.message
    assert message.startswith("app: 1 of 1 operations failed; first: create recfail@PRIMARY"), message
    assert f"app at {url}" in message and "`outbound reconcile --connector app`" in message, message


def test_a_skip_logs_the_policys_reason(tmp_path, sqlite_url, scim):
    env = "SKIP_SCIM_TOKEN"
    os.environ[env] = scim.token
    crm = f"""  - name: crm
    type: scim2
    roles: [sales]
    scim2:
      base_url: {scim.url}
      auth: {{type: bearer, token: env:{env}}}
"""
    config = write_config(tmp_path, scim, extra_connector=crm)
    name = f"skip{uuid.uuid4().hex[:6]}"
    ev = event(username=name)
    code, out = send(tmp_path, config, ev)
    assert code == 0, out
    lines = [m for _, m in logs_of(run_of(ev["id"]).id, f"user={name}@PRIMARY connector=crm")]
    skipped = [m for m in lines if m.startswith(f"user={name}@PRIMARY connector=crm ")]
    assert skipped and "skipped reason=" in skipped[0] and "sales" in skipped[0], lines


def test_a_refused_value_says_which_configuration_field_to_fix(tmp_path, sqlite_url, scim):
    from flows.provision import next_step
    from models.config import load_config
    from models.ingest import accept
    from tasks.provision import Outcome

    config = load_config(write_config(tmp_path, scim))
    ev = accept(event(username="valerie"), config)
    refused = Outcome(connector="app", action="provision", operation="create", status="failed", reason="",
                      code="rejected", error="rejected: POST /Users: HTTP 400 invalidValue: emails")
    step = next_step([refused], ev.event_id, config)
    assert step.startswith("app at http://127.0.0.1:") and "not tried again automatically" in step, step
    assert "app refused a value (named above): correct it at the source or in connectors[0].attributes" in step
    assert step.endswith(f"`outbound retry {ev.event_id}`"), step
