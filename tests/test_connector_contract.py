"""One contract suite, run against every connector's real (sandbox) server."""

import uuid

import pytest

from connectors.base import Account, differences
from connectors.errors import AlreadyExists, NotFound
from targets import TARGETS


@pytest.fixture(params=sorted(TARGETS), scope="module")
def target(request):
    with TARGETS[request.param]() as (connector, sandbox):
        yield connector, sandbox


def make_account(prefix: str = "user", **kw) -> Account:
    tag = uuid.uuid4().hex[:8]
    values = dict(user_name=f"{prefix}{tag}@example.com", external_id=f"ext-{tag}", given_name="Ada",
                  family_name="Lovelace", display_name="Ada Lovelace", email=f"{prefix}{tag}@example.com")
    values.update(kw)
    return Account(**values)


def test_create_get_find(target):
    connector, _ = target
    account = make_account()
    created = connector.create_user(account)
    assert created.id
    got = connector.get_user(created.id)
    assert differences(account, got) == {}
    assert connector.find_user(external_id=account.external_id).id == created.id
    assert connector.find_user(user_name=account.user_name).id == created.id
    assert connector.find_user(user_name="nobody-" + account.user_name) is None


def test_update_changes_only_given_fields(target):
    connector, _ = target
    created = connector.create_user(make_account())
    updated = connector.update_user(created.id, {"family_name": "Byron"}, created)
    got = connector.get_user(created.id)
    assert got.family_name == "Byron" and updated.family_name == "Byron"
    assert got.given_name == "Ada" and got.email == created.email


def test_disable_enable(target):
    connector, _ = target
    created = connector.create_user(make_account())
    connector.disable_user(created.id)
    assert connector.get_user(created.id).active is False
    connector.enable_user(created.id)
    assert connector.get_user(created.id).active is True


def test_delete_then_not_found(target):
    connector, _ = target
    if getattr(connector, "deletes_users", True) is False:
        pytest.skip("this target cannot delete users (it deactivates instead)")
    created = connector.create_user(make_account())
    connector.delete_user(created.id)
    with pytest.raises(NotFound):
        connector.get_user(created.id)


def test_conflict_is_already_exists_and_findable(target):
    connector, _ = target
    account = make_account()
    first = connector.create_user(account)
    with pytest.raises(AlreadyExists):
        connector.create_user(make_account(user_name=account.user_name, email=account.email))
    assert connector.find_user(user_name=account.user_name).id == first.id


def test_listing_longer_than_one_page(target):
    connector, _ = target
    made = {connector.create_user(make_account("page")).id for _ in range(25)}
    listed = {a.id for a in connector.iter_users()}
    assert made <= listed


def test_hostile_user_name_finds_only_its_account(target):
    connector, _ = target
    tag = uuid.uuid4().hex[:6]
    plain = connector.create_user(make_account(user_name=f"o{tag}@example.com", email=f"o{tag}@example.com"))
    hostile_name = f'o{tag}" or userName pr or "@example.com'
    found = connector.find_user(user_name=hostile_name)
    assert found is None or found.id != plain.id


def test_groups_and_membership(target):
    connector, _ = target
    if not connector.supports_groups:
        pytest.skip("this target has no groups")
    a = connector.create_user(make_account())
    b = connector.create_user(make_account())
    name = f"grp-{uuid.uuid4().hex[:6]}"
    group = connector.create_group(name, [a.id])
    assert connector.find_group(name).id == group.id
    connector.add_members(group.id, [b.id])
    assert connector.get_group(group.id).member_ids == {a.id, b.id}
    connector.remove_members(group.id, [a.id])
    assert connector.get_group(group.id).member_ids == {b.id}
    connector.delete_group(group.id)
    assert connector.find_group(name) is None
