"""The plan's group rows: each configured group's membership on the target, as set differences."""

from typing import Optional

import pandas as pd
from sqlmodel import Session

from connectors.base import RemoteGroup, group_named
from models.config import ConnectorConfig
from models.identity import group_ids, group_members
from models.nesting import members_through
from models.runstate import group_links
from tasks.plan.shape import CREATE, GROUP_COLUMNS, GROUP_CREATE, LINK, MEMBER_ADD, MEMBER_REMOVE, RELINK
from tasks.plan.wanted import DesiredState


def _remote_group(name: str, group_id: Optional[str], group_maps: dict[str, str],
                  remote: list[RemoteGroup], case_exact: bool = False) -> Optional[RemoteGroup]:
    """The target's group for configured group `name`: the mapped one, else the one of that name as the
    target compares names (adopted, spelt as the target has it), when it is ours to take (`group_owned`)."""
    by_id = {g.id: g for g in remote}
    if group_id and group_maps.get(group_id) in by_id:
        return by_id[group_maps[group_id]]
    found = group_named(remote, name, case_exact)
    owner = next((local for local, remote_id in group_maps.items() if found and remote_id == found.id), None)
    return found if found is not None and group_owned(found, group_id, owner) else None


def group_owned(group: RemoteGroup, group_id: Optional[str], owner: Optional[str]) -> bool:
    """Whether the target's `group` may be adopted as local group `group_id`: not when it carries
    another externalId, nor when it is linked to another local group (`owner`), as for accounts."""
    if group.external_id and group_id and group.external_id != group_id:
        return False
    return owner is None or owner == group_id


def group_diff(names: list[str], local_groups: dict[str, str], local_members: dict[str, set[str]],
               remote: list[RemoteGroup], group_maps: dict[str, str], members: dict[str, Optional[str]],
               entity_names: dict[str, str], ours: dict[str, Optional[str]], case_exact: bool = False) -> pd.DataFrame:
    """The group rows: each configured group's membership as set differences.

    names: the configured groups; local_groups: name -> local group id; local_members: name -> local
    user ids; remote: the target's groups; group_maps: local group id -> remote id; members: every user
    desired on the connector -> its account's remote id (None when this plan creates it); ours: remote
    ids of the accounts we manage -> their local id (only those can be removed from a group);
    case_exact: whether the target tells group names apart by case (`same_group_name`).
    """
    out = []
    for name in names:
        group_id = local_groups.get(name)
        group = _remote_group(name, group_id, group_maps, remote, case_exact)
        have = set(group.member_ids) if group else set()
        if group is None:
            out.append((GROUP_CREATE, name, group_id, None, None, name, None,
                        f"configured group {name} is missing from the target"))
        wanted = {u: members[u] for u in sorted(local_members.get(name, ())) if u in members}
        for local_id, remote_id in wanted.items():
            if remote_id is None or remote_id not in have:
                out.append((MEMBER_ADD, name, group_id, group and group.id, local_id,
                            f"{name} ({entity_names.get(local_id, local_id)})", remote_id,
                            f"in group {name} locally and desired on the connector"))
        keep = {r for r in wanted.values() if r}
        for remote_id in sorted(have - keep):
            if remote_id in ours:  # a member we do not manage is left alone
                local_id = ours[remote_id]
                out.append((MEMBER_REMOVE, name, group_id, group.id, local_id,
                            f"{name} ({entity_names.get(local_id, remote_id)})", remote_id,
                            f"our account is in {name} but should not be"))
    frame = pd.DataFrame.from_records(out, columns=list(GROUP_COLUMNS)).astype(object)
    return frame.where(frame.notna(), None)


def pushed_members(session: Session, names: list[str], nest: dict[str, set[str]]) -> dict[str, set[str]]:
    """Group name -> the user ids its target group should hold: its own members, and with nesting
    (`nest`, empty for `group_nesting.push: direct`) those of the groups nested in it."""
    if not nest:
        return group_members(session, names)
    every = set(names) | set(nest) | {c for children in nest.values() for c in children}
    return members_through(names, group_members(session, sorted(every)), nest)


def plan_groups(session: Session, cfg: ConnectorConfig, connector, state: DesiredState,
                rows: pd.DataFrame, nest: dict[str, set[str]], push: str = "flatten") -> pd.DataFrame:
    """The group rows of connector `cfg`, given the user plan `rows` (creates, links, deletes to come);
    `nest`: the store's group nesting, `push`: how it counts (`group_nesting.push`)."""
    names = list(cfg.groups)
    local_groups = group_ids(session, names)
    local_members = pushed_members(session, names, nest if push == "flatten" else {})
    group_maps = group_links(session, cfg.name)
    # Each desired user's account: the mapped one, the one this plan links, or None (this plan creates it).
    mapped = dict(zip(state.mappings["local_id"], state.mappings["remote_id"]))
    members: dict[str, Optional[str]] = {u: mapped.get(u) for u in state.desired["local_id"]}
    for row in rows.itertuples():
        if row.local_id in members and row.action in (CREATE, RELINK):
            members[row.local_id] = None
        elif row.local_id in members and row.action == LINK:
            members[row.local_id] = row.remote_id
    ours = {r: u for u, r in mapped.items()}
    if state.user_ids is not None:  # a batch: only its own users' memberships are decided here
        batch = set(state.user_ids)
        local_members = {n: m & batch for n, m in local_members.items()}
        ours = {r: u for r, u in ours.items() if u in batch}
    ours.update({row.remote_id: row.local_id for row in rows.itertuples() if row.action == LINK})
    # A deleted account is removed from its groups too: not every target drops the references itself.
    entity_names = dict(zip(state.desired["local_id"], state.desired["entity_name"]))
    entity_names.update(zip(state.deprovision["local_id"], state.deprovision["entity_name"]))
    return group_diff(names, local_groups, local_members, list(connector.iter_groups()), group_maps, members,
                      entity_names, ours, connector.capabilities.group_names_case_exact)

