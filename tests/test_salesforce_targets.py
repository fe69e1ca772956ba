"""Salesforce profile, role and permission sets by rule, licences and freezing, against the sandbox over HTTPS."""

import pytest
from typer.testing import CliRunner

from connectors.base import Account
from connectors.errors import Rejected
from connectors.factory import clear_cache, get_connector
from deployments.cli import app
from models.config import load_config, parse_config
from models.db import session_scope
from models.events import EventUser
from models.identity import upsert_user
from models.validation import InvalidInput
from sandbox.salesforce import SalesforceSandbox
from helpers import reconcile, store_user as user, write_connector_config
from targets import salesforce_config

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()
PROFILES = {"rules": [{"roles": ["platform"], "value": "Platform User"}], "default": "Standard User"}
ROLES = {"rules": [{"attribute": "title", "equals": "CEO", "value": "CEO"}], "default": "Sales Rep"}
SETS = [{"roles": ["sales"], "name": "Sales_Tools"}, {"roles": ["power"], "name": "CRM_Power"}]


@pytest.fixture
def sf():
    with SalesforceSandbox(licences={"Salesforce": 10, "Salesforce Platform": 10},
                           profiles={"Platform User": "Salesforce Platform"}, roles=("CEO", "Sales Rep"),
                           permission_sets={"Sales_Tools": None, "CRM_Power": "Salesforce"}) as server:
        yield server
    clear_cache()


def write(tmp_path, sf, **settings) -> str:
    return write_connector_config(tmp_path, salesforce_config(sf, name="crm", **settings)
                                  .model_dump(mode="json", exclude_unset=True))


def people(sf) -> dict[str, dict]:
    """name -> profile, role, permission sets, active, frozen."""
    profiles = {p["Id"]: p["Name"] for p in sf.profiles.values()}
    roles = {r["Id"]: r["Name"] for r in sf.access.tables["UserRole"].values()}
    return {u["Username"].split("@")[0]: {"profile": profiles.get(u["ProfileId"]), "role": roles.get(u["UserRoleId"]),
                                          "sets": sf.access.assigned(u["Id"]), "active": u["IsActive"],
                                          "frozen": sf.access.frozen(u["Id"])}
            for u in sf.users.values() if u["UserType"] == "Standard" and u["Username"] != sf.username}


# --- configuration ------------------------------------------------------------------------

def _config(**salesforce):
    return {"tenant_domain": "example.com", "connectors": [{
        "name": "crm", "type": "salesforce", "salesforce": {
            "auth": {"type": "client_credentials", "client_id": "k", "client_secret": "env:S"}, **salesforce}}]}


@pytest.mark.parametrize("settings, expected", [
    ({"suspend_mode": "lock"}, "'deactivate' or 'freeze'"),
    ({"permission_sets": [{"roles": ["a"], "name": "X"}, {"roles": ["b"], "name": "X"}]}, "X is listed more than once"),
    ({"permission_sets": [{"roles": ["a"], "name": "has space"}]}, "permission_sets"),
    ({"profile_rules": {"rules": [{"roles": ["a"]}]}}, "value"),
    ({"role_rules": {"rules": [{"roles": ["a"], "value": "CEO"}], "fallback": "x"}}, "fallback"),
])
def test_bad_salesforce_rules_are_refused_at_load(settings, expected):
    with pytest.raises(InvalidInput) as err:
        parse_config(_config(**settings))
    assert expected in str(err.value) and "connectors[0].salesforce" in str(err.value)


# --- the sandbox's rules --------------------------------------------------------------------

