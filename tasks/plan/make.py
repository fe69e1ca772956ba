"""One connector's plan, put together: the desired state, what the target holds, the diff, creates
ordered after their managers', the group rows; and the Prefect task that snapshots and plans.
"""

from datetime import datetime
from typing import Optional

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlmodel import Session

from models.config import Config, ConnectorConfig
from models.nesting import cycle_problems, nesting
from models.runstate import count_user_links
from models.suspensions import suspended
from models.tables import utcnow
from tasks.managers import creation_order
from tasks.plan.delta import diff
from tasks.plan.frames import target_frame
from tasks.plan.groups import plan_groups
from tasks.plan.observed import _mapped_elsewhere, observe
from tasks.plan.shape import CREATE, LINK, RELINK, Plan
from tasks.plan.wanted import DesiredState, desired_state


def _staged(session: Session, cfg: ConnectorConfig, state: DesiredState) -> Optional[tuple[dict, int, datetime]]:
    """What `diff` needs to stage the deprovisioned users' deletes (None: the connector does not stage)."""
    if cfg.staged is None:
        return None
    ids = list(state.deprovision["local_id"])
    return suspended(session, cfg.name, ids) if ids else {}, cfg.staged.after_days, utcnow()


def _managers_first(rows: pd.DataFrame, manager_of: dict[str, str]) -> pd.DataFrame:
    """The rows with every create after the creates of its user's managers (the rest keep their order)."""
    creates = rows["action"].isin([CREATE, RELINK]).to_numpy()
    if creates.sum() < 2:
        return rows
    depth = creation_order(list(rows.loc[creates, "local_id"]), manager_of)
    key = np.where(creates, [depth.get(u, 0) for u in rows["local_id"]], 0)
    return rows.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)


def make_plan(config: Config, cfg: ConnectorConfig, connector, session: Session,
              user_ids: Optional[list[str]] = None, state: Optional[DesiredState] = None) -> Plan:
    """Read the store and the target (all of it, or the accounts of `user_ids`) and diff them.

    `state`: the desired state already read (generate-username's result), else it is read here.
    """
    if state is None:
        state = desired_state(session, config, cfg, user_ids, check_name=connector.check_user_name)
    user_ids = state.user_ids
    if user_ids is None:
        accounts = connector.iter_users()
    else:
        known = count_user_links(session, cfg.name)
        accounts = observe(connector, cfg, state, cfg.max_concurrency or 4, target_size=known + len(state.desired))
        state.mappings = _mapped_elsewhere(session, cfg, [a.id for a in accounts], state.mappings)
    target = target_frame(accounts, cfg.attribute_map.extra_targets)
    rows, unmanaged = diff(state.desired, target, state.mappings, state.deprovision, state.known_ids,
                           read_only=connector.capabilities.read_only_attributes, orphans=cfg.orphans,
                           match=tuple(cfg.match), partial=user_ids is not None,
                           staged=_staged(session, cfg, state))
    if state.conflicts and len(rows):  # a user who cannot be named keeps the account it has, untouched
        rows = rows[~rows["local_id"].isin(list(state.conflicts))].reset_index(drop=True)
    plan = Plan(cfg.name, rows, target_count=len(target), desired_count=len(state.desired), unmanaged=unmanaged,
                max_deletions=cfg.max_deletions, desired=state.accounts, conflicts=state.conflicts,
                decisions=state.decisions, mapped=dict(zip(state.mappings["local_id"], state.mappings["remote_id"])),
                present=set(target["remote_id"]) if user_ids is not None else set())
    if state.managers.manager_of:
        plan.rows = _managers_first(plan.rows, state.managers.manager_of)
        # A report whose manager this plan creates (or links) gets its manager on the run's second pass.
        planned = set(plan.rows.loc[plan.rows["action"].isin([CREATE, RELINK, LINK]), "local_id"])
        plan.followups = sorted(r for r, m in state.managers.pending.items() if m in planned)
    nest = nesting(session)
    plan.problems = cycle_problems(nest) + state.managers.problems
    if cfg.groups and connector.capabilities.groups:
        plan.group_rows = plan_groups(session, cfg, connector, state, rows, nest, config.nesting(cfg).push)
    return plan


@task(name="plan", task_run_name="plan {connector_name}", cache_policy=NO_CACHE)
def plan_task(connector_name: str, config: Config, dry_run: bool = False,
              user_ids: Optional[list[str]] = None) -> Plan:
    """Snapshot the target and the desired state (of every user, or of `user_ids`), and diff them into a plan."""
    from models.db import session_scope
    from tasks import retry
    from tasks.door import target

    cfg = config.connector(connector_name)

    def snapshot() -> Plan:
        with target(cfg, config, dry_run=dry_run) as connector, session_scope() as session:
            return make_plan(config, cfg, connector, session, user_ids)

    # Listing is a read: a transient failure of the target lists again, by the retry policy.
    return retry.run_task(snapshot, config.retry, f"connector={cfg.name} plan")
