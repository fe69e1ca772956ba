"""Crashes: SIGKILL in the middle of a bulk reconciliation and of an event, at several points; run again.

Each scenario runs the work in a subprocess that patches one function to kill its own process
(SIGKILL: no cleanup, no finally) at a chosen point. Then the work runs again and the state must
converge: one account per user, no event lost, no operation, attempt or run left running.
(Killed between the remote create and the mapping write of an event: tests/test_flow.py.)
"""

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from deployments.cli import app
from helpers import event, write_config
from models.db import session_scope
from models.events import EventUser
from models.identity import upsert_user
from models.tables import Event, Mapping, Operation, OperationAttempt, ReconciliationRun
from sandbox.scim import ScimSandbox

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()

DIE = "os.kill(os.getpid(), signal.SIGKILL)"
PATCHES = {
    # --- bulk reconciliation -----------------------------------------------------------
    "listing": f"""
        import connectors.scim2 as scim2
        real = scim2.Scim2Connector.iter_users
        def listing(self):
            for n, account in enumerate(real(self)):
                if n == 3:
                    {DIE}          # killed mid-listing
                yield account
        scim2.Scim2Connector.iter_users = listing
    """,
    "batch-returned": f"""
        import connectors.scim2 as scim2
        real = scim2.Scim2Connector.apply_batch
        def batch(self, ops, **kw):
            results = real(self, ops, **kw)   # the target holds the accounts now...
            {DIE}                             # ...and the chunk's operations and mappings are never written
        scim2.Scim2Connector.apply_batch = batch
    """,
    "chunk-written": f"""
        import tasks.apply as apply
        real = apply.apply_rows
        def rows(*args, **kwargs):
            counts = real(*args, **kwargs)    # chunk 1 done and recorded; the others in flight or not started
            {DIE}
        apply.apply_rows = rows
    """,
    # --- the event flow ----------------------------------------------------------------
    "claimed": f"""
        import tasks.provision as provision
        def make_plan(*args, **kwargs):       # the drain has claimed the event; nothing sent yet
            {DIE}
        provision.make_plan = make_plan
    """,
    "event-batch-returned": f"""
        import connectors.scim2 as scim2
        real = scim2.Scim2Connector.apply_batch
        def batch(self, ops, **kw):
            results = real(self, ops, **kw)   # the account exists in the target...
            {DIE}                             # ...and the store never hears of it
        scim2.Scim2Connector.apply_batch = batch
    """,
    "leases-released": f"""
        import models.outbox as outbox
        real = outbox.release
        def release(batch):                   # the events are final and the users given back...
            real(batch)
            {DIE}                             # ...and the run never reports its end
        outbox.release = release
    """,
    "watching": f"""
        import flows.provision as provision
        async def watch(*args, **kwargs):    # drain-events has started watching the outbox
            {DIE}
        provision._watch = watch
    """,
    "outcome-written": f"""
        import flows.provision as provision
        def finish(batch, outcome):           # operations and mappings are committed; the event is not
            {DIE}
        provision.finish = finish
    """,
}
SCRIPT = """
import asyncio, os, signal, sys
{patch}
if sys.argv[1] == "reconcile":
    from flows.reconcile import reconcile_connector
    asyncio.run(reconcile_connector(connector="app", config_path=sys.argv[2], chunk_size=4))
elif sys.argv[1] == "drain-events":
    from flows.provision import drain_events
    asyncio.run(drain_events(config_path=sys.argv[2], run_for_seconds=60))
else:
    from deployments.cli import main
    sys.argv = ["outbound", "event", sys.argv[2], "--config", sys.argv[3]]
    main()
"""


def crash(tmp_path, point: str, *args) -> None:
    """Run the work in a subprocess patched to SIGKILL itself at `point`; it must have died there."""
    from prefect.settings import PREFECT_API_URL

    script = tmp_path / f"crash-{point}.py"
    script.write_text(SCRIPT.format(patch=textwrap.dedent(PATCHES[point])))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or "", "PREFECT_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == -9, (done.stdout[-1000:], done.stderr[-3000:])


@pytest.fixture
def scim():
    with ScimSandbox() as server:
        yield server


def prefect_state(flow_run_id: str):
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id)).state


def add_users(n: int, start: int = 0) -> list[str]:
    with session_scope() as session:
        return [upsert_user(session, EventUser(username=f"u{i}", email=f"u{i}@example.com", given_name=f"G{i}",
                                               family_name="Crash"), "example.com", source="import").id
                for i in range(start, start + n)]


def reconcile(config) -> tuple[int, str]:
    result = runner.invoke(app, ["reconcile", "--config", str(config)])
    return result.exit_code, result.output


