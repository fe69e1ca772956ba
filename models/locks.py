"""Leases in the state store: mutual exclusion across processes and machines, on SQLite or PostgreSQL.

A lease is a row keyed by name; taking it is an INSERT that the primary key makes exclusive. A
lease carries an expiry, so one left by a killed process is taken over once it runs out.
"""

import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator, Optional

from sqlalchemy.exc import IntegrityError
from sqlmodel import delete, update

from models.db import session_scope
from models.errors import LockTimeout
from models.tables import Lease, utcnow

log = logging.getLogger(__name__)


def _owner(run: Optional[str] = None) -> str:
    """`host:pid:nonce`, and `:run=<flow run id>` when a flow run holds it (so a taker-over can close that run)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}" + (f":run={run}" if run else "")


def run_of(owner: str) -> Optional[str]:
    """The flow run id an owner string carries, if any."""
    _, found, run = owner.partition(":run=")
    return run if found and run else None


def host_of(owner: str) -> str:
    """The machine an owner string names."""
    return owner.partition(":")[0]


def _dead_here(owner: str) -> bool:
    """Whether `owner` was a process on this machine that no longer runs (killed or crashed)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def elsewhere(owner: str) -> bool:
    """Whether `owner` names a process on another machine (whose pid cannot be checked from here)."""
    return host_of(owner) != socket.gethostname()


def try_acquire(name: str, ttl: float, owner: str) -> Optional[Lease]:
    """Take the lease if it is free, expired or left by a dead local process; else return its holder."""
    now = utcnow()
    with session_scope() as session:
        session.exec(delete(Lease).where(Lease.name == name, Lease.expires_at < now))
        held = session.get(Lease, name)
        if held is not None and _dead_here(held.owner):
            session.delete(held)
    try:
        with session_scope() as session:
            session.add(Lease(name=name, owner=owner, acquired_at=now, expires_at=now + timedelta(seconds=ttl)))
        return None
    except IntegrityError:
        with session_scope() as session:
            return session.get(Lease, name) or Lease(name=name, owner="?", acquired_at=now, expires_at=now)


def release(name: str, owner: str) -> None:
    with session_scope() as session:
        session.exec(delete(Lease).where(Lease.name == name, Lease.owner == owner))


@contextmanager
def lease(name: str, ttl: float = 600.0, wait: float = 120.0, poll: float = 0.05) -> Iterator[str]:
    """Hold the lease `name` for the block; wait up to `wait` seconds for it (0: do not wait)."""
    owner = _owner()
    deadline = time.monotonic() + wait
    while (holder := try_acquire(name, ttl, owner)) is not None:
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{name} is held by {holder.owner} since {holder.acquired_at:%Y-%m-%d %H:%M:%S} UTC")
        time.sleep(poll)
        poll = min(poll * 1.5, 1.0)
    try:
        yield owner
    finally:
        release(name, owner)


def acquire_many(names: list[str], ttl: float, owner: str, taken_from_dead: Optional[set[str]] = None,
                 taken_from_expired: Optional[set[str]] = None, holders: Optional[dict[str, str]] = None) -> set[str]:
    """Take every free one of the leases `names` in one transaction; return those now held by `owner`.

    A drain claims the users of a batch this way: a user another drain is working on is left for
    later instead of being waited for. The owners of leases taken over from dead local processes
    are added to `taken_from_dead`; those of expired leases whose process is not known to be alive
    (it ran on another machine, or died here) to `taken_from_expired`; `holders` gets, for each
    lease left to someone else, its owner.
    """
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    from sqlmodel import select

    if not names:
        return set()
    now = utcnow()
    held: set[str] = set()
    with session_scope() as session:
        for start in range(0, len(names), 500):
            part = names[start:start + 500]
            expired = session.exec(delete(Lease).where(Lease.name.in_(part), Lease.expires_at < now)
                                   .returning(Lease.owner)).scalars().all()
            if taken_from_expired is not None:
                # A live process here only ran late; elsewhere (or dead) nobody will close its run.
                taken_from_expired.update(o for o in expired if host_of(o) != socket.gethostname() or _dead_here(o))
            for lease_ in session.exec(select(Lease).where(Lease.name.in_(part))).all():
                if _dead_here(lease_.owner):
                    session.delete(lease_)
                    if taken_from_dead is not None:
                        taken_from_dead.add(lease_.owner)
            session.flush()
            insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
            # One short INSERT executed for each lease (psycopg pipelines it), not one of 2,000
            # parameters: psycopg parsed that afresh at every claim (85 -> 31 ms of CPU to take and
            # give back 1,000 leases on PostgreSQL).
            expires = now + timedelta(seconds=ttl)
            session.exec(insert(Lease).on_conflict_do_nothing(index_elements=["name"]),
                         params=[{"name": n, "owner": owner, "acquired_at": now, "expires_at": expires} for n in part])
            mine = set(session.exec(select(Lease.name).where(Lease.name.in_(part), Lease.owner == owner)).all())
            held |= mine
            if holders is not None and len(mine) < len(part):
                holders.update(session.exec(select(Lease.name, Lease.owner).where(
                    Lease.name.in_([n for n in part if n not in mine]))).all())
    return held


