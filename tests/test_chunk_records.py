"""What one reconciliation chunk records, on SQLite and on PostgreSQL: every operation, every attempt on
its own operation, every mapping, with the content given, all in the chunk's transaction or none."""

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select

from models.db import session_scope
from models.kinds import Action, Intent, OperationStatus
from models.runstate import link_accounts, operation_row, record_attempts, record_operations
from models.tables import Mapping, Operation, OperationAttempt

T0 = datetime(2026, 12, 4, 1, 0, 0, 123456, tzinfo=timezone.utc)
CONNECTOR = "app"


def _chunk(tag: str) -> tuple[list[dict], list[dict], list[list[tuple]]]:
    """(mappings, operation rows, tries per row) of a chunk as apply_rows builds them: two creates, a
    rename (its drift as JSON), a failure after a retry, a skip with no remote call."""
    at = [T0 + timedelta(seconds=s) for s in range(8)]
    rows = [
        operation_row(CONNECTOR, f"{tag}-u1", f"{tag}1@PRIMARY", Intent.PROVISION, event_id=f"reconcile:{tag}",
                      operation=Action.CREATE, status=OperationStatus.SUCCEEDED, attempts=1,
                      reason="not in the target: create", remote_id=f"{tag}-r1", remote_name=f"{tag}1",
                      flow_run_id="flow-1", started_at=at[0], finished_at=at[1]),
        operation_row(CONNECTOR, f"{tag}-u2", f"{tag}2@PRIMARY", Intent.PROVISION, event_id=f"reconcile:{tag}",
                      operation=Action.CREATE, status=OperationStatus.SUCCEEDED, attempts=1,
                      reason="not in the target: create", remote_id=f"{tag}-r2", remote_name=f"{tag}2",
                      flow_run_id="flow-1", started_at=at[0], finished_at=at[1]),
        operation_row(CONNECTOR, f"{tag}-u3", f"{tag}3@PRIMARY", Intent.PROVISION, event_id=f"reconcile:{tag}",
                      operation=Action.UPDATE, status=OperationStatus.SUCCEEDED, attempts=1, reason="drift",
                      remote_id=f"{tag}-r3", remote_name=f"{tag}3-new",
                      drift={"user_name": {"had": f"{tag}3", "want": f"{tag}3-new"}, "title": {"had": None, "want": "Ms"}},
                      flow_run_id="flow-1", started_at=at[2], finished_at=at[3]),
        operation_row(CONNECTOR, f"{tag}-u4", f"{tag}4@PRIMARY", Intent.PROVISION, event_id=f"reconcile:{tag}",
                      operation=Action.CREATE, status=OperationStatus.FAILED, attempts=2, reason="not in the target: create",
                      error_code="rejected", error_message="userName: bad ' quote \\ and ünïcode", remote_name=f"{tag}4",
                      flow_run_id="flow-1", started_at=at[4], finished_at=at[6]),
        operation_row(CONNECTOR, f"{tag}-u5", f"{tag}5@PRIMARY", Intent.SKIP, event_id=f"reconcile:{tag}",
                      operation=Action.NONE, reason="in sync", remote_id=f"{tag}-r5", remote_name=f"{tag}5",
                      flow_run_id="flow-1", started_at=at[7], finished_at=at[7]),
    ]
    tries = [[(at[0], at[1], None)], [(at[0], at[1], None)], [(at[2], at[3], None)],
             [(at[4], at[5], "transient: 503"), (at[5], at[6], None)], []]
    maps = [{"local_id": f"{tag}-u1", "remote_id": f"{tag}-r1", "remote_name": f"{tag}1", "pushed_hash": "h1"},
            {"local_id": f"{tag}-u2", "remote_id": f"{tag}-r2", "remote_name": f"{tag}2", "pushed_hash": "h2"},
            {"local_id": f"{tag}-u3", "remote_id": f"{tag}-r3", "remote_name": f"{tag}3-new", "pushed_hash": "h3"}]
    return maps, rows, tries


