"""Nested groups as a graph: the one walk every nesting goes through (LDAP groups, the store's groups).

A graph maps a group to its members; a member that is itself a key of the graph is a group (walked
into), any other member is a leaf (a user). Each group is visited once, so a cycle ends the walk
instead of looping; `cycles` names the groups caught in one, for a report.
"""

from typing import Hashable, Iterable, Mapping


def walk(groups: Mapping[Hashable, Iterable[Hashable]], top: Hashable) -> tuple[set, set]:
    """(the groups reached from `top`, `top` included; the leaves reached), each group visited once."""
    seen, leaves, stack = {top}, set(), [top]
    while stack:
        for member in groups.get(stack.pop(), ()):
            if member in groups:
                if member not in seen:
                    seen.add(member)
                    stack.append(member)
            else:
                leaves.add(member)
    return seen, leaves


def flatten(groups: Mapping[Hashable, Iterable[Hashable]], top: Hashable) -> set:
    """Every leaf reachable from group `top` through `groups`: nested groups expanded."""
    return walk(groups, top)[1]


def reverse(groups: Mapping[Hashable, Iterable[Hashable]]) -> dict:
    """member group -> the groups it is a direct member of (only members that are groups)."""
    parents: dict = {g: set() for g in groups}
    for group, members in groups.items():
        for member in members:
            if member in groups:
                parents[member].add(group)
    return parents


def cycles(groups: Mapping[Hashable, Iterable[Hashable]]) -> list[list]:
    """The sets of groups that contain each other through nesting (a cycle), each sorted, in order."""
    reach = {g: walk({k: [m for m in v if m in groups] for k, v in groups.items()}, g)[0] for g in groups}
    found: list[list] = []
    done: set = set()
    for group in sorted(groups, key=str):
        if group in done:
            continue
        # In a cycle with `group`: reached from it and reaching it back (a self-member counts).
        ring = {other for other in reach[group] if group in reach[other] and other != group}
        if ring or group in set(groups.get(group, ())):
            members = sorted(ring | {group}, key=str)
            done.update(members)
            found.append(members)
    return found
