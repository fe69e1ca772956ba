"""What a plan is: its row columns, the action names it uses, and the `Plan` record with the guard's figures.

The plan's rows (`PLAN_COLUMNS`, `GROUP_COLUMNS`) are described in `tasks.plan`; every other module of
the package builds or reads them by these names.
"""

import math
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from connectors.base import MANAGED, Account
from connectors.errors import Rejected
from models.kinds import Action, Intent
from tasks.policy import Decision

# The members, bound once: the diff and the per-row loops compare against these, not `Action.X`.
CREATE, UPDATE, DISABLE, ENABLE, DELETE = Action.CREATE, Action.UPDATE, Action.DISABLE, Action.ENABLE, Action.DELETE
LINK, RELINK, ORPHAN, NONE = Action.LINK, Action.RELINK, Action.ORPHAN, Action.NONE
GROUP_CREATE, MEMBER_ADD, MEMBER_REMOVE = Action.GROUP_CREATE, Action.MEMBER_ADD, Action.MEMBER_REMOVE
PROVISION, DEPROVISION = Intent.PROVISION, Intent.DEPROVISION

ACTIONS = (CREATE, UPDATE, DISABLE, ENABLE, DELETE, LINK, RELINK, ORPHAN)
PLAN_COLUMNS = ("action", "op", "local_id", "entity_name", "user_name", "remote_id", "changes", "reason", "decision")
# Compared as text; `active` is compared as a flag and planned as enable/disable.
TEXT_FIELDS = tuple(f for f in MANAGED if f != "active")
GROUP_ACTIONS = (GROUP_CREATE, MEMBER_ADD, MEMBER_REMOVE)
# group: the group's name; group_id: its local id (None until the local group exists); group_remote_id:
# its id in the target (None before it is created); local_id/remote_id: the member (remote_id None when
# its account is created by this plan: apply reads it from the mapping the create wrote).
GROUP_COLUMNS = ("action", "group", "group_id", "group_remote_id", "local_id", "entity_name", "remote_id", "reason")
DESTRUCTIVE = (DELETE, DISABLE)


@dataclass
class Plan:
    """The plan for one connector, and what the guard needs to know about it."""

    connector: str
    rows: pd.DataFrame
    target_count: int
    desired_count: int
    unmanaged: int = 0
    max_deletions: Optional[int] = None
    desired: dict[str, Account] = field(default_factory=dict)  # local_id -> account, for create/relink/link
    group_rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(GROUP_COLUMNS)))
    # Users the policy wants here who cannot have an account (a username collision, a name the
    # target refuses): local_id -> (user@STORE, the error). Each is a failed operation.
    conflicts: dict[str, tuple[str, Rejected]] = field(default_factory=dict)
    # Per user of the plan: the decision's action and reason, and the account it has (for the
    # per-user outcome of an event batch).
    decisions: dict[str, tuple[str, Decision]] = field(default_factory=dict)  # local_id -> (user@STORE, decision)
    mapped: dict[str, str] = field(default_factory=dict)  # local_id -> remote_id, before the plan
    present: set[str] = field(default_factory=set)  # a batch's plan: the remote ids found in the target
    # What the store holds that cannot be honoured as it stands (a nested-group cycle): one line
    # each, logged once per run; the plan goes ahead around it.
    problems: list[str] = field(default_factory=list)
    # Users created by this plan without their manager, because the manager is created by it too:
    # planned again once this plan is applied (the run's second pass).
    followups: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {a: 0 for a in ACTIONS}
        if self.conflicts:
            counts[Action.CONFLICT] = len(self.conflicts)
        counts.update(self.rows["action"].value_counts().to_dict())
        if len(self.group_rows):
            counts.update({a: 0 for a in GROUP_ACTIONS})
            counts.update(self.group_rows["action"].value_counts().to_dict())
        return {k: int(v) for k, v in counts.items()}

    @property
    def deletions(self) -> int:
        """Deletes and disables this plan would send (what the guard counts)."""
        return int(self.rows["op"].isin(DESTRUCTIVE).sum())

    @property
    def threshold(self) -> int:
        if self.max_deletions is not None:
            return self.max_deletions
        return min(math.floor(self.target_count * 0.10), 50)

    @property
    def guard_tripped(self) -> bool:
        return self.deletions > self.threshold

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items() if v)
        return (f"{self.connector}: {self.desired_count} desired, {self.target_count} in the target "
                f"({self.unmanaged} unmanaged); plan: {counts or 'nothing to do'}; "
                f"deletes+disables {self.deletions} (limit {self.threshold})"
                + "".join(f"; problem: {p}" for p in self.problems))
