"""The sweeper: an event accepted but never run (Prefect or a worker was down) is run again."""

import asyncio
from datetime import timedelta

import pytest

from models.ingest import accept
from flows.sweep import stuck_events, sweep_events
from helpers import event, write_config
from models.config import load_config
from models.db import session_scope
from models.tables import Event, utcnow
from sandbox.scim import ScimSandbox

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_stuck_events_start_a_drain_and_fresh_ones_alone_do_not(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        path = write_config(tmp_path, scim)
        config = load_config(path)
        stuck, crashed, fresh = event(username="stuck"), event(username="crashed"), event(username="fresh")
        for ev in (stuck, crashed, fresh):
            accept(ev, config)
        with session_scope() as session:  # as if stored 10 minutes ago and never (or half) run
            for ev, status in ((stuck, "accepted"), (crashed, "running")):
                row = session.get(Event, ev["id"])
                row.received_at, row.status = utcnow() - timedelta(minutes=10), status
        assert [i for i, _ in stuck_events(300)] == [stuck["id"], crashed["id"]]

        state = asyncio.run(sweep_events(older_than_seconds=300, config_path=str(path), return_state=True))
        result = state.result()
        assert _run_name(state) == "sweep: 2 overdue events"

        # The overdue events start a drain, which takes whatever is pending, the fresh event too.
        assert sorted(result["redispatched"]) == sorted([stuck["id"], crashed["id"]]) and result["failed"] == []
        assert sorted(u["userName"] for u in scim.users()) == ["crashed", "fresh", "stuck"]
        with session_scope() as session:
            assert {session.get(Event, e["id"]).status for e in (stuck, crashed, fresh)} == {"succeeded"}
        assert stuck_events(300) == []
        # A fresh event alone is not overdue: the sweep leaves it to the drain its acceptance started.
        late = event(username="late")
        accept(late, config)
        assert asyncio.run(sweep_events(older_than_seconds=300, config_path=str(path)))["redispatched"] == []
        with session_scope() as session:
            assert session.get(Event, late["id"]).status == "accepted"
        # A second sweep finds nothing and applies nothing twice.
        requests_before = len(scim.requests)
        state = asyncio.run(sweep_events(older_than_seconds=300, config_path=str(path), return_state=True))
        assert state.result()["redispatched"] == []
        assert len(scim.requests) == requests_before
        assert _run_name(state) == "sweep: nothing overdue"  # an empty sweep says so in the run list


def _run_name(state) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).name


def test_the_sweeper_is_scheduled_every_ten_minutes_not_every_minute():
    from pathlib import Path

    import yaml

    from deployments.catalog import named

    deployments = yaml.safe_load((Path(__file__).parent.parent / "prefect.yaml").read_text())["deployments"]
    sweep = next(d for d in deployments if d["name"] == "sweep-events")
    assert sweep["schedules"][0]["interval"] == named("sweep-events").interval == 600  # 144 runs a day, not 1,440


def test_status_shows_failures_reconciliations_and_the_oldest_unfinished_event(tmp_path, sqlite_url):
    import json

    from typer.testing import CliRunner

    from deployments.cli import app
    from models.runstate import record

    with ScimSandbox() as scim:
        path = write_config(tmp_path, scim)
        config = load_config(path)
        old, new = event(username="old"), event(username="new")
        accept(old, config)
        accept(new, config)
    with session_scope() as session:
        session.get(Event, old["id"]).received_at = utcnow() - timedelta(hours=2)
        record(session, event_id=new["id"], connector="app", entity_id="x", entity_name="x@PRIMARY",
               action="provision", operation="create", status="failed", error_code="rejected", attempts=1)
    result = CliRunner().invoke(app, ["status", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["oldest_unfinished_event"]["id"] == old["id"] and summary["unfinished_events"] == 2
    (app_row,) = summary["connectors"]
    assert app_row["connector"] == "app" and app_row["failed_last_day"] == 1
    table = CliRunner().invoke(app, ["status", "--config", str(path)])
    assert table.exit_code == 0 and old["id"] in table.output