def _attempts(op_ids: list[int], rows: list[dict], tries: list[list[tuple]]) -> list[dict]:
    """One attempt per try, as apply_rows writes them: the earlier ones failed, the last ended as its operation."""
    out = []
    for op_id, row, tried in zip(op_ids, rows, tries):
        for number, (started, finished, error) in enumerate(tried, start=1):
            last = number == len(tried)
            out.append({"operation_id": op_id, "number": number,
                        "status": row["status"] if last else OperationStatus.FAILED,
                        "error_code": row["error_code"] if last else "transient",
                        "error_message": row["error_message"] if last else error,
                        "flow_run_id": row["flow_run_id"], "started_at": started, "finished_at": finished})
    return out


def _record(tag: str, fail_after_operations: bool = False) -> None:
    """One chunk's writes in one transaction, in apply_rows' order: mappings, operations, attempts."""
    maps, rows, tries = _chunk(tag)
    with session_scope() as session:
        link_accounts(session, CONNECTOR, maps)
        sent = [k for k, tried in enumerate(tries) if tried]
        ids = record_operations(session, rows, ids=True)
        assert len(ids) == len(rows) == len(set(ids))
        if fail_after_operations:
            raise RuntimeError("the process died before the attempts were written")
        record_attempts(session, _attempts([ids[k] for k in sent], [rows[k] for k in sent], [tries[k] for k in sent]))


def _operations(tag: str) -> list[dict]:
    with session_scope() as session:
        return [op.model_dump() for op in session.exec(
            select(Operation).where(Operation.event_id == f"reconcile:{tag}").order_by(Operation.id))]


def _stored_attempts(tag: str) -> list[tuple[str, dict]]:
    """(entity id of its operation, attempt without ids) of the chunk's attempts, by operation then number."""
    with session_scope() as session:
        return [(entity_id, {k: v for k, v in attempt.model_dump().items() if k not in ("id", "operation_id")})
                for attempt, entity_id in session.exec(
                    select(OperationAttempt, Operation.entity_id).join(Operation, Operation.id == OperationAttempt.operation_id)
                    .where(Operation.event_id == f"reconcile:{tag}").order_by(Operation.id, OperationAttempt.number))]


def _check(tag: str) -> None:
    maps, rows, tries = _chunk(tag)
    stored = _operations(tag)
    ids = [op.pop("id") for op in stored]
    assert ids == sorted(ids)
    assert stored == rows  # every column, in the order given
    expected = _attempts([0] * len(rows), rows, tries)
    owners = [row["entity_id"] for row, tried in zip(rows, tries) for _ in tried]
    assert _stored_attempts(tag) == [(owner, {**{k: v for k, v in a.items() if k != "operation_id"}, "task_run_id": None})
                                     for owner, a in zip(owners, expected)]
    with session_scope() as session:
        links = {(m.local_id, m.remote_id, m.remote_name, m.pushed_hash) for m in session.exec(
            select(Mapping).where(Mapping.connector == CONNECTOR, Mapping.local_id.startswith(f"{tag}-")))}
    assert links == {(m["local_id"], m["remote_id"], m["remote_name"], m["pushed_hash"]) for m in maps}


def test_a_chunk_records_every_operation_attempt_and_mapping(db_url):
    with session_scope() as session:  # ids do not start at 1, and a link the chunk replaces
        record_operations(session, _chunk("before")[1])
        link_accounts(session, CONNECTOR, [{"local_id": "old-u", "remote_id": "c1-r3", "remote_name": "old",
                                            "pushed_hash": None}])
    _record("c1")
    _check("c1")
    with session_scope() as session:
        assert session.exec(select(Mapping.local_id).where(Mapping.local_id == "old-u")).all() == []


def test_chunks_recorded_at_once_keep_their_attempts_on_their_operations(db_url):
    errors: list[BaseException] = []

    def record(tag: str) -> None:
        try:
            for n in range(5):
                _record(f"{tag}x{n}")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for i in range(4):
        for n in range(5):
            _check(f"t{i}x{n}")


def test_a_chunk_that_fails_leaves_nothing(db_url):
    with pytest.raises(RuntimeError):
        _record("gone", fail_after_operations=True)
    assert _operations("gone") == []
    with session_scope() as session:
        assert session.exec(select(Mapping).where(Mapping.local_id.startswith("gone-"))).all() == []
        assert session.exec(select(OperationAttempt)).all() == []
