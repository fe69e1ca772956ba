"""sync-groups: a connector's configured groups, and this user's membership in them, kept in step.

Level-triggered like the rest: for each group in the connector's `groups`, the remote group is made
to exist (stored mapping, then the target's lookup by name, else created), and the user's account is
a member exactly when the user is in the group locally and in scope for the connector. A user who
leaves the group, loses scope or is deleted is removed. Every change is recorded as an operation
with entity_type="group".
"""

import logging
from dataclasses import dataclass
from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlmodel import select

from connectors.base import Connector, RemoteGroup
from connectors.errors import NotFound, ProvisioningError
from connectors.factory import get_connector
from models.config import Config, ConnectorConfig
from models.db import session_scope
from models.identity import UserView
from models.runstate import begin_attempt, delete_mapping, finish, get_mapping, save_mapping
from models.tables import Group
from tasks.policy import scope

log = logging.getLogger("outbound.groups")


@dataclass(frozen=True)
class GroupOutcome:
    connector: str
    group: str
    operation: str  # the group: create | link | relink | exists; membership: add | remove | noop
    member: str  # member | not a member
    status: str  # succeeded | failed
    remote_id: Optional[str] = None
    error: Optional[str] = None


def manages_groups(cfg: ConnectorConfig) -> bool:
    """Whether the flow should sync groups for this connector (configured and supported)."""
    if not cfg.groups or not cfg.enabled:
        return False
    try:
        return bool(get_connector(cfg).supports_groups)
    except ProvisioningError:
        return False


def _local_group(name: str) -> tuple[str, str]:
    """The local group's (id, name); a configured group nobody has joined yet is created empty."""
    with session_scope() as session:
        group = session.exec(select(Group).where(Group.name == name)).first()
        if group is None:
            group = Group(name=name)
            session.add(group)
            session.flush()
        return group.id, group.name


def _ensure_group(connector: Connector, cfg: ConnectorConfig, group_id: str, name: str) -> tuple[str, RemoteGroup]:
    """Make the remote group exist and be mapped; return (what was done, the remote group)."""
    with session_scope() as session:
        mapping = get_mapping(session, cfg.name, group_id, "group")
        remote_id = mapping.remote_id if mapping else None
    operation = "link"
    if remote_id:
        try:
            return "exists", connector.get_group(remote_id)
        except NotFound:
            operation = "relink"  # the mapped group is gone from the target
            with session_scope() as session:
                delete_mapping(session, cfg.name, group_id, "group")
    remote = connector.find_group(name)
    if remote is None:
        remote, operation = connector.create_group(name, [], external_id=group_id), "create"
    with session_scope() as session:
        save_mapping(session, cfg.name, group_id, remote.id, name, None, entity_type="group")
    return operation, remote


def _wanted(user: UserView, cfg: ConnectorConfig, config: Config, name: str) -> tuple[bool, str]:
    if user.deleted:
        return False, "the user was deleted"
    if name not in user.groups:
        return False, f"the user is not in group {name} locally"
    in_scope, why = scope(user, cfg, config)
    if not in_scope:
        return False, f"the user is not in scope for {cfg.name} ({why})"
    return True, f"the user is in group {name} and in scope for {cfg.name}"


def sync_one_group(connector: Connector, cfg: ConnectorConfig, config: Config, user: UserView, name: str,
                   event_id: Optional[str], user_remote_id: Optional[str]) -> GroupOutcome:
    """Ensure one group exists remotely and the user's membership in it matches the local state."""
    from tasks.provision import _runtime_ids

    group_id, _ = _local_group(name)
    want, why = _wanted(user, cfg, config, name)
    if user_remote_id is None:
        with session_scope() as session:
            mapping = get_mapping(session, cfg.name, user.id)
            user_remote_id = mapping.remote_id if mapping else None
    if user_remote_id is None:
        want, why = False, f"the user has no account on {cfg.name}"
    flow_run_id, task_run_id, _ = _runtime_ids()
    with session_scope() as session:
        op_id, attempt_id = begin_attempt(session, event_id=event_id, connector=cfg.name, entity_id=group_id,
                                          entity_name=f"{name} ({user.qualified_name})", action="group",
                                          reason=why, flow_run_id=flow_run_id, task_run_id=task_run_id,
                                          entity_type="group")
    try:
        ensured, remote = _ensure_group(connector, cfg, group_id, name)
        operation = "noop"
        if want and user_remote_id not in remote.member_ids:
            connector.add_members(remote.id, [user_remote_id])
            operation = "add"
        elif not want and user_remote_id and user_remote_id in remote.member_ids:
            connector.remove_members(remote.id, [user_remote_id])
            operation = "remove"
    except Exception as exc:  # recorded before Prefect sees it, like provision
        code = exc.code if isinstance(exc, ProvisioningError) else "internal"
        with session_scope() as session:
            finish(session, op_id, attempt_id, status="failed", error_code=code, error_message=str(exc))
        log.warning("group=%s user=%s connector=%s failed: %s (%s)", name, user.qualified_name, cfg.name, code, exc)
        return GroupOutcome(cfg.name, name, "none", "member" if want else "not a member", "failed",
                            error=f"{code}: {exc}")
    if ensured != "exists":
        operation = f"{ensured}+{operation}"
    with session_scope() as session:
        finish(session, op_id, attempt_id, status="succeeded", operation=operation, remote_id=remote.id,
               remote_name=name)
    log.info("group=%s user=%s connector=%s done: %s", name, user.qualified_name, cfg.name, operation)
    return GroupOutcome(cfg.name, name, operation, "member" if want else "not a member", "succeeded", remote.id)


def sync_groups_now(connector_name: str, user: UserView, config: Config, event_id: Optional[str],
                    user_remote_id: Optional[str] = None) -> list[GroupOutcome]:
    """The task's body: every configured group of one connector, for one user."""
    cfg = config.connector(connector_name)
    connector = get_connector(cfg)
    if not connector.supports_groups:
        return []
    return [sync_one_group(connector, cfg, config, user, name, event_id, user_remote_id) for name in cfg.groups]


@task(name="sync-groups", task_run_name="sync-groups {connector_name}", cache_policy=NO_CACHE)
def sync_groups(connector_name: str, user: UserView, config: Config, event_id: Optional[str],
                user_remote_id: Optional[str] = None) -> list[GroupOutcome]:
    """Push the connector's configured groups and keep the user's membership in step.

    `user_remote_id`: the account's id when the mapping is already gone (a delete deprovision).
    """
    return sync_groups_now(connector_name, user, config, event_id, user_remote_id)


def submit_for(outcome, user: UserView, config: Config, event_id: Optional[str]):
    """Submit sync-groups after a connector's provision outcome, when that connector manages groups."""
    if outcome.status != "succeeded" or outcome.action not in ("provision", "deprovision"):
        return None
    cfg = config.connector(outcome.connector)
    if not manages_groups(cfg):
        return None
    return sync_groups.submit(outcome.connector, user, config, event_id, outcome.remote_id)


def wait_all(futures, logger) -> None:
    """Wait for the group syncs; failures are recorded as operations and logged, not raised."""
    for future in futures:
        if future is None:
            continue
        try:
            for o in future.result():
                if o.status == "failed":
                    logger.warning("connector=%s group=%s failed: %s", o.connector, o.group, o.error)
        except Exception as exc:
            logger.warning("sync-groups failed: %s", exc)
