"""provision: bring one user's account on one connector to the desired state, idempotently.

Before creating, look for the account (stored mapping, then the target's own lookup by externalId
and username); on a uniqueness conflict, adopt it instead of failing. The mapping is written in the
same transaction as the operation's success, so a crash between the remote call and that write
heals on the next attempt: the lookup finds the account and links it.
"""

import logging
from dataclasses import dataclass, replace
from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE

from connectors.base import Account, Connector, differences
from connectors.errors import AlreadyExists, AuthFailed, NotFound, ProvisioningError, Rejected, TransientError
from connectors.factory import evict, get_connector
from models.config import Config, ConnectorConfig
from models.db import session_scope
from models.identity import UserView, load_view
from models.locks import LockTimeout, lease
from models.runstate import (begin_attempt, completed_operation, delete_mapping, finish, get_mapping,
                             mapping_by_remote_id, mapping_by_remote_name, pushed_hash, save_mapping)
from models.tables import User
from tasks import health  # issue 8: quarantine of unhealthy targets
from tasks.policy import Decision, decide
from tasks.limits import connector_slot
from tasks.username import GeneratedName, user_name_for, with_suffix

log = logging.getLogger("outbound.provision")


class Collision(Rejected):
    """Two local users would share one remote account or username."""

    code = "collision"


@dataclass(frozen=True)
class Outcome:
    connector: str
    action: str
    operation: str
    status: str  # succeeded | failed | skipped
    reason: str
    remote_id: Optional[str] = None
    remote_name: Optional[str] = None
    error: Optional[str] = None


def desired_account(user: UserView, user_name: str, cfg: ConnectorConfig) -> Account:
    display = user.display_name or " ".join(p for p in (user.given_name, user.family_name) if p) or None
    extra = {}
    if cfg.salesforce is not None:
        extra = {field: user.attributes.get(attr) for field, attr in cfg.salesforce.field_map.items()}
    return Account(user_name=user_name, external_id=user.id, given_name=user.given_name,
                   family_name=user.family_name, display_name=display, email=user.email,
                   active=user.active, extra=extra)


def _qualified(session, user_id: str) -> str:
    other = session.get(User, user_id)
    return other.qualified_name if other else user_id


def remote_name_for(user: UserView, cfg: ConnectorConfig, config: Config, connector: Connector) -> GeneratedName:
    """The username to use: the one already provisioned if it still fits, else the pattern's, collision-checked."""
    generated = user_name_for(user, cfg, config)
    with session_scope() as session:
        mapping = get_mapping(session, cfg.name, user.id)
        if mapping is not None and mapping.remote_name == generated.user_name:
            return generated
        if mapping is not None and cfg.on_collision == "suffix" and any(
                mapping.remote_name == with_suffix(generated.user_name, n) for n in range(2, 100)):
            return GeneratedName(mapping.remote_name, generated.how + "; collision suffix kept")
        candidate, n = generated.user_name, 1
        while (other := mapping_by_remote_name(session, cfg.name, candidate)) and other.local_id != user.id:
            if cfg.on_collision != "suffix":
                raise Collision(f"username {candidate!r} on {cfg.name} is already provisioned for "
                                f"{_qualified(session, other.local_id)}; {user.qualified_name} would collide "
                                f"(set on_collision: suffix to add a numeric suffix)", field="user_name")
            n += 1
            candidate = with_suffix(generated.user_name, n)
    connector.check_user_name(candidate)
    how = generated.how if n == 1 else f"{generated.how}; suffix {n} (collision)"
    return GeneratedName(candidate, how)


def _owned_elsewhere(cfg: ConnectorConfig, user: UserView, found: Account) -> Optional[str]:
    """Why `found` may not be adopted by `user` (it belongs to someone else), or None."""
    if found.external_id and found.external_id != user.id:
        return f"the account {found.user_name!r} carries externalId {found.external_id!r}, not {user.id!r}"
    with session_scope() as session:
        mapping = mapping_by_remote_id(session, cfg.name, found.id)
        if mapping is not None and mapping.local_id != user.id:
            return f"the account {found.user_name!r} is linked to {_qualified(session, mapping.local_id)}"
    return None


