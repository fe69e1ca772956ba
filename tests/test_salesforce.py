"""The Salesforce connector against the HTTPS Salesforce sandbox (no mocks)."""

import uuid
from dataclasses import replace

import pytest
import requests

from connectors.base import Account, BatchOp, differences
from connectors.errors import AlreadyExists, AuthFailed, ConfigError, NotFound, RateLimited, Rejected, TransientError
from connectors.factory import clear_cache
from connectors.salesforce import build, freed_username, make_alias, soql_quote
from sandbox.faults import FaultPlan
from sandbox.salesforce import SalesforceSandbox, rsa_key_pem, soql_tokens
from targets import salesforce_config


@pytest.fixture(scope="module")
def sandbox():
    with SalesforceSandbox(query_batch_size=50) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _reset(sandbox):
    yield
    sandbox.api_limit = None
    sandbox.refuse_logins = False
    sandbox.faults.plan = FaultPlan()
    clear_cache()


def connect(sandbox, **kw):
    """A fresh connector (not the factory's cached one) for the sandbox."""
    return build(salesforce_config(sandbox, **kw))


@pytest.fixture
def sf(sandbox):
    return connect(sandbox)


def account(prefix="u", **kw) -> Account:
    tag = uuid.uuid4().hex[:8]
    values = dict(user_name=f"{prefix}{tag}@example.com", external_id=f"ext-{tag}", given_name="Grace",
                  family_name="Hopper", display_name="Grace Hopper", email=f"{prefix}{tag}@example.com")
    values.update(kw)
    return Account(**values)


def sandbox_session(sandbox) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
    session.verify = sandbox.ca_file
    return session


# --- helpers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["plain", "o'brien", "back\\slash", "a\\'b", "' OR Username LIKE '%",
                                   "line\nbreak\r\ttab", "zoë 日本", "\b\f\x01", 'dq"x', "100%_done"])
def test_soql_quote_round_trips_through_the_sandbox_parser(value):
    quoted = soql_quote(value)
    assert soql_tokens(quoted) == [("str", value)]


def test_soql_quote_escapes():
    assert soql_quote("o'b\\r") == "'o\\'b\\\\r'"
    assert soql_quote("a\nb") == "'a\\nb'"


def test_alias_and_freed_username():
    assert make_alias("Zoë", "Ångström-Lindqvist", "x@example.com") == "zangstro"
    assert make_alias(None, None, "jo.doe@example.com") == "jodoe"
    assert len(make_alias("A", "B" * 20, "x@y.z")) <= 8
    long = "a" * 60 + "@example.com"
    freed = freed_username(long, "005000000000123AAA")
    assert freed.startswith("deprovisioned-") and freed.endswith("@example.com") and len(freed) <= 80
    assert freed_username(freed, "005000000000123AAA") == freed


def test_check_user_name(sf):
    sf.check_user_name("ok@example.com")
    with pytest.raises(Rejected, match="email"):
        sf.check_user_name("not-an-email")
    with pytest.raises(Rejected, match="80"):
        sf.check_user_name("a" * 75 + "@example.com")


# --- authentication ------------------------------------------------------------------------

def test_jwt_password_and_client_credentials(sandbox, monkeypatch):
    monkeypatch.setenv("SF_TEST_SECRET", sandbox.client_secret)
    monkeypatch.setenv("SF_TEST_PASSWORD", sandbox.password)
    monkeypatch.setenv("SF_TEST_TOKEN", sandbox.security_token)
    auths = [
        None,  # jwt
        {"type": "password", "client_id": sandbox.client_id, "client_secret": "env:SF_TEST_SECRET",
         "username": sandbox.username, "password": "env:SF_TEST_PASSWORD", "security_token": "env:SF_TEST_TOKEN"},
        {"type": "client_credentials", "client_id": sandbox.client_id, "client_secret": "env:SF_TEST_SECRET"},
    ]
    for auth in auths:
        connector = connect(sandbox, auth=auth)
        created = connector.create_user(account())
        assert connector.get_user(created.id).user_name == created.user_name


