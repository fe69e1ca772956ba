"""resolve-policy, pure: levels, IdP-level, roles, user store, lifecycle; ingest's IdP check; `outbound explain`."""

import json

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from models.ingest import accept, check_against_config
from models.config import Config
from models.db import session_scope
from models.events import parse_event
from models.identity import UserView
from models.runstate import link_accounts
from models.tables import User
from models.validation import InvalidInput
from tasks.policy import decide, resolve, scope

SCIM = {"type": "scim2", "scim2": {"base_url": "https://scim.example.com", "auth": {"type": "bearer", "token": "env:X"}}}


def config(*connectors: dict, idps: list[dict] | None = None) -> Config:
    return Config.model_validate({"tenant_domain": "example.com",
                                  "connectors": [{**SCIM, **c} for c in connectors],
                                  "identity_providers": idps or []})


def user(**kw) -> UserView:
    values = dict(id="u1", username="alice", user_store="PRIMARY", tenant="example.com", email=None, given_name=None,
                  family_name=None, display_name=None, active=True, deleted=False, source="api")
    values.update(kw)
    return UserView(**values)


ORG = {"name": "org"}
PARTNER_ONLY = {"name": "partner-app", "organization_level": False}
IDPS = [{"name": "partner-idp", "jit_provisioning": True, "connectors": ["partner-app"]},
        {"name": "other-idp", "connectors": []}]


def actions(u: UserView, cfg: Config, provisioned_on=()) -> dict[str, str]:
    return {d.connector: d.action for d in resolve(u, cfg, set(provisioned_on))}


# --- levels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["api", "console", "self_signup", "jit", "import"])
def test_organisation_level_fires_for_the_org_triggers(source):
    cfg = config(ORG)
    in_scope, why = scope(user(source=source), cfg.connectors[0], cfg)
    assert in_scope and "organisation-level" in why and source in why


def test_organisation_level_does_not_fire_for_a_plain_federated_login_user():
    cfg = config(ORG, PARTNER_ONLY, idps=IDPS)
    u = user(source="federated_login", idps=("other-idp",))
    in_scope, why = scope(u, cfg.connector("org"), cfg)
    assert not in_scope and "federated_login" in why and "other-idp" in why
    assert actions(u, cfg) == {"org": "skip", "partner-app": "skip"}


def test_idp_level_fires_for_users_who_came_through_that_idp():
    cfg = config(ORG, PARTNER_ONLY, idps=IDPS)
    u = user(source="federated_login", idps=("partner-idp",))
    assert actions(u, cfg) == {"org": "skip", "partner-app": "provision"}
    assert "IdP-level connector of partner-idp" in scope(u, cfg.connector("partner-app"), cfg)[1]


def test_an_idp_level_only_connector_ignores_org_level_arrivals():
    cfg = config(ORG, PARTNER_ONLY, idps=IDPS)
    in_scope, why = scope(user(source="api"), cfg.connector("partner-app"), cfg)
    assert not in_scope and "not an organisation-level connector" in why


def test_jit_through_an_idp_fires_both_levels():
    cfg = config(ORG, PARTNER_ONLY, idps=IDPS)
    u = user(source="jit", idps=("partner-idp",))
    assert actions(u, cfg) == {"org": "provision", "partner-app": "provision"}


def test_an_org_level_connector_also_listed_by_the_idp_names_both_reasons():
    cfg = config(ORG, idps=[{"name": "partner-idp", "connectors": ["org"]}])
    why = scope(user(source="jit", idps=("partner-idp",)), cfg.connectors[0], cfg)[1]
    assert "organisation-level" in why and "partner-idp" in why


def test_the_events_drive_the_store_into_the_levels(sqlite_url):
    """Source and IdPs come from the events: a federated login after an API create keeps the org level."""
    cfg = config(ORG, PARTNER_ONLY, idps=IDPS)
    from models.identity import find_user, view

    accept({"id": "e1", "type": "user.federated_login", "idp": "partner-idp", "user": {"username": "fed"}}, cfg)
    accept({"id": "e2", "type": "user.created", "trigger": "jit", "idp": "partner-idp", "user": {"username": "jit"}}, cfg)
    with session_scope() as session:
        fed = view(session, find_user(session, "example.com", "PRIMARY", "fed"))
        jit = view(session, find_user(session, "example.com", "PRIMARY", "jit"))
    assert actions(fed, cfg) == {"org": "skip", "partner-app": "provision"}
    assert actions(jit, cfg) == {"org": "provision", "partner-app": "provision"}


