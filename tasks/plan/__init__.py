"""plan: what one connector's target should hold, what it does hold, and the difference as a typed plan.

This is the one decision engine: an event batch (a few users) and a full reconciliation (every
user) both plan here. The desired state comes from the store through the policy
(`tasks.policy.decide`) and the username rule (`tasks.username.assign_names`); the target's state
from the connector's paged listing (every user) or from lookups of just the batch's accounts
(`observe`). The diff is vectorised pandas (merges on keys), so a million accounts plan in seconds.

A plan is a DataFrame with one row per action (`PLAN_COLUMNS`):

  action       create | update | disable | enable | delete | link | relink | orphan
  op           what apply sends: create | update | disable | enable | delete | none
  local_id     the local user (None for an orphan)
  entity_name  user@STORE, or the remote username of an orphan
  user_name    the remote username the account should have
  remote_id    the target's id (None for create/relink)
  changes      {field: {"had": …, "want": …}} for update and link, else None
  reason       why (the policy's reason, or what matched)
  decision     provision (the user is wanted here) | deprovision (out of scope, or an orphan)

With `groups` configured on a connector that supports them, the plan also holds `group_rows`
(`GROUP_COLUMNS`), applied after the user rows: group_create (a configured group missing from the
target), member_add and member_remove, the set differences between the members a group should
have (its local members desired on the connector) and the members it has that are ours (accounts
mapped to a user of this connector). Members that are not ours are left alone.

One module per job, each importing only those above it (no cycles):
  shape     the row columns, the action names, the `Plan` record and the guard's figures
  frames    accounts as frames: the columns both sides share, typed alike
  wanted    the desired state from the store (`desired_state`; not `tasks.desired`, the batch's tasks)
  observed  a batch's candidate accounts in the target: lookups, or a listing when cheaper (`observe`)
  delta     the diff of desired against observed into user rows (`diff`, `_differs`)
  groups    the group rows: configured groups' membership as set differences
  make      one connector's plan put together (`make_plan`) and its Prefect task (`plan_task`)
The modules are not named after the functions they hold, so `tasks.plan.diff` and `tasks.plan.observe`
stay the functions. Everything is re-exported here, so `from tasks.plan import X` stays the one import path.
"""

from tasks.plan.delta import CASELESS, _differs, diff
from tasks.plan.frames import ACCOUNT_COLUMNS, extra_columns, target_frame
from tasks.plan.groups import group_diff, group_owned, plan_groups, pushed_members
from tasks.plan.make import _managers_first, make_plan, plan_task
from tasks.plan.observed import BATCHED_LIST_RATIO, LIST_RATIO, _listed, observe
from tasks.plan.shape import (ACTIONS, CREATE, DELETE, DEPROVISION, DESTRUCTIVE, DISABLE, ENABLE, GROUP_ACTIONS,
                              GROUP_COLUMNS, GROUP_CREATE, LINK, MEMBER_ADD, MEMBER_REMOVE, NONE, ORPHAN, PLAN_COLUMNS,
                              PROVISION, RELINK, TEXT_FIELDS, UPDATE, Plan)
from tasks.plan.wanted import MAPPING_COLUMNS, DesiredState, desired_account, desired_state

__all__ = [
    "ACCOUNT_COLUMNS", "ACTIONS", "BATCHED_LIST_RATIO", "CASELESS", "CREATE", "DELETE", "DEPROVISION", "DESTRUCTIVE",
    "DISABLE", "DesiredState", "ENABLE", "GROUP_ACTIONS", "GROUP_COLUMNS", "GROUP_CREATE", "LINK", "LIST_RATIO",
    "MAPPING_COLUMNS", "MEMBER_ADD", "MEMBER_REMOVE", "NONE", "ORPHAN", "PLAN_COLUMNS", "PROVISION", "Plan", "RELINK",
    "TEXT_FIELDS", "UPDATE", "_differs", "_listed", "_managers_first", "desired_account", "desired_state", "diff",
    "extra_columns", "group_diff", "group_owned", "make_plan", "observe", "plan_groups", "plan_task",
    "pushed_members", "target_frame",
]
