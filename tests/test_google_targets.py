"""Google org units and licences by rule, against the Directory and Licensing API sandbox over real HTTP."""

import pytest
from typer.testing import CliRunner

from connectors.base import Account
from connectors.errors import Rejected
from connectors.factory import clear_cache, get_connector
from connectors.probe import check as probe
from deployments.cli import app
from models.config import load_config, parse_config
from models.validation import InvalidInput
from sandbox.google import SCOPE_DOMAIN_RO, SCOPE_GROUP, SCOPE_USER, GoogleSandbox
from sandbox.google_workspace import SCOPE_ORGUNIT
from helpers import reconcile, store_user as user, write_connector_config
from targets import google_config

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()
SKU = "Google-Apps/1010020027"
VAULT = "Google-Vault/Google-Vault"
ORG_UNIT = {"rules": [{"roles": ["admins"], "value": "/IT/Admins"},
                      {"attribute": "dept", "equals": ["Sales", "Presales"], "value": "/Sales"}],
            "default": "/Staff"}
LICENCES = [{"roles": ["staff"], "product": "Google-Apps", "sku": 1010020027},
            {"roles": ["legal"], "product": "Google-Vault", "sku": "Google-Vault"}]


def scoped(google, *scopes):
    """An authorized session with just `scopes` (the connector's token has no org unit scope)."""
    from google.oauth2 import service_account

    from connectors.google import authorized_session

    creds = service_account.Credentials.from_service_account_info(
        google.service_account_info(), scopes=list(scopes), subject=google.admins[0])
    return authorized_session(creds, google_config(google).google)


def write(tmp_path, google, **google_settings) -> str:
    return write_connector_config(tmp_path, google_config(google, name="gws", google=google_settings)
                                  .model_dump(mode="json", exclude_unset=True))


def units(google) -> dict[str, str]:
    return {u["primaryEmail"].split("@")[0]: u["orgUnitPath"] for u in google.users()}


def held(google) -> dict[str, set[str]]:
    by_id = {u["id"]: u["primaryEmail"].split("@")[0] for u in google.users()}
    out: dict[str, set[str]] = {name: set() for name in by_id.values()}
    for key in google.licensing.seats:
        for uid in google.licensing.holders(key):
            out[by_id[uid]].add(key)
    return out


# --- configuration ------------------------------------------------------------------------

def _config(**google):
    return {"tenant_domain": "example.com", "connectors": [{
        "name": "gws", "type": "google",
        "google": {"service_account_key": "env:X", "admin_email": "admin@example.com", **google}}]}


@pytest.mark.parametrize("google, expected", [
    ({"org_unit": {"rules": [{"roles": ["a"], "attribute": "dept", "value": "/X"}]}}, "either roles"),
    ({"org_unit": {"rules": [{"value": "/X"}]}}, "neither"),
    ({"org_unit": {"rules": [{"roles": ["a"], "value": "/X", "when": 1}]}}, "when"),
    ({"org_unit": {"default": "Sales"}}, "'Sales' is not an org unit path"),
    ({"org_unit": {}}, "give rules"),
    ({"org_unit": {"rules": [{"attribute": "dept", "value": "/D/{attributes.dept|shout}"}]}}, "unknown filter"),
    ({"licences": [{"roles": ["a"], "product": "P", "sku": "S"}, {"roles": ["b"], "product": "P", "sku": "S"}]},
     "P/S is listed more than once"),
    ({"licences": [{"roles": ["a"], "product": "P"}]}, "sku"),
])
def test_bad_rules_are_refused_at_load_naming_the_field(google, expected):
    with pytest.raises(InvalidInput) as err:
        parse_config(_config(**google))
    assert expected in str(err.value)
    assert "connectors[0].google" in str(err.value)


def test_org_unit_in_attributes_and_in_rules_is_refused():
    data = _config(org_unit={"default": "/Staff"})
    data["connectors"][0]["attributes"] = {"orgUnitPath": "attributes.ou"}
    with pytest.raises(InvalidInput, match="also set by google.org_unit"):
        parse_config(data)


# --- the sandbox: org units and licences as Google has them ---------------------------------

