"""Accept an identity event: validate it, store it in the outbox and apply it to the identity store.

Both happen in one transaction, before anything is acknowledged, so an accepted event is never
lost; an event id seen before is answered from the outbox and not applied again. `GroupCommit`
does the same for many concurrent senders: their events share one transaction, and each is
answered only once that transaction is committed.
"""

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Optional

from sqlalchemy import insert
from sqlmodel import Session, select

from sqlalchemy.exc import IntegrityError

from models.availability import STORE_UNAVAILABLE
from models.config import Config
from models.db import database_url, session_scope
from models.events import IdentityEvent, parse_event
from models.identity import CREATING, Preloaded, apply_event, username_problems
from models.kinds import EventStatus
from models.runstate import get_event
from models.tables import Event, utcnow
from models.validation import InvalidInput


@dataclass(frozen=True)
class Accepted:
    event_id: str
    new: bool
    status: str
    user_id: Optional[str] = None
    type: Optional[str] = None  # the event's, so the caller can dispatch it without parsing it again
    trigger: Optional[str] = None


def check_against_config(event: IdentityEvent, config: Config) -> None:
    """What the configuration says about an event: its identity provider, and the username rule when it creates."""
    problems = []
    idp = config.idp(event.idp) if event.idp is not None else None
    if event.idp is not None and idp is None:
        known = ", ".join(i.name for i in config.identity_providers) or "none are configured"
        problems.append(f"idp: unknown identity provider {event.idp!r} ({known})")
    elif idp is not None and event.trigger == "jit" and not idp.jit_provisioning:
        problems.append(f"idp: identity provider {event.idp!r} does not allow JIT provisioning "
                        f"(jit_provisioning: false)")
    if event.type in CREATING:
        problems += username_problems(event, config)
    if problems:
        raise InvalidInput("event", problems)


def accept(raw: bytes | str | dict, config: Config) -> Accepted:
    """Validate and store the event; raise InvalidInput (nothing stored) when it is bad."""
    event = parse_event(raw)
    check_against_config(event, config)
    return _accept_event(event, config)


def _accept_event(event: IdentityEvent, config: Config) -> Accepted:
    with session_scope() as session:
        seen = get_event(session, event.id)
        if seen is not None:
            return Accepted(event.id, False, seen.status)
    try:
        with session_scope() as session:
            user = apply_event(session, event, config)
            _insert_events(session, [_event_row(event, user)])
    except IntegrityError:  # the same id arrived concurrently: the other one won
        with session_scope() as session:
            seen = get_event(session, event.id)
        if seen is None:
            raise
        return Accepted(event.id, False, seen.status)
    return _new(event, user)


def _new(event: IdentityEvent, user) -> Accepted:
    return Accepted(event.id, True, EventStatus.ACCEPTED, user.id, event.type, event.trigger)


def _event_row(event: IdentityEvent, user) -> dict:
    return {"id": event.id, "type": event.type, "trigger": event.trigger, "idp": event.idp, "user_id": user.id,
            "payload": event.model_dump(mode="json"), "status": EventStatus.ACCEPTED, "attempts": 0,
            "received_at": utcnow()}


def _insert_events(session: Session, rows: list[dict]) -> None:
    """The outbox rows, in one statement after the users they name (an ORM object per row cost more
    than the rest of storing an event)."""
    if rows:
        session.flush()
        session.execute(insert(Event), rows)


def _lookups(session: Session, events: list[IdentityEvent], config: Config) -> Preloaded:
    return Preloaded(session, config.tenant_domain, [e.user for e in events])


