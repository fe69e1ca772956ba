import json

import pytest
from sqlmodel import func, select

from deployments.ingest import accept
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
    raw = {"id": "e-same", "type": "user.created", "user": {"username": "a", "given_name": "First"}}
    assert accept(raw, CONFIG).new
    raw2 = {"id": "e-same", "type": "user.created", "user": {"username": "a", "given_name": "Second"}}
    again = accept(raw2, CONFIG)
    assert not again.new and again.status == "accepted"
    with session_scope() as session:
        assert session.exec(select(User)).one().given_name == "First"
