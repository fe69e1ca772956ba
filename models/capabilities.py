"""Capability profiles in the state store: what `outbound check` last found each target can do.

A profile drives the connector built for it (PATCH or PUT, bulk sizes, group sync) until it is
older than MAX_AGE; after that the connector reads the target itself again, as it does when no
profile was ever stored. Reading never creates a store that does not exist yet.
"""

import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import select

from models.tables import CapabilityProfile, utcnow

log = logging.getLogger("outbound.capabilities")
MAX_AGE = timedelta(days=7)


def save(profile: dict[str, Any]) -> CapabilityProfile:
    """Store (replace) a connector's profile: {connector, type, usable, capabilities, problems, checked_at}."""
    from models.db import session_scope

    with session_scope() as session:
        row = session.get(CapabilityProfile, profile["connector"]) or CapabilityProfile(connector=profile["connector"],
                                                                                       type=profile["type"])
        row.type, row.usable = profile["type"], bool(profile["usable"])
        row.capabilities, row.problems = profile["capabilities"], profile["problems"]
        row.checked_at = _parse(profile.get("checked_at")) or utcnow()
        session.add(row)
        return row


def all_profiles() -> dict[str, CapabilityProfile]:
    from models.db import session_scope

    with session_scope() as session:
        return {p.connector: p for p in session.exec(select(CapabilityProfile))}


def fresh(connector: str) -> Optional[CapabilityProfile]:
    """The connector's profile when one is stored and younger than MAX_AGE; else None.

    Only from a store already in use (OUTBOUND_DATABASE_URL set, or the default file present), and
    None when the store cannot be read: a connector then finds out for itself, as before.
    """
    from models.db import DEFAULT_DATABASE_URL, session_scope

    if not os.environ.get("OUTBOUND_DATABASE_URL") and not Path(DEFAULT_DATABASE_URL.removeprefix("sqlite:///")).exists():
        return None
    try:
        with session_scope() as session:
            row = session.get(CapabilityProfile, connector)
    except SQLAlchemyError as exc:
        log.info("capability profile of %s not read: %s", connector, type(exc).__name__)
        return None
    if row is None or age(row) > MAX_AGE:
        return None
    return row


def age(row: CapabilityProfile) -> timedelta:
    checked = row.checked_at if row.checked_at.tzinfo else row.checked_at.replace(tzinfo=timezone.utc)
    return utcnow() - checked


def describe_age(row: CapabilityProfile) -> str:
    seconds = int(age(row).total_seconds())
    if seconds < 120:
        text = f"{seconds} s"
    elif seconds < 7200:
        text = f"{seconds // 60} min"
    elif seconds < 2 * 86400:
        text = f"{seconds // 3600} h"
    else:
        text = f"{seconds // 86400} days"
    return text + " ago" + (" (stale: run outbound check)" if age(row) > MAX_AGE else "")


def _parse(value: Any) -> Optional[datetime]:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None
