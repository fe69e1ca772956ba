"""The state store, on SQLite and on the PostgreSQL server of this machine."""

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from deployments.ingest import accept
from models.config import parse_config
from models.db import current_revision, session_scope
from models.identity import load_view
from models.runstate import save_mapping
from models.tables import Event, Mapping, User

CONFIG = parse_config({"tenant_domain": "example.com"})


def test_migrated_on_first_use(db_url):
    with session_scope() as session:
        assert session.exec(select(User)).all() == []
    assert current_revision() is not None


def test_event_applied_with_roles_and_groups(db_url):
    accept({"id": "e1", "type": "user.created", "trigger": "console",
            "user": {"username": "alice", "email": "alice@example.com", "roles": ["sales", "eng"],
                     "groups": ["all-staff"], "attributes": {"department": "R&D"}}}, CONFIG)
    accept({"id": "e2", "type": "user.roles_changed", "user": {"username": "alice", "roles": ["eng"]}}, CONFIG)
    with session_scope() as session:
        user = session.exec(select(User)).one()
        view = load_view(session, user.id)
        event = session.get(Event, "e1")
    assert view.roles == {"eng"} and view.groups == {"all-staff"}
    assert view.source == "console" and view.attributes == {"department": "R&D"}
    assert event.status == "accepted" and event.payload["user"]["username"] == "alice"


def test_mapping_is_unique_on_both_sides(db_url):
    with session_scope() as session:
        save_mapping(session, "app", "local-1", "remote-1", "alice", None)
    with pytest.raises(IntegrityError):
        with session_scope() as session:
            save_mapping(session, "app", "local-2", "remote-1", "bob", None)
    with session_scope() as session:  # the same remote id on another connector is fine
        save_mapping(session, "other", "local-2", "remote-1", "bob", None)
        assert len(session.exec(select(Mapping)).all()) == 2
