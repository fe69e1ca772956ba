"""The store's side of a plan: the accounts one connector's target should hold (its desired state).

Named `wanted`, not `desired`: `tasks.desired` is the batch's resolve-policy and generate-username
tasks, which call `desired_state` here. The desired state comes from the store through the policy
(`tasks.policy.decide`) and the username rule (`tasks.username.assign_names`).
"""

from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd
from sqlmodel import Session

from connectors.base import Account
from connectors.errors import Rejected
from models.config import Config, ConnectorConfig
from models.identity import UserView, load_views, qualified_names
from models.mapping import local_values
from models.runstate import user_links
from tasks.managers import Managers, resolve_managers
from tasks.plan.frames import _typed, extra_columns
from tasks.plan.shape import DEPROVISION, PROVISION, TEXT_FIELDS
from tasks.policy import Decision, decide
from tasks.username import MAX_SUFFIX, assign_names, user_name_for, with_suffix


def desired_account(user: UserView, user_name: str, cfg: ConnectorConfig, manager: Any = None) -> Account:
    """The account `user` should have on `cfg`, named `user_name`; `manager`: what the target knows
    the user's manager's account by (`tasks.managers`), None while it has none."""
    display = user.display_name or " ".join(p for p in (user.given_name, user.family_name) if p) or None
    values = {"given_name": user.given_name, "family_name": user.family_name, "display_name": display,
              "email": user.email}
    extra = {}
    mapping = cfg.attribute_map
    if mapping:  # the connector's `attributes:` (a mapped core field replaces its default)
        core, extra = mapping.evaluate(local_values(user, user_name), user.attributes)
        values.update(core)
        if mapping.manager_target:
            extra[mapping.manager_target] = manager
    return Account(user_name=user_name, external_id=user.id, active=user.active, extra=extra, **values)


@dataclass
class DesiredState:
    """The store's side: desired accounts, users to deprovision, the mappings and every known local id."""

    desired: pd.DataFrame  # local_id, entity_name, reason, the managed fields, active
    deprovision: pd.DataFrame  # local_id, entity_name, mode, reason (mapped users out of scope)
    mappings: pd.DataFrame  # local_id, remote_id, remote_name
    known_ids: pd.Series  # every local user id (an externalId among them is ours)
    accounts: dict[str, Account]
    conflicts: dict[str, tuple[str, Rejected]] = field(default_factory=dict)
    decisions: dict[str, tuple[str, Decision]] = field(default_factory=dict)
    user_ids: Optional[list[str]] = None  # the batch, or None for every user
    managers: Managers = field(default_factory=Managers)
    # Users of the batch whose accounts are not looked up: created first, adopted on the target's
    # uniqueness refusal (tasks/optimistic.py decides who).
    unseen: frozenset = frozenset()
    # An event batch's: user id -> the outbox events its operations answer, oldest first (tasks.desired).
    events: dict[str, list[str]] = field(default_factory=dict)


MAPPING_COLUMNS = ["local_id", "remote_id", "remote_name"]


def _mappings(session: Session, cfg: ConnectorConfig, views: list[UserView], config: Config,
              user_ids: Optional[list[str]]) -> pd.DataFrame:
    """The connector's user mappings: all of them, or for a batch its own and those holding a name it may take."""
    links = None
    if user_ids is not None:
        generated = {user_name_for(u, cfg, config).user_name for u in views}
        wanted = {g.lower() for g in generated}
        if cfg.on_collision == "suffix":
            wanted |= {with_suffix(g, n).lower() for g in generated for n in range(2, MAX_SUFFIX + 1)}
        if len(wanted) <= 5000:  # else reading every mapping is cheaper than a huge IN list
            links = user_links(session, cfg.name, user_ids, wanted)
    if links is None:
        links = user_links(session, cfg.name)
    return pd.DataFrame.from_records(links, columns=MAPPING_COLUMNS)


def _qualified_names(session: Session, views: list[UserView], mapped: dict[str, str]) -> dict[str, str]:
    """user@STORE of the users planned and of every other user holding a name they may collide with."""
    names = {u.id: u.qualified_name for u in views}
    names.update(qualified_names(session, [i for i in mapped if i not in names]))
    return names


def desired_state(session: Session, config: Config, cfg: ConnectorConfig, user_ids: Optional[list[str]] = None,
                  check_name=lambda _: None, views: Optional[list[UserView]] = None,
                  decisions: Optional[dict[str, Decision]] = None) -> DesiredState:
    """Read the desired state of connector `cfg` from the store, for every user or the batch `user_ids`.

    `views`, `decisions`: the batch's users and their decisions on `cfg` as resolve-policy read and
    made them (tasks.desired), used as they are rather than read and decided again.
    """
    if views is None:
        views = load_views(session, config.tenant_domain, user_ids)
    mappings = _mappings(session, cfg, views, config, user_ids)
    mapped = dict(zip(mappings["local_id"], mappings["remote_name"]))
    if decisions is None or any(u.id not in decisions for u in views):
        decisions = {u.id: decide(u, cfg, config, provisioned=u.id in mapped) for u in views}
    wanted = [u for u in views if decisions[u.id].action == PROVISION]
    names, errors = assign_names(wanted, cfg, config, mapped,
                                 taken={n.lower(): i for i, n in mapped.items()},
                                 names=_qualified_names(session, views, mapped), check=check_name)
    desired, deprovision, accounts = [], [], {}
    extra = extra_columns(cfg)
    managers = resolve_managers(session, config, cfg, [u for u in wanted if u.id in names])
    for user in views:
        decision = decisions[user.id]
        if decision.action == PROVISION and user.id in names:
            account = desired_account(user, names[user.id].user_name, cfg, managers.values.get(user.id))
            accounts[user.id] = account
            values = account.managed()
            desired.append((user.id, user.qualified_name, decision.reason,
                            *(values[f] for f in TEXT_FIELDS), bool(account.active), *(values[c] for c in extra)))
        elif decision.action == DEPROVISION:
            deprovision.append((user.id, user.qualified_name, decision.mode or cfg.deprovision_mode, decision.reason))
    return DesiredState(
        desired=_typed(pd.DataFrame.from_records(desired, columns=["local_id", "entity_name", "reason", *TEXT_FIELDS,
                                                                   "active", *extra])),
        deprovision=pd.DataFrame.from_records(deprovision, columns=["local_id", "entity_name", "mode", "reason"]),
        mappings=mappings, known_ids=pd.Series([u.id for u in views], dtype=object), accounts=accounts,
        conflicts={i: (next(u.qualified_name for u in views if u.id == i), e) for i, e in errors.items()},
        decisions={u.id: (u.qualified_name, decisions[u.id]) for u in views}
        if user_ids is not None else {},  # a batch reports per user; a full run per row
        user_ids=user_ids, managers=managers)
