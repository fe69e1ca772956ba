"""What an operator sees in the Prefect UI, checked in a real browser (Debian's chromium + playwright).

A Prefect server with its UI (`prefect server start`, the test harness serves no UI) in a fresh
PREFECT_HOME; an event whose user fails on one connector, and a reconciliation; then the flow run's
page must show the run's name, its Failed state and the failing user's outcome line. The pages are
saved under the test's tmp_path; with OUTBOUND_SCREENSHOTS=1 to docs/screenshots/ (the ones
docs/operations.md shows), so a plain test run leaves the repository as it was.
"""

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from helpers import event, send, write_config
from sandbox.faults import FaultPlan
from sandbox.scim import ScimSandbox

CHROMIUM = os.environ.get("OUTBOUND_CHROMIUM", "/usr/bin/chromium")
DOC_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

pytestmark = [
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"no chromium at {CHROMIUM} (`apt-get install -y chromium`; .ci/run installs it)"),
]


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """`prefect server start` with the UI on a free port; yields its base URL (UI at /, API at /api)."""
    pytest.importorskip("playwright", reason="the playwright package is missing (pip install -e '.[dev]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path_factory.mktemp("prefect-home")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_UI_ENABLED": "true", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:  # startup, not a timing: the server answers once its database is migrated
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def against(ui_server):
    """This process talks to the UI's server (inside the test only).

    Prefect keeps one events worker per process, and its client holds the API URL it was built with:
    task runs reach the server as events, so a worker left from an earlier test would send this
    test's task runs to the session's server. Draining it on the way in and out makes the next event
    build a worker for the URL in force.
    """
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    EventsWorker.drain_all(timeout=30)
    with temporary_settings(updates={PREFECT_API_URL: f"{ui_server}/api", PREFECT_UI_URL: ui_server}):
        try:
            yield ui_server
        finally:
            EventsWorker.drain_all(timeout=30)


def _run_named(like: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=like)))
        return run


def _logs_reached(flow_run_id, text: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # a run's logs are shipped in the background
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        if any(text in log.message for log in logs):
            return
        time.sleep(0.3)
    raise AssertionError(f"no log line with {text!r} reached the server")


def _task_runs_reached(flow_run_id) -> list[str]:
    """The run's task run names, once the server has recorded them (they arrive as events)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline, names = time.monotonic() + 30, []
    while time.monotonic() < deadline and not names:
        with get_client(sync_client=True) as client:
            names = [t.name for t in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))]
        time.sleep(0.3)
    assert names, "no task run of the flow run reached the server"
    return names


def test_the_flow_run_page_shows_name_failed_state_and_the_users_outcome(tmp_path, sqlite_url, against):
    from playwright.sync_api import expect, sync_playwright

    os.environ["BROWSER_BROKEN_TOKEN"] = "unused"
    with ScimSandbox() as good, ScimSandbox(faults=FaultPlan(rate=1.0, kinds=("5xx",),
                                                             only_methods=("POST",))) as refusing:
        os.environ["BROWSER_BROKEN_TOKEN"] = refusing.token
        broken = f"""  - name: crm
    type: scim2
    scim2:
      base_url: {refusing.url}
      auth: {{type: bearer, token: env:BROWSER_BROKEN_TOKEN}}
"""
        config = write_config(tmp_path, good, attempts=2, extra_connector=broken)
        name = f"carol{uuid.uuid4().hex[:4]}"
        ev = event(username=name)
        code, out = send(tmp_path, config, ev)
        assert code == 1, out
        run = _run_named(ev["id"])
        outcome = f"user={name}@PRIMARY connector=crm create failed"
        _logs_reached(run.id, outcome)
        assert f"run: {against}/runs/flow-run/{run.id}" in out, out
        # The reconciliation of crm tries the same create again: Failed, tagged failed:crm, the same line.
        rec = CliRunner().invoke(app, ["reconcile", "--connector", "crm", "--config", str(config)])
        assert rec.exit_code != 0 and f"crm: run {against}/runs/flow-run/" in rec.output, rec.output
    rec_run = _run_named("reconcile crm")
    assert rec_run.state.is_failed() and "failed:crm" in rec_run.tags, (rec_run.state, rec_run.tags)
    _logs_reached(rec_run.id, outcome)
    # The DAG is there to see: the event run's four steps per connector, the reconciliation's plan and apply.
    assert any(n.startswith("provision crm") for n in _task_runs_reached(run.id))
    assert _task_runs_reached(rec_run.id)

    shots = DOC_SHOTS if os.environ.get("OUTBOUND_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            for shown, shot in ((run, "event-run"), (rec_run, "reconcile-run")):
                page.goto(f"{against}/runs/flow-run/{shown.id}")
                expect(page.get_by_text(shown.name).first).to_be_visible(timeout=60_000)
                expect(page.get_by_text("Failed", exact=True).first).to_be_visible(timeout=30_000)
                expect(page.get_by_text("did not generate any task")).to_have_count(0, timeout=30_000)
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(2000)  # the run graph is drawn on a canvas after its data arrives
                page.screenshot(path=str(shots / f"{shot}-failed.png"))
                line = page.get_by_text(outcome).first
                line.scroll_into_view_if_needed(timeout=30_000)
                expect(line).to_be_visible(timeout=30_000)
                page.screenshot(path=str(shots / f"{shot}-outcome.png"))
        finally:
            browser.close()


def test_the_automations_page_lists_the_two_notifications_setup_made(tmp_path, sqlite_url, against):
    from prefect.blocks.notifications import SlackWebhook
    from playwright.sync_api import expect, sync_playwright

    from tasks.notify import APPROVAL, QUARANTINE

    SlackWebhook(url="https://hooks.slack.com/services/T0/B0/test").save("ops-alerts", overwrite=True)
    with ScimSandbox() as scim:
        config = write_config(tmp_path, scim, top="notifications: {block: slack-webhook/ops-alerts}")
    for _ in range(2):  # twice: still one of each
        result = CliRunner().invoke(app, ["setup", "--config", str(config)])
        assert result.exit_code == 0, result.output
    shots = DOC_SHOTS if os.environ.get("OUTBOUND_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{against}/automations")
            for name in (APPROVAL, QUARANTINE):
                expect(page.get_by_text(name, exact=True)).to_have_count(1, timeout=60_000)
            expect(page.get_by_text("2 automations")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("Send a slack webhook notification using")).to_have_count(2, timeout=30_000)
            page.screenshot(path=str(shots / "automations.png"))
        finally:
            browser.close()
