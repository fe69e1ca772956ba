"""The flows while the state store goes away and comes back: their runs fail naming it; then all is finished.

A throwaway PostgreSQL cluster (sandbox/postgres.py) is the store of the event API, whose two
in-process drainers provision every accepted event to a real SCIM server. In the middle of a burst
the cluster is stopped for 20 s. Every flow run that starts meanwhile (the API's own drains, and a
drain, a sweep and a drain-events watcher started by hand) must end Failed with a message naming
the store, read back from Prefect. Once the store is back, the drains and the sweeper must finish
every event the API answered 202: each succeeded, each user one account, none lost.
"""

import asyncio
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select

from deployments.api import create_app
from helpers import write_config
from models.config import load_config
from models.db import redacted, session_scope
from models.tables import Event
from test_api_outage import SECRET, Sender, cluster  # noqa: F401 - `cluster` is a fixture

pytestmark = pytest.mark.usefixtures("prefect_harness")
SENDERS, OUTAGE_SECONDS = 2, 20
UNREACHABLE = "state store unreachable: "


def flow_runs_since(since: datetime) -> list:
    """The provision-user, sweep-events and drain-events runs started after `since`, from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter,
                                                FlowRunFilterExpectedStartTime)

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["provision-user", "sweep-events", "drain-events"])),
                flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
                limit=200)

    return asyncio.run(read())


def unfinished() -> int:
    with session_scope() as session:
        return len(session.exec(select(Event.id).where(Event.status.not_in(("succeeded", "failed")))).all())


def test_flows_fail_naming_the_store_and_everything_accepted_is_finished_when_it_returns(cluster, scim, tmp_path,
                                                                                         monkeypatch):
    from apiserver import served
    from flows.provision import drain_events, provision_user
    from flows.sweep import sweep_events

    monkeypatch.setenv("OUTAGE_WEBHOOK_SECRET", SECRET)
    config = write_config(tmp_path, scim, top="api: {webhook_secrets: [env:OUTAGE_WEBHOOK_SECRET]}")
    app = create_app(load_config(config), str(config), dispatch="in-process", workers=2)
    began = datetime.now(timezone.utc)
    with served(app) as (base, _log):
        senders = [Sender(base, n) for n in range(SENDERS)]
        threads = [threading.Thread(target=s.run) for s in senders]
        for t in threads:
            t.start()
        try:
            time.sleep(4)
            cluster.stop()
            down_from, stopped = datetime.now(timezone.utc), time.monotonic()
            time.sleep(1)
            # Started by hand while the store is down, as a worker or a schedule would start them.
            by_hand = [asyncio.run(provision_user(config_path=str(config), return_state=True)),
                       asyncio.run(sweep_events(older_than_seconds=0, config_path=str(config), return_state=True)),
                       asyncio.run(drain_events(config_path=str(config), run_for_seconds=3, return_state=True))]
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
            down_until = datetime.now(timezone.utc)
            cluster.start()
            back, at_return = time.monotonic(), unfinished()
            time.sleep(3)  # the burst goes on: its events wake the drainers, which take the rest too
        finally:
            for s in senders:
                s.stop.set()
            for t in threads:
                t.join(timeout=60)
        deadline = time.monotonic() + 30
        while (left_to_sweep := unfinished()) and time.monotonic() < deadline:
            time.sleep(0.5)
        drained_in = time.monotonic() - back
        swept = asyncio.run(sweep_events(older_than_seconds=0, config_path=str(config), return_state=True))

    store = redacted(cluster.url)
    for state in by_hand:
        assert state.is_failed(), state
        assert state.message.startswith(f"{UNREACHABLE}{store}; "), state.message
    assert by_hand[0].message.endswith("the events stay accepted and are retried when it returns")
    assert swept.is_completed(), swept

    runs = flow_runs_since(began)
    assert {str(s.state_details.flow_run_id) for s in by_hand} <= {str(r.id) for r in runs}
    while_down = [r for r in runs if r.start_time and down_from < r.start_time < down_until - timedelta(seconds=1)]
    assert len(while_down) >= len(by_hand)
    for run in while_down:  # read back from Prefect: none Completed, none Crashed, each says why
        assert run.state.type.value == "FAILED" and run.state.message.startswith(UNREACHABLE), (run.name, run.state)
    failed = [r for r in runs if r.state and r.state.type.value not in ("COMPLETED", "RUNNING", "PENDING")]
    assert all(r.state.type.value == "FAILED" and r.state.message.startswith(UNREACHABLE) for r in failed), \
        [(r.name, r.state.type.value, r.state.message) for r in failed]

    answers = [a for s in senders for a in s.answers]
    accepted = {ev["id"] for ev, status, *_ in answers if status == 202}
    with session_scope() as session:
        events = {e.id: (e.status, e.user_id) for e in session.exec(select(Event))}
    assert accepted <= set(events), f"{len(accepted - set(events))} events answered 202 are not in the store"
    not_done = {i: s for i, (s, _) in events.items() if s != "succeeded"}
    assert not not_done, f"{len(not_done)} events not succeeded: {list(not_done.items())[:5]}"
    accounts: dict[str, int] = {}
    for user in scim.users():
        accounts[user.get("externalId")] = accounts.get(user.get("externalId"), 0) + 1
    duplicates = sum(n - 1 for n in accounts.values())
    users = {u for _, u in events.values()}
    assert duplicates == 0 and set(accounts) == users, (duplicates, len(accounts), len(users))  # 0 lost, 0 doubled
    print(f"\nstore outage, flows: {len(answers)} POSTs, {len(accepted)} answered 202, {len(events)} events stored; "
          f"{len(while_down)} flow runs started while the store was down, all Failed naming it "
          f"({len(while_down) - len(by_hand)} of them the API's drainers); {at_return} events unfinished when it "
          f"returned, {left_to_sweep} left for the final sweep {drained_in:.0f} s later; succeeded "
          f"{len(events) - len(not_done)}/{len(events)}; accounts {len(accounts)} for {len(users)} users; "
          f"lost 0, duplicates {duplicates}")


@pytest.mark.parametrize("task_name", ["resolve-policy", "generate-username"])
def test_a_task_running_when_the_store_goes_fails_in_one_line_without_a_traceback(cluster, scim, tmp_path,
                                                                                  monkeypatch, task_name):
    """The store is stopped for real from inside the task (the one way to stop it at a known point)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    import tasks.desired as desired
    from models.ingest import accept
    from flows.provision import provision_user
    from helpers import event

    config = write_config(tmp_path, scim)
    accepted = accept(event(username="outage"), load_config(config))
    hooked = "connectors_of_users" if task_name == "resolve-policy" else "desired_state"
    real = getattr(desired, hooked)

    def store_goes(*args, **kwargs):
        if cluster.running():  # once: the run after the store's return goes through
            cluster.stop()
            monkeypatch.setattr(desired, hooked, real)
        return real(*args, **kwargs)

    monkeypatch.setattr(desired, hooked, store_goes)
    state = asyncio.run(provision_user(config_path=str(config), return_state=True))
    assert state.is_failed() and state.message.startswith(UNREACHABLE), state
    APILogHandler().flush()
    run_id = state.state_details.flow_run_id

    async def read():
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            return logs, tasks

    deadline = time.monotonic() + 30
    while True:  # logs reach the API in batches: wait for the run's last line
        logs, task_runs = asyncio.run(read())
        if any("Finished in state Failed" in log.message and not log.task_run_id for log in logs):
            break
        assert time.monotonic() < deadline, [log.message for log in logs]
        time.sleep(0.5)
    assert not [log.message for log in logs if "Traceback" in log.message], \
        [log.message for log in logs if "Traceback" in log.message][0]
    failed = [t for t in task_runs if t.state.is_failed()]
    assert [t.name.partition(" ")[0] for t in failed] == [task_name], [(t.name, t.state.type) for t in task_runs]
    message = failed[0].state.message
    assert "\n" not in message and f"{UNREACHABLE}{redacted(cluster.url)} (OperationalError)" in message, message
    cluster.start()  # the event was left to run again
    assert asyncio.run(provision_user(config_path=str(config), return_state=True)).is_completed()
    with session_scope() as session:
        assert session.get(Event, accepted.event_id).status == "succeeded"
