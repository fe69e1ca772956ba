"""Explain a user: per connector, in scope or not and why, the remote username and how it was built,
and what the store has recorded. Used by `outbound explain` and attached to every provision run.

Pure reads of the store and the configuration: no remote calls.
"""

import logging
from dataclasses import asdict, dataclass, field
from typing import Optional

from sqlmodel import Session

from models.config import ORG_TRIGGERS, Config, ConnectorConfig
from models.directory import normalized_dn
from models.directory_state import entry_of, watermark
from models.identity import UserView
from models.kinds import Action, Intent, OperationStatus
from models.mapping import local_values
from models.patterns import PatternError
from models.runstate import get_mapping, last_operation, recent_flow_runs
from models.suspensions import suspended
from tasks.guard import STOPPED, held_decisions
from tasks.policy import decide, held_names, scope
from tasks.pull import settings_hash
from tasks.staged import pending_line
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
    # The Prefect runs that acted on the user, newest first: id, url, what they did to the user here
    # (`here`), and their name and state when the Prefect API was read (label_runs).
    recent_runs: list[dict] = field(default_factory=list)
    held: Optional[str] = None  # a deprovisioning of the user the deletion guard holds back, and where
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


def _recent_runs(session: Session, connector: str, user_id: str, n: int = 3) -> list[dict]:
    """The last `n` flow runs that recorded an operation for the user here, with what they did to it."""
    runs: dict[str, dict] = {}
    for run_id, operation, status in recent_flow_runs(session, connector, user_id):
        if run_id not in runs:
            if len(runs) == n:
                break
            runs[run_id] = {"id": run_id, "url": run_url(run_id), "here": f"{operation or '-'} {status}",
                            "name": None, "state": None}
    return list(runs.values())


def label_runs(items: list["ConnectorExplanation"]) -> None:
    """Give each recent run its name and state, read from the Prefect API in one call (when one is set).

    Without a reachable API the runs keep their id, link and what they did here; explaining never fails
    for it.
    """
    from prefect.settings import PREFECT_API_URL

    ids = sorted({r["id"] for e in items for r in e.recent_runs})
    if not ids or not PREFECT_API_URL.value():
        return
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    try:
        with get_client(sync_client=True) as client:
            found = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in ids])),
                                          limit=len(ids))
    except Exception as exc:  # the store's side is still worth showing
        log.warning("the runs' names and states could not be read from Prefect: %s: %s", type(exc).__name__, exc)
        return
    labels = {str(r.id): (r.name, r.state.name if r.state else None) for r in found}
    for e in items:
        for r in e.recent_runs:
            r["name"], r["state"] = labels.get(r["id"], (None, None))


def run_words(run: dict) -> str:
    """`provision alice@PRIMARY (evt-1), Completed (create succeeded here): <url>`."""
    if not run["name"]:  # Prefect not read: the id, and what the store knows
        return f"run {run['id'][:8]} ({run['here']} here): {run['url']}"
    return f"{run['name']}, {run['state'] or 'state unknown'} ({run['here']} here): {run['url']}"


def _held(held: Optional[dict], decision, mapping, last: Optional[dict]) -> Optional[str]:
    """The user's deprovisioning the guard holds on this connector, in words; None when nothing is held."""

    if held is None or mapping is None or decision.action != Intent.DEPROVISION or decision.mode == "none":
        return None
    if last and last["status"] == OperationStatus.SUCCEEDED and last["operation"] in (
            Action.DISABLE, Action.DELETE, Action.GONE):
        return None  # already done since (an event's run): nothing of it is held
    suffix = "stopped by guard" if held["decision"] == STOPPED else "rejected"
    name = f"reconcile {held['connector']} ({suffix})"
    who = f" by {held['by']}" if held.get("by") else ""
    why = f": {held['comment']}" if held.get("comment") else ""
    link = f" ({run_url(held['flow_run_id'])})" if held.get("flow_run_id") else ""
    return (f"{decision.mode} held: deletion guard {held['decision']} in run {name} at {held['at']} UTC{who}{why}; "
            f"a real run settles it{link}")


def _delete_pending(session: Session, cfg, user_id: str) -> Optional[str]:
    """The staged delete the user's account waits for on `cfg`, if any."""
    if cfg.staged is None:
        return None
    since = suspended(session, cfg.name, [user_id]).get(user_id)
    return pending_line(since, cfg.staged.after_days) if since else None


