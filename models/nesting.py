"""Nested groups in the identity store: which groups a group holds, and the memberships through them.

`eng-platform` nested in `engineering` makes every member of eng-platform a member of engineering,
for the role rules (`inherited`) and for group push (`members_through`), as far down as nesting
goes. The walk is `models.groupgraph`'s, so a cycle (a group nested, at some depth, in itself) is
walked once and named by `cycle_problems`, never followed forever.
"""

from typing import Iterable

from sqlmodel import Session, delete, select

from models.groupgraph import cycles, reverse, walk
from models.tables import Group, GroupNesting

_GROUP = "group:"  # a group's key in the membership graph; user ids (hex) never start with it


def _group(session: Session, name: str) -> Group:
    row = session.exec(select(Group).where(Group.name == name)).first()
    if row is None:
        row = Group(name=name)
        session.add(row)
        session.flush()
    return row


def set_member_groups(session: Session, group: str, members: Iterable[str]) -> None:
    """Make `members` (group names) exactly the groups nested directly in `group`; groups are created."""
    parent = _group(session, group)
    session.exec(delete(GroupNesting).where(GroupNesting.group_id == parent.id))
    for name in sorted(set(members)):
        session.add(GroupNesting(group_id=parent.id, member_group_id=_group(session, name).id))
    session.flush()


def forget_group(session: Session, group_id: str) -> None:
    """Drop a group's nesting, both ways (before the group itself is dropped)."""
    session.exec(delete(GroupNesting).where(GroupNesting.group_id == group_id))
    session.exec(delete(GroupNesting).where(GroupNesting.member_group_id == group_id))


def nesting(session: Session) -> dict[str, set[str]]:
    """Group name -> the names of the groups nested directly in it (groups that hold none are absent)."""
    names = dict(session.exec(select(Group.id, Group.name)).all())
    nest: dict[str, set[str]] = {}
    for parent, child in session.exec(select(GroupNesting.group_id, GroupNesting.member_group_id)):
        nest.setdefault(names[parent], set()).add(names[child])
    return nest


def _groups_only(nest: dict[str, set[str]]) -> dict[str, set[str]]:
    every = set(nest) | {c for children in nest.values() for c in children}
    return {g: set(nest.get(g, ())) for g in every}


def ancestry(nest: dict[str, set[str]]) -> dict[str, frozenset[str]]:
    """Group name -> the groups that hold it through nesting, at any depth (read once per plan)."""
    if not nest:
        return {}
    parents = reverse(_groups_only(nest))
    return {g: frozenset(walk(parents, g)[0] - {g}) for g in parents if parents[g]}


def inherited(direct: Iterable[str], up: dict[str, frozenset[str]]) -> frozenset[str]:
    """The groups a member of the groups `direct` is in through nesting (`up`: `ancestry`), beyond `direct`."""
    direct = set(direct)
    found: set[str] = set()
    for name in direct:
        found |= up.get(name, frozenset())
    return frozenset(found - direct)


def members_through(names: Iterable[str], direct_members: dict[str, set[str]],
                    nest: dict[str, set[str]]) -> dict[str, set[str]]:
    """Group name -> user ids: its own members and those of every group nested in it, at any depth."""
    graph = {_GROUP + g: {_GROUP + c for c in children} for g, children in _groups_only(nest).items()}
    for g, users in direct_members.items():
        graph.setdefault(_GROUP + g, set()).update(users)
    out = {}
    for name in names:
        _, users = walk(graph, _GROUP + name)
        if users:
            out[name] = users
    return out


def cycle_problems(nest: dict[str, set[str]]) -> list[str]:
    """One line per nesting cycle, naming its groups (each still counts every member once)."""
    return [f"nested groups form a cycle: {', '.join(ring)} contain each other; each member is counted once"
            for ring in cycles(_groups_only(nest))]
