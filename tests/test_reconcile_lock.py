"""Two reconciliations of one connector never run at once: the second waits (bounded) or exits saying why."""

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from deployments.cli import app
from helpers import write_config
from models.db import session_scope
from models.events import EventUser
from models.identity import upsert_user
from models.locks import lease
from models.tables import Lease, ReconciliationRun
from sandbox.scim import ScimSandbox

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()

# argv: config, lock_wait, gate file ("-": none). With a gate, the apply waits until the file exists.
RECONCILE = textwrap.dedent("""
    import asyncio, json, os, sys, time
    config, wait, gate = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    if gate != "-":
        import tasks.apply as apply
        real = apply.apply_rows
        def gated(*args, **kwargs):
            while not os.path.exists(gate):
                time.sleep(0.05)
            return real(*args, **kwargs)
        apply.apply_rows = gated
    from flows.reconcile import reconcile
    result = asyncio.run(reconcile("app", config_path=config, lock_wait=wait, chunk_size=5))
    print(json.dumps({"status": result["status"], "summary": result["summary"], "message": result.get("message")}))
""")


def _users(n: int) -> None:
    with session_scope() as session:
        for i in range(n):
            upsert_user(session, EventUser(username=f"lock{i}", email=f"lock{i}@example.com"), "example.com",
                        source="api")


def _spawn(tmp_path, *args, stderr=subprocess.PIPE):
    from prefect.settings import PREFECT_API_URL

    script = tmp_path / "reconcile.py"
    script.write_text(RECONCILE)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or "", "PREFECT_LOGGING_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)


def _wait_for(predicate, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_held_lock_exits_4_naming_the_holder(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        config = write_config(tmp_path, scim)
        _users(3)
        with lease("reconcile:app") as owner:
            result = runner.invoke(app, ["reconcile", "--config", str(config)])
            assert result.exit_code == 4, result.output
            assert "busy" in result.output and "reconcile:app is held by" in result.output, result.output
            assert owner in result.output and " since " in result.output and "UTC" in result.output
            assert "--wait" in result.output
            started = time.monotonic()
            result = runner.invoke(app, ["reconcile", "--config", str(config), "--wait", "1"])
            assert result.exit_code == 4 and "waited 1s" in result.output, result.output
            assert 1 <= time.monotonic() - started < 30
        assert scim.users() == [] and [r for r in scim.requests if r[0] != "GET"] == []
        with session_scope() as session:
            assert session.exec(select(ReconciliationRun)).all() == []  # nothing was started
        result = runner.invoke(app, ["reconcile", "--config", str(config)])  # free again
        assert result.exit_code == 0 and len(scim.users()) == 3, result.output
        with session_scope() as session:
            assert session.exec(select(Lease)).all() == []  # released


def test_two_reconciliations_at_once_take_turns(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        config = write_config(tmp_path, scim)
        _users(12)
        gate = tmp_path / "go"
        first = _spawn(tmp_path, config, 0, gate)

        def held() -> bool:
            with session_scope() as session:
                return session.get(Lease, "reconcile:app") is not None

        _wait_for(held)  # the first holds the lease and is stopped before its apply
        log = tmp_path / "second.err"
        with open(log, "w") as err:
            second = _spawn(tmp_path, config, 120, "-", stderr=err)
            _wait_for(lambda: "waiting up to 120s" in log.read_text())  # the second waits, saying for whom
            assert f"{socket.gethostname()}:{first.pid}:" in log.read_text()
            assert scim.users() == []  # nothing applied by either yet
            gate.touch()
            out1, err1 = first.communicate(timeout=120)
            out2, _ = second.communicate(timeout=120)
        assert first.returncode == 0 and second.returncode == 0, (err1[-2000:], log.read_text()[-2000:])
        assert '"status": "succeeded"' in out1 and "create 12" in out1, out1
        assert '"status": "succeeded"' in out2 and "nothing to do" in out2, out2  # it planned after the first
        assert len(scim.users()) == 12
        with session_scope() as session:
            runs = session.exec(select(ReconciliationRun).order_by(ReconciliationRun.started_at)).all()
        assert len(runs) == 2 and runs[0].finished_at <= runs[1].started_at  # never overlapping