def test_sandbox_refuses_duplicate_assignments_mismatched_licences_and_exhausted_licences():
    with SalesforceSandbox(licences={"Salesforce": 2}, profiles={"Platform User": "Salesforce Platform"},
                           permission_sets={"CRM_Power": "Salesforce", "Any": None}) as sf:
        crm = get_connector(salesforce_config(sf, permission_sets=[{"roles": ["a"], "name": "CRM_Power"},
                                                                   {"roles": ["b"], "name": "Any"}],
                                              profile_rules={"default": "Platform User"}))
        ann = crm.create_user(Account(user_name="ann@example.com", family_name="A", email="ann@example.com",
                                      extra={"ProfileId": "Platform User", "permission_sets": "Any"}))
        assert sf.access.assigned(ann.id) == {"Any"}
        assert crm.get_user(ann.id).extra == {"ProfileId": "Platform User", "permission_sets": "Any"}
        with pytest.raises(Rejected, match="FIELD_INTEGRITY_EXCEPTION") as err:
            crm.set_permission_sets(ann.id, {"Any", "CRM_Power"}, "ann@example.com")
        assert "ann@example.com" in str(err.value) and "CRM_Power" in str(err.value)
        ps = next(r["Id"] for r in sf.access.tables["PermissionSet"].values() if r["Name"] == "Any")
        from connectors.errors import AlreadyExists

        with pytest.raises(AlreadyExists, match="DUPLICATE_VALUE"):
            crm._json_call("again", "POST", "sobjects/PermissionSetAssignment", {"AssigneeId": ann.id,
                                                                                "PermissionSetId": ps})
        # 2 Salesforce licences, the integration user holds one: the second standard user is refused.
        crm.create_user(Account(user_name="bob@example.com", family_name="B", email="bob@example.com",
                                extra={"ProfileId": "Standard User"}))
        with pytest.raises(Rejected, match="LICENSE_LIMIT_EXCEEDED"):
            crm.create_user(Account(user_name="cid@example.com", family_name="C", email="cid@example.com",
                                    extra={"ProfileId": "Standard User"}))
        clear_cache()


# --- end to end -----------------------------------------------------------------------------

def test_profile_role_and_permission_sets_by_rule_with_drift_fixed(tmp_path, sqlite_url, sf):
    config = write(tmp_path, sf, profile_rules=PROFILES, role_rules=ROLES, permission_sets=SETS)
    user("ann", roles=["sales"], title="CEO")
    user("bob", roles=["platform"])
    user("cid", roles=["sales", "power"])
    reconcile(config)
    assert people(sf) == {
        "ann": {"profile": "Standard User", "role": "CEO", "sets": {"Sales_Tools"}, "active": True, "frozen": False},
        "bob": {"profile": "Platform User", "role": "Sales Rep", "sets": set(), "active": True, "frozen": False},
        "cid": {"profile": "Standard User", "role": "Sales Rep", "sets": {"Sales_Tools", "CRM_Power"}, "active": True,
                "frozen": False}}
    assert "nothing to do" in reconcile(config, "--dry-run")

    user("cid", roles=["power"], title="CEO")  # a role goes (its set is removed), the title moves the role
    reconcile(config)
    assert people(sf)["cid"]["sets"] == {"CRM_Power"} and people(sf)["cid"]["role"] == "CEO"

    crm = get_connector(load_config(config).connector("crm"))  # changed in Salesforce: drift, put back
    ann = next(a for a in crm.iter_users() if a.user_name.startswith("ann"))
    crm.update_user(ann.id, {"extra.UserRoleId": "Sales Rep", "extra.permission_sets": "none"}, ann)
    assert people(sf)["ann"]["sets"] == set()
    reconcile(config)
    assert people(sf)["ann"]["role"] == "CEO" and people(sf)["ann"]["sets"] == {"Sales_Tools"}
    assert "nothing to do" in reconcile(config, "--dry-run")

    explained = runner.invoke(app, ["explain", "bob", "--config", config]).output
    assert "ProfileId ← salesforce.profile_rules rule 1 (role platform) = 'Platform User'" in explained, explained


def test_a_set_not_assignable_to_the_profile_and_an_unknown_name_fail_that_user_only(tmp_path, sqlite_url, sf):
    config = write(tmp_path, sf, profile_rules=PROFILES, permission_sets=SETS,
                   role_rules={"rules": [{"roles": ["boss"], "value": "Chief"}]})
    user("ann", roles=["platform", "power"])  # CRM_Power needs a Salesforce licence; Platform User has another
    user("bob", roles=["boss"])                # no UserRole named Chief
    user("cid", roles=["sales"])
    out = reconcile(config, code=1)
    assert "FIELD_INTEGRITY_EXCEPTION" in out and "CRM_Power" in out and "ann@example.com" in out, out
    assert "salesforce.role_rules gives 'Chief', but Salesforce has no UserRole named 'Chief'" in out, out
    have = people(sf)
    assert have["cid"]["sets"] == {"Sales_Tools"} and "bob" not in have
    assert have["ann"]["profile"] == "Platform User" and have["ann"]["sets"] == set()  # created, set retried