def test_sandbox_lists_org_units_and_refuses_a_user_in_a_missing_one():
    with GoogleSandbox(org_units=["/Sales", "/IT/Admins"]) as google:
        connector = get_connector(google_config(google, google={"org_unit": {"default": "/Sales"}}))
        session = scoped(google, SCOPE_ORGUNIT + ".readonly")
        url = google.url + "/admin/directory/v1/customer/my_customer/orgunits"
        body = session.get(url, params={"type": "all"}).json()
        assert sorted(u["orgUnitPath"] for u in body["organizationUnits"]) == ["/IT", "/IT/Admins", "/Sales"]
        children = session.get(url).json()
        assert session.post(url, json={"name": "X", "parentOrgUnitPath": "/"}).status_code == 403  # read-only
        assert connector.session.get(url).status_code == 403  # the connector's token: no org unit scope
        assert sorted(u["orgUnitPath"] for u in children["organizationUnits"]) == ["/IT", "/Sales"]
        with pytest.raises(Rejected, match="INVALID_OU_ID"):
            connector.create_user(Account(user_name="ann@example.com", given_name="A", family_name="B",
                                          extra={"orgUnitPath": "/Nowhere"}))
        assert google.users() == []
        made = connector.create_user(Account(user_name="ann@example.com", given_name="A", family_name="B",
                                             extra={"orgUnitPath": "/IT/Admins"}))
        assert made.extra["orgUnitPath"] == "/IT/Admins"
        with pytest.raises(Rejected, match="INVALID_OU_ID"):
            connector.update_user(made.id, {"extra.orgUnitPath": "/it/admins"}, made)  # paths are exact
        clear_cache()


def test_sandbox_licences_have_seats_and_google_errors():
    with GoogleSandbox(licences={SKU: 1}) as google:
        connector = get_connector(google_config(google, google={"licences": LICENCES[:1]}))
        a = connector.create_user(Account(user_name="a@example.com", given_name="A", family_name="B",
                                          extra={"licences": SKU}))
        assert a.extra["licences"] == SKU and connector.get_user(a.id).extra["licences"] == SKU
        path = "/apps/licensing/v1/product/Google-Apps/sku/1010020027/user"
        base = google.url
        session = connector.session
        again = session.post(base + path, json={"userId": "a@example.com"})
        assert again.status_code == 409
        b = connector.create_user(Account(user_name="b@example.com", given_name="B", family_name="B"))
        full = session.post(base + path, json={"userId": "b@example.com"})
        assert full.status_code == 412 and "User limit exceeded" in full.json()["error"]["message"]
        unknown = session.post(base + "/apps/licensing/v1/product/Google-Apps/sku/nope/user",
                               json={"userId": "b@example.com"})
        assert unknown.status_code == 400 and "skuId" in unknown.json()["error"]["message"]
        assert session.get(base + path + "/b@example.com").status_code == 404
        listing = session.get(base + "/apps/licensing/v1/product/Google-Apps/sku/1010020027/users",
                              params={"customerId": "example.com"}).json()
        assert [i["userId"] for i in listing["items"]] == ["a@example.com"]
        assert session.get(base + "/apps/licensing/v1/product/Google-Apps/sku/1010020027/users",
                           params={"customerId": "someone-else"}).status_code == 400
        connector.delete_user(a.id)  # a deleted user's seat is free again
        assert google.licensing.holders(SKU) == set()
        assert connector.update_user(b.id, {"extra.licences": SKU}, b).extra["licences"] == SKU
        clear_cache()


def test_a_token_without_the_licensing_scope_is_refused_by_the_licensing_api():
    with GoogleSandbox(licences={SKU: 5}) as google:
        session = scoped(google, SCOPE_USER)
        answer = session.get(google.url + "/apps/licensing/v1/product/Google-Apps/sku/1010020027/users",
                             params={"customerId": "example.com"})
        assert answer.status_code == 403 and "insufficient" in answer.text


# --- end to end: reconciliation, drift, explain ---------------------------------------------

@pytest.fixture
def google():
    with GoogleSandbox(org_units=["/Sales", "/IT/Admins", "/Staff"], licences={SKU: 2, VAULT: 5}) as server:
        yield server
    clear_cache()