def test_wrong_key_and_wrong_secret_are_auth_failed(sandbox, tmp_path, monkeypatch):
    other_key, _ = rsa_key_pem()
    (tmp_path / "other.key").write_text(other_key)
    bad_jwt = {"type": "jwt", "client_id": sandbox.client_id, "username": sandbox.username,
               "private_key": f"file:{tmp_path / 'other.key'}"}
    with pytest.raises(AuthFailed, match="invalid_grant"):
        connect(sandbox, auth=bad_jwt).find_user(user_name="x@example.com")
    monkeypatch.setenv("SF_WRONG_SECRET", "not-the-secret-1234")
    bad_secret = {"type": "client_credentials", "client_id": sandbox.client_id, "client_secret": "env:SF_WRONG_SECRET"}
    with pytest.raises(AuthFailed, match="invalid_client") as caught:
        connect(sandbox, auth=bad_secret).find_user(user_name="x@example.com")
    assert "not-the-secret-1234" not in str(caught.value)
    monkeypatch.setenv("SF_WRONG_PASSWORD", "hunter2-wrong")
    monkeypatch.setenv("SF_TEST_SECRET", sandbox.client_secret)
    bad_password = {"type": "password", "client_id": sandbox.client_id, "client_secret": "env:SF_TEST_SECRET",
                    "username": sandbox.username, "password": "env:SF_WRONG_PASSWORD"}
    with pytest.raises(AuthFailed, match="authentication failure") as caught:
        connect(sandbox, auth=bad_password).iter_users().__next__()
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value.__cause__)


def test_jwt_audience_must_be_a_login_server(sandbox):
    auth = {"type": "jwt", "client_id": sandbox.client_id, "username": sandbox.username,
            "private_key": f"file:{sandbox.private_key_file}", "audience": "https://evil.example.com"}
    with pytest.raises(AuthFailed, match="audience"):
        connect(sandbox, auth=auth).find_user(user_name="x@example.com")


def test_expired_session_is_renewed_once(sandbox, sf):
    created = sf.create_user(account())
    before = sf.tokens.fetched
    sandbox.expire_tokens()
    assert sf.get_user(created.id).id == created.id
    assert sf.tokens.fetched == before + 1
    sandbox.expire_tokens()  # mid-listing too
    assert any(a.id == created.id for a in sf.iter_users())
    sandbox.expire_tokens()
    sandbox.refuse_logins = True
    with pytest.raises(AuthFailed, match="authentication failure"):
        sf.get_user(created.id)


# --- users ----------------------------------------------------------------------------------

def test_create_sends_required_fields_and_maps_back(sandbox):
    sf = connect(sandbox, field_map={"Department": "department"}, profile="Read Only")
    acct = account(extra={"Department": "R&D"}, given_name="Zoë", family_name="Ångström", display_name="Zoë Ångström")
    created = sf.create_user(acct)
    record = sandbox.users[created.id]
    assert record["Alias"] == "zangstro" and record["TimeZoneSidKey"] == "America/Los_Angeles"
    assert sandbox.profiles[record["ProfileId"]]["Name"] == "Read Only"
    assert record["FederationIdentifier"] == acct.external_id and record["Department"] == "R&D"
    got = sf.get_user(created.id)
    assert got.extra == {"Department": "R&D"} and got.display_name == "Zoë Ångström"
    assert differences(acct, got) == {}
    # Name is computed by Salesforce: a display name that differs is drift the connector cannot close.
    assert "display_name" in sf.capabilities.read_only_attributes
    assert differences(replace(acct, display_name="Dr. Z"), got) == {"display_name": "Dr. Z"}
    updated = sf.update_user(created.id, {"extra.Department": "Ops", "display_name": "ignored"}, got)
    assert sandbox.users[created.id]["Department"] == "Ops" and updated.extra["Department"] == "Ops"


def test_profile_is_looked_up_once_and_unknown_profile_is_config_error(sandbox):
    sf = connect(sandbox)
    sf.create_user(account())
    queries = len([r for r in sandbox.requests if r[1].endswith("/query")])
    sf.create_user(account())
    assert len([r for r in sandbox.requests if r[1].endswith("/query")]) == queries
    with pytest.raises(ConfigError, match="Nope"):
        connect(sandbox, profile="Nope").create_user(account())


def test_user_name_without_family_name(sf, sandbox):
    created = sf.create_user(Account(user_name=f"solo{uuid.uuid4().hex[:6]}@example.com"))
    assert sandbox.users[created.id]["LastName"] == created.user_name.split("@")[0]
    assert sandbox.users[created.id]["Email"] == created.user_name


def test_delete_deactivates(sf, sandbox):
    created = sf.create_user(account())
    sf.delete_user(created.id)
    got = sf.get_user(created.id)
    assert got.active is False and got.user_name == created.user_name
    with pytest.raises(Rejected, match="METHOD_NOT_ALLOWED"):  # what Salesforce answers to a DELETE
        sf._json_call("raw delete", "DELETE", f"sobjects/User/{created.id}")


def test_free_username_on_deprovision(sandbox):
    sf = connect(sandbox, free_username_on_deprovision=True)
    created = sf.create_user(account())
    sf.delete_user(created.id)
    got = sf.get_user(created.id)
    assert got.active is False and got.user_name.startswith("deprovisioned-")
    assert got.user_name.endswith("@example.com") and len(got.user_name) <= 80
    again = sf.create_user(account(user_name=created.user_name))  # the name is free again
    assert again.id != created.id