def test_creates_needing_more_licences_than_are_free_are_not_sent(tmp_path, sqlite_url):
    with SalesforceSandbox(licences={"Salesforce": 3}) as sf:  # the integration user holds one: 2 free
        config = write(tmp_path, sf)
        for name in ("ann", "bob", "cid"):
            user(name)
        out = reconcile(config, "--dry-run", code=1)
        assert "needing a Salesforce licence but 2 are free (TotalLicenses 3 - UsedLicenses 1)" in out, out
        posts = len([m for m, _ in sf.requests if m != "GET"])
        out = reconcile(config, code=1)
        assert "none of them was sent" in out and people(sf) == {}
        assert [p for m, p in sf.requests[posts:] if m != "GET" and not p.endswith("/token")] == []
        with session_scope() as session:  # one user fewer: the two creates fit
            upsert_user(session, EventUser(username="cid", active=False), "example.com", source="api")
        reconcile(config)
        assert sorted(people(sf)) == ["ann", "bob", "cid"] and not people(sf)["cid"]["active"]
    clear_cache()


def test_a_plan_needing_more_licences_than_are_free_is_refused_before_its_first_chunk(tmp_path, sqlite_url):
    import asyncio

    from flows.reconcile import reconcile as reconcile_flow

    with SalesforceSandbox(licences={"Salesforce": 3}) as sf:  # the integration user holds one: 2 free
        config = write(tmp_path, sf)
        for name in ("ann", "bob", "cid"):
            user(name)
        writes = len([m for m, _ in sf.requests if m != "GET"])
        # Chunks of one: each would fit the free licences alone, the plan as a whole does not.
        result = asyncio.run(reconcile_flow("crm", config_path=config, chunk_size=1))
        assert result["status"] == "failed" and result["outcomes"]["failed"] == 3, result
        assert "the plan creates 3 users needing a Salesforce licence but 2 are free" in result["message"]
        assert sorted(f["user"].split("@")[0] for f in result["failures"]) == ["ann", "bob", "cid"]
        out = runner.invoke(app, ["runs", "--status", "failed", "--connector", "crm", "--config", config]).output
        assert "ann" in out and "2 are free" in out, out  # recorded as failed operations of the run
        assert people(sf) == {}  # nothing was sent
        assert [p for m, p in sf.requests[writes:] if m != "GET" and not p.endswith("/token")] == []
        with session_scope() as session:  # one user fewer: the plan fits, chunk by chunk
            upsert_user(session, EventUser(username="cid", active=False), "example.com", source="api")
        result = asyncio.run(reconcile_flow("crm", config_path=config, chunk_size=1))
        assert result["status"] == "succeeded", result
        assert sorted(people(sf)) == ["ann", "bob", "cid"]
    clear_cache()


def test_suspend_mode_freeze_freezes_and_thaws_the_login(tmp_path, sqlite_url, sf):
    config = write(tmp_path, sf, suspend_mode="freeze")
    user("ann")
    user("bob")
    reconcile(config)
    user("ann", active=False)
    reconcile(config, "--yes")
    assert people(sf)["ann"]["frozen"] and people(sf)["ann"]["active"]  # frozen, not deactivated
    assert "nothing to do" in reconcile(config, "--dry-run")
    user("ann", active=True)
    reconcile(config)
    assert not people(sf)["ann"]["frozen"]
    assert "nothing to do" in reconcile(config, "--dry-run")


def test_check_names_an_unknown_profile_role_and_permission_set_and_reports_free_licences(sf):
    from connectors.probe import check as probe

    good = probe(salesforce_config(sf, profile_rules=PROFILES, role_rules=ROLES, permission_sets=SETS,
                                   suspend_mode="freeze"))
    assert good["usable"], good["problems"]
    assert good["capabilities"]["licences"]["Salesforce"] == {"total": 10, "used": 1}
    bad = probe(salesforce_config(sf, name="crm2", profile_rules={"default": "Chief Profile"},
                                  role_rules={"rules": [{"roles": ["a"], "value": "Chief"}]},
                                  permission_sets=[{"roles": ["a"], "name": "Nope"}]))
    errors = [p["what"] for p in bad["problems"] if p["severity"] == "error"]
    assert "salesforce.profile_rules gives 'Chief Profile', but Salesforce has no Profile named 'Chief Profile'" in errors
    assert "salesforce.role_rules gives 'Chief', but Salesforce has no UserRole named 'Chief'" in errors
    assert any("'Nope'" in e for e in errors) and len(errors) == 3, errors
    clear_cache()
