"""`outbound check`: the capability probe against the sandboxes, the stored profile, and what it drives."""

import json
import os

import pytest
from sqlalchemy import inspect
from typer.testing import CliRunner

from connectors.base import BatchOp
from connectors.factory import clear_cache
from tasks.door import build
from deployments.cli import app
from helpers import write_config
from models.config import load_config
from models.db import get_engine, upgrade
from sandbox.scim import ScimSandbox

runner = CliRunner()
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def check(config, *args):
    result = runner.invoke(app, ["check", "--config", str(config), *args])
    return result.exit_code, result.output


def as_json(config, *args) -> tuple[int, list[dict]]:
    code, out = check(config, "--json", *args)
    return code, json.loads(out)["connectors"]


@pytest.fixture(autouse=True)
def fresh_connectors():
    clear_cache()  # connectors built by other tests carry no profile; ours must be built after the check
    yield
    clear_cache()


def test_a_wrong_token_is_reported_with_what_to_change_and_nothing_is_written(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        config = write_config(tmp_path, scim)
        env = next(k for k, v in os.environ.items() if v == scim.token and k.startswith("TEST_SCIM_TOKEN"))
        os.environ[env] = "Wr0ng-T0ken-Value"
        code, out = check(config)
        assert code == 1, out
        assert "app (scim2): NOT USABLE" in out
        assert "credentials refused" in out and "HTTP 401" in out
        assert f"fix: give scim2.auth.token (env:{env}) a token this server accepts" in out
        assert "Wr0ng-T0ken-Value" not in out and scim.token not in out
        assert [r for r in scim.requests if r[0] in MUTATING] == []


def test_a_missing_group_type_is_reported_and_turns_group_sync_off(tmp_path, sqlite_url):
    with ScimSandbox(group_type=False) as scim:
        config = write_config(tmp_path, scim, extra_connector="    groups: [staff]\n")
        code, profiles = as_json(config)
        assert code == 1
        (profile,) = profiles
        assert profile["capabilities"]["group_type"] is False
        assert list(profile["capabilities"]["resource_types"]) == ["User"]
        (problem,) = [p for p in profile["problems"] if p["severity"] == "error"]
        assert "no Group resource type" in problem["what"] and "groups (staff)" in problem["what"]
        assert problem["fix"] == "remove groups: from connector app, or enable groups on the server"
        connector = build(load_config(config).connectors[0])  # the engine's door reads the stored profile
        assert connector.capabilities.groups is False  # the stored profile drives the connector
        from models.db import session_scope
        from tasks.plan import make_plan

        with session_scope() as session:  # the plan holds no group rows: group sync is off
            loaded = load_config(config)
            assert len(make_plan(loaded, loaded.connectors[0], connector, session).group_rows) == 0
        assert [r for r in scim.requests if r[1].startswith("/v2/Groups")] == []

        status = runner.invoke(app, ["status", "--config", str(config)])
        code, out = status.exit_code, status.output
        assert code == 0 and "1 error" in out and "s ago" in out
        assert "check of app: error: the server has no Group resource type" in out
        status = json.loads(runner.invoke(app, ["status", "--config", str(config), "--json"]).output)
        assert status["connectors"][0]["capabilities"]["usable"] is False


def test_bulk_limits_are_reported_stored_and_used_without_asking_again(tmp_path, sqlite_url):
    acme = "urn:example:params:scim:schemas:extension:acme:2.0:User"
    with ScimSandbox(bulk=(True, 7, 5_000), patch_supported=False, custom_schemas=(acme,)) as scim:
        config = write_config(tmp_path, scim)
        code, out = check(config)
        assert code == 0, out  # PUT instead of PATCH is a warning, not a failure
        assert "app (scim2): usable" in out
        assert "bulk yes (≤ 7 operations, ≤ 5000 bytes)" in out
        assert "warning: the server does not support PATCH" in out
        assert "resource types: User, Group; groups yes" in out
        assert f"enterprise extension yes; custom schemas: {acme}" in out
        connector = build(load_config(config).connectors[0])  # the engine's door reads the stored profile
        assert connector.bulk_limits() == (7, 5_000) and connector.patch_supported() is False
        seen = len(scim.requests)
        from connectors.base import Account

        results = connector.apply_batch([BatchOp("create", account=Account(user_name=f"u{i}", external_id=f"x{i}"))
                                         for i in range(15)])
        assert not [r for r in results if isinstance(r, BaseException)]
        calls = scim.requests[seen:]
        assert ("GET", "/v2/ServiceProviderConfig") not in calls  # the profile answered
        assert calls.count(("POST", "/v2/Bulk")) == 3  # 15 creates, 7 per request


def test_unreachable_untrusted_and_unknown_connectors(tmp_path, sqlite_url):
    from sandbox.salesforce import SalesforceSandbox

    os.environ["T_CHECK_TOKEN"] = "not-a-real-token"
    with SalesforceSandbox() as https_server:  # an https server signed by a CA we are not told about
        path = tmp_path / "two.yaml"
        path.write_text(f"""tenant_domain: example.com
connectors:
  - name: nowhere
    type: scim2
    scim2: {{base_url: "http://127.0.0.1:1/v2", auth: {{type: bearer, token: "env:T_CHECK_TOKEN"}}}}
  - name: untrusted
    type: scim2
    scim2: {{base_url: "{https_server.url}/scim/v2", auth: {{type: bearer, token: "env:T_CHECK_TOKEN"}}}}
""")
        code, profiles = as_json(path)
    assert code == 1
    nowhere, untrusted = profiles
    assert [p["what"] for p in nowhere["problems"]] == [
        "GET http://127.0.0.1:1/v2/Users: cannot connect (connection refused)"]
    assert "TLS: GET" in untrusted["problems"][0]["what"] and "certificate not trusted" in untrusted["problems"][0]["what"]
    assert untrusted["problems"][0]["fix"].startswith("set scim2.ca_bundle to the CA file")
    code, out = check(path, "--connector", "elsewhere")
    assert code == 2 and "no connector 'elsewhere'" in out and "nowhere, untrusted" in out


def test_migration_0005_on_sqlite_and_postgresql(db_url):
    from models.capabilities import all_profiles, save

    upgrade(db_url, "0004")
    assert not inspect(get_engine(db_url, migrate=False)).has_table("capability_profiles")
    upgrade(db_url)
    columns = {c["name"] for c in inspect(get_engine(db_url, migrate=False)).get_columns("capability_profiles")}
    assert columns == {"connector", "type", "usable", "capabilities", "problems", "checked_at"}
    save({"connector": "app", "type": "scim2", "usable": False, "capabilities": {"patch": True},
          "problems": [{"severity": "error", "what": "x", "fix": "y"}]})
    save({"connector": "app", "type": "scim2", "usable": True, "capabilities": {"patch": False}, "problems": []})
    (row,) = all_profiles().values()
    assert row.usable and row.capabilities == {"patch": False} and row.problems == []
    from alembic import command

    from models.db import alembic_config

    command.downgrade(alembic_config(db_url), "0004")  # and back
    assert not inspect(get_engine(db_url, migrate=False)).has_table("capability_profiles")


# --- Google and Salesforce -------------------------------------------------------------------

def _errors(profile) -> list[str]:
    return [p["what"] for p in profile["problems"] if p["severity"] == "error"]


def test_google_scopes_admin_and_domains_against_the_sandbox():
    from connectors.probe import check as probe
    from sandbox.google import SCOPE_GROUP, SCOPE_USER, GoogleSandbox
    from targets import google_config

    with GoogleSandbox(domains=["example.com", "example.org"]) as google:
        good = probe(google_config(google))
        assert good["usable"] and good["problems"] == []
        assert good["capabilities"]["domains"] == ["example.com", "example.org"]
        assert len(good["capabilities"]["scopes_granted"]) == 3
        wrong_domain = probe(google_config(google, name="g2", domain="elsewhere.net"))
        assert _errors(wrong_domain) == ["domain elsewhere.net is not one of the customer's domains "
                                         "(example.com, example.org)"]
        no_admin = probe(google_config(google, name="g3", google={"admin_email": "someone@example.com"}))
        assert _errors(no_admin) == ["the token endpoint refused the service account for admin someone@example.com: "
                                     "invalid_grant Invalid email or User ID"]
        assert [m for m, _ in google.requests if m != "GET" and _ != "/token"] == []  # only token calls and reads
    with GoogleSandbox(delegated_scopes=[SCOPE_USER]) as google:
        partial = probe(google_config(google))
        assert partial["capabilities"]["scopes_refused"] == [SCOPE_GROUP, SCOPE_GROUP.replace("group", "domain.readonly")]
        (problem,) = [p for p in partial["problems"] if p["severity"] == "error"]
        assert SCOPE_GROUP in problem["what"] and "Domain-wide delegation" in problem["fix"]
        assert google.service_account_info()["client_id"] in problem["fix"]
        assert "private_key" not in json.dumps(partial)


def test_salesforce_version_profile_required_fields_and_daily_requests(monkeypatch):
    monkeypatch.setenv("T_CHECK_WRONG_SF", "not-the-secret")
    from connectors.probe import check as probe
    from sandbox.salesforce import SalesforceSandbox
    from targets import salesforce_config

    with SalesforceSandbox(required_custom=("Region__c",), api_limit=40) as sf:
        profile = probe(salesforce_config(sf))
        caps = profile["capabilities"]
        assert caps["authenticated"] and caps["api_versions"][-1] == "62.0" and caps["profile"] == "Standard User"
        assert "Region__c" in caps["required_fields"] and caps["daily_api_requests"]["max"] == 40
        assert _errors(profile) == ["the User object requires Region__c, which the connector does not set"]
        fixed = probe(salesforce_config(sf, name="sf2", defaults={**_sf_defaults(), "Region__c": "EMEA"}))
        assert fixed["usable"], fixed["problems"]
        assert _errors(probe(salesforce_config(sf, name="sf3", api_version="99.0"))) == [
            "API version 99.0 is not offered by this org (latest 62.0)"]
        assert _errors(probe(salesforce_config(sf, name="sf4", profile="Nobody"))) == [
            "Salesforce has no profile named 'Nobody'", "the User object requires Region__c, which the connector "
                                                        "does not set"]
        assert [r for r in sf.requests if r[0] != "GET" and r[1] != "/services/oauth2/token"] == []
        enough = {**_sf_defaults(), "Region__c": "EMEA"}
        sf.api_calls = 34  # almost spent: the probe's own 4 reads leave 2 of 40
        low = probe(salesforce_config(sf, name="sf5", defaults=enough))
        assert low["usable"] and [p["what"] for p in low["problems"]] == ["only 2 of 40 daily API requests are left"]
        spent = probe(salesforce_config(sf, name="sf6", defaults=enough))
        assert _errors(spent)[0].startswith("no daily API requests are left: ")
        bad = probe(salesforce_config(sf, name="sf7", auth={"type": "client_credentials", "client_id": sf.client_id,
                                                           "client_secret": "env:T_CHECK_WRONG_SF"}))
    assert bad["capabilities"]["authenticated"] is False and "refused" in _errors(bad)[0]


def _sf_defaults() -> dict:
    from models.config import SalesforceSettings

    return dict(SalesforceSettings.model_fields["defaults"].default_factory())


def test_an_unset_secret_and_an_unwritable_store_are_named_not_tracebacks(tmp_path, monkeypatch):
    monkeypatch.setenv("OUTBOUND_DATABASE_URL", "sqlite:////nonexistent-dir/x/state.db")
    monkeypatch.delenv("T_CHECK_UNSET", raising=False)
    path = tmp_path / "unset.yaml"
    path.write_text("""tenant_domain: example.com
connectors:
  - name: app
    type: scim2
    scim2: {base_url: "http://127.0.0.1:1/v2", auth: {type: bearer, token: "env:T_CHECK_UNSET"}}
""")
    result = CliRunner().invoke(app, ["check", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "error: connector app: " in result.output and "T_CHECK_UNSET" in result.output
    assert "fix: set the secret the configuration references" in result.output
    assert "capability profiles not stored: OperationalError" in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_the_nightly_reconciliation_refreshes_every_profile_first(tmp_path, sqlite_url):
    import asyncio

    from flows.reconcile import reconcile_all
    from models.capabilities import all_profiles

    with ScimSandbox() as scim:
        config = write_config(tmp_path, scim)
        assert all_profiles() == {}
        results = asyncio.run(reconcile_all(config_path=str(config), return_state=True)).result()
        assert [r["connector"] for r in results] == ["app"]
        (profile,) = all_profiles().values()
        assert profile.connector == "app" and profile.usable
