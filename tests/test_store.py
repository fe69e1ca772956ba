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


# One group of events, as the event API's writer stores them: creates, an update of a user created
# earlier in the same group, roles new to the store given twice, an id sent twice, an id stored before.
GROUP = [
    {"id": "g1", "type": "user.created", "trigger": "api",
     "user": {"username": "alice", "email": "alice@example.com", "roles": ["sales", "eng"], "groups": ["staff"]}},
    {"id": "g2", "type": "user.created", "trigger": "console",
     "user": {"username": "bob", "roles": ["sales"], "groups": ["staff", "ops"]}},
    {"id": "g3", "type": "user.updated", "user": {"username": "alice", "email": "alice@new.example.com"}},
    {"id": "g2", "type": "user.created", "trigger": "console", "user": {"username": "bob", "roles": ["other"]}},
    {"id": "g4", "type": "user.roles_changed", "user": {"username": "bob", "roles": ["eng"]}},
    {"id": "g5", "type": "user.disabled", "user": {"username": "carol"}},
    {"id": "g0", "type": "user.created", "trigger": "api", "user": {"username": "zed"}},
    {"id": "g6", "type": "user.created", "trigger": "api", "user": {"username": "carol", "user_store": "LDAP"}},
]


def _contents() -> dict:
    from models.tables import Group, Role

    with session_scope() as session:
        users = {u.username + "@" + u.user_store: u for u in session.exec(select(User))}
        return {"users": {name: (u.email, u.active, u.source, load_view(session, u.id).roles,
                                 load_view(session, u.id).groups) for name, u in users.items()},
                "roles": sorted(r.name for r in session.exec(select(Role))),
                "groups": sorted(g.name for g in session.exec(select(Group))),
                "events": sorted((e.id, e.type, e.user_id in {u.id for u in users.values()})
                                 for e in session.exec(select(Event)))}


def test_a_group_of_events_is_stored_as_one_by_one_would(db_url, tmp_path, monkeypatch):
    from concurrent.futures import Future

    from models.events import parse_event
    from models.ingest import GroupCommit
    from models.validation import InvalidInput

    def one_by_one() -> list:
        answers = []
        for raw in GROUP:
            try:
                answers.append(accept(raw, CONFIG))
            except InvalidInput as exc:
                answers.append(exc.problems)
        return answers

    accept({"id": "g0", "type": "user.created", "trigger": "api", "user": {"username": "zed"}}, CONFIG)
    carol = {"id": "c0", "type": "user.created", "trigger": "api", "user": {"username": "carol"}}
    accept(carol, CONFIG)
    group = [(parse_event(raw), CONFIG, Future()) for raw in GROUP]
    with monkeypatch.context() as patch:  # the group's own path stored them: none fell back to one by one
        patch.setattr("models.ingest._accept_event", lambda *a: pytest.fail("the group was stored one by one"))
        GroupCommit._commit(group)
    grouped = [(a.event_id, a.new, a.status) for a in (done.result() for _, _, done in group)]
    in_group = _contents()

    monkeypatch.setenv("OUTBOUND_DATABASE_URL", f"sqlite:///{tmp_path}/one-by-one.db")
    accept({"id": "g0", "type": "user.created", "trigger": "api", "user": {"username": "zed"}}, CONFIG)
    accept(carol, CONFIG)
    single = [(a.event_id, a.new, a.status) for a in one_by_one()]

    assert grouped == single == [("g1", True, "accepted"), ("g2", True, "accepted"), ("g3", True, "accepted"),
                                 ("g2", False, "accepted"), ("g4", True, "accepted"), ("g5", True, "accepted"),
                                 ("g0", False, "accepted"), ("g6", True, "accepted")]
    assert in_group == _contents()
    assert in_group["users"]["alice@PRIMARY"] == ("alice@new.example.com", True, "api", {"sales", "eng"}, {"staff"})
    assert in_group["users"]["bob@PRIMARY"][3:] == ({"eng"}, {"staff", "ops"})
    assert in_group["users"]["carol@PRIMARY"][1] is False and in_group["users"]["carol@LDAP"][1] is True
    assert in_group["roles"] == ["eng", "sales"] and in_group["groups"] == ["ops", "staff"]


def test_a_bad_event_in_a_group_fails_alone(db_url):
    from concurrent.futures import Future

    from models.events import parse_event
    from models.ingest import GroupCommit
    from models.validation import InvalidInput

    raws = [GROUP[0], {"id": "b1", "type": "user.updated", "user": {"username": "nobody"}}, GROUP[1]]
    group = [(parse_event(raw), CONFIG, Future()) for raw in raws]
    GroupCommit._commit(group)
    with pytest.raises(InvalidInput, match="unknown user nobody@PRIMARY"):
        group[1][2].result()
    assert [group[0][2].result().new, group[2][2].result().new] == [True, True]
    assert sorted(_contents()["users"]) == ["alice@PRIMARY", "bob@PRIMARY"]
