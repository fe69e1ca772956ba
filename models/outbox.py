"""The outbox as a work queue: claim pending events in batches, coalesced per user; finish them.

Any number of drains (threads, processes, workers on other machines) may run at once. A drain
claims a user by taking the lease `user:<id>`; the events of users it could not claim stay pending
for the next drain. Event statuses are set before the leases are released, so a drain that claims
a user later never runs an event another drain has just finished.
"""

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Iterator, Optional

from sqlalchemy import update
from sqlmodel import select

from models.config import RetryPolicy
from models.db import session_scope
from models.availability import STORE_UNAVAILABLE
from models.kinds import EventStatus
from models.locks import (acquire_many, elsewhere, host_of, kept, leased, leases_named, live_owners, new_owner,
                          release_many, run_of)
from models.tables import Event, User, utcnow

log = logging.getLogger(__name__)

UNFINISHED = (EventStatus.ACCEPTED, EventStatus.RUNNING)
CLAIM_TTL = 900.0  # seconds: a drain that dies frees its users after this (at once on this machine)
MAX_ATTEMPTS = 8  # runs that failed for a passing reason before the event is failed for good
# The wait before an event's next run, by the retry runner's schedule (`RetryPolicy.delay`): 30 s,
# 1 min, 2 min, … capped at an hour, no jitter.
EVENT_RETRY = RetryPolicy(attempts=MAX_ATTEMPTS, base_delay=30.0, max_delay=3600.0, jitter=0)


def retry_delay(attempts: int) -> float:
    """The wait before the next run of an event that has run `attempts` times."""
    return EVENT_RETRY.delay(attempts)


def _claimable(now, named: bool = False):
    """Events a drain may take: new or cut short, and those whose retry is due (any retry, when named)."""
    if named:
        return Event.status.in_((*UNFINISHED, EventStatus.RETRYING))
    return Event.status.in_(UNFINISHED) | ((Event.status == EventStatus.RETRYING) & (Event.retry_at <= now))


@dataclass
class Batch:
    """Events claimed by one drain: per user, that user's events oldest first."""

    owner: str
    events: dict[str, list[str]] = field(default_factory=dict)  # user id -> event ids
    names: dict[str, str] = field(default_factory=dict)  # user id -> user@STORE
    triggers: set[str] = field(default_factory=set)
    # Flow runs whose process died holding some of these users: they never ended, so they read
    # Running in Prefect until someone closes them (flows.crashed).
    crashed_runs: set[str] = field(default_factory=set)
    # Flow run id -> host, for runs whose leases on these users expired (a process on another
    # machine that stopped): Prefect reads them Running too.
    expired_runs: dict[str, str] = field(default_factory=dict)
    # Users met for the first time: every event the user ever had is in this batch, each on its first
    # run (never retried, never cut short by a drain that died). No earlier write for them can have
    # reached a target, so a target that refuses a repeated userName may be sent their creates
    # without a look-up first (tasks/optimistic.py).
    first_run: set[str] = field(default_factory=set)

    @property
    def user_ids(self) -> list[str]:
        return list(self.events)

    @property
    def event_ids(self) -> list[str]:
        return [e for ids in self.events.values() for e in ids]

    def __len__(self) -> int:
        return len(self.events)


USER_LEASE = "user:"


def _lease(user_id: str) -> str:
    return USER_LEASE + user_id


def _asked_once(ended: Callable[[set[str]], set[str]]) -> Callable[[set[str]], set[str]]:
    """`ended`, asking the orchestrator about each run at most once (a claim asks twice: busy drains, take-over)."""
    known: dict[str, bool] = {}

    def ask(runs: set[str]) -> set[str]:
        new = runs - known.keys()
        if new:
            over = ended(new)
            known.update((r, r in over) for r in new)
        return {r for r in runs if known[r]}

    return ask


def _busy_drains(ended: Optional[Callable[[set[str]], set[str]]]) -> list[str]:
    """The owners of user leases that are working now: alive here, or elsewhere in a run not known to have ended."""
    owners = live_owners(USER_LEASE)
    runs = {run for o in owners if elsewhere(o) and (run := run_of(o))}
    over = ended(runs) if ended is not None and runs else set()
    return [o for o in owners if not (elsewhere(o) and run_of(o) in over)]


