"""The deletion guard of a deployment run: a plan that deletes or disables more than max_deletions
pauses the flow run for an operator's Approval; approved, the plan is applied; rejected, nothing is.
Either way the decision (who, comment, plan hash) is stored, and the run reads back through the
Prefect client with the state, name, tags and artifact keys an operator filters by.

The flow decides "deployment run" by `prefect.runtime.deployment.id`; Prefect's documented runtime mock
(PREFECT__RUNTIME__DEPLOYMENT__ID) makes the run look like one, so the real pause/resume path runs
against the session's Prefect test server.
"""

import asyncio
import threading
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                            FlowRunFilterState, FlowRunFilterStateType, LogFilter,
                                            LogFilterFlowRunId)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run
from sqlmodel import select
from typer.testing import CliRunner

from deployments.cli import app
from helpers import write_config
from models.db import session_scope
from models.events import EventUser
from models.identity import find_user, upsert_user
from models.tables import ReconciliationRun, utcnow

pytestmark = pytest.mark.usefixtures("prefect_harness")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def _setup(tmp_path, scim) -> str:
    """12 accounts reconciled, then 3 users deleted locally: 3 deletes > max_deletions (10% of 12 = 1)."""
    config = write_config(tmp_path, scim)
    with session_scope() as session:
        for i in range(12):
            upsert_user(session, EventUser(username=f"user{i}", email=f"user{i}@example.com", given_name="G",
                                           family_name="F"), "example.com", source="api")
    result = CliRunner().invoke(app, ["reconcile", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert len(scim.users()) == 12
    with session_scope() as session:
        for i in range(3):
            find_user(session, "example.com", "PRIMARY", f"user{i}").deleted_at = utcnow()
    return str(config)


def _run_in_background(config: str) -> tuple[threading.Thread, dict]:
    from flows.reconcile import reconcile

    out: dict = {}

    def run():
        try:
            out["result"] = asyncio.run(reconcile("app", trigger="schedule", config_path=config))
        except BaseException as exc:  # surfaced by the test
            out["error"] = exc

    thread = threading.Thread(target=run, name="reconcile-under-test", daemon=True)
    thread.start()
    return thread, out


def _paused_run(config: str, out: dict, timeout: float = 120):
    """The paused reconcile-connector run of `config`, once it is paused."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert "error" not in out and "result" not in out, out  # it must pause, not end
            for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))):
                if run.parameters.get("config_path") == config:
                    return run
            time.sleep(0.5)
    pytest.fail("the reconcile flow run never paused")


def _logs_of(flow_run_id, expect: str, timeout: float = 20) -> str:
    """The run's log lines as the UI shows them, once `expect` is among them (logs reach the API in batches)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            text = "\n".join(log.message for log in logs)
            if expect in text or time.monotonic() > deadline:
                return text
            time.sleep(0.5)


def _last_run() -> ReconciliationRun:
    with session_scope() as session:
        return session.exec(select(ReconciliationRun).order_by(ReconciliationRun.started_at.desc())).first()


@pytest.mark.parametrize("approve", [True, False], ids=["approved", "rejected"])
def test_a_deployment_run_pauses_for_approval(tmp_path, sqlite_url, scim, monkeypatch, approve):
    config = _setup(tmp_path, scim)
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", "00000000-0000-4000-8000-000000000001")
    before = len(scim.requests)
    thread, out = _run_in_background(config)

    paused = _paused_run(config, out)
    keyset = paused.state.state_details.run_input_keyset
    assert keyset  # it waits for the Approval form
    with get_client(sync_client=True) as client:
        schema = client.read_flow_run_input(paused.id, keyset["schema"])
        description = client.read_flow_run_input(paused.id, keyset["description"])
    assert '"decision"' in schema and '"approver"' in schema
    import json

    form = json.loads(schema)
    assert {"decision", "approver"} <= set(form["required"])  # nothing chosen for the operator
    assert "default" not in form["properties"]["decision"]
    assert "| delete | 3 |" in description and "drift table" in description and "/artifacts/artifact/" in description
    assert [r for r in scim.requests[before:] if r[0] in MUTATING] == []  # nothing applied while paused
    assert _last_run().status == "running"
    # A Submit without a choice is refused, and the run stays paused.
    with pytest.raises(Exception):
        resume_flow_run(paused.id, run_input={"comment": "no choice"})
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(paused.id).state.is_paused()

    resume_flow_run(paused.id, run_input={"decision": "approve" if approve else "reject", "approver": "Dana Ops",
                                          "comment": "checked by the test"})
    thread.join(timeout=120)
    assert not thread.is_alive(), "the flow run did not end after it was resumed"
    assert "error" not in out, out.get("error")
    result = out["result"]
    assert result["counts"]["delete"] == 3 and result["deletions"] == 3 and result["threshold"] == 1
    run = _last_run()
    assert (run.decided_by, run.decision_comment) == ("Dana Ops", "checked by the test")
    assert len(run.plan_hash) == 64 and run.plan_hash == result["plan_hash"] and run.decided_at is not None
    if approve:
        assert result["status"] == "succeeded" and result["outcomes"]["succeeded"] == 3, result
        assert sorted(u["userName"] for u in scim.users()) == sorted(f"user{i}" for i in range(3, 12))
        assert (run.status, run.decision) == ("succeeded", "approved")
    else:
        assert result["status"] == "rejected", result
        assert [r for r in scim.requests[before:] if r[0] in MUTATING] == []
        assert len(scim.users()) == 12
        assert (run.status, run.decision) == ("rejected", "rejected")

    # As an operator finds it in the UI: state, name, tags, artifact keys, the decision in the logs.
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(paused.id)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[paused.id])))
    assert {"trigger:schedule", "connector:app"} <= set(flow_run.tags)
    assert {a.key for a in artifacts} >= {"outbound-app-plan", "outbound-app-drift", "outbound-app-summary"}
    summary = next(a for a in artifacts if a.key == "outbound-app-summary")
    messages = _logs_of(paused.id, "approved by" if approve else "rejected by")
    if approve:
        assert flow_run.state.type == StateType.COMPLETED and flow_run.name == "reconcile app (approved)"
        assert "approved by Dana Ops: checked by the test" in messages
        assert "approved by Dana Ops" in summary.data
    else:
        assert flow_run.state.type == StateType.CANCELLED and flow_run.name == "reconcile app (rejected)"
        assert flow_run.state.message == "rejected by Dana Ops: checked by the test"
        assert "rejected by Dana Ops: checked by the test" in messages
        assert "rejected by Dana Ops" in summary.data

    status = CliRunner().invoke(app, ["status", "--config", config, "--json"])
    last = json.loads(status.output)["connectors"][0]["last_reconciliation"]
    assert last["guard"]["decision"] == ("approved" if approve else "rejected")
    assert last["guard"]["by"] == "Dana Ops" and last["guard"]["plan_hash"] == run.plan_hash