def explain(session: Session, user: UserView, config: Config, connector: Optional[str] = None) -> list[ConnectorExplanation]:
    """One explanation per connector (or just `connector`)."""
    out = []
    held = held_decisions(session)
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
        last = _last_operation(session, cfg.name, user.id)
        out.append(ConnectorExplanation(
            connector=cfg.name, type=cfg.type, enabled=cfg.enabled, in_scope=cfg.enabled and in_scope,
            decision=decision.action, reason=decision.reason, level=_levels(user, cfg, config),
            trigger=user.source, idps=list(user.idps), roles_required=list(cfg.roles),
            roles_held=sorted(held_names(user, config.nesting(cfg).rules)), user_store_required=cfg.user_store_domain, user_store=user.user_store,
            remote_name=remote_name, how=how, recorded_name=recorded,
            remote_id=mapping.remote_id if mapping else None,
            last_operation=last,
            groups=sorted(g for g in cfg.groups if g in user.groups or (
                config.nesting(cfg).push == "flatten" and g in user.inherited)),
            recent_runs=_recent_runs(session, cfg.name, user.id),
            held=_held({**held[cfg.name], "connector": cfg.name} if cfg.name in held else None, decision, mapping,
                       last),
            attributes=cfg.attribute_map.explain(local_values(user, remote_name), user.attributes),
            delete_pending=_delete_pending(session, cfg, user.id)))
    return out


def directory_origin(session: Session, user: UserView, config: Config) -> list[str]:
    """For a user pulled from the directory: the entry's DN (recorded by the pull that linked it) and
    the LDAP attribute behind each mapped field and the group behind each role, as the pull maps
    them (`email ← mail (uid=alice,ou=people,dc=example,dc=org)`); [] for any other user."""
    entry = entry_of(session, user.id)
    if entry is None:
        return []
    lines = [f"directory {entry.directory}: entry {entry.dn} (anchor {entry.anchor}, last linked "
             f"{entry.pulled_at:%Y-%m-%d %H:%M:%S} UTC)"]
    settings = config.sources.ldap
    if settings is None or settings.name != entry.directory:
        return lines + [f"sources.ldap no longer configures directory {entry.directory}: its attribute map is unknown"]
    mark = watermark(session, settings.name)
    if mark is not None and mark.settings_hash != settings_hash(settings):
        lines.append("the configuration's attribute map or rules changed since the last complete pull: the next "
                     "(full) pull maps as below")
    for attribute, target in settings.attributes.items():
        value = (user.attributes.get(target.removeprefix("attributes.")) if target.startswith("attributes.")
                 else getattr(user, target, None))
        lines.append(f"{target} ← {attribute} ({entry.dn})" + ("" if value not in (None, "") else ": no value"))
    for group_dn, roles in settings.roles.items():
        for role in roles:
            if role in user.roles:
                lines.append(f"role {role} ← {settings.member_attribute} of {normalized_dn(group_dn)} "
                             f"(directly or through nested groups)")
    return lines


def as_dicts(items: list[ConnectorExplanation]) -> list[dict]:
    return [asdict(i) for i in items]


def _lines(user: UserView, e: ConnectorExplanation) -> list[tuple[str, str]]:
    roles = ("any (no roles required)" if not e.roles_required else
             f"one of {', '.join(e.roles_required)}; holds {', '.join(e.roles_held) or 'none'}")
    last = e.last_operation
    rows = [
        ("in scope", f"{'yes' if e.in_scope else 'no'}: {e.reason}"),
        ("decision now", e.decision),
        *([("held", e.held)] if e.held else []),
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
    for i, run in enumerate(e.recent_runs):
        rows.append(("recent runs" if i == 0 else "", run_words(run)))
    for i, line in enumerate(e.attributes):
        rows.append(("attributes" if i == 0 else "", line))
    return rows


def render_text(user: UserView, items: list[ConnectorExplanation], origin: list[str] = ()) -> str:
    """Plain text for the terminal; `origin`: directory_origin's lines."""
    head = f"{user.qualified_name} (tenant {user.tenant}, arrived by {user.source}" + (
        ", deleted" if user.deleted else "") + (", disabled" if not user.active else "") + ")"
    out = [head, *(f"  {line}" for line in origin)]
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
            origin = directory_origin(session, user, config)
            if origin:
                markdown += "\n## Directory\n\n" + "".join(f"- {_md(line)}\n" for line in origin)
        create_markdown_artifact(markdown=markdown, description=f"Explanation for {user.qualified_name}"
                                 + (f" (event {event_id})" if event_id else ""), _sync=True)
    except Exception as exc:  # an explanation must never fail the provisioning it explains
        log.warning("user_id=%s explanation not attached: %s", user_id, exc)
