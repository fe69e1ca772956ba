"""The deletion guard of a deployment run (issue 6): a plan that deletes or disables more than max_deletions
pauses the flow run for an operator's Approval; approved, the plan is applied; rejected, nothing is.

The flow decides "deployment run" by `prefect.runtime.deployment.id`; Prefect's documented runtime mock
(PREFECT__RUNTIME__DEPLOYMENT__ID) makes the run look like one, so the real pause/resume path runs
against the session's Prefect test server.
"""

import asyncio
import threading
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
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
    from flows.reconcile import reconcile_connector

    out: dict = {}

    def run():
        try:
            out["result"] = asyncio.run(reconcile_connector(connector="app", config_path=config))
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
    assert paused.state.state_details.run_input_keyset  # it waits for the Approval form
    assert [r for r in scim.requests[before:] if r[0] in MUTATING] == []  # nothing applied while paused
    assert _last_run().status == "running"

    resume_flow_run(paused.id, run_input={"approve": approve, "comment": "checked by the test"})
    thread.join(timeout=120)
    assert not thread.is_alive(), "the flow run did not end after it was resumed"
    assert "error" not in out, out.get("error")
    result = out["result"]
    assert result["counts"]["delete"] == 3 and result["deletions"] == 3 and result["threshold"] == 1
    if approve:
        assert result["status"] == "succeeded" and result["outcomes"]["succeeded"] == 3, result
        assert sorted(u["userName"] for u in scim.users()) == sorted(f"user{i}" for i in range(3, 12))
        assert _last_run().status == "succeeded"
    else:
        assert result["status"] == "rejected", result
        assert [r for r in scim.requests[before:] if r[0] in MUTATING] == []
        assert len(scim.users()) == 12
        assert _last_run().status == "rejected"
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(paused.id).state.is_completed()