def assert_converged(scim, ids: list[str]) -> None:
    """One account per user, its mapping pointing at it, and nothing left running."""
    users = scim.users()
    per_ext = {}
    for u in users:
        per_ext.setdefault(u.get("externalId"), []).append(u["id"])
    assert sorted(per_ext) == sorted(ids), (len(users), len(ids))
    assert all(len(v) == 1 for v in per_ext.values()), "duplicate accounts"
    with session_scope() as session:
        maps = {m.local_id: m.remote_id for m in session.exec(select(Mapping))}
        assert maps == {ext: remote[0] for ext, remote in per_ext.items()}
        assert session.exec(select(Operation).where(Operation.status.in_(("running", "retrying")))).all() == []
        assert session.exec(select(OperationAttempt).where(OperationAttempt.status == "running")).all() == []
        assert session.exec(select(ReconciliationRun).where(ReconciliationRun.status == "running")).all() == []
        assert {e.status for e in session.exec(select(Event))} <= {"succeeded"}


# --- bulk reconciliation ---------------------------------------------------------------------

@pytest.mark.parametrize("point", ["listing", "batch-returned", "chunk-written"])
def test_reconciliation_killed_then_run_again_converges(point, tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim)
    ids = add_users(6)
    if point == "listing":  # something to list: the first six are there already
        code, out = reconcile(config)
        assert code == 0, out
    ids += add_users(14, start=6)
    crash(tmp_path, point, "reconcile", config)
    with session_scope() as session:
        killed = session.exec(select(ReconciliationRun).where(ReconciliationRun.status == "running")).one()
    if point != "listing":
        assert scim.users(), "the kill came after the first batch reached the target"

    code, out = reconcile(config)  # the lease of the dead process is taken over at once
    assert code == 0, out
    assert_converged(scim, ids)
    with session_scope() as session:
        run = session.get(ReconciliationRun, killed.id)
        assert run.status == "abandoned" and "interrupted" in run.error and run.finished_at
        ops = session.exec(select(Operation)).all()
    state = prefect_state(killed.flow_run_id)  # its process never said it ended: the next run closed it
    assert state.type.value == "CRASHED" and "interrupted (marked abandoned)" in state.message, state
    if point == "batch-returned":  # the accounts created before the kill were adopted, not created again
        assert "link" in {o.operation for o in ops}
    code, out = reconcile(config)
    assert code == 0 and "nothing to do" in out, out


# --- the event flow --------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["claimed", "event-batch-returned", "outcome-written"])
def test_event_killed_then_swept_converges(point, tmp_path, sqlite_url, scim):
    from flows.sweep import sweep_events

    config = write_config(tmp_path, scim)
    ev = event(username="kim")
    path = tmp_path / "kim.json"
    path.write_text(json.dumps(ev))
    crash(tmp_path, point, "event", path, config)
    with session_scope() as session:
        assert session.get(Event, ev["id"]).status == "running"  # stored, claimed, never finished
        mapped = session.exec(select(Mapping)).all()
    assert len(scim.users()) == (0 if point == "claimed" else 1)
    assert len(mapped) == (1 if point == "outcome-written" else 0)
    writes = [r for r in scim.requests if r[0] != "GET"]

    result = asyncio.run(sweep_events(older_than_seconds=0, config_path=str(config)))
    assert result["redispatched"] == [ev["id"]] and result["failed"] == []
    with session_scope() as session:
        user_id = session.get(Event, ev["id"]).user_id
        ops = session.exec(select(Operation).where(Operation.action == "provision", Operation.event_id == ev["id"])
                           .order_by(Operation.id)).all()
    assert_converged(scim, [user_id])
    if point == "claimed":  # the dead drain's claim was taken over at once; the re-run did the work
        assert [o.operation for o in ops] == ["create"]
    elif point == "event-batch-returned":  # the account created before the kill is adopted, not created again
        assert [o.operation for o in ops] == ["link"]
    else:  # applied at most once: the re-run found the account as wanted and sent nothing
        assert [o.operation for o in ops] == ["create", "noop"]
        assert [r for r in scim.requests if r[0] != "GET"] == writes