def _adopt(connector: Connector, cfg: ConnectorConfig, user: UserView, user_name: str) -> Optional[Account]:
    found = connector.find_user(external_id=user.id, user_name=user_name)
    if found is None:
        return None
    why = _owned_elsewhere(cfg, user, found)
    if why:
        raise Collision(f"{user.qualified_name} cannot take {user_name!r} on {cfg.name}: {why}", field="user_name")
    return found


def _apply_changes(connector: Connector, current: Account, desired: Account) -> tuple[Account, dict]:
    changes = differences(desired, current, getattr(connector, "read_only_attributes", ()))
    active = changes.pop("active", None)
    if changes:
        current = connector.update_user(current.id, changes, current)
    if active is not None:
        (connector.enable_user if active else connector.disable_user)(current.id)
        current = replace(current, active=active)
        changes["active"] = active
    return current, changes


def ensure_user(connector: Connector, cfg: ConnectorConfig, config: Config, user: UserView,
                name: GeneratedName) -> tuple[str, Account]:
    """Make the account exist and match; return (what was done, the account)."""
    desired = desired_account(user, name.user_name, cfg)
    with session_scope() as session:
        mapping = get_mapping(session, cfg.name, user.id)
        remote_id = mapping.remote_id if mapping else None
    current, operation = None, "create"
    if remote_id:
        try:
            current, operation = connector.get_user(remote_id), "update"
        except NotFound:
            operation = "relink"  # our mapping points at an account that is gone: create it again
    if current is None:
        current = _adopt(connector, cfg, user, name.user_name)
        operation = "link" if current is not None else operation
    if current is None:
        try:
            return operation, connector.create_user(desired)
        except AlreadyExists:
            current = _adopt(connector, cfg, user, name.user_name)
            if current is None:
                raise
            operation = "link"
    current, changes = _apply_changes(connector, current, desired)
    if operation == "update" and not changes:
        operation = "noop"
    return operation, current


def remove_user(connector: Connector, cfg: ConnectorConfig, user: UserView, mode: str) -> tuple[str, Optional[str]]:
    """Deprovision by `mode`; return (what was done, remote id)."""
    with session_scope() as session:
        mapping = get_mapping(session, cfg.name, user.id)
        remote_id = mapping.remote_id if mapping else None
    if remote_id is None:
        return "noop", None
    if mode == "none":
        return "none", remote_id
    try:
        if mode == "delete":
            connector.delete_user(remote_id)
            return "delete", remote_id
        current = connector.get_user(remote_id)
        if not current.active:
            return "noop", remote_id
        connector.disable_user(remote_id)
        return "disable", remote_id
    except NotFound:
        return "gone", remote_id


def _runtime_ids() -> tuple[Optional[str], Optional[str], int]:
    from prefect.runtime import flow_run, task_run

    return (str(flow_run.id) if flow_run.id else None, str(task_run.id) if task_run.id else None,
            task_run.run_count or 1)


def _fresh_decision(decision: Decision, user_id: str, config: Config) -> tuple[Decision, UserView]:
    """Decide again on the user's latest state: another worker may have changed it since the flow began."""
    with session_scope() as session:
        user = load_view(session, user_id)
        provisioned = get_mapping(session, decision.connector, user_id) is not None
    fresh = decide(user, config.connector(decision.connector), config, provisioned)
    return (fresh if fresh.action != decision.action else decision), user


