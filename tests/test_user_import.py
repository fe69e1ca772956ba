"""The import's writer (`models.user_import`) leaves the store as one `upsert_user` per row does, on both
stores, in a number of statements that does not grow with the users."""

from datetime import timedelta

from sqlalchemy import event
from sqlmodel import Session, select
from typer.testing import CliRunner

import models.user_import as user_import
from deployments.cli import app
from models.db import get_engine, session_scope
from models.events import EventUser
from models.identity import find_user, groups_of, roles_of, upsert_user
from models.tables import Group, Role, User, utcnow

TENANT = "example.com"


def _store_before() -> dict:
    """Stored users an import meets: with attributes and links, deleted, named in two user stores."""
    with session_scope() as session:
        upsert_user(session, EventUser(username="alice", email="alice@example.com", given_name="Alice",
                                       attributes={"dept": "R&D"}, roles=["admin"], groups=["staff"]),
                    TENANT, source="api")
        bob = upsert_user(session, EventUser(username="bob", active=False, roles=["sales"]), TENANT, source="api")
        bob.deleted_at = utcnow() - timedelta(days=1)
        upsert_user(session, EventUser(username="alice", user_store="SECONDARY", email="a2@example.com"),
                    TENANT, source="api")
        upsert_user(session, EventUser(username="carol", groups=["ops"]), TENANT, source="api")
    with session_scope() as session:
        return {(u.user_store, u.username): (u.id, u.updated_at) for u in session.exec(select(User))}


ROWS = [  # in file order; with chunks of 3, alice's two rows and erin's two fall in different chunks
    EventUser(username="alice", email="alice.l@example.com", attributes={"title": "Engineer"},
              roles=["sales", "new-role"]),
    EventUser(username="bob", given_name="Bob"),  # deleted: created again
    EventUser(username="dave", active=False, roles=["admin"], groups=["staff", "new-group"]),
    EventUser(username="alice", family_name="Liddell", groups=[]),
    EventUser(username="erin", attributes={"a": 1}),
    EventUser(username="carol", groups=["ops"]),
    EventUser(username="erin", attributes={"b": "x"}, display_name="Erin E", roles=["new-role"]),
    EventUser(username="frank", user_store="SECONDARY", email="frank@example.com", active=True),
]


def _snapshot(session: Session) -> dict:
    """Every user's columns but its id and times, with its roles and groups; the role and group names."""
    users = {}
    for user in session.exec(select(User)):
        columns = user.model_dump(exclude={"id", "created_at", "updated_at"})
        users[(user.user_store, user.username)] = {**columns, "roles": roles_of(session, user.id),
                                                   "groups": groups_of(session, user.id)}
    names = {model.__name__: set(session.exec(select(model.name))) for model in (Role, Group)}
    return {"users": users, "names": names}


def test_the_import_leaves_what_one_upsert_per_row_leaves(db_url, monkeypatch):
    before = _store_before()
    with Session(get_engine()) as session:  # the reference: one upsert_user per row, rolled back
        for row in ROWS:
            upsert_user(session, row, TENANT, source="import")
        session.flush()
        expected = _snapshot(session)
        session.rollback()
    monkeypatch.setattr(user_import, "CHUNK", 3)
    started = utcnow()
    with session_scope() as session:
        user_import.import_users(session, ROWS, TENANT, source="import")
    with session_scope() as session:
        assert _snapshot(session) == expected
        users = {(u.user_store, u.username): u for u in session.exec(select(User))}
    assert expected["users"][("PRIMARY", "bob")]["deleted_at"] is None  # the reference did bring bob back
    for key, (user_id, updated_at) in before.items():
        assert users[key].id == user_id  # updated in place
        touched = key != ("SECONDARY", "alice")
        assert (users[key].updated_at > updated_at) is touched, key
    new = [users[("PRIMARY", "dave")], users[("PRIMARY", "erin")], users[("SECONDARY", "frank")]]
    assert all(u.created_at >= started for u in new)
    assert sorted(new, key=lambda u: u.created_at) == new  # created in file order: oldest first stays so


def test_an_import_runs_a_few_statements_per_chunk_however_many_users(db_url, monkeypatch):
    _store_before()
    rows = [EventUser(username=f"user{i:03d}", email=f"user{i:03d}@example.com", roles=[f"r{i % 3}"],
                      groups=["all"]) for i in range(40)]
    monkeypatch.setattr(user_import, "CHUNK", 20)
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement.split()[0])

    event.listen(get_engine(), "before_cursor_execute", count)
    try:
        for rerun in range(2):  # created, then every user updated and every link replaced
            statements.clear()
            with session_scope() as session:
                user_import.import_users(session, rows, TENANT, source="import")
            # Per chunk: read the users and write them; for roles and groups each, read the names, create
            # those missing (first run) or delete the links replaced (rerun), write the links. (And on
            # PostgreSQL one SET for the transaction.)
            assert len([s for s in statements if s != "SET"]) <= 2 * (2 + 2 * 3), statements
    finally:
        event.remove(get_engine(), "before_cursor_execute", count)
    with session_scope() as session:
        user = find_user(session, TENANT, "PRIMARY", "user007")
        assert roles_of(session, user.id) == {"r1"} and groups_of(session, user.id) == {"all"}


def test_a_changed_row_imported_again_changes_that_user_only(tmp_path, db_url):
    config = tmp_path / "outbound.yaml"
    config.write_text("tenant_domain: example.com\nconnectors: []\n")
    csv = tmp_path / "users.csv"
    header = "username,email,given_name,roles,groups,attributes.dept\n"
    csv.write_text(header + "alice,alice@example.com,Alice,admin;sales,staff,R&D\n"
                            "bob,bob@example.com,Bob,sales,,Ops\n")
    runner = CliRunner()
    assert runner.invoke(app, ["import", str(csv), "--config", str(config)]).exit_code == 0

    def state():
        with session_scope() as session:
            return {u.username: (u.id, u.email, u.given_name, u.attributes, u.updated_at,
                                 roles_of(session, u.id), groups_of(session, u.id))
                    for u in session.exec(select(User))}

    first = state()
    assert first["alice"][1:4] == ("alice@example.com", "Alice", {"dept": "R&D"})
    assert first["alice"][5:] == ({"admin", "sales"}, {"staff"}) and first["bob"][5:] == ({"sales"}, set())
    result = runner.invoke(app, ["import", str(csv), "--config", str(config)])  # the same file: the same users
    assert result.exit_code == 0 and "imported 2 users" in result.output, result.output
    again = state()
    assert {k: v[:4] + v[5:] for k, v in again.items()} == {k: v[:4] + v[5:] for k, v in first.items()}
    csv.write_text(header + "alice,alice@example.com,Alicia,admin,staff;ops,\n")
    assert runner.invoke(app, ["import", str(csv), "--config", str(config)]).exit_code == 0
    last = state()
    assert last["alice"][:4] == (first["alice"][0], "alice@example.com", "Alicia", {"dept": "R&D"})
    assert last["alice"][5:] == ({"admin"}, {"staff", "ops"}) and last["alice"][4] > again["alice"][4]
    assert last["bob"] == again["bob"]
