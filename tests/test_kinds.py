"""The StrEnums of models/kinds.py: they fit their columns and the store gives back the same text."""

import pytest
from sqlmodel import select

from models.db import session_scope
from models.kinds import Action, EventStatus, HealthState, Intent, OperationStatus, RunStatus
from models.outbox import finish, retry_now
from models.tables import ConnectorHealth, Event, Operation, OperationAttempt, ReconciliationRun, User

# Which column holds each enum; PostgreSQL refuses a value longer than the column (SQLite does not check).
COLUMNS = [(EventStatus, Event.__table__.c.status), (Intent, Operation.__table__.c.action),
           (Action, Operation.__table__.c.operation), (OperationStatus, Operation.__table__.c.status),
           (OperationStatus, OperationAttempt.__table__.c.status), (RunStatus, ReconciliationRun.__table__.c.status),
           (HealthState, ConnectorHealth.__table__.c.state)]


@pytest.mark.parametrize("kind,column", COLUMNS, ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_every_value_fits_its_column(kind, column):
    too_long = [m.value for m in kind if len(m.value) > column.type.length]
    assert not too_long, f"{column}: varchar({column.type.length}) cannot hold {too_long}"


def test_values_are_the_strings_the_store_has_always_held():
    # Rows written before the enums existed hold these strings; a renamed value would orphan them.
    assert [*EventStatus] == ["accepted", "running", "retrying", "succeeded", "failed"]
    assert [*OperationStatus] == ["running", "retrying", "succeeded", "failed", "skipped", "abandoned",
                                  "outcome_unknown"]
    assert all(len(s) <= 16 for s in OperationStatus)  # the width of the status columns
    assert {"running", "succeeded", "failed", "partial", "busy", "rejected", "stopped-by-guard", "abandoned",
            "awaiting-approval"} == set(RunStatus)
    assert {"provision", "deprovision", "skip"} <= set(Intent)
    assert {"create", "update", "disable", "enable", "delete", "link", "relink", "noop", "none", "gone"} <= set(Action)
    assert [*HealthState] == ["closed", "open"]


def test_defaults_are_stored_as_plain_text_and_compare_both_ways(db_url):
    with session_scope() as session:
        session.add(User(id="u1", username="alice", tenant="example.com", source="api"))
        session.add(Event(id="e1", type="user.created", trigger="api", user_id="u1", payload={}))
        session.add(ReconciliationRun(id="r1", connector="app"))
        session.add(ConnectorHealth(connector="app"))
        op = Operation(connector="app", entity_id="u1", entity_name="alice", action=Intent.PROVISION,
                       operation=Action.CREATE)
        session.add(op)
        session.flush()
        session.add(OperationAttempt(operation_id=op.id, number=1))
    with session_scope() as session:
        rows = [session.get(Event, "e1").status, session.get(ReconciliationRun, "r1").status,
                session.get(ConnectorHealth, "app").state, *session.exec(select(Operation.action, Operation.operation,
                                                                                Operation.status)).one(),
                session.exec(select(OperationAttempt.status)).one()]
        assert rows == ["accepted", "running", "closed", "provision", "create", "running", "running"]
        assert all(type(value) is str for value in rows)
        assert session.exec(select(Event).where(Event.status == EventStatus.ACCEPTED)).one().id == "e1"
        assert rows[0] == EventStatus.ACCEPTED and EventStatus.ACCEPTED == rows[0]


def test_outbox_writes_the_same_text(db_url):
    with session_scope() as session:
        session.add(User(id="u1", username="alice", tenant="example.com", source="api"))
        session.add(Event(id="e1", type="user.created", trigger="api", user_id="u1", payload={}, status="succeeded"))
    assert retry_now("e1") == "succeeded"
    with session_scope() as session:
        assert session.get(Event, "e1").status == "accepted"
    from models.outbox import claim

    batch = claim()
    assert batch.events == {"u1": ["e1"]}
    finish(batch, {"u1": (EventStatus.RETRYING, "503")})
    with session_scope() as session:
        event = session.get(Event, "e1")
        assert (event.status, event.attempts, type(event.status)) == ("retrying", 1, str)