def test_a_drain_killed_mid_batch_is_marked_crashed_in_prefect_when_its_events_are_taken_over(tmp_path, sqlite_url,
                                                                                            scim):
    """Its process never reports an end, so Prefect shows the run Running until the next drain closes it."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    from models.ingest import accept
    from flows.sweep import sweep_events
    from models.config import load_config
    from models.locks import run_of
    from models.tables import Lease

    config = write_config(tmp_path, scim)
    others = [event(username=f"mate{i}") for i in range(4)]
    for ev in others:  # pending: the killed drain takes them into its batch with kim's event
        accept(ev, load_config(config))
    kim = event(username="kim")
    path = tmp_path / "kim.json"
    path.write_text(json.dumps(kim))
    crash(tmp_path, "event-batch-returned", "event", path, config)
    assert len(scim.users()) == 5  # the whole batch reached the target before the kill
    with session_scope() as session:
        owners = {lease.owner for lease in session.exec(select(Lease)).all()}
        assert {e.status for e in session.exec(select(Event))} == {"running"}
    dead_runs = {run_of(o) for o in owners}
    assert len(dead_runs) == 1 and None not in dead_runs, owners  # one drain held all five users
    dead_run = UUID(dead_runs.pop())
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(dead_run).state.is_running()

    result = asyncio.run(sweep_events(older_than_seconds=0, config_path=str(config)))
    assert sorted(result["redispatched"]) == sorted(e["id"] for e in [kim, *others]) and result["failed"] == []
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(dead_run).state
    assert state.type.value == "CRASHED" and "taken over" in state.message, state
    with session_scope() as session:
        ids = [e.user_id for e in session.exec(select(Event))]
    assert_converged(scim, ids)  # every event succeeded, one account per user


def test_a_drain_whose_lease_expired_on_another_machine_is_marked_crashed_when_its_events_are_taken_over(
        tmp_path, sqlite_url, scim):
    """No pid to check there: the lease's expiry is the only sign that its process stopped."""
    import socket
    from datetime import timedelta
    from uuid import UUID

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from models.ingest import accept
    from flows.sweep import sweep_events
    from models.config import load_config
    from models.outbox import CLAIM_TTL
    from models.tables import Lease, utcnow

    @flow(name="provision-user")
    def elsewhere():
        """Stands for a drain on another machine: Prefect reads its run Running, and nothing will end it."""

    config = write_config(tmp_path, scim)
    kim, lee = event(username="kim"), event(username="lee")
    for ev in (kim, lee):
        accept(ev, load_config(config))
    with get_client(sync_client=True) as client:
        gone, alive = (client.create_flow_run(elsewhere, state=Running()).id for _ in range(2))
    host = "worker-b"
    assert host != socket.gethostname()
    now = utcnow()
    with session_scope() as session:
        users = {e.id: e.user_id for e in session.exec(select(Event))}
        for event_id, run, expires in ((kim["id"], gone, now - timedelta(seconds=1)),
                                       (lee["id"], alive, now + timedelta(seconds=CLAIM_TTL))):
            session.get(Event, event_id).status = "running"  # claimed there, never finished
            session.add(Lease(name=f"user:{users[event_id]}", owner=f"{host}:4242:0badc0de:run={run}",
                              acquired_at=expires - timedelta(seconds=CLAIM_TTL), expires_at=expires))

    result = asyncio.run(sweep_events(older_than_seconds=0, config_path=str(config)))
    assert result["redispatched"] == [kim["id"]] and result["failed"] == [lee["id"]]  # lee's lease still holds
    state = prefect_state(str(gone))
    assert state.type.value == "CRASHED", state
    assert f"its lease expired (its process on {host} stopped renewing it)" in state.message, state.message
    taker = state.message.rpartition("taken over by flow run ")[2]  # the sweep's drain, which finished kim
    with get_client(sync_client=True) as client:
        taker = client.read_flow_run(UUID(taker))
    assert taker.state.is_completed() and kim["id"] in taker.name, (taker.name, taker.state)
    assert prefect_state(str(alive)).is_running()  # not expired: its process may still be at work
    with session_scope() as session:
        assert session.get(Event, kim["id"]).status == "succeeded"
        assert session.get(Event, lee["id"]).status == "running"
    assert [u.get("externalId") for u in scim.users()] == [users[kim["id"]]]