def test_org_units_by_rule_are_set_on_create_moved_on_change_and_drift_is_fixed(tmp_path, sqlite_url, google):
    config = write(tmp_path, google, org_unit=ORG_UNIT)
    user("ann", roles=["admins"], dept="Sales")  # the first rule wins over the second
    user("bob", dept="presales")                 # attribute values compare without case
    user("cid", dept="Ops")                      # no rule: the default
    reconcile(config)
    assert units(google) == {"ann": "/IT/Admins", "bob": "/Sales", "cid": "/Staff"}
    assert "nothing to do" in reconcile(config, "--dry-run")

    user("cid", dept="Sales")  # the rule's answer changes: the account moves
    out = reconcile(config, "--dry-run")
    assert "update 1" in out and units(google)["cid"] == "/Staff"
    reconcile(config)
    assert units(google)["cid"] == "/Sales"

    gws = get_connector(load_config(config).connector("gws"))  # moved in Google: drift, put back
    bob = next(a for a in gws.iter_users() if a.user_name.startswith("bob"))
    gws.update_user(bob.id, {"extra.orgUnitPath": "/IT"}, bob)
    reconcile(config)
    assert units(google)["bob"] == "/Sales"
    assert "nothing to do" in reconcile(config, "--dry-run")

    explained = runner.invoke(app, ["explain", "ann", "--config", config])
    assert "orgUnitPath ← google.org_unit rule 1 (role admins) = '/IT/Admins'" in explained.output, explained.output


def test_a_missing_org_unit_fails_that_user_only_naming_it(tmp_path, sqlite_url, google):
    rules = {"rules": [{"attribute": "dept", "value": "/Departments/{attributes.dept}"}], "default": "/Staff"}
    config = write(tmp_path, google, org_unit=rules)
    user("ann", dept="Ops")  # /Departments/Ops does not exist
    user("bob")
    out = reconcile(config, code=1)
    assert "ann" in out and "INVALID_OU_ID" in out, out
    assert units(google) == {"bob": "/Staff"}


def test_licences_by_role_assigned_revoked_and_a_full_sku_is_retried(tmp_path, sqlite_url, google):
    config = write(tmp_path, google, licences=LICENCES)
    user("ann", roles=["staff", "legal"])
    user("bob", roles=["staff"])
    user("cid", roles=["staff"])  # the SKU has 2 seats: one of the three is created without it
    out = reconcile(config, code=1)
    assert "User limit exceeded" in out and "retried for its licences" in out, out
    have = held(google)
    assert set(have) == {"ann", "bob", "cid"}  # every account exists
    assert sum(SKU in s for s in have.values()) == 2 and VAULT in have["ann"]
    without = next(n for n, s in have.items() if SKU not in s)

    google.licensing.seats[SKU] = 3  # a seat is bought: the next run links the account and assigns it
    reconcile(config)
    # Which of the three went without a seat depends on the order the assignments ran in (several at once).
    assert held(google)[without] == ({SKU, VAULT} if without == "ann" else {SKU})
    assert "nothing to do" in reconcile(config, "--dry-run")

    user("ann", roles=["staff"])  # the legal role goes: its licence is revoked
    reconcile(config)
    assert held(google)["ann"] == {SKU}

    gws = get_connector(load_config(config).connector("gws"))  # revoked in Google: drift, assigned again
    bob = next(a for a in gws.iter_users() if a.user_name.startswith("bob"))
    gws.set_licences(bob.user_name, set())
    assert "update 1" in reconcile(config, "--dry-run")
    reconcile(config)
    assert held(google)["bob"] == {SKU}

    user("cid", roles=["staff"], active=False)  # suspended: no seat kept
    reconcile(config, "--yes")  # a disable is past the deletion guard of a 3-account target
    suspended = {u["primaryEmail"].split("@")[0]: u["suspended"] for u in google.users()}
    assert suspended["cid"] and held(google)["cid"] == set()
    assert "nothing to do" in reconcile(config, "--dry-run")
    explained = runner.invoke(app, ["explain", "ann", "--config", config])
    assert f"licences ← google.licences entry 1 (role staff) = '{SKU}'" in explained.output, explained.output


