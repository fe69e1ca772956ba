"""Manager references: what each user's account should hold as its manager, on one connector.

A connector's `attributes: {manager: <local value>}` names the user's manager in the store, by
username (in the user's own user store first, then anywhere when only one user has it) or by user
id. The target wants its own reference to the manager's account, from our mapping: SCIM
`manager.value` and Salesforce `ManagerId` take the account's id, Google's `relations` the
manager's primaryEmail. A manager with no account on the connector yet holds no value ("nothing
held": the report is created without one) and the report is `pending`: the run's second pass
(when the manager is created in the same run) or a later run sets it. A reference that names no
user, or a chain of managers that comes back to a user (a cycle), is a problem named in the plan;
the accounts are still created, without a manager from us.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from sqlmodel import Session

from models.config import Config, ConnectorConfig
from models.groupgraph import cycles
from models.identity import UserView, load_views
from models.managers import users_by_key
from models.mapping import local_values
from models.runstate import user_links

MAX_DEPTH = 64  # a chain of managers read beyond the batch, level by level, to find a cycle through it


@dataclass
class Managers:
    """The manager values of a plan's users, and what could not be set yet."""

    values: dict[str, Any] = field(default_factory=dict)  # local id -> what the target's attribute holds
    manager_of: dict[str, str] = field(default_factory=dict)  # local id -> the manager's local id
    pending: dict[str, str] = field(default_factory=dict)  # local id -> manager without an account here yet
    problems: list[str] = field(default_factory=list)


def _key(value: Any) -> Optional[str]:
    """A reference as text; an empty one names nobody."""
    if value is None:
        return None
    return str(value).strip() or None


class _Index:
    """The users a batch of references may name, by id and by username."""

    def __init__(self, found: list[tuple[str, str, str]]):
        self.ids = {i for i, _, _ in found}
        self.by_name: dict[str, list[tuple[str, str]]] = {}
        for i, name, store in found:
            self.by_name.setdefault(name, []).append((i, store.upper()))

    def pick(self, key: str, user: UserView) -> Optional[str]:
        """The manager `key` names for `user`: an id, else the username in the user's store, else a unique one."""
        if key in self.ids:
            return key
        named = self.by_name.get(key, [])
        same = [i for i, store in named if store == user.user_store.upper()]
        if len(same) == 1:
            return same[0]
        return named[0][0] if len(named) == 1 else None


def resolve_managers(session: Session, config: Config, cfg: ConnectorConfig, users: list[UserView]) -> Managers:
    """The manager of each of `users` (those the plan wants on `cfg`), and the value to send for it."""
    source = cfg.attribute_map.manager
    out = Managers()
    if source is None or not users:
        return out
    views = {u.id: u for u in users}
    wanted = set(views)
    refs: dict[str, str] = {}  # a plan user's reference that names no one
    todo = list(users)
    for _ in range(MAX_DEPTH):  # the managers' own managers too: a cycle may pass outside the batch
        keys = {u.id: _key(source.value(local_values(u, None), u.attributes)) for u in todo}
        keys = {i: k for i, k in keys.items() if k}
        index = _Index(users_by_key(session, config.tenant_domain, set(keys.values())))
        for user_id, key in keys.items():
            manager = index.pick(key, views[user_id])
            if manager is not None:
                out.manager_of[user_id] = manager
            elif user_id in wanted:
                refs[user_id] = key
        unseen = sorted({m for m in out.manager_of.values() if m not in views})
        if not unseen:
            break
        todo = load_views(session, config.tenant_domain, unseen)
        views.update({u.id: u for u in todo})
    for user_id, key in sorted(refs.items(), key=lambda kv: views[kv[0]].qualified_name):
        out.problems.append(f"the manager {key!r} of {views[user_id].qualified_name} ({source.text}) is no user "
                            f"of the store, or more than one; the account gets no manager from us")
    graph = {u: {m} for u, m in out.manager_of.items()}
    for ring in cycles(graph):
        names = ", ".join(sorted(views[u].qualified_name for u in ring if u in views))
        out.problems.append(f"managers form a cycle: {names} manage each other; their accounts get no manager "
                            f"from us until the cycle is broken")
        for user_id in ring:
            out.manager_of.pop(user_id, None)
    links = {local: (remote_id, remote_name) for local, remote_id, remote_name
             in user_links(session, cfg.name, sorted(set(out.manager_of.values())))}
    for user_id, manager in out.manager_of.items():
        if user_id not in wanted:
            continue
        if manager in links:
            remote_id, remote_name = links[manager]
            out.values[user_id] = remote_name if cfg.type == "google" else remote_id
        else:
            out.pending[user_id] = manager
    out.manager_of = {u: m for u, m in out.manager_of.items() if u in wanted}
    return out


def creation_order(local_ids: list[str], manager_of: dict[str, str]) -> dict[str, int]:
    """Local id -> how many managers above it among `local_ids`: creates sorted by it put managers first."""
    among = set(local_ids)
    depth: dict[str, int] = {}
    for user in local_ids:
        seen, node, n = {user}, manager_of.get(user), 0
        while node in among and node not in seen:
            seen.add(node)
            n += 1
            node = manager_of.get(node)
        depth[user] = n
    return depth
