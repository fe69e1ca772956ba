import json

import pytest
from sqlmodel import func, select

from models.ingest import accept
from models.config import parse_config
from models.db import session_scope
from models.events import parse_event
from models.tables import Event, User
from models.validation import InvalidInput

CONFIG = parse_config({"tenant_domain": "example.com", "identity_providers": [{"name": "partner-idp"}]})


@pytest.mark.parametrize("raw, field", [
    ({"id": "e1", "type": "user.exploded", "user": {"username": "a"}}, "type"),
    ({"id": "e1", "type": "user.created", "user": {}}, "user.username"),
    ({"id": "e1", "type": "user.created", "user": {"username": "a", "email": "not-an-email"}}, "user.email"),
    ({"id": "e1", "type": "user.created", "trigger": "carrier-pigeon", "user": {"username": "a"}}, "trigger"),
    ({"id": "bad id!", "type": "user.created", "user": {"username": "a"}}, "id"),
    ({"id": "e1", "type": "user.federated_login", "user": {"username": "a"}}, "idp"),
    ({"id": "e1", "type": "user.created", "user": {"username": "a", "shoe_size": 9}}, "user.shoe_size"),
])
def test_invalid_events_name_the_field_and_store_nothing(sqlite_url, raw, field):
    with pytest.raises(InvalidInput) as info:
        accept(json.dumps(raw), CONFIG)
    assert field in str(info.value)
    with session_scope() as session:
        assert session.exec(select(func.count()).select_from(Event)).one() == 0
        assert session.exec(select(func.count()).select_from(User)).one() == 0


def test_unknown_idp_is_rejected(sqlite_url):
    raw = {"id": "e1", "type": "user.federated_login", "idp": "mystery", "user": {"username": "a"}}
    with pytest.raises(InvalidInput, match="unknown identity provider 'mystery'"):
        accept(raw, CONFIG)


def test_not_json_oversized_and_deep():
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_event(b"{nope")
    with pytest.raises(InvalidInput, match="limit"):
        parse_event(b'{"x": "' + b"a" * 70000 + b'"}')
    deep = {"id": "e", "type": "user.created", "user": {"username": "a", "attributes": {}}}
    node = deep
    for _ in range(20):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(InvalidInput, match="nested"):
        parse_event(deep)


def test_store_prefix_in_username_is_split():
    ev = parse_event({"id": "e", "type": "user.created", "user": {"username": "ldap2/john"}})
    assert (ev.user.user_store, ev.user.username) == ("LDAP2", "john")


def test_repeated_event_is_not_applied_twice(sqlite_url):
    raw = {"id": "e-same", "type": "user.created", "user": {"username": "ada", "given_name": "First"}}
    assert accept(raw, CONFIG).new
    raw2 = {"id": "e-same", "type": "user.created", "user": {"username": "ada", "given_name": "Second"}}
    again = accept(raw2, CONFIG)
    assert not again.new and again.status == "accepted"
    with session_scope() as session:
        assert session.exec(select(User)).one().given_name == "First"


# --- an event for a user the store does not know --------------------------------------------------

NOT_CREATING = ("user.updated", "user.disabled", "user.enabled", "user.roles_changed", "user.deleted")
UPSERT = parse_config({"tenant_domain": "example.com", "events": {"upsert_unknown_users": True}})


def _counts() -> tuple[int, int]:
    with session_scope() as session:
        return (session.exec(select(func.count()).select_from(Event)).one(),
                session.exec(select(func.count()).select_from(User)).one())


@pytest.mark.parametrize("type_", NOT_CREATING)
def test_an_event_for_an_unknown_user_is_refused_and_stores_nothing(sqlite_url, type_):
    raw = {"id": f"e-{type_}", "type": type_, "user": {"username": "ghost", "roles": ["sales"]}}
    with pytest.raises(InvalidInput) as info:
        accept(raw, CONFIG)
    assert "user.username: unknown user ghost@PRIMARY; send user.created first" in str(info.value)
    assert _counts() == (0, 0)


@pytest.mark.parametrize("type_", NOT_CREATING)
def test_upsert_unknown_users_creates_the_user_when_configured(sqlite_url, type_):
    raw = {"id": f"e-{type_}", "type": type_, "user": {"username": "ghost", "email": "g@example.com",
                                                        "roles": ["sales"]}}
    assert accept(raw, UPSERT).new
    with session_scope() as session:
        user = session.exec(select(User)).one()
    assert (user.username, user.email) == ("ghost", "g@example.com")
    assert (user.deleted_at is not None) == (type_ == "user.deleted")
    assert user.active == (type_ != "user.disabled")