def claim(limit: int = 1000, event_ids: Optional[list[str]] = None, owner: Optional[str] = None,
          run: Optional[str] = None, ended: Optional[Callable[[set[str]], set[str]]] = None) -> Batch:
    """Claim up to `limit` pending events (or just `event_ids`), oldest first, with their users.

    `run`: the claiming flow run's id, kept in the leases so a drain taking them over from a dead
    process can mark that run crashed. `ended(run ids)`: those of the given flow runs that have
    ended (asked of the orchestrator); a user whose lease is held on another machine by a run
    that has ended is taken over at once, not after the lease's lifetime.
    """
    owner = owner or new_owner(run)
    _release_leftovers()
    ended = _asked_once(ended) if ended is not None else None
    busy = _busy_drains(ended)
    with session_scope() as session:
        query = select(Event.id, Event.user_id).where(_claimable(utcnow(), event_ids is not None),
                                                      Event.user_id.is_not(None))
        if event_ids is not None:
            query = query.where(Event.id.in_(event_ids))
        if busy:  # their users' events would fill the limit, and a second drain would find nothing it can take
            query = query.where(~leased(USER_LEASE, Event.user_id, busy))
        pending = session.exec(query.order_by(Event.received_at, Event.id).limit(limit)).all()
    users = list(dict.fromkeys(u for _, u in pending))
    dead, expired, holders = set(), set(), {}
    held = {name.removeprefix(USER_LEASE)
            for name in acquire_many([_lease(u) for u in users], CLAIM_TTL, owner, dead, expired, holders)}
    if ended is not None:
        held |= _take_over_from_ended_runs(holders, owner, ended)
    batch = Batch(owner, crashed_runs={r for o in dead if (r := run_of(o))},
                  expired_runs={r: host_of(o) for o in expired if (r := run_of(o))})
    if not held:
        return batch
    try:
        _read_under_leases(batch, held, event_ids)
    except STORE_UNAVAILABLE:  # the store went away after the leases were taken: give them back when it returns
        release_or_defer(Batch(owner, events={u: [] for u in held}))
        raise
    idle = [_lease(u) for u in held if u not in batch.events]
    if idle:
        release_many(idle, owner)
    return batch


def _take_over_from_ended_runs(holders: dict[str, str], owner: str,
                               ended: Callable[[set[str]], set[str]]) -> set[str]:
    """Take the leases of `holders` (name -> owner) held on another machine by flow runs that have ended.

    A worker that ends while the store is down cannot give its leases back; its run ends all the
    same (Failed, naming the store). Its process is on another machine, so no pid tells that it is
    gone, but the run's end does. Returns the users now held by `owner`. (Here a dead pid already
    frees a lease, and a live process gives back what it could not release at its next claim.)
    """
    runs = {name: run for name, held_by in holders.items() if elsewhere(held_by) and (run := run_of(held_by))}
    if not runs:
        return set()
    over = ended(set(runs.values()))
    names = [name for name, run in runs.items() if run in over]
    for name in names:
        release_many([name], holders[name])  # only if that owner still holds it
    if names:
        log.info("owner=%s takes over %d leases of ended flow runs %s", owner, len(names), sorted(over))
    return {name.removeprefix(USER_LEASE) for name in acquire_many(names, CLAIM_TTL, owner)}


def _read_under_leases(batch: Batch, held: set[str], event_ids: Optional[list[str]]) -> None:
    """Add the claimable events of the `held` users to `batch` and mark them running."""
    with session_scope() as session:
        # Read again under the leases: an event finished meanwhile by another drain is not ours to run.
        query = (select(Event.id, Event.user_id, Event.trigger, User.username, User.user_store, Event.status,
                        Event.attempts)
                 .join(User, User.id == Event.user_id)
                 .where(_claimable(utcnow(), event_ids is not None), Event.user_id.in_(list(held))))
        if event_ids is not None:
            query = query.where(Event.id.in_(event_ids))
        rows = session.exec(query.order_by(Event.received_at, Event.id)).all()
        tried = set()
        for event_id, user_id, trigger, username, store, status, attempts in rows:
            batch.events.setdefault(user_id, []).append(event_id)
            batch.names[user_id] = f"{username}@{store}"
            batch.triggers.add(trigger)
            if attempts or status != EventStatus.ACCEPTED:  # retried, or cut short while running
                tried.add(user_id)
        if rows:
            batch.first_run = {u for u, n in _event_counts(session, [u for u in batch.events if u not in tried]).items()
                               if n == len(batch.events[u])}
            session.exec(update(Event).where(Event.id.in_([r[0] for r in rows])).values(status=EventStatus.RUNNING))


def _event_counts(session, user_ids: list[str]) -> dict[str, int]:
    """How many events each user has ever had (one grouped query per 500 users, on the user_id index)."""
    from sqlalchemy import func

    counts: dict[str, int] = {}
    for start in range(0, len(user_ids), 500):
        part = user_ids[start:start + 500]
        counts.update(session.exec(select(Event.user_id, func.count()).where(Event.user_id.in_(part))
                                   .group_by(Event.user_id)).all())
    return counts


def finish(batch: Batch, outcome: dict[str, tuple[str, Optional[str]]]) -> None:
    """Set each event's status (user id -> (status, error)) and release the batch's users.

    `succeeded` and `failed` are final. `retrying` (a passing failure) makes the event claimable
    again after a growing delay, until MAX_ATTEMPTS runs have failed: then it is `failed` too.
    """
    now = utcnow()
    with session_scope() as session:
        for status, error in set(outcome.values()):
            users = [u for u, o in outcome.items() if o == (status, error)]
            ids = [e for u in users for e in batch.events.get(u, [])]
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                if status != EventStatus.RETRYING:
                    session.exec(update(Event).where(Event.id.in_(part))
                                 .values(status=status, error=error, finished_at=now, retry_at=None))
                    continue
                for event in session.exec(select(Event).where(Event.id.in_(part))).all():
                    event.attempts += 1
                    event.error = error
                    if event.attempts >= MAX_ATTEMPTS:
                        event.status, event.finished_at, event.retry_at = EventStatus.FAILED, now, None
                        event.error = f"{error} (gave up after {event.attempts} runs)"
                    else:
                        event.status = EventStatus.RETRYING
                        event.retry_at = now + timedelta(seconds=retry_delay(event.attempts))
                    session.add(event)
    release(batch)


