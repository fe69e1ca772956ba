"""Explain a user: per connector, in scope or not and why, the remote username and how it was built,
and what the store has recorded. Used by `outbound explain` and attached to every provision run.

Pure reads of the store and the configuration: no remote calls.
"""

import logging
from dataclasses import asdict, dataclass, field
from typing import Optional

from sqlmodel import Session

from models.config import ORG_TRIGGERS, Config, ConnectorConfig
from models.identity import UserView
from models.mapping import local_values
from models.patterns import PatternError
from models.runstate import get_mapping, last_operation, recent_flow_runs
from models.suspensions import suspended
from tasks.staged import pending_line
from tasks.policy import decide, held_names, scope
from tasks.username import user_name_for

log = logging.getLogger("outbound.explain")


@dataclass
class ConnectorExplanation:
    connector: str
    type: str
    enabled: bool
    in_scope: bool
    decision: str  # provision | deprovision | skip: what an event for this user would do now
    reason: str
    level: list[str]  # why the connector fires (or that it does not)
    trigger: str
    idps: list[str]
    roles_required: list[str]
    roles_held: list[str]
    user_store_required: Optional[str]
    user_store: str
    remote_name: Optional[str]
    how: str
    recorded_name: Optional[str] = None
    remote_id: Optional[str] = None
    last_operation: Optional[dict] = None
    groups: list[str] = field(default_factory=list)
    recent_runs: list[str] = field(default_factory=list)  # links to the Prefect runs that acted on the user
    attributes: list[str] = field(default_factory=list)  # the mapped attributes: target ← source = value
    # Suspend, then delete: `delete pending: suspended 2026-11-01, due 2026-12-01`, when the account waits.
    delete_pending: Optional[str] = None


def _levels(user: UserView, cfg: ConnectorConfig, config: Config) -> list[str]:
    levels = []
    if cfg.organization_level:
        fires = user.source in (*ORG_TRIGGERS, "import")
        levels.append(f"organisation-level ({'fires' if fires else 'does not fire'} for trigger {user.source})")
    for idp in config.identity_providers:
        if cfg.name in idp.connectors:
            came = idp.name in user.idps
            levels.append(f"IdP-level for {idp.name} (the user {'came' if came else 'did not come'} through it)")
    return levels or ["neither organisation-level nor listed by any identity provider"]


def _last_operation(session: Session, connector: str, user_id: str) -> Optional[dict]:
    op = last_operation(session, connector, user_id)
    if op is None:
        return None
    return {"event_id": op.event_id, "action": op.action, "operation": op.operation, "status": op.status,
            "when": op.finished_at.isoformat() if op.finished_at else None,
            "error": f"{op.error_code}: {op.error_message}" if op.error_code else None}


def _ui_url() -> Optional[str]:
    """Where the Prefect UI is: PREFECT_UI_URL, else the API's address without `/api` (Prefect's own inference)."""
    import os

    from prefect.settings import PREFECT_UI_URL

    ui = (os.environ.get("PREFECT_UI_URL") or PREFECT_UI_URL.value()
          or os.environ.get("PREFECT_API_URL", "").removesuffix("/").removesuffix("/api"))
    return ui.rstrip("/") if ui else None


def run_url(flow_run_id) -> str:
    """The flow run's page in the Prefect UI, or its id when the UI's address is unknown."""
    ui = _ui_url()
    return f"{ui}/runs/flow-run/{flow_run_id}" if ui else str(flow_run_id)


def _recent_runs(session: Session, connector: str, user_id: str, n: int = 3) -> list[str]:
    """The last `n` flow runs that recorded an operation for the user here, as UI links (or ids)."""
    ids: list[str] = []
    for run_id in recent_flow_runs(session, connector, user_id):
        if run_id not in ids:
            ids.append(run_id)
        if len(ids) == n:
            break
    return [run_url(i) for i in ids]


def _delete_pending(session: Session, cfg, user_id: str) -> Optional[str]:
    """The staged delete the user's account waits for on `cfg`, if any."""
    if cfg.staged is None:
        return None
    since = suspended(session, cfg.name, [user_id]).get(user_id)
    return pending_line(since, cfg.staged.after_days) if since else None


