"""The Google Workspace connector against the Directory API sandbox, over real HTTP (no mocks)."""

import json
import time
import uuid

import pytest
from google.oauth2 import service_account

from connectors.base import Account, BatchOp
from connectors.errors import (AlreadyExists, AuthFailed, ConfigError, NotFound, RateLimited, Rejected,
                               TransientError)
from connectors.google import SCOPES, GoogleConnector, authorized_session, build, query_value
from models.config import GoogleSettings
from sandbox.faults import FaultPlan
from sandbox.google import SCOPE_USER, GoogleSandbox, parse_query
from targets import google_config

pytestmark = pytest.mark.timeout(60)
USERS_PATH = "/admin/directory/v1/users"
BATCH_PATH = "/batch/admin/directory_v1"


@pytest.fixture
def sandbox():
    with GoogleSandbox(seed=7) as server:
        yield server


def connect(sandbox, dry_run=False, **extra) -> GoogleConnector:
    return build(google_config(sandbox, **extra), dry_run=dry_run)


def account(prefix="u", **kw) -> Account:
    tag = uuid.uuid4().hex[:8]
    values = dict(user_name=f"{prefix}{tag}@example.com", external_id=f"ext-{tag}", given_name="Ada",
                  family_name="Lovelace", email=f"{prefix}{tag}@example.com")
    values.update(kw)
    return Account(**values)


def calls(sandbox, method=None, path=None) -> int:
    return sum(1 for m, p in sandbox.requests if (method is None or m == method) and (path is None or p == path))


# --- authentication ---------------------------------------------------------------------

def test_short_lived_tokens_are_refreshed_before_use():
    with GoogleSandbox(token_lifetime=1) as sandbox:
        connector = connect(sandbox)
        created = connector.create_user(account())
        time.sleep(1.1)
        assert connector.get_user(created.id).id == created.id
        assert sandbox.tokens_issued >= 2


def test_a_401_gets_one_refresh_and_the_call_succeeds(sandbox):
    connector = connect(sandbox)
    created = connector.create_user(account())
    sandbox.revoke_tokens()  # the client still believes its token is good for an hour
    assert connector.get_user(created.id).id == created.id
    assert sandbox.tokens_issued == 2


def test_a_second_401_is_auth_failed_after_exactly_one_refresh():
    with GoogleSandbox(token_lifetime=0, reported_lifetime=3600) as sandbox:
        connector = connect(sandbox)
        with pytest.raises(AuthFailed) as err:
            connector.get_user("someone@example.com")
        assert err.value.status == 401
        assert sandbox.tokens_issued == 2
        assert calls(sandbox, "GET", f"{USERS_PATH}/someone@example.com") == 2


def test_assertion_signed_by_another_key_is_auth_failed(sandbox):
    other = GoogleSandbox()  # never started: only its key is used
    forged = {**sandbox.service_account_info(), "private_key": other.service_account_info()["private_key"]}
    connector = connect(sandbox, key=forged)
    with pytest.raises(AuthFailed, match="invalid_grant"):
        connector.find_user(user_name="a@example.com")
    other.stop()


def test_undelegated_scope_is_auth_failed():
    with GoogleSandbox(delegated_scopes=[SCOPE_USER]) as sandbox:
        connector = connect(sandbox)
        with pytest.raises(AuthFailed, match="unauthorized_client"):
            connector.find_user(user_name="a@example.com")


def test_subject_that_is_not_an_admin_is_auth_failed(sandbox):
    connector = connect(sandbox, google={"admin_email": "someone@example.com"})
    with pytest.raises(AuthFailed, match="invalid_grant"):
        connector.find_user(user_name="a@example.com")


def test_token_without_the_group_scope_is_auth_failed_on_groups(sandbox):
    settings = google_config(sandbox).google
    credentials = service_account.Credentials.from_service_account_info(
        sandbox.service_account_info(), scopes=[SCOPE_USER], subject=sandbox.admins[0])
    connector = GoogleConnector("narrow", settings, authorized_session(credentials, settings))
    assert connector.find_user(user_name="nobody@example.com") is None
    with pytest.raises(AuthFailed, match="insufficientPermissions"):
        connector.find_group("sales")


def test_bad_key_is_config_error_without_its_content(sandbox, monkeypatch):
    cfg = google_config(sandbox)
    monkeypatch.setenv("SANDBOX_GOOGLE_KEY", '{"type": "service_account", "private_key": "SECRET-BITS"')
    with pytest.raises(ConfigError) as err:
        build(cfg)
    assert "SECRET-BITS" not in str(err.value)
    monkeypatch.setenv("SANDBOX_GOOGLE_KEY", json.dumps({**sandbox.service_account_info(),
                                                         "private_key": "SECRET-BITS"}))
    with pytest.raises(ConfigError) as err:
        build(cfg)
    assert "SECRET-BITS" not in str(err.value)
    monkeypatch.setenv("SANDBOX_GOOGLE_KEY", json.dumps({**sandbox.service_account_info(),
                                                         "token_uri": "http://tokens.example.net/token"}))
    with pytest.raises(ConfigError, match="token_uri"):
        build(cfg)