def live_owners(prefix: str) -> list[str]:
    """Owners of unexpired leases named `prefix…` whose process may still run (none found dead here)."""
    from sqlmodel import select

    with session_scope() as session:
        owners = session.exec(select(Lease.owner).where(Lease.name.startswith(prefix), Lease.expires_at >= utcnow())
                              .distinct()).all()
    return [o for o in owners if not _dead_here(o)]


def leased(prefix: str, key, owners: list[str]):
    """A SQL condition: the lease `prefix` + `key` (a column) is held, unexpired, by one of `owners`."""
    from sqlalchemy import exists, literal

    return exists().where(Lease.name == literal(prefix) + key, Lease.owner.in_(owners), Lease.expires_at >= utcnow())


def leases_named(prefix: str) -> list[tuple[str, str, bool, bool]]:
    """(name, owner, expired, owner dead here) of every lease whose name begins with `prefix`."""
    from sqlmodel import select

    now = utcnow()
    with session_scope() as session:
        rows = session.exec(select(Lease.name, Lease.owner, Lease.expires_at < now)
                            .where(Lease.name.startswith(prefix))).all()
    return [(name, owner, bool(expired), _dead_here(owner)) for name, owner, expired in rows]


def release_many(names: list[str], owner: str) -> None:
    with session_scope() as session:
        for start in range(0, len(names), 500):
            session.exec(delete(Lease).where(Lease.name.in_(names[start:start + 500]), Lease.owner == owner))


def renew_many(names: list[str], owner: str, ttl: float) -> int:
    """Push the expiry of `owner`'s leases `names` to `ttl` seconds from now; return how many it still holds."""
    held = 0
    with session_scope() as session:
        for start in range(0, len(names), 500):
            held += session.exec(update(Lease).where(Lease.name.in_(names[start:start + 500]), Lease.owner == owner)
                                 .values(expires_at=utcnow() + timedelta(seconds=ttl))).rowcount
    return held


def new_owner(run: Optional[str] = None) -> str:
    return _owner(run)


@contextmanager
def kept(names: list[str], owner: str, ttl: float, every: Optional[float] = None) -> Iterator[None]:
    """Push the expiry of `owner`'s leases `names` to `ttl` seconds ahead, every `every` seconds
    (a third of `ttl`), while the block runs: the one keep-alive, for drains and reconciliations.

    A renewal that fails (the store is away) is tried again at the next beat: the leases still have
    time left. A lease found expired and taken over is warned about; once none is held, renewal stops.
    """
    stop = threading.Event()
    every = ttl / 3 if every is None else every

    def keep() -> None:
        while not stop.wait(every):
            try:
                held = renew_many(names, owner, ttl)
            except Exception as exc:
                log.warning("owner=%s lease renewal failed: %s", owner, exc)
                continue
            if held < len(names):
                log.warning("owner=%s holds %d of its %d leases (%s): expired and taken over", owner, held,
                            len(names), names[0] if len(names) == 1 else "…")
            if not held:
                return

    keeper = threading.Thread(target=keep, name=f"lease {names[0]}" if len(names) == 1 else "lease-keeper",
                              daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