def explain(session: Session, user: UserView, config: Config, connector: Optional[str] = None) -> list[ConnectorExplanation]:
    """One explanation per connector (or just `connector`)."""
    out = []
    for cfg in config.connectors:
        if connector and cfg.name != connector:
            continue
        mapping = get_mapping(session, cfg.name, user.id)
        in_scope, _ = scope(user, cfg, config)
        decision = decide(user, cfg, config, provisioned=mapping is not None)
        try:
            generated = user_name_for(user, cfg, config)
            remote_name, how = generated.user_name, generated.how
        except PatternError as exc:
            remote_name, how = None, f"the pattern cannot be applied: {exc}"
        recorded = mapping.remote_name if mapping else None
        if recorded and recorded != remote_name:
            how += f"; the account is recorded as {recorded!r} (a collision suffix, or a rename not yet pushed)"
        out.append(ConnectorExplanation(
            connector=cfg.name, type=cfg.type, enabled=cfg.enabled, in_scope=cfg.enabled and in_scope,
            decision=decision.action, reason=decision.reason, level=_levels(user, cfg, config),
            trigger=user.source, idps=list(user.idps), roles_required=list(cfg.roles),
            roles_held=sorted(held_names(user, config.nesting(cfg).rules)), user_store_required=cfg.user_store_domain, user_store=user.user_store,
            remote_name=remote_name, how=how, recorded_name=recorded,
            remote_id=mapping.remote_id if mapping else None,
            last_operation=_last_operation(session, cfg.name, user.id),
            groups=sorted(g for g in cfg.groups if g in user.groups or (
                config.nesting(cfg).push == "flatten" and g in user.inherited)),
            recent_runs=_recent_runs(session, cfg.name, user.id),
            attributes=cfg.attribute_map.explain(local_values(user, remote_name), user.attributes),
            delete_pending=_delete_pending(session, cfg, user.id)))
    return out


def as_dicts(items: list[ConnectorExplanation]) -> list[dict]:
    return [asdict(i) for i in items]


def _lines(user: UserView, e: ConnectorExplanation) -> list[tuple[str, str]]:
    roles = ("any (no roles required)" if not e.roles_required else
             f"one of {', '.join(e.roles_required)}; holds {', '.join(e.roles_held) or 'none'}")
    last = e.last_operation
    rows = [
        ("in scope", f"{'yes' if e.in_scope else 'no'}: {e.reason}"),
        ("decision now", e.decision),
        ("level", "; ".join(e.level)),
        ("trigger", e.trigger + (f" (IdPs: {', '.join(e.idps)})" if e.idps else "")),
        ("roles", roles),
        ("user store", f"{e.user_store}" + (f" (connector limited to {e.user_store_required})"
                                            if e.user_store_required else " (any accepted)")),
        ("remote username", e.remote_name or "-"),
        ("built by", e.how),
        ("recorded", f"remote id {e.remote_id}, username {e.recorded_name}" if e.remote_id else "no account recorded"),
        ("last operation", "none" if last is None else
         f"{last['action']} {last['operation'] or '-'} {last['status']} (event {last['event_id'] or '-'}, "
         f"{last['when'] or 'unfinished'})" + (f" error {last['error']}" if last["error"] else "")),
    ]
    if e.groups:
        rows.append(("groups", ", ".join(e.groups)))
    if e.delete_pending:
        rows.append(("deprovision", e.delete_pending))
    if e.recent_runs:
        rows.append(("recent runs", " ".join(e.recent_runs)))
    for i, line in enumerate(e.attributes):
        rows.append(("attributes" if i == 0 else "", line))
    return rows


def render_text(user: UserView, items: list[ConnectorExplanation]) -> str:
    """Plain text for the terminal."""
    head = f"{user.qualified_name} (tenant {user.tenant}, arrived by {user.source}" + (
        ", deleted" if user.deleted else "") + (", disabled" if not user.active else "") + ")"
    out = [head]
    for e in items:
        out.append("")
        out.append(f"{e.connector} [{e.type}{'' if e.enabled else ', disabled'}]")
        out.extend(f"  {k + ':' if k else '':<17}{v}" for k, v in _lines(user, e))
    if not items:
        out.append("no connector configured")
    return "\n".join(out)


def _md(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def render_markdown(user: UserView, items: list[ConnectorExplanation]) -> str:
    """Markdown for the Prefect run's artifact."""
    out = [f"# Why {_md(user.qualified_name)} is (not) provisioned", "",
           f"Tenant `{_md(user.tenant)}`, arrived by `{user.source}`"
           + (f" through {', '.join(user.idps)}" if user.idps else "")
           + f"; roles: {', '.join(sorted(user.roles)) or 'none'}; groups: {', '.join(sorted(user.groups)) or 'none'}"
           + (f" (through nesting: {', '.join(sorted(user.inherited))})" if user.inherited else "") + "."]
    for e in items:
        out += ["", f"## {_md(e.connector)} ({e.type}{'' if e.enabled else ', disabled'})", "",
                "| | |", "|---|---|"]
        out += [f"| {k} | {_md(v)} |" for k, v in _lines(user, e)]
    return "\n".join(out) + "\n"


def attach_explanation(user_id: str, config: Config, event_id: Optional[str] = None) -> None:
    """Attach the user's explanation to the current Prefect run as a markdown artifact (never raises)."""
    from prefect.artifacts import create_markdown_artifact

    from models.db import session_scope
    from models.identity import load_view

    try:
        with session_scope() as session:
            user = load_view(session, user_id)
            markdown = render_markdown(user, explain(session, user, config))
        create_markdown_artifact(markdown=markdown, description=f"Explanation for {user.qualified_name}"
                                 + (f" (event {event_id})" if event_id else ""), _sync=True)
    except Exception as exc:  # an explanation must never fail the provisioning it explains
        log.warning("user_id=%s explanation not attached: %s", user_id, exc)