def test_token_calls_share_the_tls_settings(sandbox, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    connector = connect(sandbox, google={"ca_bundle": str(bundle)})
    token_session = connector.session._auth_request.session
    assert connector.session.verify == token_session.verify == str(bundle)
    assert connector.session.trust_env is False and token_session.trust_env is False


# --- errors and rate limits --------------------------------------------------------------

def test_rate_limit_is_rate_limited_then_recovers():
    with GoogleSandbox(rate_limit=5, rate_window=0.5) as sandbox:
        connector = connect(sandbox)
        with pytest.raises(RateLimited) as err:
            for _ in range(10):
                connector.find_user(user_name="nobody@example.com")
        assert err.value.status == 403
        time.sleep(0.6)
        assert connector.find_user(user_name="nobody@example.com") is None


def test_pacing_keeps_under_the_target_rate():
    with GoogleSandbox(rate_limit=10, rate_window=0.5) as sandbox:
        connector = connect(sandbox, requests_per_second=15)
        started = time.monotonic()
        for _ in range(15):
            connector.find_user(user_name="nobody@example.com")
        assert time.monotonic() - started >= 14 / 15 - 0.05


@pytest.mark.parametrize("kind,error", [("5xx", TransientError), ("429", RateLimited), ("drop", TransientError)])
def test_injected_faults_are_translated(kind, error):
    with GoogleSandbox(faults=FaultPlan(rate=1.0, kinds=(kind,), only_methods=("GET",), retry_after=2)) as sandbox:
        connector = connect(sandbox)
        with pytest.raises(error) as err:
            connector.get_user("someone@example.com")
        assert type(err.value) is error
        if kind == "429":
            assert err.value.retry_after == 2


def test_bad_request_names_the_field(sandbox):
    connector = connect(sandbox)
    with pytest.raises(Rejected) as err:
        connector.create_user(account(user_name="x@elsewhere.org"))
    assert err.value.field == "primaryEmail" and err.value.status == 400
    with pytest.raises(Rejected) as err:
        connector.create_user(account(given_name="A" * 61))
    assert err.value.field == "name.givenName"
    with pytest.raises(Rejected) as err:
        connector._request("GET", "users", params={"customer": "my_customer", "maxResults": 501})
    assert err.value.field == "maxResults"


def test_delete_of_a_missing_user_is_tolerated(sandbox):
    connector = connect(sandbox)
    created = connector.create_user(account())
    connector.delete_user(created.id)
    connector.delete_user(created.id)
    with pytest.raises(NotFound):
        connector.get_user(created.id)


def test_created_user_has_defaults_and_no_readable_password(sandbox):
    connector = connect(sandbox)
    created = connector.create_user(account(given_name=None, family_name=None, active=False))
    stored = next(u for u in sandbox.users() if u["id"] == created.id)
    assert stored["name"]["givenName"] == "-" and stored["name"]["familyName"] == "-"
    assert stored["changePasswordAtNextLogin"] is True and "password" not in stored
    assert created.active is False and created.external_id


def test_find_by_external_id_escapes_and_verifies(sandbox):
    connector = connect(sandbox)
    tricky = connector.create_user(account(external_id="o'brien\\x y"))
    plain = connector.create_user(account(external_id="o"))
    assert connector.find_user(external_id="o'brien\\x y").id == tricky.id
    assert connector.find_user(external_id="o").id == plain.id
    assert connector.find_user(external_id="o' or externalId:'o") is None
    assert parse_query("externalId:" + query_value("a'b\\c")) == [("externalId", "a'b\\c")]


def test_update_keeps_other_external_ids_and_never_sends_a_password(sandbox):
    connector = connect(sandbox)
    created = connector.create_user(account())
    updated = connector.update_user(created.id, {"external_id": "new-ext", "display_name": "Countess"}, created)
    assert updated.external_id == "new-ext" and updated.display_name == "Countess"
    assert connector.find_user(external_id="new-ext").id == created.id


@pytest.mark.parametrize("name,ok", [
    ("alice@example.com", True),
    ("o'neil.j_x-1@mail.example.co.uk", True),
    ("a" * 64 + "@example.com", True),
    ("a" * 65 + "@example.com", False),
    ("Alice@example.com", False),
    ("al+ice@example.com", False),
    ("al ice@example.com", False),
    (".alice@example.com", False),
    ("alice.@example.com", False),
    ("al..ice@example.com", False),
    ("postmaster@example.com", False),
    ("alice", False),
    ("alice@", False),
    ("alice@localhost", False),
    ("alice@-bad-.com", False),
    ("a@" + ".".join(["b" * 63] * 5) + ".com", False),
])
def test_check_user_name(name, ok):
    settings = GoogleSettings(service_account_key="env:UNUSED", admin_email="admin@example.com")
    connector = GoogleConnector("google", settings, session=None)
    if ok:
        connector.check_user_name(name)
    else:
        with pytest.raises(Rejected) as err:
            connector.check_user_name(name)
        assert err.value.field == "primaryEmail"


# --- batches and pages -------------------------------------------------------------------

def test_batch_of_1500_creates_is_two_requests(sandbox):
    connector = connect(sandbox)
    ops = [BatchOp("create", account=account("b")) for _ in range(1500)]
    results = connector.apply_batch(ops)
    assert calls(sandbox, "POST", BATCH_PATH) == 2
    assert calls(sandbox, "POST", "/token") == 1 and len(sandbox.requests) == 3
    assert [r.user_name for r in results] == [op.account.user_name for op in ops]  # answers come shuffled
    assert all(r.id for r in results) and len(sandbox.users()) == 1500


def test_batch_maps_each_answer(sandbox):
    connector = connect(sandbox)
    existing = connector.create_user(account())
    gone = connector.create_user(account())
    connector.delete_user(gone.id)
    results = connector.apply_batch([
        BatchOp("create", account=account(user_name=existing.user_name)),
        BatchOp("create", account=account(user_name="x@elsewhere.org")),
        BatchOp("update", remote_id=existing.id, changes={"family_name": "Byron"}),
        BatchOp("disable", remote_id=existing.id),
        BatchOp("delete", remote_id=gone.id),
        BatchOp("update", remote_id=gone.id, changes={"family_name": "Byron"}),
        BatchOp("rename"),
    ])
    assert isinstance(results[0], AlreadyExists)
    assert isinstance(results[1], Rejected) and results[1].field == "primaryEmail"
    assert results[2].family_name == "Byron"
    assert results[3] is None and connector.get_user(existing.id).active is False
    assert results[4] is None
    assert isinstance(results[5], NotFound)
    assert isinstance(results[6], Rejected)
    assert calls(sandbox, "POST", BATCH_PATH) == 1


def test_listing_1100_users_takes_three_pages(sandbox):
    connector = connect(sandbox)
    connector.apply_batch([BatchOp("create", account=account("p")) for _ in range(1100)])
    before = calls(sandbox, "GET", USERS_PATH)
    listed = list(connector.iter_users())
    assert len(listed) == 1100 and len({a.id for a in listed}) == 1100
    assert calls(sandbox, "GET", USERS_PATH) - before == 3


def test_groups_members_in_batches_and_pages(sandbox):
    connector = connect(sandbox)
    users = connector.apply_batch([BatchOp("create", account=account("g")) for _ in range(250)])
    ids = [u.id for u in users]
    group = connector.create_group("Sales EMEA", ids[:1])
    assert connector.find_group("Sales EMEA").id == group.id
    assert connector.find_group("sales-emea@example.com").id == group.id
    batches = calls(sandbox, "POST", BATCH_PATH)
    connector.add_members(group.id, ids)  # the first is already a member: fine
    assert calls(sandbox, "POST", BATCH_PATH) == batches + 1
    members_path = f"/admin/directory/v1/groups/{group.id}/members"
    before = calls(sandbox, "GET", members_path)
    assert connector.get_group(group.id).member_ids == set(ids)
    assert calls(sandbox, "GET", members_path) - before == 2  # 200 a page
    connector.remove_members(group.id, ids[:10] + ids[:1])
    assert connector.get_group(group.id).member_ids == set(ids[10:])
    connector.remove_members(group.id, [ids[0]])  # already gone: fine
    assert [g.id for g in connector.iter_groups()] == [group.id]
    connector.delete_group(group.id)
    connector.delete_group(group.id)
    assert connector.find_group("Sales EMEA") is None


# --- dry run ----------------------------------------------------------------------------

def test_dry_run_sends_no_mutating_request(sandbox):
    from connectors.errors import DryRunRejected

    real = connect(sandbox)
    existing = real.create_user(account())
    connector = connect(sandbox, dry_run=True)
    before = len(sandbox.requests)
    with pytest.raises(DryRunRejected) as refused:
        connector.create_user(account())
    assert (refused.value.method, refused.value.path) == ("POST", "users")
    assert refused.value.body["password"] == "***"  # the generated password is not carried
    with pytest.raises(DryRunRejected, match=f"PATCH users/{existing.id}"):
        connector.update_user(existing.id, {"family_name": "Byron"}, existing)
    for call in (lambda: connector.disable_user(existing.id), lambda: connector.delete_user(existing.id),
                 lambda: connector.create_group("dry", [existing.id])):
        with pytest.raises(DryRunRejected):
            call()
    results = connector.apply_batch([BatchOp("create", account=account()), BatchOp("delete", remote_id=existing.id)])
    assert all(isinstance(r, DryRunRejected) for r in results)
    assert '"password": "***"' in results[0].body  # a batch body, as text, without the password
    assert connector.find_user(user_name=existing.user_name).id == existing.id
    sent = sandbox.requests[before:]
    assert all(method in ("GET",) or path == "/token" for method, path in sent), sent
    assert real.get_user(existing.id).family_name == "Lovelace"
