"""The state store, on SQLite and on the PostgreSQL server of this machine."""

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from models.ingest import accept
from models.config import parse_config
from models.db import current_revision, session_scope
from models.identity import load_view
from models.runstate import link_accounts
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


def _link(local_id: str, remote_id: str, remote_name: str) -> dict:
    return {"local_id": local_id, "remote_id": remote_id, "remote_name": remote_name, "pushed_hash": None}


def test_mapping_is_unique_on_both_sides(db_url):
    with session_scope() as session:
        link_accounts(session, "app", [_link("local-1", "remote-1", "alice")])
    with pytest.raises(IntegrityError):
        with session_scope() as session:
            session.add(Mapping(connector="app", entity_type="user", local_id="local-2", remote_id="remote-1",
                                remote_name="bob"))
    with session_scope() as session:  # the same remote id on another connector is fine
        link_accounts(session, "other", [_link("local-2", "remote-1", "bob")])
        assert len(session.exec(select(Mapping)).all()) == 2


def test_linking_replaces_the_link_either_side_had(db_url):
    with session_scope() as session:
        link_accounts(session, "app", [_link("local-1", "remote-1", "alice"), _link("local-2", "remote-2", "bob")])
    with session_scope() as session:  # local-1 takes bob's account: both old links go
        link_accounts(session, "app", [_link("local-1", "remote-2", "bob")])
        links = session.exec(select(Mapping.local_id, Mapping.remote_id).where(Mapping.connector == "app")).all()
    assert [tuple(r) for r in links] == [("local-1", "remote-2")]