def test_reactivation(sf):
    acct = account()
    created = sf.create_user(acct)
    sf.disable_user(created.id)
    found = sf.find_user(external_id=acct.external_id)
    assert found.id == created.id and found.active is False
    assert sf.find_user(user_name=acct.user_name.upper()).id == created.id
    sf.enable_user(created.id)
    assert sf.get_user(created.id).active is True


def test_username_taken_in_another_org_vs_this_org(sf, sandbox):
    elsewhere = account()
    sandbox.taken_elsewhere.add(elsewhere.user_name)
    with pytest.raises(Rejected, match="taken in another Salesforce org") as caught:
        sf.create_user(elsewhere)
    assert caught.value.field == "Username"
    mine = sf.create_user(account())
    with pytest.raises(AlreadyExists):
        sf.create_user(account(user_name=mine.user_name))
    other = sf.create_user(account())
    with pytest.raises(AlreadyExists):
        sf.update_user(other.id, {"user_name": mine.user_name}, other)


def test_soql_escaping_finds_only_the_right_account(sf):
    tag = uuid.uuid4().hex[:6]
    names = [f"o'brien{tag}@example.com", f"back\\slash{tag}@example.com", f"zoë{tag}@exämple.com",
             f"pct%{tag}@example.com", f"dq\"{tag}@example.com"]
    made = {n: sf.create_user(account(user_name=n, email=f"m{i}{tag}@example.com",
                                      external_id=f"x'{i}\\{tag}\n")).id for i, n in enumerate(names)}
    for i, (name, remote_id) in enumerate(made.items()):
        assert sf.find_user(user_name=name).id == remote_id
        assert sf.find_user(external_id=f"x'{i}\\{tag}\n").id == remote_id
    assert sf.find_user(user_name="' OR Username LIKE '%") is None
    assert sf.find_user(user_name=f"x' OR Username LIKE '%{tag}%") is None
    assert sf.find_user(external_id="' OR FederationIdentifier != '") is None
    assert sf.find_user(user_name=f"pct_{tag}@example.com") is None


def test_required_and_invalid_fields_are_rejected_naming_the_field(sandbox):
    sf = connect(sandbox, defaults={"LocaleSidKey": "en_US", "EmailEncodingKey": "UTF-8", "LanguageLocaleKey": "en_US"})
    with pytest.raises(Rejected, match="REQUIRED_FIELD_MISSING") as caught:
        sf.create_user(account())
    assert caught.value.field == "TimeZoneSidKey"
    sf = connect(sandbox, field_map={"Nonexistent__c": "x"})
    with pytest.raises(Rejected, match="INVALID_FIELD") as caught:
        sf.create_user(account(extra={"Nonexistent__c": "v"}))
    assert caught.value.field == "Nonexistent__c"
    sf = connect(sandbox)
    with pytest.raises(Rejected) as caught:
        sf.create_user(account(email="not an email"))
    assert caught.value.field == "Email"
    with pytest.raises(Rejected) as caught:
        sf.create_user(account(user_name="no-at-sign"))
    assert caught.value.field == "Username"


def test_not_found(sf):
    with pytest.raises(NotFound):
        sf.get_user("005000000099999AAA")
    with pytest.raises(NotFound):
        sf.disable_user("../../etc")


def test_request_limit_is_rate_limited(sandbox, sf):
    sf.find_user(user_name="warm@example.com")
    sandbox.api_limit = sandbox.api_calls
    with pytest.raises(RateLimited, match="REQUEST_LIMIT_EXCEEDED"):
        sf.find_user(user_name="x@example.com")
    results = sf.apply_batch([BatchOp("create", account=account())])
    assert isinstance(results[0], RateLimited)


def test_server_errors_are_transient(sandbox, sf):
    sf.find_user(user_name="warm@example.com")
    sandbox.faults.plan = FaultPlan(rate=1.0, kinds=("5xx",))
    with pytest.raises(TransientError):
        sf.find_user(user_name="x@example.com")
    sandbox.faults.plan = FaultPlan(rate=1.0, kinds=("429",), retry_after=7)
    with pytest.raises(RateLimited) as caught:
        sf.create_user(account())
    assert caught.value.retry_after == 7


