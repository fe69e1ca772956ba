"""Run state: mappings (local id ↔ remote id), operations and their attempts, reconciliation runs, the outbox."""

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any, Iterable, Optional

from sqlalchemy import MetaData, Table, delete, func, inspect, insert, text, update
from sqlmodel import Session, select

from models.db import session_scope
from models.kinds import NOT_DONE, Action, EventStatus, Intent, OperationStatus, RunStatus
from models.outbox import UNFINISHED
from models.tables import Event, Mapping, Operation, OperationAttempt, ReconciliationRun, utcnow

FINAL = (OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.SKIPPED, OperationStatus.ABANDONED,
         OperationStatus.OUTCOME_UNKNOWN)


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


def link_accounts(session: Session, connector: str, links: list[dict], entity_type: str = "user") -> None:
    """Link each local id to its account (`local_id`, `remote_id`, `remote_name`, `pushed_hash`), replacing
    any link either side had, in bulk statements."""
    if not links:
        return
    now = utcnow()
    rows = [{"connector": connector, "entity_type": entity_type, "created_at": now, "updated_at": now, **link}
            for link in links]
    if _dialect(session) == "postgresql":
        # psycopg prepares a statement it has run five times, and PostgreSQL may then plan it once for
        # any parameters: the IN lists become arrays it searches end to end for every row of the
        # connector (no hashing, no index while a fresh table has no statistics), so a chunk's delete
        # grew from 6 ms to 600 ms over a 10,000-user import. Planned for these very ids, it hashes
        # them; the setting lasts until the caller's transaction ends, and costs its inserts 7–10 %.
        session.exec(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    # One side at a time, each by its own unique index: for `local_id IN … OR remote_id IN …` SQLite
    # walked every link of the connector, a chunk's delete growing from 12 to 50 ms over 10,000 users.
    for column, key in ((Mapping.local_id, "local_id"), (Mapping.remote_id, "remote_id")):
        session.exec(delete(Mapping).where(Mapping.connector == connector, Mapping.entity_type == entity_type,
                                           column.in_([r[key] for r in rows])))
    session.exec(insert(Mapping), params=rows)


def unlink_users(session: Session, connector: str, local_ids: list[str]) -> None:
    """Drop the links of these local users on `connector` (their accounts are gone)."""
    session.exec(delete(Mapping).where(Mapping.connector == connector, Mapping.entity_type == "user",
                                       Mapping.local_id.in_(local_ids)))


def unlink_accounts(session: Session, connector: str, remote_ids: list[str]) -> None:
    """Drop the links to these accounts of `connector` (they were deleted)."""
    session.exec(delete(Mapping).where(Mapping.connector == connector, Mapping.entity_type == "user",
                                       Mapping.remote_id.in_(remote_ids)))


def owner_of_account(session: Session, connector: str, remote_id: str, entity_type: str = "user") -> Optional[str]:
    """The local user (or group) the account (or group) `remote_id` of `connector` is linked to, if any."""
    return session.exec(select(Mapping.local_id).where(
        Mapping.connector == connector, Mapping.entity_type == entity_type, Mapping.remote_id == remote_id)).first()


def accounts_of(session: Session, connector: str, local_ids: list[str]) -> dict[str, str]:
    """Local user id -> remote id of the linked ones among `local_ids`."""
    return dict(session.exec(select(Mapping.local_id, Mapping.remote_id).where(
        Mapping.connector == connector, Mapping.entity_type == "user", Mapping.local_id.in_(local_ids))).all())


def user_links(session: Session, connector: str, local_ids: Optional[list[str]] = None,
               names: Iterable[str] = ()) -> list[tuple[str, str, str]]:
    """(local_id, remote_id, remote_name) of the connector's user links: all, or those of `local_ids`
    and those holding one of `names` (lower case)."""
    query = select(Mapping.local_id, Mapping.remote_id, Mapping.remote_name).where(
        Mapping.connector == connector, Mapping.entity_type == "user")
    if local_ids is not None:
        query = query.where(Mapping.local_id.in_(local_ids) | func.lower(Mapping.remote_name).in_(names))
    return list(session.exec(query))


def links_of_accounts(session: Session, connector: str, remote_ids: list[str]) -> list[tuple[str, str, str]]:
    """(local_id, remote_id, remote_name) of the user links to the accounts `remote_ids`."""
    return list(session.exec(select(Mapping.local_id, Mapping.remote_id, Mapping.remote_name).where(
        Mapping.connector == connector, Mapping.entity_type == "user", Mapping.remote_id.in_(remote_ids))))


def count_user_links(session: Session, connector: str) -> int:
    """How many users are linked to an account of `connector`."""
    return session.exec(select(func.count()).select_from(Mapping).where(
        Mapping.connector == connector, Mapping.entity_type == "user")).one()


def group_links(session: Session, connector: str) -> dict[str, str]:
    """Local group id -> remote group id, for the groups linked on `connector`."""
    return dict(session.exec(select(Mapping.local_id, Mapping.remote_id)
                             .where(Mapping.connector == connector, Mapping.entity_type == "group")).all())


# --- operations ----------------------------------------------------------------------------

def operation_row(connector: str, entity_id: str, entity_name: Optional[str], action: str, **fields) -> dict:
    """An operation as a row for a bulk insert: a finished one with no remote call, unless `fields` say more.

    The one builder of operation rows: every path (event runs, reconciliations, failures, read-backs)
    records through it, so each row has every column.
    """
    now = utcnow()
    return {"connector": connector, "entity_type": "user", "entity_id": entity_id, "entity_name": entity_name,
            "action": action, "operation": Action.NONE, "status": OperationStatus.SKIPPED, "attempts": 0,
            "reason": None, "error_code": None, "error_message": None, "remote_id": None, "remote_name": None,
            "drift": None, "flow_run_id": None, "started_at": now, "finished_at": now, **fields}


def record(session: Session, connector: str, entity_id: str, entity_name: str, action: str, **fields) -> Operation:
    """A finished operation with no remote call (a skip, a decision, a verification), stored at once."""
    op = Operation(**operation_row(connector, entity_id, entity_name, action, **fields))
    session.add(op)
    session.flush()
    return op


def record_decision(run_id: str, decision: str, by: Optional[str], comment: Optional[str], digest: str) -> None:
    """Store the guard's decision on a reconciliation run: who decided what, on which plan (its sha256)."""
    with session_scope() as session:
        run = session.get(ReconciliationRun, run_id)
        run.decision, run.decided_by, run.decision_comment = decision, (by or None), (comment or None)
        run.decided_at, run.plan_hash = utcnow(), digest
        session.add(run)


def record_operations(session: Session, rows: list[dict], *, ids: bool = False) -> list[int]:
    """Insert operation rows in bulk; with `ids`, return their ids in the order given.

    One short INSERT executed for every row (psycopg pipelines it and prepares it once; sqlite3 steps
    it), never a multi-row INSERT … RETURNING: for a chunk of 500 rows that was one statement of 8,500
    parameters, which psycopg parsed afresh for every chunk and SQLAlchemy sent to SQLite one row at
    a time. With `ids`, PostgreSQL hands them out from the sequence first, in one round trip; SQLite
    gives new rows the ids after the table's largest, and no one else can insert while this
    transaction holds the write lock its insert took, so the rows just inserted hold the ids up to
    the last one.
    """
    if not rows:
        return []
    if not ids:
        session.exec(insert(Operation), params=rows)
        return []
    if _dialect(session) == "postgresql":
        taken = list(session.exec(text("SELECT nextval(pg_get_serial_sequence('operations', 'id')) AS id "
                                       "FROM generate_series(1, :n) ORDER BY id"), params={"n": len(rows)}).scalars())
        session.exec(insert(Operation), params=[{**row, "id": i} for row, i in zip(rows, taken)])
        return taken
    session.exec(insert(Operation), params=rows)
    last = session.exec(text("SELECT last_insert_rowid()")).scalar_one()
    return list(range(last - len(rows) + 1, last + 1))


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def record_attempts(session: Session, rows: list[dict]) -> None:
    """Insert operation attempt rows in bulk."""
    session.exec(insert(OperationAttempt), params=rows)


def operations_of_event(session: Session, event_id: str) -> list[Operation]:
    return list(session.exec(select(Operation).where(Operation.event_id == event_id).order_by(Operation.id)))


def operations_but_verifications(session: Session) -> Iterable[Operation]:
    """Every operation except the read-back verifications."""
    return session.exec(select(Operation).where(Operation.action != Intent.VERIFY))


def recent_operations(session: Session, limit: int, status: Optional[str] = None,
                      connector: Optional[str] = None) -> list[Operation]:
    """The latest `limit` operations, newest first, of `status` and `connector` when given."""
    query = select(Operation).order_by(Operation.id.desc()).limit(limit)
    if status:
        query = query.where(Operation.status == status)
    if connector:
        query = query.where(Operation.connector == connector)
    return list(session.exec(query))


def last_operation(session: Session, connector: str, user_id: str) -> Optional[Operation]:
    """The user's latest operation on `connector` other than a verification."""
    return session.exec(select(Operation).where(Operation.connector == connector, Operation.entity_id == user_id,
                                                Operation.entity_type == "user", Operation.action != Intent.VERIFY)
                        .order_by(Operation.id.desc())).first()


def recent_flow_runs(session: Session, connector: str, user_id: str, scan: int = 50) -> Iterable[tuple[str, str, str]]:
    """(flow run id, operation, status) of the user's latest `scan` operations on `connector` that have a
    flow run, newest first."""
    return session.exec(select(Operation.flow_run_id, Operation.operation, Operation.status).where(
        Operation.connector == connector, Operation.entity_id == user_id, Operation.flow_run_id.is_not(None))
        .order_by(Operation.id.desc()).limit(scan))


def failures_by_connector(session: Session, since: datetime) -> dict[str, int]:
    """Connector -> operations failed (or whose outcome is unknown) since `since`."""
    return dict(session.exec(select(Operation.connector, func.count()).where(
        Operation.status.in_(NOT_DONE), Operation.started_at >= since).group_by(Operation.connector)).all())


# --- reconciliation runs -------------------------------------------------------------------

def start_run(connector: str, dry_run: bool, flow_run_id: Optional[str]) -> str:
    """Record a reconciliation of `connector` as running; return its id."""
    with session_scope() as session:
        run = ReconciliationRun(connector=connector, dry_run=dry_run, flow_run_id=flow_run_id)
        session.add(run)
        return run.id


def finish_run(run_id: str, status: str, counts: dict, outcomes: dict, error: Optional[str] = None) -> None:
    """Record how the reconciliation `run_id` ended."""
    with session_scope() as session:
        run = session.get(ReconciliationRun, run_id)
        run.status, run.counts, run.outcomes, run.error, run.finished_at = status, counts, outcomes, error, utcnow()
        session.add(run)


def abandon_stale_runs(connector: str) -> int:
    """Mark runs of `connector` still `running` as abandoned; return how many."""
    with session_scope() as session:
        return session.exec(update(ReconciliationRun)
                            .where(ReconciliationRun.connector == connector, ReconciliationRun.status == RunStatus.RUNNING)
                            .values(status=RunStatus.ABANDONED, finished_at=utcnow(),
                                    error="interrupted: the process ended before the run finished")).rowcount


# Runs that settle nothing: a busy one did not start, a running one has not ended.
UNSETTLED = (RunStatus.BUSY, RunStatus.RUNNING)


def last_reconciliations(session: Session, real: bool = False) -> dict[str, dict]:
    """The last reconciliation per connector, if the reconciliation_runs table exists.

    `real`: the last one that was not a dry run and ended (not busy, not running): the run whose
    guard decision still holds (a dry run after a rejection leaves the rejected deletions held).
    """
    bind = session.get_bind()
    if not inspect(bind).has_table("reconciliation_runs"):
        return {}
    runs = Table("reconciliation_runs", MetaData(), autoload_with=bind)
    query = runs.select().order_by(runs.c.started_at.desc()).limit(1000)
    if real:
        query = query.where(runs.c.dry_run.is_(False), runs.c.status.not_in([str(s) for s in UNSETTLED]))
    last: dict[str, dict] = {}
    for row in session.execute(query).mappings():
        if row["connector"] not in last:
            last[row["connector"]] = dict(row)
    return last


# --- events --------------------------------------------------------------------------------

def get_event(session: Session, event_id: str) -> Optional[Event]:
    return session.get(Event, event_id)


def stuck_events(older_than_seconds: float, limit: int = 100) -> list[tuple[str, str]]:
    """(id, trigger) of unfinished events received more than `older_than_seconds` ago, oldest first."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    with session_scope() as session:
        rows = session.exec(select(Event.id, Event.trigger).where(Event.status.in_(UNFINISHED),
                                                                  Event.received_at <= cutoff)
                            .order_by(Event.received_at).limit(limit))
        return [(r[0], r[1]) for r in rows]


# Events not finished yet, as an operator counts them: waiting, running, or waiting for a retry.
OUTSTANDING = (*UNFINISHED, EventStatus.RETRYING)


def oldest_unfinished_event(session: Session) -> Optional[Event]:
    """The event accepted, running or retrying the longest."""
    return session.exec(select(Event).where(Event.status.in_(OUTSTANDING))
                        .order_by(Event.received_at).limit(1)).first()


def unfinished_count(session: Session) -> int:
    """How many events are accepted, running or retrying."""
    return session.exec(select(func.count()).select_from(Event)
                        .where(Event.status.in_(OUTSTANDING))).one()


# --- reconciliation runs -------------------------------------------------------------------

def running_reconciliation_flow_runs(connector: str) -> list[str]:
    """The Prefect flow run ids of `connector`'s reconciliation runs still marked running."""
    with session_scope() as session:
        return [r for r in session.exec(select(ReconciliationRun.flow_run_id).where(
            ReconciliationRun.connector == connector, ReconciliationRun.status == RunStatus.RUNNING)) if r]
