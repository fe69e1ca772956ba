"""`outbound setup` creates the notification automations (a paused approval, a quarantine), once."""

import os
import time
import uuid
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from models.config import load_config
from sandbox.faults import FaultPlan
from sandbox.scim import ScimSandbox
from tasks import health
from tasks.notify import APPROVAL, QUARANTINE

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()


def write_config(tmp_path, scim_url: str, token: str, notifications: str = "", name: str = "app"):
    env = f"TEST_NOTIFY_TOKEN_{uuid.uuid4().hex[:8]}"
    os.environ[env] = token
    path = tmp_path / f"outbound-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(f"""tenant_domain: example.com
retry: {{attempts: 1, base_delay: 0.01, max_delay: 0.05, jitter: 0.1}}
{notifications}
connectors:
  - name: {name}
    type: scim2
    quarantine_after: 1
    scim2:
      base_url: {scim_url}
      auth: {{type: bearer, token: env:{env}}}
""")
    return path


def ours(client) -> list:
    return sorted((a for a in client.read_automations() if a.name in (APPROVAL, QUARANTINE)), key=lambda a: a.name)


def test_setup_creates_both_automations_once_with_the_configured_block(tmp_path, sqlite_url):
    from prefect.blocks.notifications import SlackWebhook
    from prefect.client.orchestration import get_client

    block = f"ops-{uuid.uuid4().hex[:6]}"
    SlackWebhook(url="https://hooks.slack.com/services/T0/B0/test").save(block)
    path = write_config(tmp_path, "http://127.0.0.1:9/scim/v2", "t0ken", f"notifications: {{block: slack-webhook/{block}}}")
    first = runner.invoke(app, ["setup", "--config", str(path)])
    assert first.exit_code == 0, first.output
    assert f"{APPROVAL}" in first.output and "automation created" in first.output
    again = runner.invoke(app, ["setup", "--config", str(path)])  # idempotent: updated, not duplicated
    assert again.exit_code == 0 and again.output.count("automation updated") == 2, again.output

    with get_client(sync_client=True) as client:
        block_id = client.read_block_document_by_name(block, "slack-webhook").id
        approval, quarantine = ours(client)
    assert approval.name == APPROVAL and quarantine.name == QUARANTINE
    assert approval.trigger.expect == {"prefect.flow-run.Paused"}
    related = approval.trigger.match_related
    related = related[0] if isinstance(related, list) else related
    assert related["prefect.resource.name"] in ("reconcile-connector", ["reconcile-connector"])
    assert related["prefect.resource.role"] in ("flow", ["flow"])
    assert quarantine.trigger.expect == {"outbound.connector.quarantined"}
    for automation in (approval, quarantine):
        [action] = automation.actions
        assert (action.type, action.block_document_id) == ("send-notification", block_id)
        assert automation.enabled
    assert "{{ event.payload.check }}" in quarantine.actions[0].body  # `outbound check --connector <name>`
    assert "{{ flow_run|ui_url }}" in approval.actions[0].body


def test_setup_without_notifications_or_with_a_missing_block_says_so(tmp_path, sqlite_url):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        before = [a.model_dump_json() for a in ours(client)]
    plain = write_config(tmp_path, "http://127.0.0.1:9/scim/v2", "t0ken")
    result = runner.invoke(app, ["setup", "--config", str(plain)])
    assert result.exit_code == 0 and "no notifications.block configured: no automations created" in result.output

    missing = write_config(tmp_path, "http://127.0.0.1:9/scim/v2", "t0ken",
                           "notifications: {block: slack-webhook/nowhere}", name="notify-refused")
    text = missing.read_text().replace("quarantine_after: 1", "quarantine_after: 1\n    max_concurrency: 2")
    missing.write_text(text)
    refused = runner.invoke(app, ["setup", "--config", str(missing)])
    assert refused.exit_code == 2 and "notifications.block: no Prefect block 'slack-webhook/nowhere'" in refused.output
    assert "Traceback" not in refused.output
    with get_client(sync_client=True) as client:
        assert [a.model_dump_json() for a in ours(client)] == before  # nothing changed
        from prefect.exceptions import ObjectNotFound

        with pytest.raises(ObjectNotFound):  # refused before the limits were touched too
            client.read_global_concurrency_limit_by_name("outbound:notify-refused")  # a name no other test uses

    bad = write_config(tmp_path, "http://127.0.0.1:9/scim/v2", "t0ken", "notifications: {block: 'no slash'}")
    invalid = runner.invoke(app, ["setup", "--config", str(bad)])
    assert invalid.exit_code != 0 and "notifications.block" in invalid.output and "Traceback" not in invalid.output


def test_a_quarantine_is_a_prefect_event_the_automation_listens_for(tmp_path, sqlite_url):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    from connectors.errors import TransientError
    from test_quarantine import provision_directly

    name = "app"
    since = datetime.now(timezone.utc)  # the session's Prefect server keeps other tests' quarantines of app
    with ScimSandbox(faults=FaultPlan(rate=1.0, kinds=("5xx",))) as scim:
        config = load_config(write_config(tmp_path, scim.url, scim.token, name=name))
        with pytest.raises(TransientError):
            provision_directly(config, "quin")
    assert health.get(name).state == "open"
    wanted = EventFilter(occurred=EventOccurredFilter(since=since),
                         event=EventNameFilter(name=["outbound.connector.quarantined"]),
                         resource=EventResourceFilter(id=[f"outbound.connector.{name}"]))
    deadline, events = time.monotonic() + 30, []
    while time.monotonic() < deadline and not events:  # events reach the server asynchronously
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=wanted, limit=10).events
        time.sleep(0.3)
    assert events, "no outbound.connector.quarantined event reached the server"
    payload = events[0].payload
    assert payload["connector"] == name and payload["failures"] == 1 and "transient" in payload["error"]
    assert payload["check"] == f"outbound check --connector {name}"
