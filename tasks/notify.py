"""Notifications through Prefect automations: a paused deletion-guard approval, a quarantined connector.

`outbound setup` creates (or updates, by name) two automations whose action sends through the
Prefect notification block that `notifications.block` names (`<block-type-slug>/<block-name>`):

- `outbound: approval waiting` — a `reconcile-connector` flow run enters Paused (the deletion guard
  waits for an operator's approval, `flows/reconcile.py`);
- `outbound: connector quarantined` — the event `outbound.connector.quarantined`, emitted when a
  connector's quarantine opens (`tasks/health.py`).

Without `notifications` nothing is created: an automation whose action does nothing would look like
an alert that is set up. Running setup again updates the two in place (never a duplicate); a
duplicate left by hand is removed.
"""

from typing import Optional
from uuid import UUID

from models.config import Config

APPROVAL = "outbound: approval waiting"
QUARANTINE = "outbound: connector quarantined"
RECONCILE_FLOW = "reconcile-connector"
TAG = "outbound"


class NotificationSetupError(Exception):
    """The configured block cannot be used (the message names the field and the value)."""


def block_document_id(client, ref: str) -> UUID:
    """The id of the notification block `<block-type-slug>/<block-name>`; NotificationSetupError when absent."""
    from prefect.exceptions import ObjectNotFound

    slug, _, name = ref.partition("/")
    try:
        doc = client.read_block_document_by_name(name=name, block_type_slug=slug, include_secrets=False)
    except ObjectNotFound:
        raise NotificationSetupError(
            f"notifications.block: no Prefect block {ref!r} (type {slug!r}, name {name!r}); create it in the UI "
            f"(Blocks) or with its class's .save({name!r}), then run `outbound setup` again") from None
    capabilities = set(getattr(doc.block_schema, "capabilities", None) or [])
    if doc.block_schema is not None and "notify" not in capabilities:
        raise NotificationSetupError(f"notifications.block: {ref!r} is not a notification block "
                                     f"(capabilities: {', '.join(sorted(capabilities)) or 'none'})")
    return doc.id


def wanted_automations(block_id: UUID) -> list:
    """The two automations, their triggers and their notification's text (Jinja, rendered by Prefect)."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    approval = AutomationCore(
        name=APPROVAL, tags=[TAG],
        description="A reconcile-connector run paused at the deletion guard: an operator approves or rejects it "
                    "(Resume in the flow run's page). Created by `outbound setup`.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Paused"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": RECONCILE_FLOW},
            posture=Posture.Reactive, threshold=1, within=0),
        actions=[SendNotification(
            block_document_id=block_id,
            subject="outbound: approval waiting: {{ flow_run.name }}",
            body="The reconciliation {{ flow_run.name }} is paused at the deletion guard and waits for an "
                 "approval: {{ flow_run.state.message }}\n"
                 "Approve or reject it on the run's page (Resume): {{ flow_run|ui_url }}\n"
                 "Review first: outbound reconcile --connector {{ flow_run.parameters.connector }} --dry-run "
                 "--report plan.csv")])
    quarantine = AutomationCore(
        name=QUARANTINE, tags=[TAG],
        description="A connector's target kept failing and outbound stopped sending to it until a probe "
                    "succeeds. Created by `outbound setup`.",
        trigger=EventTrigger(
            expect={"outbound.connector.quarantined"},
            match={"prefect.resource.id": "outbound.connector.*"},
            posture=Posture.Reactive, threshold=1, within=0),
        actions=[SendNotification(
            block_document_id=block_id,
            subject="outbound: connector {{ event.payload.connector }} quarantined",
            body="Connector {{ event.payload.connector }} is quarantined after {{ event.payload.failures }} "
                 "failures in a row ({{ event.payload.error }}); no request is sent to it until the next "
                 "probe at {{ event.payload.retry_at }}.\n"
                 "Find out why: {{ event.payload.check }}")])
    return [approval, quarantine]


def apply_automations(config: Config, client=None) -> Optional[list[tuple[str, str]]]:
    """Create or update the automations (what `outbound setup` does); None when no block is configured.

    Returns (name, "created" | "updated") per automation.
    """
    if config.notifications is None:
        return None
    from prefect.client.orchestration import get_client

    from tasks.limits import _borrowed

    done = []
    with (get_client(sync_client=True) if client is None else _borrowed(client)) as c:
        block_id = block_document_id(c, config.notifications.block)
        for automation in wanted_automations(block_id):
            existing = c.read_automations_by_name(automation.name)
            if not existing:
                c.create_automation(automation)
                done.append((automation.name, "created"))
                continue
            c.update_automation(existing[0].id, automation)
            for extra in existing[1:]:
                c.delete_automation(extra.id)
            done.append((automation.name, "updated"))
    return done


def check_block(config: Config, client=None) -> None:
    """Raise NotificationSetupError now when the configured block is missing (before anything is changed)."""
    if config.notifications is None:
        return
    from prefect.client.orchestration import get_client

    from tasks.limits import _borrowed

    with (get_client(sync_client=True) if client is None else _borrowed(client)) as c:
        block_document_id(c, config.notifications.block)