# --- ingest: unknown IdP -----------------------------------------------------------------------

def test_an_unknown_idp_is_rejected_with_a_clear_error():
    cfg = config(ORG, PARTNER_ONLY, idps=IDPS)
    ev = parse_event({"id": "e1", "type": "user.federated_login", "idp": "nobody-idp", "user": {"username": "a"}})
    with pytest.raises(InvalidInput, match="unknown identity provider 'nobody-idp'.*partner-idp"):
        check_against_config(ev, cfg)


def test_an_unknown_idp_stores_nothing(sqlite_url):
    cfg = config(ORG, PARTNER_ONLY, idps=IDPS)
    with pytest.raises(InvalidInput, match="unknown identity provider"):
        accept({"id": "e1", "type": "user.created", "trigger": "jit", "idp": "nope", "user": {"username": "a"}}, cfg)
    with session_scope() as session:
        assert session.query(User).count() == 0


def test_jit_through_an_idp_without_jit_is_rejected():
    cfg = config(ORG, PARTNER_ONLY, idps=IDPS)
    ev = parse_event({"id": "e1", "type": "user.created", "trigger": "jit", "idp": "other-idp", "user": {"username": "a"}})
    with pytest.raises(InvalidInput, match="does not allow JIT"):
        check_against_config(ev, cfg)


# --- roles ---------------------------------------------------------------------------------------

SALES = {"name": "crm", "roles": ["sales", "engineering"]}


def test_roles_gate_the_connector():
    cfg = config(SALES)
    assert actions(user(roles=frozenset({"hr"})), cfg) == {"crm": "skip"}
    d = decide(user(roles=frozenset({"hr"})), cfg.connectors[0], cfg, provisioned=False)
    assert "needs one of the roles sales, engineering" in d.reason and "holds hr" in d.reason
    gained = decide(user(roles=frozenset({"hr", "sales"})), cfg.connectors[0], cfg, provisioned=False)
    assert gained.action == "provision" and "holds role sales" in gained.reason


def test_an_empty_role_list_means_everyone():
    cfg = config(ORG)
    assert actions(user(roles=frozenset()), cfg) == {"org": "provision"}


@pytest.mark.parametrize("mode,expected", [("delete", "delete"), ("disable", "disable"), ("none", "none"),
                                           (None, "delete")])  # SCIM's default is delete
def test_losing_the_last_matching_role_deprovisions_by_the_connectors_mode(mode, expected):
    cfg = config({**SALES, "deprovision": mode} if mode else SALES)
    d = decide(user(roles=frozenset({"hr"})), cfg.connectors[0], cfg, provisioned=True)
    assert (d.action, d.mode) == ("deprovision", expected)
    assert "needs one of the roles" in d.reason and f"deprovision ({expected})" in d.reason


def test_losing_one_of_two_matching_roles_keeps_the_user():
    cfg = config(SALES)
    assert decide(user(roles=frozenset({"engineering"})), cfg.connectors[0], cfg, provisioned=True).action == "provision"


def test_google_suspend_is_its_disable():
    cfg = Config.model_validate({"tenant_domain": "t.com", "connectors": [
        {"name": "g", "type": "google", "roles": ["x"],
         "google": {"service_account_key": "env:K", "admin_email": "a@t.com"}}]})
    d = decide(user(), cfg.connectors[0], cfg, provisioned=True)
    assert (d.action, d.mode) == ("deprovision", "disable")


# --- user store, lifecycle, disabled connector -------------------------------------------------------

def test_user_store_domain_limits_the_connector():
    cfg = config({"name": "eu", "user_store_domain": "eu-store"})
    assert actions(user(user_store="EU-STORE"), cfg) == {"eu": "provision"}  # case-insensitive
    d = decide(user(user_store="PRIMARY"), cfg.connectors[0], cfg, provisioned=False)
    assert d.action == "skip" and "limited to user store eu-store; the user is in PRIMARY" in d.reason
    assert decide(user(user_store="PRIMARY"), cfg.connectors[0], cfg, provisioned=True).action == "deprovision"


def test_a_deleted_user_is_deprovisioned_where_provisioned_only():
    cfg = config(ORG, {"name": "other"})
    assert actions(user(deleted=True), cfg, {"org"}) == {"org": "deprovision", "other": "skip"}


