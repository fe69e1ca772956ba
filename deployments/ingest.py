"""Accept an identity event: validate it, store it in the outbox and apply it to the identity store.

Both happen in one transaction, before anything is acknowledged, so an accepted event is never
lost; an event id seen before is answered from the outbox and not applied again.
"""

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from models.config import Config
from models.db import session_scope
from models.events import IdentityEvent, parse_event
from models.identity import apply_event
from models.runstate import get_event
from models.tables import Event
from models.validation import InvalidInput


@dataclass(frozen=True)
class Accepted:
    event_id: str
    new: bool
    status: str


def check_against_config(event: IdentityEvent, config: Config) -> None:
    if event.idp is None:
        return
    idp = config.idp(event.idp)
    if idp is None:
        known = ", ".join(i.name for i in config.identity_providers) or "none are configured"
        raise InvalidInput("event", [f"idp: unknown identity provider {event.idp!r} ({known})"])
    if event.trigger == "jit" and not idp.jit_provisioning:
        raise InvalidInput("event", [f"idp: identity provider {event.idp!r} does not allow JIT provisioning "
                                     f"(jit_provisioning: false)"])


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
            user = apply_event(session, event, config.tenant_domain)
            session.add(Event(id=event.id, type=event.type, trigger=event.trigger, idp=event.idp, user_id=user.id,
                              payload=event.model_dump(mode="json")))
    except IntegrityError:  # the same id arrived concurrently: the other one won
        with session_scope() as session:
            seen = get_event(session, event.id)
        if seen is None:
            raise
        return Accepted(event.id, False, seen.status)
    return Accepted(event.id, True, "accepted")