def test_the_event_path_assigns_licences_and_retries_one_that_failed(tmp_path, sqlite_url, google):
    import asyncio

    from flows.provision import provision_user
    from helpers import event
    from models.ingest import accept

    google.licensing.seats[SKU] = 1
    config = write(tmp_path, google, licences=LICENCES, org_unit=ORG_UNIT)
    cfg = load_config(config)
    for name in ("ann", "bob"):
        accept(event("user.created", name, email=f"{name}@example.com", given_name=name.title(),
                     family_name="Smith", roles=["staff"]), cfg)
    asyncio.run(provision_user(config_path=config, return_state=True))
    have = held(google)
    assert sorted(have) == ["ann", "bob"] and sorted(len(s) for s in have.values()) == [0, 1]
    assert units(google) == {"ann": "/Staff", "bob": "/Staff"}
    without = next(n for n, s in have.items() if not s)
    google.licensing.seats[SKU] = 2
    accept(event("user.updated", without, attributes={"dept": "Sales"}), cfg)
    asyncio.run(provision_user(config_path=config, return_state=True))
    assert held(google)[without] == {SKU} and units(google)[without] == "/Sales"
    assert "nothing to do" in reconcile(config, "--dry-run")


def test_a_sku_the_customer_lacks_is_named_in_the_failure(tmp_path, sqlite_url, google):
    config = write(tmp_path, google, licences=[{"roles": ["staff"], "product": "Google-Apps", "sku": "nope"}])
    user("ann", roles=["staff"])
    user("bob")
    out = reconcile(config, code=1)
    assert "Google-Apps/nope" in out and "ann" in out, out


# --- outbound check -------------------------------------------------------------------------

def _errors(profile) -> list[str]:
    return [p["what"] for p in profile["problems"] if p["severity"] == "error"]


def test_check_names_a_missing_org_unit_an_unknown_sku_and_the_licensing_scope():
    with GoogleSandbox(org_units=["/Sales"], licences={SKU: 1}) as google:
        good = probe(google_config(google, google={"org_unit": {"rules": [{"roles": ["a"], "value": "/Sales"}]},
                                                   "licences": LICENCES[:1]}))
        assert good["usable"], good["problems"]
        assert "/Sales" in good["capabilities"]["org_units"] and good["capabilities"]["licences"] == {SKU: True}
        bad = probe(google_config(google, name="g2", google={
            "org_unit": {"rules": [{"roles": ["a"], "value": "/Sales"}], "default": "/Gone"},
            "licences": [{"roles": ["a"], "product": "Google-Apps", "sku": "nope"}]}))
        errors = _errors(bad)
        assert any("/Gone" in e and "does not exist" in e for e in errors), errors
        assert any("Google-Apps" in e and "nope" in e for e in errors), errors
        assert not any("/Sales" in e for e in errors)
    with GoogleSandbox(delegated_scopes=[SCOPE_USER, SCOPE_GROUP, SCOPE_DOMAIN_RO]) as google:
        no_scope = probe(google_config(google, google={"licences": LICENCES[:1]}))
        errors = _errors(no_scope)
        assert len(errors) == 1 and "apps.licensing" in errors[0], no_scope["problems"]
        assert google.service_account_info()["client_id"] in no_scope["problems"][0]["fix"]
        no_ou = probe(google_config(google, name="g3", google={"org_unit": {"default": "/"}}))
        assert no_ou["usable"] and any("org units cannot be read" in p["what"] for p in no_ou["problems"])
    clear_cache()


def test_licence_calls_are_counted_one_per_assignment_and_one_listing_per_sku():
    from connectors.base import BatchOp

    with GoogleSandbox(licences={SKU: 50, VAULT: 50}) as google:
        gws = get_connector(google_config(google, google={"licences": LICENCES}))
        ops = [BatchOp("create", account=Account(user_name=f"u{n}@example.com", given_name="U", family_name="V",
                                                 extra={"licences": SKU})) for n in range(10)]
        before = len(google.requests)
        results = gws.apply_batch(ops, max_workers=4)
        sent = [(m, p) for m, p in google.requests[before:] if p != "/token"]
        assert all(isinstance(r, Account) and r.extra["licences"] == SKU for r in results)
        assert sent.count(("POST", "/batch/admin/directory_v1")) == 1
        assert len([1 for m, p in sent if m == "POST" and p.startswith("/apps/licensing/")]) == 10
        assert len(sent) == 11  # a new account holds no licence: nothing to revoke
        before = len(google.requests)
        assert len(list(gws.iter_users())) == 10
        listed = [p for m, p in google.requests[before:] if p != "/token"]
        assert len(listed) == 3  # one page of users, one listing per managed SKU
    clear_cache()