def test_a_disabled_user_stays_in_scope_so_the_account_is_switched_off_not_removed():
    cfg = config(ORG)
    assert actions(user(active=False), cfg, {"org"}) == {"org": "provision"}


def test_a_disabled_connector_is_skipped_even_when_provisioned():
    cfg = config({**ORG, "enabled": False})
    d = decide(user(), cfg.connectors[0], cfg, provisioned=True)
    assert d.action == "skip" and "disabled" in d.reason


# --- outbound explain ------------------------------------------------------------------------------

runner = CliRunner()


def _write(tmp_path, cfg: dict) -> str:
    import yaml

    path = tmp_path / "outbound.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


EXPLAIN_CONFIG = {"tenant_domain": "example.com",
                  "connectors": [{**SCIM, "name": "crm", "roles": ["sales"], "pattern": "{UN,TD}",
                                  "domain": "mail.example.com"},
                                 {**SCIM, "name": "eu", "user_store_domain": "EU"}]}


def test_explain_in_and_out_of_scope(tmp_path, sqlite_url):
    path = _write(tmp_path, EXPLAIN_CONFIG)
    cfg = Config.model_validate(EXPLAIN_CONFIG)
    accept({"id": "e1", "type": "user.created", "user": {"username": "Alice", "roles": ["sales"]}}, cfg)
    with session_scope() as session:
        alice = session.query(User).one()
        link_accounts(session, "crm", [{"local_id": alice.id, "remote_id": "remote-42",
                                        "remote_name": "alice_example.com@mail.example.com", "pushed_hash": None}])

    result = runner.invoke(app, ["explain", "Alice", "--config", path])
    assert result.exit_code == 0, result.output
    crm, eu = result.output.split("\ncrm [scim2]")[1].split("\neu [scim2]")
    assert "in scope:        yes" in crm and "holds role sales" in crm and "one of sales; holds sales" in crm
    assert "alice_example.com@mail.example.com" in crm and "{UN,TD}" in crm and "UN='Alice'" in crm
    assert "remote id remote-42" in crm
    assert "in scope:        no" in eu and "limited to user store EU; the user is in PRIMARY" in eu
    assert "no account recorded" in eu

    result = runner.invoke(app, ["explain", "Alice", "--config", path, "--connector", "eu", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [c["connector"] for c in data["connectors"]] == ["eu"]
    assert data["connectors"][0]["in_scope"] is False and data["connectors"][0]["decision"] == "skip"


def test_explain_a_user_who_lost_the_role_says_deprovision(tmp_path, sqlite_url):
    path = _write(tmp_path, EXPLAIN_CONFIG)
    cfg = Config.model_validate(EXPLAIN_CONFIG)
    accept({"id": "e1", "type": "user.created", "user": {"username": "bob", "roles": ["hr"]}}, cfg)
    with session_scope() as session:
        link_accounts(session, "crm", [{"local_id": session.query(User).one().id, "remote_id": "r1",
                                        "remote_name": "bob_example.com@mail.example.com", "pushed_hash": None}])
    data = json.loads(runner.invoke(app, ["explain", "bob", "-c", path, "--connector", "crm", "--json"]).output)
    crm = data["connectors"][0]
    assert crm["in_scope"] is False and crm["decision"] == "deprovision"
    assert crm["roles_required"] == ["sales"] and crm["roles_held"] == ["hr"]


def test_explain_an_unknown_user_exits_2(tmp_path, sqlite_url):
    path = _write(tmp_path, EXPLAIN_CONFIG)
    result = runner.invoke(app, ["explain", "nobody", "--config", path])
    assert result.exit_code == 2 and "no user 'nobody' in user store 'PRIMARY'" in result.output
    result = runner.invoke(app, ["explain", "nobody", "--config", path, "--connector", "nope"])
    assert result.exit_code == 2 and "no connector 'nope'" in result.output


def test_explain_finds_a_secondary_store_user(tmp_path, sqlite_url):
    path = _write(tmp_path, EXPLAIN_CONFIG)
    accept({"id": "e1", "type": "user.created", "user": {"username": "EU/carol"}}, Config.model_validate(EXPLAIN_CONFIG))
    for args in (["EU/carol"], ["carol", "--user-store", "EU"]):
        result = runner.invoke(app, ["explain", *args, "--config", path, "--connector", "eu"])
        assert result.exit_code == 0 and "in scope:        yes" in result.output, result.output
