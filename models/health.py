"""Connector health rows in the store: consecutive failures and the quarantine's state."""

from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, select

from models.db import session_scope
from models.kinds import HealthState
from models.tables import ConnectorHealth, utcnow


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
