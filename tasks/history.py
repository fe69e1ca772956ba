"""A user's history in Prefect's Event Feed: one `outbound.account.*` event per change, from every run.

The event flow (`tasks.provision.report`) and the reconciliation (`tasks.apply.apply_rows`, per
chunk) tell their changes through `emit_account_events`, so a user created by either has the same
history: `outbound.account.created|updated|disabled|deleted|failed|outcome_unknown`, about the
resource `outbound.user.<user@STORE>`, related to the connector and the flow run (and the outbox
events or the reconciliation that asked for it).

A change is a plain dict (`user`, `operation`, `status`, `remote_id`, `remote_username`, `error`, and
an event batch's `events`: the outbox events behind it, oldest first): an event batch's Outcome and a
reconciliation's operation row both become one.
"""

import logging
from typing import Iterable, Optional

from models.kinds import NOT_DONE, Action

log = logging.getLogger("outbound.history")

# What each operation tells a user's history.
HISTORY = {Action.CREATE: "created", Action.RELINK: "created", Action.UPDATE: "updated", Action.LINK: "updated",
           Action.ENABLE: "updated", Action.DISABLE: "disabled", Action.DELETE: "deleted", Action.GONE: "deleted"}
EVENT_USERS = 90  # users per batch event: Prefect takes at most 100 related resources per event


def change_of_row(row: dict) -> dict:
    """A change from an operation row (`tasks.apply.operation_row`'s keys)."""
    error = f"{row['error_code']}: {row['error_message']}" if row.get("error_code") else None
    return {"user": row.get("entity_name"), "operation": row.get("operation"),
            "status": row.get("status"), "remote_id": row.get("remote_id"), "remote_username": row.get("remote_name"),
            "error": error}


def _payload(change: dict) -> dict:
    return {"operation": change["operation"], "remote_id": change["remote_id"],
            "remote_username": change["remote_username"], "error": change["error"]}


def emit_account_events(connector: str, changes: Iterable[dict], flow_run_id: Optional[str],
                        related: Iterable[dict] = ()) -> int:
    """Emit the Prefect events of `changes` on `connector`; return how many were emitted.

    One change of a kind is an event about its user; several of one kind are one event per kind
    (per EVENT_USERS users) about the connector, each user a related resource (role `user`): a
    user's history across runs is still one filter (any resource `outbound.user.<user@STORE>`),
    at one event per kind instead of one per user; a user's event links the outbox `events` of its
    change (the last five). `related`: more related resources (the reconciliation).
    Never raises: a history that cannot be told must not fail the run that made it.
    """
    if not flow_run_id:
        return 0
    from prefect.events import emit_event

    emitted = 0
    try:
        by_kind: dict[str, list[dict]] = {}
        for c in changes:
            if not c.get("user"):
                continue
            kind = c["status"] if c["status"] in NOT_DONE else HISTORY.get(c["operation"])
            if kind is not None:
                by_kind.setdefault(kind, []).append(c)
        base = [{"prefect.resource.id": f"outbound.connector.{connector}", "prefect.resource.role": "connector"},
                {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"},
                *related]
        for kind, changed in by_kind.items():
            if len(changed) == 1:
                c = changed[0]
                linked = [{"prefect.resource.id": f"outbound.event.{e}", "prefect.resource.role": "event"}
                          for e in c.get("events", ())[-5:]]
                emit_event(event=f"outbound.account.{kind}",
                           resource={"prefect.resource.id": f"outbound.user.{c['user']}",
                                     "prefect.resource.name": c["user"]},
                           related=base + linked, payload={"connector": connector, **_payload(c)})
                emitted += 1
                continue
            for first in range(0, len(changed), EVENT_USERS):
                chunk = changed[first:first + EVENT_USERS]
                emit_event(event=f"outbound.account.{kind}",
                           resource={"prefect.resource.id": f"outbound.connector.{connector}",
                                     "prefect.resource.name": connector},
                           related=base[1:] + [{"prefect.resource.id": f"outbound.user.{c['user']}",
                                                "prefect.resource.name": c["user"],
                                                "prefect.resource.role": "user"} for c in chunk],
                           payload={"connector": connector, "users": [{"user": c["user"], **_payload(c)}
                                                                      for c in chunk]})
                emitted += 1
    except Exception as exc:
        log.warning("connector=%s could not tell the changes to Prefect: %s: %s", connector, type(exc).__name__, exc)
    return emitted


def emit_connector_event(connector: str, kind: str, payload: dict, flow_run_id: Optional[str] = None) -> bool:
    """Emit `outbound.connector.<kind>` about the connector (e.g. `quarantined`); True when it was sent.

    What the automations `outbound setup` creates listen for (tasks/notify.py). Sent only inside a
    run or when a Prefect API is configured: outside both, Prefect would start a temporary server
    for it. Never raises.
    """
    try:
        from prefect.events import emit_event
        from prefect.settings import get_current_settings

        if not flow_run_id and not get_current_settings().api.url:
            return False

        related = ([{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}]
                   if flow_run_id else [])
        sent = emit_event(event=f"outbound.connector.{kind}",
                          resource={"prefect.resource.id": f"outbound.connector.{connector}",
                                    "prefect.resource.name": connector},
                          related=related, payload={"connector": connector, **payload})
        return sent is not None
    except Exception as exc:
        log.warning("connector=%s could not tell Prefect it is %s: %s: %s", connector, kind, type(exc).__name__, exc)
        return False