def test_an_upsert_still_follows_the_username_rule(sqlite_url):
    with pytest.raises(InvalidInput, match="user.username: 'gh' does not follow the username rule"):
        accept({"id": "e1", "type": "user.updated", "user": {"username": "gh"}}, UPSERT)
    assert _counts() == (0, 0)


def test_an_update_does_not_bring_back_a_deleted_user(sqlite_url):
    accept({"id": "e1", "type": "user.created", "user": {"username": "gone"}}, CONFIG)
    accept({"id": "e2", "type": "user.deleted", "user": {"username": "gone"}}, CONFIG)
    with pytest.raises(InvalidInput, match="deleted user gone@PRIMARY; send user.created first"):
        accept({"id": "e3", "type": "user.updated", "user": {"username": "gone", "given_name": "G"}}, CONFIG)
    assert accept({"id": "e4", "type": "user.disabled", "user": {"username": "gone"}}, CONFIG).new  # known
    assert _counts() == (3, 1)


def test_known_users_are_updated_as_before(sqlite_url):
    accept({"id": "e1", "type": "user.created", "user": {"username": "known", "given_name": "K"}}, CONFIG)
    accept({"id": "e2", "type": "user.updated", "user": {"username": "known", "given_name": "Kay"}}, CONFIG)
    with session_scope() as session:
        assert session.exec(select(User)).one().given_name == "Kay"