def retry_now(event_id: str) -> Optional[str]:
    """Make a finished or waiting event claimable at once (`outbound retry`); return its former status."""
    with session_scope() as session:
        event = session.get(Event, event_id)
        if event is None:
            return None
        before = event.status
        if before != EventStatus.RUNNING:
            event.status, event.retry_at, event.finished_at = EventStatus.ACCEPTED, None, None
            session.add(event)
        return before


@contextmanager
def leases_kept(batch: Batch, every: float = CLAIM_TTL / 3) -> Iterator[None]:
    """Renew the batch's leases every `every` seconds while it runs.

    A batch slowed by a throttling target can outlast CLAIM_TTL; without renewal a drain elsewhere
    would take its users over (running them twice) and mark this live run Crashed.
    """
    with kept([_lease(u) for u in batch.events], batch.owner, CLAIM_TTL, every):
        yield


RUN_LEASE = "run:"  # `run:<flow run id>`: held by a drain's run from its start to its end


@contextmanager
def run_held(run: Optional[str], every: float = CLAIM_TTL / 3) -> Iterator[None]:
    """Hold the lease `run:<flow run id>` while a drain's run works (renewed), give it back when the run ends.

    A process killed after its events' final status but before its run ended holds no user lease,
    so no drain would ever take anything over from it and its run would read Running for good; this
    lease is what it leaves behind instead, for the sweeper (`runs_left_behind`). One that could not
    be given back because the store was down goes with the next claim in this process.
    """
    if not run:
        yield
        return
    owner, name = new_owner(run), f"{RUN_LEASE}{run}"
    if not acquire_many([name], CLAIM_TTL, owner):  # held already (a UI retry of a live run?): not ours to keep
        yield
        return
    try:
        with kept([name], owner, CLAIM_TTL, every):
            yield
    finally:
        try:
            release_many([name], owner)
        except STORE_UNAVAILABLE:
            with _unreleased_lock:
                _unreleased.append(([name], owner))


def runs_left_behind() -> dict[str, tuple[str, str]]:
    """Drain runs whose `run:` lease outlives them: flow run id -> (owner, why).

    why: `dead` (its process on this machine is gone), `expired` (nobody renewed it: its process,
    on another machine or gone from this one, stopped), `elsewhere` (held on another machine
    within its lifetime: alive, or ended while the store was down; only the orchestrator can say).
    A live process on this machine holds its runs' leases: those are not listed.
    """
    left = {}
    for name, owner, expired, dead in leases_named(RUN_LEASE):
        why = "dead" if dead else "expired" if expired and elsewhere(owner) else "elsewhere" if elsewhere(owner) else None
        if why:
            left[name.removeprefix(RUN_LEASE)] = (owner, why)
    return left


def drop_run_lease(run: str, owner: str) -> None:
    """Delete the run lease `owner` left behind (once its run is closed)."""
    release_many([f"{RUN_LEASE}{run}"], owner)


def release(batch: Batch) -> None:
    """Give the batch's users back without finishing their events (they stay pending)."""
    release_many([_lease(u) for u in batch.events], batch.owner)


# Leases a drain could not give back because the store was down. The next claim in this process
# gives them back, so their users wait for the store to return, not for the leases to expire.
_unreleased: list[tuple[list[str], str]] = []
_unreleased_lock = threading.Lock()


def release_or_defer(batch: Batch) -> None:
    """Give the batch's users back; while the store is unreachable, keep them for the next claim here."""
    try:
        release(batch)
    except STORE_UNAVAILABLE:
        with _unreleased_lock:
            _unreleased.append(([_lease(u) for u in batch.events], batch.owner))


def _release_leftovers() -> None:
    with _unreleased_lock:
        while _unreleased:
            names, owner = _unreleased[-1]
            release_many(names, owner)  # the store is still down: raise, keep them for the next claim
            _unreleased.pop()


def waiting_count(running_too: bool = False) -> int:
    """Events accepted and not yet claimed by any drain: one cheap query, for drainers that poll.

    `running_too`: also those claimed and not finished, which a drain that died leaves running (a
    drainer starting up counts them: it may be the one that died)."""
    from sqlalchemy import func

    waiting = UNFINISHED if running_too else (EventStatus.ACCEPTED,)
    with session_scope() as session:
        return session.exec(select(func.count()).select_from(Event).where(
            Event.status.in_(waiting)
            | ((Event.status == EventStatus.RETRYING) & (Event.retry_at <= utcnow())))).one()