def _stage_all(session: Session, group: list[tuple[IdentityEvent, Config]]) -> list[Accepted]:
    """Apply and add a group's events in `session` (not committed), reading the store once for all.

    An id already in the outbox is answered from it; an id sent twice within the group is stored
    once, and its second copy answered as the first one's duplicate.
    """
    ids = sorted({event.id for event, _ in group})
    seen = {id_: status for start in range(0, len(ids), 500)
            for id_, status in session.exec(select(Event.id, Event.status).where(Event.id.in_(ids[start:start + 500])))}
    lookups: dict[int, Preloaded] = {}
    for config in {id(c): c for _, c in group}.values():
        lookups[id(config)] = _lookups(session, [e for e, c in group if c is config], config)
    answers, rows = [], []
    for event, config in group:
        if event.id in seen:
            answers.append(Accepted(event.id, False, seen[event.id]))
            continue
        user = apply_event(session, event, config, lookups[id(config)])
        answers.append(_new(event, user))
        rows.append(_event_row(event, user))
        seen[event.id] = EventStatus.ACCEPTED
    for preloaded in lookups.values():
        preloaded.finish()
    _insert_events(session, rows)
    return answers


def accept_all(raws: list[dict], config: Config, *, before: Optional[Callable[[Session], None]] = None,
               also: Optional[Callable[[Session], None]] = None) -> list[Accepted]:
    """Validate every event, then store them all and what the hooks add in one transaction, or nothing.

    For a message that stands for several events (a webhook, a SCIM group's members, a directory
    page): InvalidInput names each bad event by its position; an IntegrityError means an id (or a
    hook's row) was stored concurrently. `before(session)` runs first, for what no event says (a
    group renamed in place); `also(session)` last, for rows that refer to the users just stored.
    """
    events, problems = [], []
    for n, raw in enumerate(raws):
        try:
            event = parse_event(raw)
            check_against_config(event, config)
            events.append(event)
        except InvalidInput as exc:
            problems += [f"events[{n}] ({raw.get('type')} {raw.get('user', {}).get('username')!r}): {p}"
                         for p in exc.problems]
    if problems:
        raise InvalidInput("event", problems)
    with session_scope() as session:
        if before is not None:
            before(session)
        lookups = _lookups(session, events, config)
        users = [apply_event(session, event, config, lookups) for event in events]
        lookups.finish()
        _insert_events(session, [_event_row(e, u) for e, u in zip(events, users)])
        if also is not None:
            also(session)
    return [_new(e, u) for e, u in zip(events, users)]


class GroupCommit:
    """Store the events of concurrent senders in shared transactions: one commit for all that wait.

    A commit per event made SQLite the event API's limit: it serialises writers, so sixteen senders
    spent most of their time waiting for its lock. A writer thread takes every event queued so far
    (up to `most`), applies them in arrival order in one transaction and commits, then answers
    each: nothing is acknowledged before the commit that stores it. When any event of a group fails
    (a bad update, an id sent twice at once), the group is rolled back and its events are stored one
    by one, exactly as `accept` would, so one bad event never fails another. SQLite gets one writer;
    PostgreSQL, which commits concurrent transactions well, gets `WRITERS` (with one, its round
    trips queued behind each other and accepting was slower than a transaction per request).
    """

    WRITERS = 4

    def __init__(self, most: int = 200):
        self.most = most
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, raw: bytes | str | dict, config: Config) -> Future:
        """Validate now (raise InvalidInput, nothing stored); the future's result is the Accepted."""
        event = parse_event(raw)
        check_against_config(event, config)
        done: Future = Future()
        with self._lock:
            if self._thread is None:
                writers = 1 if database_url().startswith("sqlite") else self.WRITERS  # no connection here
                for i in range(writers):
                    self._thread = threading.Thread(target=self._run, name=f"outbound-group-commit-{i}", daemon=True)
                    self._thread.start()
        self._queue.put((event, config, done))
        return done

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < self.most:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(group)

    @staticmethod
    def _commit(group: list[tuple[IdentityEvent, Config, Future]]) -> None:
        try:
            with session_scope() as session:
                answers = _stage_all(session, [(event, config) for event, config, _ in group])
        except STORE_UNAVAILABLE as exc:  # not stored, or not known to be: every sender must send again
            for _, _, done in group:
                done.set_exception(exc)
            return
        except Exception:  # one by one: each event gets its own answer (stored, duplicate, invalid, 503)
            for event, config, done in group:
                try:
                    done.set_result(_accept_event(event, config))
                except Exception as exc:
                    done.set_exception(exc)
            return
        for (_, _, done), answer in zip(group, answers):
            done.set_result(answer)