def test_the_cli_refuses_an_unknown_user_with_exit_2(tmp_path, sqlite_url):
    from typer.testing import CliRunner

    from deployments.cli import app

    config = tmp_path / "outbound.yaml"
    config.write_text("tenant_domain: example.com\nconnectors: []\n")
    file = tmp_path / "e.json"
    file.write_text(json.dumps({"id": "e1", "type": "user.updated", "user": {"username": "ghost"}}))
    result = CliRunner().invoke(app, ["event", str(file), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "unknown user ghost@PRIMARY; send user.created first" in result.output
    assert "Traceback" not in result.output and _counts() == (0, 0)


def test_the_api_answers_422_for_an_unknown_user(sqlite_url, monkeypatch):
    from fastapi.testclient import TestClient

    from deployments.api import create_app

    monkeypatch.setenv("EVENTS_TEST_TOKEN", "t0ken-for-the-test")
    config = parse_config({"tenant_domain": "example.com", "api": {"token": "env:EVENTS_TEST_TOKEN"}})
    calls = []
    with TestClient(create_app(config, dispatch=lambda *a: calls.append(a))) as client:
        r = client.post("/v1/events", json={"id": "e1", "type": "user.disabled", "user": {"username": "ghost"}},
                        headers={"Authorization": "Bearer t0ken-for-the-test"})
    assert r.status_code == 422, r.text
    assert any("unknown user ghost@PRIMARY; send user.created first" in p for p in r.json()["problems"])
    assert calls == [] and _counts() == (0, 0)


# --- strict types and usernames --------------------------------------------------------------------

@pytest.mark.parametrize("user, field", [
    ({"username": "ada", "active": 0}, "user.active"),
    ({"username": "ada", "active": "true"}, "user.active"),
    ({"username": "ada", "roles": "sales"}, "user.roles"),
    ({"username": 12345}, "user.username"),
    ({"username": "ada", "given_name": 7}, "user.given_name"),
])
def test_event_fields_are_strictly_typed(sqlite_url, user, field):
    with pytest.raises(InvalidInput) as info:
        accept({"id": "e1", "type": "user.created", "user": user}, CONFIG)
    assert any(p.startswith(field + ":") for p in info.value.problems), info.value
    assert _counts() == (0, 0)


@pytest.mark.parametrize("username, shown", [
    ("\ue000abc", r"'\ue000abc'"),        # private use
    ("ab\x07cd", r"'ab\x07cd'"),          # control
    ("abc\u0378", r"'abc\u0378'"),        # unassigned
    ("evil\u202eadmin", r"'evil\u202eadmin'"),  # a bidi override (format)
    ("zw\u200dj", r"'zw\u200dj'"),        # zero-width joiner (format)
])
def test_invisible_and_meaningless_code_points_are_refused_escaped(sqlite_url, username, shown):
    with pytest.raises(InvalidInput) as info:
        accept({"id": "e1", "type": "user.created", "user": {"username": username}}, CONFIG)
    problem = next(p for p in info.value.problems if p.startswith("user.username:"))
    assert shown in problem and "U+" in problem, problem
    assert _counts() == (0, 0)


def test_usernames_are_stored_in_nfc(sqlite_url):
    accept({"id": "e1", "type": "user.created", "user": {"username": "e\u0301mile"}}, CONFIG)
    accept({"id": "e2", "type": "user.updated", "user": {"username": "\u00e9mile", "given_name": "E"}}, CONFIG)
    with session_scope() as session:
        user = session.exec(select(User)).one()
    assert user.username == "\u00e9mile" and user.given_name == "E"


def test_the_username_rule_is_per_user_store(sqlite_url):
    config = parse_config({"tenant_domain": "example.com", "user_stores": {"LDAP": {
        "username_pattern": "^[a-z]{2,8}$", "username_description": "2 to 8 lower-case letters"}}})
    for username, ok in [("LDAP/jo", True), ("LDAP/Jo", False), ("LDAP/johnathan9", False), ("jo", False),
                         ("with space", False), ("x" * 31, False), ("x" * 30, True)]:
        raw = {"id": f"e-{len(username)}-{ok}-{username[-2:]}", "type": "user.created", "user": {"username": username}}
        if ok:
            assert accept(raw, config).new
        else:
            with pytest.raises(InvalidInput) as info:
                accept(raw, config)
            store = "LDAP" if username.startswith("LDAP/") else "PRIMARY"
            words = "2 to 8 lower-case letters" if store == "LDAP" else "3 to 30 characters, none of them white space"
            assert f"username rule of user store {store}: {words}" in str(info.value), info.value


def test_the_email_check_says_what_it_expects_in_words(sqlite_url):
    with pytest.raises(InvalidInput) as info:
        accept({"id": "e1", "type": "user.created", "user": {"username": "ada", "email": "not-an-email"}}, CONFIG)
    message = str(info.value)
    assert "user.email: must be an email address such as name@example.com" in message
    assert "^[" not in message and "pattern" not in message


@pytest.mark.parametrize("url", ["sqlite_url", "pg_url"])
def test_a_group_commit_answers_each_event_as_accept_would(request, url):
    """One transaction for a group; a bad event or a repeated id in it costs only itself."""
    from concurrent.futures import Future

    from models.ingest import GroupCommit

    request.getfixturevalue(url)

    def commit(raws):
        group = [(parse_event(raw), CONFIG, Future()) for raw in raws]
        GroupCommit._commit(group)
        return [done.exception() or done.result() for _, _, done in group]

    clean = commit([{"id": "k1", "type": "user.created", "user": {"username": "kim"}},
                    {"id": "k2", "type": "user.updated", "user": {"username": "kim", "family_name": "Lee"}}])
    assert [(a.event_id, a.new) for a in clean] == [("k1", True), ("k2", True)]
    spoilt = commit([{"id": "g1", "type": "user.created", "user": {"username": "gina"}},
                     {"id": "g2", "type": "user.updated", "user": {"username": "nobody", "family_name": "X"}},
                     {"id": "g1", "type": "user.created", "user": {"username": "gina"}},  # the same id again
                     {"id": "k1", "type": "user.created", "user": {"username": "kim"}},  # seen in the last group
                     {"id": "g3", "type": "user.created", "user": {"username": "hugo"}}])
    assert isinstance(spoilt[1], InvalidInput) and "unknown user nobody@PRIMARY" in str(spoilt[1])
    assert [(a.event_id, a.new) for a in spoilt[:1] + spoilt[2:]] == [("g1", True), ("g1", False), ("k1", False),
                                                                     ("g3", True)]
    with session_scope() as session:
        assert sorted(e.id for e in session.exec(select(Event)).all()) == ["g1", "g3", "k1", "k2"]
        users = {u.username: u for u in session.exec(select(User)).all()}
        assert sorted(users) == ["gina", "hugo", "kim"] and users["kim"].family_name == "Lee"


def test_group_commit_answers_concurrent_senders_once_stored(sqlite_url):
    from concurrent.futures import ThreadPoolExecutor

    from models.ingest import GroupCommit

    store = GroupCommit()
    raws = [{"id": f"c{i}", "type": "user.created", "user": {"username": f"conc{i}"}} for i in range(60)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda raw: store.submit(raw, CONFIG).result(timeout=60), raws + raws[:10]))
    assert sum(a.new for a in answers) == 60 and sum(not a.new for a in answers) == 10
    with session_scope() as session:
        assert session.exec(select(func.count()).select_from(Event)).one() == 60