def test_iter_users_pages_and_skips_non_standard_users(sandbox, sf):
    for _ in range(3):
        sf.create_user(account())
    before = len(sandbox.requests)
    listed = list(sf.iter_users())
    pages = [r for r in sandbox.requests[before:] if "/query" in r[1]]
    assert len(pages) == -(-len([u for u in sandbox.users.values() if u["UserType"] == "Standard"]) // 50)
    assert all(not a.user_name.startswith("autoproc@") for a in listed)
    assert len({a.id for a in listed}) == len(listed)


def test_dry_run_sends_nothing_mutating(sandbox):
    from connectors.errors import DryRunRejected

    sf = build(salesforce_config(sandbox), dry_run=True)
    before, sent = len(sandbox.users), len(sandbox.requests)
    with pytest.raises(DryRunRejected) as refused:
        sf.create_user(account())
    assert (refused.value.method, refused.value.path) == ("POST", "sobjects/User")
    with pytest.raises(DryRunRejected, match="PATCH sobjects/User/005000000000001AAA"):
        sf.disable_user("005000000000001AAA")
    results = sf.apply_batch([BatchOp("create", account=account()), BatchOp("disable", remote_id="005000000000001AAA")])
    assert all(isinstance(r, DryRunRejected) for r in results)
    assert len(sandbox.users) == before
    assert not [(m, p) for m, p in sandbox.requests[sent:] if m != "GET" and not p.endswith("/oauth2/token")]


# --- batches --------------------------------------------------------------------------------

def test_batch_of_450_creates_is_three_collection_requests(sandbox, sf):
    sf.profile_id()
    sf._table("Profile")
    accounts = [account("b") for _ in range(450)]
    before = len(sandbox.requests)
    results = sf.apply_batch([BatchOp("create", account=a) for a in accounts])
    sent = sandbox.requests[before:]
    assert [m for m, p in sent if p.endswith("/composite/sobjects")] == ["POST"] * 3
    assert len(sent) == 4  # and one query of UserLicense: the free licences, before any create is sent
    assert all(isinstance(r, Account) and r.id for r in results)
    assert [r.user_name for r in results] == [a.user_name for a in accounts]


def test_batch_mixed_results_align_with_ops(sandbox, sf):
    existing = sf.create_user(account())
    elsewhere = account()
    sandbox.taken_elsewhere.add(elsewhere.user_name)
    fresh = account()
    ops = [BatchOp("create", account=fresh),
           BatchOp("create", account=account(user_name=existing.user_name)),
           BatchOp("create", account=elsewhere),
           BatchOp("create", account=account(email="bad email")),
           BatchOp("update", remote_id=existing.id, changes={"family_name": "Byron"}),
           BatchOp("disable", remote_id=existing.id),
           BatchOp("update", remote_id="005000000099999AAA", changes={"family_name": "X"})]
    results = sf.apply_batch(ops)
    assert isinstance(results[0], Account) and results[0].id
    assert isinstance(results[1], AlreadyExists)
    assert isinstance(results[2], Rejected) and "another Salesforce org" in str(results[2])
    assert isinstance(results[3], Rejected) and results[3].field == "Email"
    assert isinstance(results[4], Account) and results[4].family_name == "Byron"
    assert results[5] is None and sandbox.users[existing.id]["IsActive"] is False
    assert isinstance(results[6], NotFound)


def test_batch_updates_of_250_are_two_patch_requests(sandbox, sf):
    made = sf.apply_batch([BatchOp("create", account=account("p")) for _ in range(250)])
    before = len(sandbox.requests)
    results = sf.apply_batch([BatchOp("disable", remote_id=a.id) for a in made])
    sent = sandbox.requests[before:]
    assert [m for m, p in sent if p.endswith("/composite/sobjects")] == ["PATCH", "PATCH"]
    assert results == [None] * 250
    assert not any(sandbox.users[a.id]["IsActive"] for a in made)


def test_raw_sandbox_speaks_oauth_errors_like_salesforce(sandbox):
    session = sandbox_session(sandbox)
    answer = session.post(f"{sandbox.url}/services/oauth2/token",
                          data={"grant_type": "password", "client_id": "nope", "client_secret": "x"})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_client_id"
    answer = session.get(f"{sandbox.url}/services/data/v62.0/query", params={"q": "SELECT Id FROM User"},
                         headers={"Authorization": "Bearer expired"})
    assert answer.status_code == 401 and answer.json()[0]["errorCode"] == "INVALID_SESSION_ID"


def test_session_expiring_between_pages_renews_and_lists_each_user_once(sandbox, sf):
    for _ in range(60 - len(sandbox.users) if len(sandbox.users) < 60 else 0):
        sf.create_user(account())
    listing = sf.iter_users()
    first = next(listing)
    sandbox.expire_tokens()  # the next page (nextRecordsUrl) meets INVALID_SESSION_ID
    rest = list(listing)
    ids = [first.id, *(a.id for a in rest)]
    assert len(ids) == len(set(ids)) == len([u for u in sandbox.users.values() if u["UserType"] == "Standard"])


def test_the_sandbox_would_expose_an_unescaped_injection(sf):
    # The hostile-value test above means something only if the sandbox evaluates LIKE and OR.
    rows = list(sf._query("SELECT Id FROM User WHERE Username = 'nobody' OR Username LIKE '%'"))
    assert len(rows) > 2
