"""Run state: mappings (local id ↔ remote id), operations and their attempts, the outbox."""

import hashlib
import json
from typing import Any, Optional

from sqlmodel import Session, select

from models.db import session_scope
from models.tables import Event, Mapping, Operation, ReconciliationRun, utcnow

FINAL = ("succeeded", "failed", "skipped", "abandoned")


def pushed_hash(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


# --- mappings ------------------------------------------------------------------------------

def get_mapping(session: Session, connector: str, local_id: str, entity_type: str = "user") -> Optional[Mapping]:
    return session.exec(select(Mapping).where(Mapping.connector == connector, Mapping.entity_type == entity_type,
                                              Mapping.local_id == local_id)).first()


def connectors_of_users(session: Session, local_ids: list[str]) -> dict[str, set[str]]:
    """Per user: the connectors the user has an account on."""
    out: dict[str, set[str]] = {}
    for local_id, connector in session.exec(select(Mapping.local_id, Mapping.connector).where(
            Mapping.local_id.in_(local_ids), Mapping.entity_type == "user")):
        out.setdefault(local_id, set()).add(connector)
    return out


def save_mapping(session: Session, connector: str, local_id: str, remote_id: str, remote_name: str,
                 values_hash: Optional[str], entity_type: str = "user") -> Mapping:
    mapping = get_mapping(session, connector, local_id, entity_type)
    if mapping is None:
        mapping = Mapping(connector=connector, entity_type=entity_type, local_id=local_id,
                          remote_id=remote_id, remote_name=remote_name)
    mapping.remote_id, mapping.remote_name, mapping.pushed_hash = remote_id, remote_name, values_hash
    mapping.updated_at = utcnow()
    session.add(mapping)
    return mapping


# --- operations ----------------------------------------------------------------------------

def record(session: Session, **fields) -> Operation:
    """A finished operation with no remote call (a skip, a decision, a verification)."""
    op = Operation(finished_at=utcnow(), **fields)
    session.add(op)
    session.flush()
    return op


def operations_of_event(session: Session, event_id: str) -> list[Operation]:
    return list(session.exec(select(Operation).where(Operation.event_id == event_id).order_by(Operation.id)))


# --- events --------------------------------------------------------------------------------

def get_event(session: Session, event_id: str) -> Optional[Event]:
    return session.get(Event, event_id)


# --- reconciliation runs -------------------------------------------------------------------

def running_reconciliation_flow_runs(connector: str) -> list[str]:
    """The Prefect flow run ids of `connector`'s reconciliation runs still marked running."""
    with session_scope() as session:
        return [r for r in session.exec(select(ReconciliationRun.flow_run_id).where(
            ReconciliationRun.connector == connector, ReconciliationRun.status == "running")) if r]