def provision_one(decision: Decision, user: UserView, config: Config, event_id: Optional[str],
                  name: Optional[GeneratedName] = None, dry_run: bool = False) -> Outcome:
    """Carry out one decision on one connector, recording the attempt and its outcome.

    The work runs under a lease per (connector, user), so that two workers handling events for the
    same user take turns, and each acts on the user's state in the store at that moment: the last
    one to run leaves the target matching the user's latest state.
    """
    cfg = config.connector(decision.connector)
    with session_scope() as session:
        done = completed_operation(session, event_id, cfg.name, user.id)
        if done is not None:  # this event was already applied here: at most once
            return Outcome(cfg.name, done.action, done.operation or "noop", done.status, done.reason or "",
                           done.remote_id, done.remote_name)
    flow_run_id, task_run_id, run_count = _runtime_ids()
    with session_scope() as session:
        op_id, attempt_id = begin_attempt(session, event_id=event_id, connector=cfg.name, entity_id=user.id,
                                          entity_name=user.qualified_name, action=decision.action,
                                          reason=decision.reason, flow_run_id=flow_run_id, task_run_id=task_run_id)
    ctx = f"user={user.qualified_name} connector={cfg.name} action={decision.action} attempt={run_count}"
    try:
        with lease(f"user:{cfg.name}:{user.id}", ttl=600, wait=300):
            decision, user = _fresh_decision(decision, user.id, config)
            if decision.action != "skip":  # issue 8: no request while the target is quarantined
                health.check(cfg.name)  # raises Quarantined (transient: the retry policy waits)
            connector = get_connector(cfg, dry_run=dry_run)
            remote_name = None
            if decision.action == "provision":
                if name is None or name.user_name != user_name_for(user, cfg, config).user_name:
                    name = remote_name_for(user, cfg, config, connector)
                with connector_slot(cfg.name, config):  # the target's global quota, shared by all workers
                    operation, account = ensure_user(connector, cfg, config, user, name)
                remote_id, remote_name = account.id, name.user_name
            elif decision.action == "deprovision":
                with connector_slot(cfg.name, config):
                    operation, remote_id = remove_user(connector, cfg, user, decision.mode or cfg.deprovision_mode)
            else:
                operation, remote_id = "none", None
            health.record_success(cfg.name)  # issue 8: the target answered: reset, close any quarantine
            with session_scope() as session:  # the mapping and the operation's success in one transaction
                if dry_run:
                    pass
                elif decision.action == "provision":
                    desired = desired_account(user, remote_name, cfg)
                    save_mapping(session, cfg.name, user.id, remote_id, remote_name, pushed_hash(desired.managed()))
                elif operation in ("delete", "gone"):
                    delete_mapping(session, cfg.name, user.id)
                finish(session, op_id, attempt_id, status="skipped" if decision.action == "skip" else "succeeded",
                       operation=operation, remote_id=remote_id, remote_name=remote_name)
    except Exception as exc:  # record every failure, expected or not, before Prefect sees it
        health.record_failure(cfg.name, exc, config)  # issue 8: counts transient/auth failures; may quarantine
        if isinstance(exc, AuthFailed):
            evict(cfg)  # the next attempt resolves the secrets again: a rotated credential is picked up
        transient = isinstance(exc, (TransientError, LockTimeout)) and run_count < config.retry.attempts
        code = exc.code if isinstance(exc, ProvisioningError) else "busy" if isinstance(exc, LockTimeout) else "internal"
        with session_scope() as session:
            finish(session, op_id, attempt_id, status="retrying" if transient else "failed",
                   error_code=code, error_message=str(exc))
        log.warning("%s failed: %s (%s)%s", ctx, code, exc, "; will retry" if transient else "")
        raise
    log.info("%s done: %s remote_id=%s", ctx, operation, remote_id)
    status = "skipped" if decision.action == "skip" else "succeeded"
    return Outcome(cfg.name, decision.action, operation, status, decision.reason, remote_id, remote_name)


@task(name="provision", task_run_name="provision {decision.connector}", cache_policy=NO_CACHE)
def provision(decision: Decision, user: UserView, config: Config, event_id: Optional[str],
              name: Optional[GeneratedName] = None) -> Outcome:
    """Create, update, disable or delete the user's account on one connector."""
    return provision_one(decision, user, config, event_id, name)


def failed_outcome(decision: Decision, exc: BaseException) -> Outcome:
    code = getattr(exc, "code", type(exc).__name__)
    return Outcome(decision.connector, decision.action, "none", "failed", decision.reason, error=f"{code}: {exc}")

