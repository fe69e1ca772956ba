"""Run state: mappings (local id ↔ remote id), operations and their attempts, the outbox."""

import hashlib
import json
from typing import Any, Optional

from sqlmodel import Session, select

from models.tables import Event, Mapping, Operation, OperationAttempt, utcnow

FINAL = ("succeeded", "failed", "skipped", "abandoned")


def pushed_hash(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


# --- mappings ------------------------------------------------------------------------------

def get_mapping(session: Session, connector: str, local_id: str, entity_type: str = "user") -> Optional[Mapping]:
    return session.exec(select(Mapping).where(Mapping.connector == connector, Mapping.entity_type == entity_type,
                                              Mapping.local_id == local_id)).first()


def mapping_by_remote_name(session: Session, connector: str, remote_name: str,
                           entity_type: str = "user") -> Optional[Mapping]:
    return session.exec(select(Mapping).where(Mapping.connector == connector, Mapping.entity_type == entity_type,
                                              Mapping.remote_name == remote_name)).first()


def mapping_by_remote_id(session: Session, connector: str, remote_id: str,
                         entity_type: str = "user") -> Optional[Mapping]:
    return session.exec(select(Mapping).where(Mapping.connector == connector, Mapping.entity_type == entity_type,
                                              Mapping.remote_id == remote_id)).first()


def connectors_of(session: Session, local_id: str, entity_type: str = "user") -> set[str]:
    return set(session.exec(select(Mapping.connector).where(Mapping.local_id == local_id,
                                                            Mapping.entity_type == entity_type)))


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


def delete_mapping(session: Session, connector: str, local_id: str, entity_type: str = "user") -> None:
    mapping = get_mapping(session, connector, local_id, entity_type)
    if mapping is not None:
        session.delete(mapping)


# --- operations ----------------------------------------------------------------------------

def completed_operation(session: Session, event_id: Optional[str], connector: str, entity_id: str) -> Optional[Operation]:
    """The finished operation of this event on this connector, if it already ran (at most once)."""
    if event_id is None:
        return None
    return session.exec(select(Operation).where(Operation.event_id == event_id, Operation.connector == connector,
                                                Operation.entity_id == entity_id, Operation.action != "verify",
                                                Operation.status.in_(("succeeded", "skipped")))).first()


def begin_attempt(session: Session, *, event_id: Optional[str], connector: str, entity_id: str,
                  entity_name: str, action: str, reason: str, flow_run_id: Optional[str],
                  task_run_id: Optional[str] = None, entity_type: str = "user") -> tuple[int, int]:
    """Open (or reopen, on a retry) the operation and record a new attempt; return (op id, attempt id)."""
    op = session.exec(select(Operation).where(Operation.event_id == event_id, Operation.connector == connector,
                                              Operation.entity_id == entity_id, Operation.action == action,
                                              Operation.status.in_(("running", "retrying")))).first()
    if op is None:
        op = Operation(event_id=event_id, connector=connector, entity_type=entity_type, entity_id=entity_id,
                       entity_name=entity_name, action=action, reason=reason)
    # An attempt left "running" was cut short by a crash: say so instead of leaving it open.
    for stale in session.exec(select(OperationAttempt).where(OperationAttempt.operation_id == op.id,
                                                             OperationAttempt.status == "running")) if op.id else []:
        stale.status, stale.error_code, stale.finished_at = "abandoned", "interrupted", utcnow()
        session.add(stale)
    op.status, op.attempts, op.flow_run_id = "running", op.attempts + 1, flow_run_id
    session.add(op)
    session.flush()
    attempt = OperationAttempt(operation_id=op.id, number=op.attempts, flow_run_id=flow_run_id, task_run_id=task_run_id)
    session.add(attempt)
    session.flush()
    return op.id, attempt.id


def finish(session: Session, op_id: int, attempt_id: int, *, status: str, operation: Optional[str] = None,
           remote_id: Optional[str] = None, remote_name: Optional[str] = None, error_code: Optional[str] = None,
           error_message: Optional[str] = None, drift: Optional[dict] = None) -> Operation:
    """Close the attempt and the operation (status `retrying` leaves the operation open)."""
    now = utcnow()
    attempt = session.get(OperationAttempt, attempt_id)
    attempt.status = "failed" if status in ("retrying", "failed") else status
    attempt.error_code, attempt.error_message, attempt.finished_at = error_code, error_message, now
    op = session.get(Operation, op_id)
    op.status = status
    op.operation = operation or op.operation
    op.remote_id = remote_id or op.remote_id
    op.remote_name = remote_name or op.remote_name
    op.error_code, op.error_message = error_code, error_message
    if drift is not None:
        op.drift = drift
    if status != "retrying":
        op.finished_at = now
    session.add_all([attempt, op])
    return op


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


def set_event_status(session: Session, event_id: str, status: str, error: Optional[str] = None) -> None:
    event = session.get(Event, event_id)
    event.status, event.error = status, error
    if status in FINAL:
        event.finished_at = utcnow()
    session.add(event)