def test_a_drain_killed_after_finishing_its_events_is_marked_crashed_by_the_sweeper(tmp_path, sqlite_url, scim):
    """No user lease is left to take over, so only its run lease tells that the run never ended."""
    from flows.sweep import sweep_events
    from models.locks import run_of
    from models.tables import Lease

    config = write_config(tmp_path, scim)
    ev = event(username="kim")
    path = tmp_path / "kim.json"
    path.write_text(json.dumps(ev))
    crash(tmp_path, "leases-released", "event", path, config)
    with session_scope() as session:
        assert session.get(Event, ev["id"]).status == "succeeded"
        user_id = session.get(Event, ev["id"]).user_id
        leases = session.exec(select(Lease)).all()
    assert [lease.name.partition(":")[0] for lease in leases] == ["run"], [lease.name for lease in leases]
    dead_run = run_of(leases[0].owner)
    assert leases[0].name == f"run:{dead_run}"
    assert prefect_state(dead_run).is_running()  # its process died before saying the run ended

    result = asyncio.run(sweep_events(older_than_seconds=0, config_path=str(config)))
    assert result == {"redispatched": [], "failed": [], "closed_runs": [dead_run]}
    state = prefect_state(dead_run)
    assert state.type.value == "CRASHED" and "its process died before the run ended" in state.message, state
    assert "found by flow run " in state.message
    with session_scope() as session:
        assert session.exec(select(Lease)).all() == []
    assert asyncio.run(sweep_events(older_than_seconds=0, config_path=str(config)))["closed_runs"] == []
    assert_converged(scim, [user_id])


def test_leases_of_an_ended_run_on_another_machine_are_taken_over_at_once(tmp_path, sqlite_url, scim):
    """A worker that ended while the store was down could not give its leases back; its run ended all the same.

    The other machine is a name in the lease (no second machine here); its runs are real Prefect runs.
    """
    import socket
    from datetime import timedelta

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Failed, Running

    from models.ingest import accept
    from flows.sweep import sweep_events
    from models.config import load_config
    from models.outbox import CLAIM_TTL
    from models.tables import Lease, utcnow

    @flow(name="provision-user")
    def elsewhere():
        """Stands for a drain on another machine."""

    config = write_config(tmp_path, scim)
    kim, lee = event(username="kim"), event(username="lee")
    for ev in (kim, lee):
        accept(ev, load_config(config))
    with get_client(sync_client=True) as client:
        ended = client.create_flow_run(elsewhere, state=Failed(message="state store unreachable: …")).id
        alive, stopped = (client.create_flow_run(elsewhere, state=Running()).id for _ in range(2))
    host = "worker-b"
    assert host != socket.gethostname()
    now = utcnow()
    owner = {run: f"{host}:4242:0badc0de:run={run}" for run in (ended, alive, stopped)}
    with session_scope() as session:
        users = {e.id: e.user_id for e in session.exec(select(Event))}
        later, earlier = now + timedelta(seconds=CLAIM_TTL), now - timedelta(seconds=1)
        for event_id, run in ((kim["id"], ended), (lee["id"], alive)):
            session.get(Event, event_id).status = "running"  # claimed there, never finished
            session.add(Lease(name=f"user:{users[event_id]}", owner=owner[run], acquired_at=now, expires_at=later))
        for run, expires in ((ended, later), (alive, later), (stopped, earlier)):
            session.add(Lease(name=f"run:{run}", owner=owner[run], acquired_at=now, expires_at=expires))

    result = asyncio.run(sweep_events(older_than_seconds=0, config_path=str(config)))
    # kim's lease has 15 minutes left, but its run has ended: taken over at once. lee's run is at work.
    assert result["redispatched"] == [kim["id"]] and result["failed"] == [lee["id"]]
    assert result["closed_runs"] == [str(stopped)]  # its run lease expired: nobody renews it
    assert prefect_state(str(ended)).type.value == "FAILED"  # its own end is kept
    assert prefect_state(str(alive)).is_running()
    state = prefect_state(str(stopped))
    assert state.type.value == "CRASHED", state
    assert f"its lease expired (its process on {host} stopped renewing it) before the run ended" in state.message
    with session_scope() as session:
        assert session.get(Event, kim["id"]).status == "succeeded"
        assert session.get(Event, lee["id"]).status == "running"
        left = {lease.name: lease.owner for lease in session.exec(select(Lease))}
    assert left == {f"user:{users[lee['id']]}": owner[alive], f"run:{alive}": owner[alive]}
    assert [u.get("externalId") for u in scim.users()] == [users[kim["id"]]]


def test_a_killed_drain_events_watcher_is_marked_crashed_by_the_sweeper(tmp_path, sqlite_url, scim):
    from flows.sweep import sweep_events
    from models.locks import run_of
    from models.tables import Lease

    config = write_config(tmp_path, scim)
    crash(tmp_path, "watching", "drain-events", config)
    with session_scope() as session:
        leases = session.exec(select(Lease)).all()
    assert len(leases) == 1 and leases[0].name.startswith("run:"), [lease.name for lease in leases]
    watcher = run_of(leases[0].owner)
    assert prefect_state(watcher).is_running()
    assert asyncio.run(sweep_events(older_than_seconds=0, config_path=str(config)))["closed_runs"] == [watcher]
    state = prefect_state(watcher)
    assert state.type.value == "CRASHED" and "its process died before the run ended" in state.message, state
