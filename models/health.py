"""Connector health rows in the store: consecutive failures and the quarantine's state."""

from contextlib import contextmanager
from datetime import datetime
from typing import Iterator, Optional

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from models.db import session_scope
from models.kinds import HealthState
from models.tables import ConnectorHealth, utcnow


def get(connector: str) -> Optional[ConnectorHealth]:
    """The connector's health row, or None when it never failed."""
    with session_scope() as session:
        return session.get(ConnectorHealth, connector)


def ensure(connector: str) -> None:
    """Create the connector's health row unless it exists."""
    if get(connector) is not None:
        return
    try:
        with session_scope() as session:
            session.add(ConnectorHealth(connector=connector))
    except IntegrityError:  # another worker created it first
        pass


@contextmanager
def failure_counted(connector: str, code: str, error: str, now: datetime) -> Iterator[ConnectorHealth]:
    """Count one more consecutive failure (`add_failure`) and give the row, for the caller to update in
    the same transaction; stored when the block ends.

    The increment is written first: it is atomic, and it takes the row (PostgreSQL) or the database
    (SQLite) for the rest of the transaction, so two workers never open the quarantine twice.
    """
    ensure(connector)
    with session_scope() as session:
        add_failure(session, connector, code, error, now)
        row = session.get(ConnectorHealth, connector)
        yield row
        session.add(row)


def all_rows() -> dict[str, ConnectorHealth]:
    """Every connector's health row, by name."""
    with session_scope() as session:
        return {h.connector: h for h in session.exec(select(ConnectorHealth))}


def reset(connector: str) -> None:
    """Zero the connector's failure count and close its quarantine."""
    with session_scope() as session:
        session.exec(update(ConnectorHealth).where(ConnectorHealth.connector == connector).values(
            consecutive_failures=0, state=HealthState.CLOSED, opened_at=None, retry_at=None, backoff=0.0, updated_at=utcnow()))


def add_failure(session: Session, connector: str, code: str, error: str, now: datetime) -> None:
    """Count one more consecutive failure of the connector, atomically, with its error."""
    session.exec(update(ConnectorHealth).where(ConnectorHealth.connector == connector).values(
        consecutive_failures=ConnectorHealth.consecutive_failures + 1, last_error_code=code,
        last_error=error, updated_at=now))
