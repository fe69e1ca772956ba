"""Where operations come from: an event batch's rows answer their users' outbox events, a reconciliation's its run."""

from datetime import datetime, timezone

from sqlmodel import select

from models.db import session_scope
from models.runstate import operation_row
from models.tables import Operation, OperationAttempt
from tasks.apply import record_rows
from tasks.origin import EventBatch, Reconciliation

BATCH = EventBatch("events:r1", {"u1": ["e1", "e2"], "u2": ["e3"], "u3": []})


def _row(entity_id: str, **fields) -> dict:
    return operation_row("app", entity_id, entity_id, "provision", **fields)


def test_a_coalesced_user_has_its_outcome_recorded_for_each_of_its_events_newest_first():
    rows, source = BATCH.stamp([_row("u1"), _row("u2"), _row("u3")])
    assert [(r["entity_id"], r["event_id"]) for r in rows] == [
        ("u1", "e2"), ("u1", "e1"), ("u2", "e3"), ("u3", "reconcile:events:r1")]
    assert source == [0, 0, 1, 2]


def test_a_group_row_answers_its_members_events_or_every_event_of_the_batch():
    create = _row("g1", entity_type="group", _member=("u2",))
    for_nobody = _row("g2", entity_type="group", _member=())
    member_add = _row("g1", entity_type="group", _member="u1")
    rows, source = BATCH.stamp([create, for_nobody, member_add])
    assert [(r["entity_id"], r["event_id"]) for r in rows] == [
        ("g1", "e3"), ("g2", "e3"), ("g2", "e2"), ("g2", "e1"), ("g1", "e2"), ("g1", "e1")]
    assert source == [0, 1, 1, 1, 2, 2]
    assert not any("_member" in r for r in rows)


def test_a_reconciliation_records_each_row_once_as_it_was_built():
    plain, group = _row("u1", event_id="reconcile:r9"), _row("g1", entity_type="group", _member="u1")
    rows, source = Reconciliation("r9").stamp([plain, group])
    assert rows[0] is plain and "_member" not in rows[1] and source == [0, 1]


def test_every_try_is_recorded_under_each_event_its_row_answers(db_url):
    now = datetime.now(timezone.utc)
    rows = [_row("u1", status="succeeded", attempts=2), _row("u2", status="skipped")]
    tries = [[(now, now, TimeoutError("lost")), (now, now, None)], []]
    with session_scope() as session:
        record_rows(session, BATCH, rows, tries)
    with session_scope() as session:
        ops = {o.id: o.event_id for o in session.exec(select(Operation))}
        attempts = [(ops[a.operation_id], a.number, a.status)
                    for a in session.exec(select(OperationAttempt).order_by(OperationAttempt.id))]
    assert sorted(ops.values()) == ["e1", "e2", "e3"]
    assert attempts == [("e2", 1, "failed"), ("e2", 2, "succeeded"), ("e1", 1, "failed"), ("e1", 2, "succeeded")]
