"""One contract suite, run against every connector's real (sandbox) server."""

import copy
import uuid

import pytest

from connectors.base import Account, BatchOp, Capabilities, differences
from connectors.errors import AlreadyExists, DryRunRejected, NotFound, RateLimited
from sandbox.faults import FaultPlan
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
    if not connector.capabilities.deletes_users:
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
    if not connector.capabilities.groups:
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


# --- what every connector declares, batches, pacing and dry-run ------------------------------

def test_capabilities_are_declared_not_probed(target):
    connector, _ = target
    caps = connector.capabilities
    assert isinstance(caps, Capabilities) and isinstance(caps.read_only_attributes, tuple)
    if not caps.groups:  # no group calls to trip over: callers read the capability
        assert not hasattr(connector, "create_group") and not hasattr(connector, "iter_groups")
    assert hasattr(connector, "use_profile") == caps.uses_profile  # the factory reads the capability


def test_apply_batch_creates_updates_and_disables(target):
    connector, _ = target
    accounts = [make_account("batch") for _ in range(3)]
    created = connector.apply_batch([BatchOp("create", account=a) for a in accounts], max_workers=2)
    assert all(isinstance(r, Account) and r.id for r in created), created
    assert [r.user_name for r in created] == [a.user_name for a in accounts]
    results = connector.apply_batch([BatchOp("update", remote_id=created[0].id, changes={"family_name": "Byron"}),
                                     BatchOp("disable", remote_id=created[1].id)], max_workers=2)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert connector.get_user(created[0].id).family_name == "Byron"
    assert connector.get_user(created[1].id).active is False
    assert connector.get_user(created[2].id).active is True


def test_a_429_in_a_batch_is_rate_limited_with_its_retry_after(target):
    connector, sandbox = target
    connector.find_user(user_name="warm-up@example.com")  # signed in: the token is not what is refused
    usual = sandbox.faults.plan
    sandbox.faults.plan = FaultPlan(rate=1.0, kinds=("429",), retry_after=7, only_methods=("POST", "PATCH"))
    try:
        results = connector.apply_batch([BatchOp("create", account=make_account("slow"))], max_workers=1)
    finally:
        sandbox.faults.plan = usual
    (error,) = results
    assert isinstance(error, RateLimited) and error.retry_after == 7 and error.status == 429, error


def test_dry_run_refuses_every_write_naming_method_and_path(target):
    connector, sandbox = target
    existing = connector.create_user(make_account("dry"))
    dry = copy.copy(connector)  # the same connector, session and all, in dry-run
    dry.dry_run = True
    sent = len(sandbox.requests)
    writes = [lambda: dry.create_user(make_account("dry")),
              lambda: dry.update_user(existing.id, {"family_name": "Byron"}, existing),
              lambda: dry.disable_user(existing.id), lambda: dry.delete_user(existing.id)]
    if dry.capabilities.groups:
        writes.append(lambda: dry.create_group(f"dry-{uuid.uuid4().hex[:6]}", [existing.id]))
    for write in writes:
        with pytest.raises(DryRunRejected) as refused:
            write()
        error = refused.value
        assert error.method in ("POST", "PUT", "PATCH", "DELETE") and error.path
        assert f"{error.method} {error.path}" in str(error)
    results = dry.apply_batch([BatchOp("create", account=make_account("dry")),
                               BatchOp("disable", remote_id=existing.id)])
    assert all(isinstance(r, DryRunRejected) for r in results), results
    assert dry.find_user(external_id=existing.external_id).id == existing.id  # reads go through
    assert [(m, p) for m, p in sandbox.requests[sent:] if m != "GET" and "token" not in p] == []
    assert connector.get_user(existing.id).family_name == "Lovelace" and connector.get_user(existing.id).active


def test_a_429_from_any_token_endpoint_is_rate_limited_and_a_refusal_is_auth_failed():
    """One token rule: the endpoint pacing us (429) passes with its Retry-After; refused credentials stop."""
    import requests

    from connectors.auth import ClientCredentials
    from connectors.errors import AuthFailed
    from connectors.factory import get_connector
    from sandbox.google import GoogleSandbox
    from sandbox.salesforce import SalesforceSandbox
    from targets import google_config, salesforce_config

    slow = FaultPlan(rate=1.0, kinds=("429",), retry_after=9, only_paths=("token",))
    with SalesforceSandbox() as sf_box, GoogleSandbox() as google_box:
        sf_box.faults.plan, google_box.faults.plan = slow, slow
        session = requests.Session()
        session.trust_env, session.verify = False, sf_box.ca_file
        scim_oauth = ClientCredentials(f"{sf_box.url}/services/oauth2/token", "outbound", "s3cret", None, session)
        for login in (scim_oauth.refresh,
                      lambda: get_connector(salesforce_config(sf_box)).find_user(user_name="a@example.com"),
                      lambda: get_connector(google_config(google_box)).find_user(user_name="a@example.com")):
            with pytest.raises(RateLimited) as paced:
                login()
            assert paced.value.retry_after == 9 and paced.value.status == 429
        sf_box.faults.plan = FaultPlan()
        with pytest.raises(AuthFailed):  # the Salesforce login server refuses an unknown client: invalid_client
            scim_oauth.refresh()
