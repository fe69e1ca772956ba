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
    """The sets of groups that contain each other through nesting (a cycle), each sorted, in order.

    Tarjan's strongly connected components, iterative: one pass over a graph of a million nodes
    (managers), no recursion limit.
    """
    edges = {g: [m for m in members if m in groups] for g, members in groups.items()}
    index: dict = {}
    low: dict = {}
    on_stack: set = set()
    stack: list = []
    found: list[list] = []
    for root in sorted(edges, key=str):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                member = edges[node][i]
                if member not in index:
                    work.append((member, 0))
                elif member in on_stack:
                    low[node] = min(low[node], index[member])
                continue
            if work:  # back in the caller: it takes the lowest index reached from here
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                ring = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    ring.append(member)
                    if member == node:
                        break
                if len(ring) > 1 or node in edges[node]:
                    found.append(sorted(ring, key=str))
    return sorted(found, key=lambda ring: str(ring[0]))
