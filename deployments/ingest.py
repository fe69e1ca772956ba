"""Accept an identity event: validate it, store it in the outbox and apply it to the identity store.

Both happen in one transaction, before anything is acknowledged, so an accepted event is never
lost; an event id seen before is answered from the outbox and not applied again.
"""

from dataclasses import dataclass
from typing import Callable, Optional

from sqlalchemy.exc import IntegrityError

from models.config import Config
from models.db import session_scope
from models.events import IdentityEvent, parse_event
from models.identity import CREATING, apply_event, username_problems
from models.kinds import EventStatus
from models.runstate import get_event
from models.tables import Event
from models.validation import InvalidInput


@dataclass(frozen=True)
class Accepted:
    event_id: str
    new: bool
    status: str
    user_id: Optional[str] = None


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
    with session_scope() as session:
        seen = get_event(session, event.id)
        if seen is not None:
            return Accepted(event.id, False, seen.status)
    try:
        with session_scope() as session:
            user = _store(session, event, config)
    except IntegrityError:  # the same id arrived concurrently: the other one won
        with session_scope() as session:
            seen = get_event(session, event.id)
        if seen is None:
            raise
        return Accepted(event.id, False, seen.status)
    return Accepted(event.id, True, EventStatus.ACCEPTED, user.id)


def _store(session, event: IdentityEvent, config: Config):
    user = apply_event(session, event, config)
    session.add(Event(id=event.id, type=event.type, trigger=event.trigger, idp=event.idp, user_id=user.id,
                      payload=event.model_dump(mode="json")))
    return user


def accept_all(raws: list[dict], config: Config, prepare: Optional[Callable] = None) -> list[Accepted]:
    """Validate every event, then store them all in one transaction, or none (InvalidInput).

    For a source whose one request changes several users at once (a SCIM group's members): the
    ids are new ones, so there is no duplicate to look for. `prepare(session)` runs first in the
    same transaction, for what no event says (a group renamed in place).
    """
    events = [parse_event(raw) for raw in raws]
    for event in events:
        check_against_config(event, config)
    with session_scope() as session:
        if prepare is not None:
            prepare(session)
        users = [_store(session, event, config) for event in events]
    return [Accepted(e.id, True, EventStatus.ACCEPTED, u.id) for e, u in zip(events, users)]
