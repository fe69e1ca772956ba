"""Per-target limits: `outbound setup` creates them, runs share them, 429s slow down without failing."""

import asyncio
import contextvars
import os
import threading
import time
import uuid

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from deployments.cli import app
from models.ingest import accept
from helpers import event
from models.config import load_config
from models.db import session_scope
from models.tables import Operation, OperationAttempt
from sandbox.faults import FaultPlan
from sandbox.scim import ScimSandbox
from tasks.limits import connector_slot, limit_name, rate_limit_name, wanted_limits

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()


class ConcurrencyCounter:
    """WSGI middleware: count requests in flight at once (each held `delay` s so overlaps show)."""

    def __init__(self, app, delay: float = 0.05):
        self.app, self.delay = app, delay
        self.now = self.peak = 0
        self._lock = threading.Lock()
        # With `meet`, a request alone in flight waits (up to 30 s) for a second one, once: whether two
        # runs overlap then depends on the limit, not on how fast each run happens to start.
        self.meet, self._met = False, threading.Event()

    def __call__(self, environ, start_response):
        # Every request counts: the read-back after provisioning takes a slot too (tasks/readback.py).
        counted = True
        if counted:
            with self._lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
                if self.now >= 2:
                    self._met.set()
        try:
            if self.meet:
                self._met.wait(30)
            time.sleep(self.delay)
            return list(self.app(environ, start_response))
        finally:
            if counted:
                with self._lock:
                    self.now -= 1


def config_file(tmp_path, scim, name: str, limits: str = "", attempts: int = 4):
    env = f"TEST_LIMITS_TOKEN_{uuid.uuid4().hex[:6]}"
    os.environ[env] = scim.token
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""tenant_domain: example.com
retry: {{attempts: {attempts}, base_delay: 0.01, max_delay: 1, jitter: 0.1}}
connectors:
  - name: {name}
    type: scim2
    {limits}
    scim2:
      base_url: {scim.url}
      auth: {{type: bearer, token: env:{env}}}
""")
    return path


def run_concurrently(path, batches: list[list[str]]) -> None:
    """Two (or more) runners at once, each provisioning its events one after the other."""
    from flows.provision import provision_user

    config = load_config(path)
    errors = []
    with session_scope():  # migrate once, before the threads (first use from two threads races on SQLite)
        pass

    def runner_(usernames):
        try:
            for username in usernames:
                accepted = accept(event(username=username), config)
                # limit=1: each runner drains its own event, so the two runs overlap as two workers' would
                asyncio.run(provision_user(event_id=accepted.event_id, config_path=str(path), limit=1,
                                           return_state=True))
        except Exception as exc:  # surfaced below
            import traceback

            traceback.print_exc()
            errors.append(exc)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(runner_, b)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def test_setup_creates_and_updates_the_global_limits(tmp_path, sqlite_url):
    from prefect.client.orchestration import get_client

    with ScimSandbox() as scim:
        path = config_file(tmp_path, scim, "quota-app", "max_concurrency: 3\n    requests_per_second: 10")
        result = runner.invoke(app, ["setup", "--config", str(path)])
        assert result.exit_code == 0, result.output
        assert "outbound:quota-app" in result.output and "outbound:quota-app:rate" in result.output
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(limit_name("quota-app")).limit == 3
            rate = client.read_global_concurrency_limit_by_name(rate_limit_name("quota-app"))
            assert rate.limit == 10 and rate.slot_decay_per_second == 10
        path.write_text(path.read_text().replace("max_concurrency: 3", "max_concurrency: 5"))
        assert runner.invoke(app, ["setup", "--config", str(path)]).exit_code == 0
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(limit_name("quota-app")).limit == 5


def test_no_limit_configured_or_created_is_a_no_op(tmp_path):
    with ScimSandbox() as scim:
        plain = load_config(config_file(tmp_path, scim, "free"))
        limited = load_config(config_file(tmp_path, scim, "never-set-up", "max_concurrency: 1"))
    assert wanted_limits(plain.connector("free")) == []
    with connector_slot("free", plain), connector_slot("unknown", plain):
        pass
    started = time.monotonic()
    with connector_slot("never-set-up", limited):  # setup never ran: the limit does not exist
        pass
    assert time.monotonic() - started < 5


def test_the_concurrency_limit_holds_across_two_concurrent_runs(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        counter = scim.faults = ConcurrencyCounter(scim.faults, delay=0.25)
        counter.meet = True
        free = config_file(tmp_path, scim, "unlimited")
        run_concurrently(free, [["usr1", "usr2", "usr3", "usr7"], ["usr4", "usr5", "usr6", "usr8"]])
        unlimited_peak = counter.peak

        counter.peak, counter.meet = 0, False
        limited = config_file(tmp_path, scim, "limited", "max_concurrency: 1")
        assert runner.invoke(app, ["setup", "--config", str(limited)]).exit_code == 0
        run_concurrently(limited, [["lim1", "lim2"], ["lim3", "lim4"]])
        limited_peak = counter.peak
        assert len(scim.users()) == 12
    assert unlimited_peak >= 2  # the counter does see overlapping runs...
    assert limited_peak == 1  # ...and the global limit keeps them to one request at a time


def test_429_with_retry_after_slows_down_without_failing(tmp_path, sqlite_url):
    plan = FaultPlan(rate=0.5, kinds=("429",), only_methods=("POST",), seed=7, retry_after=0.3)
    with ScimSandbox(faults=plan) as scim:
        path = config_file(tmp_path, scim, "throttled", attempts=8)
        run_concurrently(path, [["thr1", "thr2"], ["thr3", "thr4"]])
        assert sorted(u["userName"] for u in scim.users()) == ["thr1", "thr2", "thr3", "thr4"]
    assert plan.injected.get("429", 0) > 0
    with session_scope() as session:
        ops = session.exec(select(Operation).where(Operation.action == "provision")).all()
        assert {op.status for op in ops} == {"succeeded"}
        for op in ops:
            attempts = session.exec(select(OperationAttempt).where(OperationAttempt.operation_id == op.id)
                                    .order_by(OperationAttempt.number)).all()
            for before, after in zip(attempts, attempts[1:]):
                assert before.error_code == "rate_limited"
                # the retry waited for the Retry-After the target asked for
                assert (after.started_at - before.finished_at).total_seconds() >= 0.25
