"""Suspend, then delete: when we switched each account off on deprovisioning, per connector.

Written in the transaction that records the disable's success (`tasks.apply`), dropped with the
enable or the delete that ends it; the planner reads it to tell a pending delete from a due one.
"""

from datetime import datetime
from typing import Iterable, Optional

from sqlalchemy import delete, insert
from sqlmodel import Session, select

from models.tables import Suspension


def suspended(session: Session, connector: str, local_ids: Optional[list[str]] = None) -> dict[str, datetime]:
    """Local id -> when its account on `connector` was suspended by a deprovisioning (all, or of `local_ids`)."""
    query = select(Suspension.local_id, Suspension.suspended_at).where(Suspension.connector == connector)
    if local_ids is not None:
        query = query.where(Suspension.local_id.in_(local_ids))
    return dict(session.exec(query).all())


def record_suspended(session: Session, connector: str, accounts: list[tuple[str, str]], when: datetime) -> None:
    """(local id, remote id) of accounts switched off now on deprovisioning: their clock starts at `when`."""
    if not accounts:
        return
    clear_suspended(session, connector, [local for local, _ in accounts])
    session.exec(insert(Suspension), params=[{"connector": connector, "local_id": local, "remote_id": remote,
                                              "suspended_at": when} for local, remote in accounts])


def clear_suspended(session: Session, connector: str, local_ids: Iterable[str]) -> None:
    """The suspensions of these users end (re-enabled, deleted, or back in scope)."""
    ids = sorted(set(local_ids))
    if ids:
        session.exec(delete(Suspension).where(Suspension.connector == connector, Suspension.local_id.in_(ids)))
