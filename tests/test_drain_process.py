"""The event API drains in a child process: the drain runs there, a killed child is replaced, none outlives the API.

Real parts: the API served over HTTP (uvicorn in a thread, and `outbound api` as a command), its
drain process (a real subprocess, killed with SIGKILL), scim2-server, the session's Prefect test
server (the command's own temporary one). Deterministic: the child is
killed while the target holds its write (a fault delays every POST until the kill), which then
applies with nobody to read its answer; the next event is accepted once the API has seen the child
die and before a new one starts, since a new child starts at the next event.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from apiserver import served
from deployments.api import create_app
from helpers import event, write_config
from models.config import load_config
from models.db import session_scope
from models.tables import Event, Lease
from sandbox.faults import FaultPlan
from sandbox.scim import ScimSandbox
from test_cli_start import OUTBOUND, _alive, _children, _env

pytestmark = pytest.mark.usefixtures("prefect_harness")
TOKEN = "test-token-drain-process"


def wait_for(what, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, message
        time.sleep(0.05)
    return found


def drain_children() -> list[int]:
    """Pids of this process's children running the drain process."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # not a process, or it ended while being read
        if ppid == os.getpid() and b"deployments.drain_process" in command:
            found.append(int(proc.name))
    return found


def lease_owners() -> list[str]:
    """Who holds users' leases: `host:pid:nonce[:run=<flow run id>]` each."""
    with session_scope() as session:
        return list(session.exec(select(Lease.owner).where(Lease.name.startswith("user:"))).all())


def flow_run_state(run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state.type.value


def statuses(ids) -> dict[str, str]:
    with session_scope() as session:
        return dict(session.exec(select(Event.id, Event.status).where(Event.id.in_(ids))).all())


def test_the_api_drains_in_a_child_that_is_restarted_when_killed_and_stopped_with_the_api(tmp_path, sqlite_url,
                                                                                          monkeypatch):
    held = FaultPlan(rate=1.0, kinds=("latency",), latency=3.0, only_methods=("POST",))
    monkeypatch.setenv("TEST_API_TOKEN", TOKEN)
    with ScimSandbox(faults=held) as scim:
        config = write_config(tmp_path, scim, top="api: {token: env:TEST_API_TOKEN}")
        app = create_app(load_config(config), str(config), dispatch="in-process", workers=1)
        drains = app.state.dispatcher.in_process
        headers = {"Authorization": f"Bearer {TOKEN}"}
        first_ev, second_ev = event(username="dora"), event(username="erin")
        with served(app) as (base, log), httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            first = wait_for(lambda: drains.pid, 30, "the API did not start its drain process")
            assert first != os.getpid() and drain_children() == [first]

            assert client.post("/v1/events", json=first_ev).status_code == 202
            wait_for(lambda: held.injected.get("latency"), 120, "the drain process never sent dora's create")
            [owner] = lease_owners()
            assert int(owner.split(":")[1]) == first  # dora is provisioned by the child, not the API's process
            killed_run = owner.partition(":run=")[2]
            held.rate = 0.0  # what follows is served at once

            os.kill(first, signal.SIGKILL)  # while the target holds its write: its answer is lost
            wait_for(lambda: drains.pid is None, 30, "the API did not see its drain process die")
            wait_for(lambda: scim.users(), 30, "the held write never applied")
            assert drains.pid is None  # no child runs while erin is stored: a new one starts at her wake-up
            assert client.post("/v1/events", json=second_ev).status_code == 202
            ids = [first_ev["id"], second_ev["id"]]
            wait_for(lambda: set(statuses(ids).values()) == {"succeeded"}, 120,
                     f"not provisioned after the restart: {statuses(ids)}")
            second = drains.pid
            assert second not in (None, first) and drain_children() == [second]
            assert any(f"drain process pid={first} exited" in line for line in log.lines), log.lines[-20:]
            outcomes = {ev["id"]: [(o["connector"], o["operation"], o["status"])
                                   for o in client.get(f"/v1/events/{ev['id']}").json()["outcomes"]]
                        for ev in (first_ev, second_ev)}
            # dora's write, applied without an answer, was found and linked, not sent again
            assert outcomes == {first_ev["id"]: [("app", "link", "succeeded")],
                                second_ev["id"]: [("app", "create", "succeeded")]}
            assert flow_run_state(killed_run) == "CRASHED"  # the killed child's run, closed by the next drain

        assert drains.pid is None and drain_children() == []  # stopped with the API: no orphan
        with pytest.raises(ProcessLookupError):
            os.kill(second, 0)
        names = sorted(u["userName"] for u in scim.users())
        writes = [path for method, path, *_ in scim.answered if method == "POST"]
    assert names == ["dora", "erin"] and len(writes) == 2  # dora's held create and erin's, each once


def test_outbound_api_drains_in_its_child_through_its_temporary_prefect_api_and_leaves_no_process(tmp_path, scim,
                                                                                                 monkeypatch):
    """The command as an operator starts it, without PREFECT_API_URL: its child must use the API's temporary one."""
    import socket

    monkeypatch.setenv("TEST_API_TOKEN", TOKEN)
    config = write_config(tmp_path, scim, top="api: {token: env:TEST_API_TOKEN}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = subprocess.Popen([*OUTBOUND, "api", "--config", str(config), "--port", str(port), "--dispatch", "in-process"],
                           env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base, descendants = f"http://127.0.0.1:{port}", []
    try:
        def up():
            assert api.poll() is None, api.stderr.read()[-3000:]
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 300, "the API never answered")
        descendants = _children(api.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in descendants]
        assert sum(b"deployments.drain_process" in c for c in commands) == 1, commands
        assert sum(b"prefect.server.api.server" in c for c in commands) == 1, commands  # one Prefect API, the API's

        ev, headers = event(username="frida"), {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.post(f"{base}/v1/events", json=ev, headers=headers, timeout=30).status_code == 202

        def succeeded():
            answer = httpx.get(f"{base}/v1/events/{ev['id']}", headers=headers, timeout=30)
            return answer.json()["status"] == "succeeded"

        wait_for(succeeded, 120, "frida was never provisioned")
        assert [u["userName"] for u in scim.users()] == ["frida"]

        api.send_signal(signal.SIGTERM)
        api.wait(timeout=90)
        wait_for(lambda: not any(_alive(pid) for pid in descendants), 30,
                 f"processes outlived the API: {[p for p in descendants if _alive(p)]}")
    finally:
        if api.poll() is None:
            api.kill()
        for pid in descendants:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
