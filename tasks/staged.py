"""Suspend, then delete: what the plan does with a deprovisioned user's account that is switched off.

With `deprovision: {first: suspend, then: delete, after_days: N}` leaving scope first switches the
account off (the plan's ordinary disable, whose success `tasks.apply` records with its time).
Once off, the account is, by the time recorded: a pending delete (`delete_pending`, sent nothing,
shown in the plan and by `outbound explain`) until N days have passed, then a delete like any other
(counted by the deletion guard). An account that is off but whose suspension we never recorded
(switched off before, by an event or by hand) is switched off again to start its clock. A user
back in scope before the delete is due is planned an enable, which ends the suspension.
"""

from datetime import datetime, timedelta, timezone
from typing import Iterator

import pandas as pd

from models.kinds import Action


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def due_date(suspended_at: datetime, after_days: int) -> datetime:
    """When an account suspended at `suspended_at` is to be deleted."""
    return _utc(suspended_at) + timedelta(days=after_days)


def pending_line(suspended_at: datetime, after_days: int) -> str:
    """`delete pending: suspended 2026-11-01, due 2026-12-01`."""
    return f"delete pending: suspended {_utc(suspended_at):%Y-%m-%d}, due {due_date(suspended_at, after_days):%Y-%m-%d}"


def staged_rows(off: pd.DataFrame, suspended: dict[str, datetime], after_days: int,
                now: datetime) -> Iterator[tuple[Action, Action, pd.DataFrame, object]]:
    """(action, op, rows, reason) for the switched-off accounts `off` (local_id, remote_id, …) of
    deprovisioned users, given when each was `suspended` (local id -> time)."""
    if off.empty:
        return
    since = [suspended.get(u) for u in off["local_id"]]
    known = pd.Series([s is not None for s in since], index=off.index)
    due = pd.Series([s is not None and due_date(s, after_days) <= _utc(now) for s in since], index=off.index)
    reasons = pd.Series([pending_line(s, after_days) if s is not None else None for s in since], index=off.index)
    if due.any():
        yield (Action.DELETE, Action.DELETE, off[due],
               ("suspended " + reasons[due].str.removeprefix("delete pending: suspended ")
                + f" ({after_days} days): delete").to_numpy(dtype=object))
    waiting = known & ~due
    if waiting.any():
        yield Action.DELETE_PENDING, Action.NONE, off[waiting], reasons[waiting].to_numpy(dtype=object)
    if (~known).any():
        yield (Action.DISABLE, Action.DISABLE, off[~known],
               f"switched off, but not by a deprovisioning we recorded: suspend it again to start the "
               f"{after_days}-day clock before the delete")
