"""The outbox as a work queue: claim pending events in batches, coalesced per user; finish them.

Any number of drains (threads, processes, workers on other machines) may run at once. A drain
claims a user by taking the lease `user:<id>`; the events of users it could not claim stay pending
for the next drain. Event statuses are set before the leases are released, so a drain that claims
a user later never runs an event another drain has just finished.
"""

from dataclasses import dataclass, field
from typing import Optional

from sqlalchemy import update
from sqlmodel import select

from models.db import session_scope
from models.locks import acquire_many, new_owner, release_many
from models.tables import Event, User, utcnow

UNFINISHED = ("accepted", "running")
CLAIM_TTL = 900.0  # seconds: a drain that dies frees its users after this (at once on this machine)


@dataclass
class Batch:
    """Events claimed by one drain: per user, that user's events oldest first."""

    owner: str
    events: dict[str, list[str]] = field(default_factory=dict)  # user id -> event ids
    names: dict[str, str] = field(default_factory=dict)  # user id -> user@STORE
    triggers: set[str] = field(default_factory=set)

    @property
    def user_ids(self) -> list[str]:
        return list(self.events)

    @property
    def event_ids(self) -> list[str]:
        return [e for ids in self.events.values() for e in ids]

    def __len__(self) -> int:
        return len(self.events)


def _lease(user_id: str) -> str:
    return f"user:{user_id}"


def claim(limit: int = 1000, event_ids: Optional[list[str]] = None, owner: Optional[str] = None) -> Batch:
    """Claim up to `limit` pending events (or just `event_ids`), oldest first, with their users."""
    owner = owner or new_owner()
    with session_scope() as session:
        query = select(Event.id, Event.user_id).where(Event.status.in_(UNFINISHED), Event.user_id.is_not(None))
        if event_ids is not None:
            query = query.where(Event.id.in_(event_ids))
        pending = session.exec(query.order_by(Event.received_at, Event.id).limit(limit)).all()
    users = list(dict.fromkeys(u for _, u in pending))
    held = {name.removeprefix("user:") for name in acquire_many([_lease(u) for u in users], CLAIM_TTL, owner)}
    batch = Batch(owner)
    if not held:
        return batch
    with session_scope() as session:
        # Read again under the leases: an event finished meanwhile by another drain is not ours to run.
        query = (select(Event.id, Event.user_id, Event.trigger, User.username, User.user_store)
                 .join(User, User.id == Event.user_id)
                 .where(Event.status.in_(UNFINISHED), Event.user_id.in_(list(held))))
        if event_ids is not None:
            query = query.where(Event.id.in_(event_ids))
        rows = session.exec(query.order_by(Event.received_at, Event.id)).all()
        for event_id, user_id, trigger, username, store in rows:
            batch.events.setdefault(user_id, []).append(event_id)
            batch.names[user_id] = f"{username}@{store}"
            batch.triggers.add(trigger)
        if rows:
            session.exec(update(Event).where(Event.id.in_([r[0] for r in rows])).values(status="running"))
    idle = [_lease(u) for u in held if u not in batch.events]
    if idle:
        release_many(idle, owner)
    return batch


def finish(batch: Batch, outcome: dict[str, tuple[str, Optional[str]]]) -> None:
    """Set each event's final status (user id -> (status, error)) and release the batch's users."""
    now = utcnow()
    with session_scope() as session:
        for status, error in set(outcome.values()):
            users = [u for u, o in outcome.items() if o == (status, error)]
            ids = [e for u in users for e in batch.events.get(u, [])]
            for start in range(0, len(ids), 500):
                session.exec(update(Event).where(Event.id.in_(ids[start:start + 500]))
                             .values(status=status, error=error, finished_at=now))
    release(batch)


def release(batch: Batch) -> None:
    """Give the batch's users back without finishing their events (they stay pending)."""
    release_many([_lease(u) for u in batch.events], batch.owner)


def pending_count() -> int:
    from sqlalchemy import func

    with session_scope() as session:
        return session.exec(select(func.count()).select_from(Event).where(Event.status.in_(UNFINISHED))).one()
