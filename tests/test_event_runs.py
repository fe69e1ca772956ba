"""Provisioning runs as operators see them: read back through the Prefect client.

A failed connector makes a Failed run naming who and where; the event says whether it will be
retried; `outbound retry` re-drives it; every change is a Prefect event about the user.
"""

import json
import time
import uuid

import pytest
from sqlmodel import select

from helpers import event, send, write_config
from models.db import session_scope
from models.tables import Event
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


def test_a_failed_connector_fails_the_run_naming_the_user_and_the_event_retries(tmp_path, sqlite_url):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with ScimSandbox() as good, ScimSandbox(faults=FaultPlan(rate=1.0, kinds=("5xx",))) as down:
        config = write_config(tmp_path, good, attempts=2, extra_connector=f"""  - name: broken
    type: scim2
    scim2:
      base_url: {down.url}
      auth: {{type: bearer, token: env:BROKEN_TOKEN}}
""")
        import os

        os.environ["BROKEN_TOKEN"] = down.token
        ev = event(username="ursula")
        code, out = send(tmp_path, config, ev)
        assert code == 1 and "broken" in out and "transient" in out, out
        assert [u["userName"] for u in good.users()] == ["ursula"]  # the healthy connector did its part

    run = run_of(ev["id"])
    assert run.state_type.value == "FAILED"
    assert "ursula@PRIMARY" in run.state.message and "broken" in run.state.message
    assert run.name == f"provision ursula@PRIMARY ({ev['id']})"
    assert {"trigger:api", "connector:app", "connector:broken"} <= set(run.tags)
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))}
    assert {"outbound-app-operations", "outbound-broken-operations"} <= keys
    with session_scope() as session:
        stored = session.get(Event, ev["id"])
        assert stored.status == "retrying" and stored.attempts == 1 and stored.retry_at is not None
        assert "broken: transient" in stored.error


def test_a_refused_user_fails_for_good_and_outbound_retry_re_drives_it(tmp_path, sqlite_url, scim):
    from typer.testing import CliRunner

    from deployments.cli import app

    config = write_config(tmp_path, scim, extra_connector="", name="app")
    first, second = event(username="dora"), event(username="dora", user_store="SECONDARY")
    assert send(tmp_path, config, first)[0] == 0
    code, out = send(tmp_path, config, second)  # the same remote username: a collision, not a passing failure
    assert code == 1 and "collision" in out, out
    with session_scope() as session:
        assert session.get(Event, second["id"]).status == "failed"
    assert run_of(second["id"]).state_type.value == "FAILED"

    # The operator resolves it (here: the suffix rule), then re-drives the event.
    text = config.read_text().replace("    type: scim2\n", "    type: scim2\n    on_collision: suffix\n", 1)
    config.write_text(text)
    result = CliRunner().invoke(app, ["retry", second["id"], "--config", str(config)])
    assert result.exit_code == 0 and "was failed" in result.output and "create" in result.output, result.output
    assert sorted(u["userName"] for u in scim.users()) == ["dora", "dora2"]
    with session_scope() as session:
        assert session.get(Event, second["id"]).status == "succeeded"


def test_each_change_is_a_prefect_event_about_the_user(tmp_path, sqlite_url, scim):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventResourceFilter

    config = write_config(tmp_path, scim)
    name = f"hist{uuid.uuid4().hex[:6]}"
    assert send(tmp_path, config, event(username=name))[0] == 0
    assert send(tmp_path, config, event("user.updated", username=name, family_name="Changed"))[0] == 0
    assert send(tmp_path, config, event("user.deleted", username=name))[0] == 0
    resource = f"outbound.user.{name}@PRIMARY"
    deadline, seen = time.monotonic() + 30, []
    while time.monotonic() < deadline:  # events reach the server asynchronously
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=EventFilter(resource=EventResourceFilter(id=[resource])), limit=50)
        seen = sorted((e.occurred, e.event) for e in page.events)
        if len(seen) >= 3:
            break
        time.sleep(0.5)
    assert [e for _, e in seen] == ["outbound.account.created", "outbound.account.updated", "outbound.account.deleted"]
    related = {r.role: r.id for r in page.events[0].related}
    assert related["connector"] == "outbound.connector.app" and related["flow-run"].startswith("prefect.flow-run.")


def test_a_batch_of_changes_is_one_prefect_event_per_kind_naming_each_user(tmp_path, sqlite_url, scim):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

    from models.ingest import accept
    from flows.provision import provision_user
    from models.config import load_config

    config = write_config(tmp_path, scim)
    run = uuid.uuid4().hex[:6]
    names = [f"many{run}{i}" for i in range(3)]
    for name in names:  # stored first, then one drain: a batch of three users
        accept(event(username=name), load_config(config))
    asyncio.run(provision_user(config_path=str(config), return_state=True))
    resource = f"outbound.user.{names[1]}@PRIMARY"
    deadline, page = time.monotonic() + 30, None
    while time.monotonic() < deadline:  # events reach the server asynchronously
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=EventFilter(any_resource=EventAnyResourceFilter(id=[resource]),
                                                         event=EventNameFilter(name=["outbound.account.created"])),
                                      limit=50)
        if page.events:
            break
        time.sleep(0.5)
    assert page is not None and len(page.events) == 1, page
    told = page.events[0]
    assert told.resource.id == "outbound.connector.app"
    users = {r.id for r in told.related if r.role == "user"}
    assert users == {f"outbound.user.{n}@PRIMARY" for n in names}
    assert sorted(u["user"] for u in told.payload["users"]) == sorted(f"{n}@PRIMARY" for n in names)
    assert all(u["operation"] == "create" and u["remote_id"] for u in told.payload["users"])


def test_a_user_created_by_a_reconciliation_has_the_same_history(tmp_path, sqlite_url, scim):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventAnyResourceFilter, EventFilter
    from typer.testing import CliRunner

    from deployments.cli import app
    from models.events import EventUser
    from models.identity import upsert_user
    from models.tables import ReconciliationRun

    config = write_config(tmp_path, scim)
    name = f"rech{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        upsert_user(session, EventUser(username=name, email=f"{name}@example.com", given_name="R", family_name="H"),
                    "example.com", source="api")
    result = CliRunner().invoke(app, ["reconcile", "--config", str(config)])
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        run = session.exec(select(ReconciliationRun).order_by(ReconciliationRun.started_at.desc())).first()
    resource = f"outbound.user.{name}@PRIMARY"
    deadline, page = time.monotonic() + 30, None
    while time.monotonic() < deadline:  # events reach the server asynchronously
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=EventFilter(any_resource=EventAnyResourceFilter(id=[resource])), limit=50)
        if page.events:
            break
        time.sleep(0.5)
    assert page is not None and [e.event for e in page.events] == ["outbound.account.created"], page
    told = page.events[0]
    assert told.resource.id == resource and told.payload["operation"] == "create" and told.payload["remote_id"]
    assert told.payload["remote_id"] == scim.users()[0]["id"]
    related = {r.role: r.id for r in told.related}
    assert related["connector"] == "outbound.connector.app"
    assert related["flow-run"] == f"prefect.flow-run.{run.flow_run_id}"
    assert related["reconciliation"] == f"outbound.reconciliation.{run.id}"
