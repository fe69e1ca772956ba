"""Provisioning patterns (WSO2 semantics) and each target's username rules, table-driven."""

import pytest
import requests

from connectors.errors import Rejected
from connectors.google import GoogleConnector
from connectors.salesforce import SalesforceConnector
from connectors.scim2 import Scim2Connector
from models.config import Config, GoogleSettings, SalesforceSettings, Scim2Settings
from models.identity import UserView
from models.patterns import PatternError
from tasks.username import build_user_name, parse_pattern, user_name_for, with_suffix

# (pattern, separator, domain, username, user_store, tenant, idp) -> expected
PATTERNS = [
    # The two examples in WSO2's documentation: a pattern must name users as WSO2 named them.
    (("{UD, UN, TD, IDP}", "-", None, "user@provisioning.com", "PRIMARY", "carbon.super", "salesforce"),
     "primary-user@provisioning.com-carbon.super-salesforce"),
    (("{UN,TD}", "_", "testmail.com", "testUser", "PRIMARY", "TestTenant.com", None),
     "testuser_testtenant.com@testmail.com"),
    # The separator is removed from UD, TD and IDP, never from UN.
    (("{UD, UN, TD, IDP}", "-", None, "jo-anne", "SEC-STORE", "my-tenant.com", "partner-idp"),
     "secstore-jo-anne-mytenant.com-partneridp"),
    (("{UN,UD}", "_", None, "jo_anne", "AD_EU", "t", None), "jo_anne_adeu"),
    # A separator with regex meaning is taken literally.
    (("{UD,UN}", ".", None, "alice", "A.B", "t", None), "ab.alice"),
    # Lower-cased.
    (("{UN}", "_", None, "Alice.Smith", "PRIMARY", "t", None), "alice.smith"),
    # UD defaults to PRIMARY; an absent IdP leaves no empty part behind.
    (("{UD,UN,IDP}", "_", None, "bob", "", "t", None), "primary_bob"),
    # With a domain: any @ becomes '.', then @domain is appended ...
    (("{UN}", "_", "example.com", "bob@corp.org", "PRIMARY", "t", None), "bob.corp.org@example.com"),
    # ... unless the result already ends with the domain.
    (("{UN}", "_", "example.com", "bob@example.com", "PRIMARY", "t", None), "bob@example.com"),
    (("{UN}", "_", "Example.COM", "Bob", "PRIMARY", "t", None), "bob@example.com"),
]


@pytest.mark.parametrize("args,expected", PATTERNS, ids=[e for _, e in PATTERNS])
def test_patterns(args, expected):
    pattern, separator, domain, username, store, tenant, idp = args
    built = build_user_name(pattern, separator, domain, username=username, user_store=store, tenant=tenant, idp=idp)
    assert built.user_name == expected
    assert pattern in built.how  # the explanation names the pattern it used


def test_how_says_what_each_token_gave():
    built = build_user_name("{UN,TD}", "_", "testmail.com", username="testUser", tenant="TestTenant.com")
    assert "UN='testUser'" in built.how and "TD='TestTenant.com'" in built.how and "testmail.com" in built.how


@pytest.mark.parametrize("pattern", ["UN", "{UN", "{}", "{UN, XX}", "{un}", "{UN}{TD}", "", "{UN,,TD}"])
def test_bad_patterns_are_rejected_with_the_reason(pattern):
    with pytest.raises(PatternError, match="pattern"):
        parse_pattern(pattern)


def test_bad_pattern_in_the_configuration_names_the_tokens():
    with pytest.raises(PatternError, match="XX"):
        build_user_name("{UN, XX}", "_", None, username="a")


def test_spaces_in_the_comma_form_are_accepted():
    assert parse_pattern("{ UD , UN,TD ,IDP }") == ["UD", "UN", "TD", "IDP"]


def _user(**kw) -> UserView:
    values = dict(id="u1", username="Alice", user_store="PRIMARY", tenant="example.com", email=None, given_name=None,
                  family_name=None, display_name=None, active=True, deleted=False, source="api")
    values.update(kw)
    return UserView(**values)


def _config(**connector) -> Config:
    entry = {"name": "c", "type": "scim2",
             "scim2": {"base_url": "https://scim.example.com", "auth": {"type": "bearer", "token": "env:X"}}}
    entry.update(connector)
    return Config.model_validate({"tenant_domain": "Example.com", "connectors": [entry]})


def test_user_name_for_uses_the_users_store_tenant_and_first_idp():
    config = _config(pattern="{UD,UN,TD,IDP}", separator="-")
    user = _user(user_store="EU-STORE", idps=("partner-idp", "other"))
    assert user_name_for(user, config.connectors[0], config).user_name == "eustore-alice-example.com-partneridp"


def test_scim_without_a_pattern_sends_the_local_username_unchanged():
    config = _config()
    assert user_name_for(_user(), config.connectors[0], config).user_name == "Alice"
    config = _config(pattern="{UN}")
    assert user_name_for(_user(), config.connectors[0], config).user_name == "alice"


def test_suffix_goes_before_the_domain():
    assert with_suffix("alice@example.com", 2) == "alice2@example.com"
    assert with_suffix("alice", 3) == "alice3"


# --- each target's rules ---------------------------------------------------------------------

def google() -> GoogleConnector:
    return GoogleConnector("google", GoogleSettings(service_account_key="env:UNUSED", admin_email="admin@example.com"),
                           session=None)


def salesforce() -> SalesforceConnector:
    settings = SalesforceSettings(auth={"type": "jwt", "client_id": "cid", "username": "api@example.com",
                                        "private_key": "env:UNUSED"})
    return SalesforceConnector("salesforce", settings, requests.Session(), None)  # no call is made


def scim() -> Scim2Connector:
    settings = Scim2Settings(base_url="https://scim.example.com", auth={"type": "bearer", "token": "env:UNUSED"})
    return Scim2Connector("scim", settings, requests.Session())


# (target, pattern, separator, domain, username, store, tenant) -> None (accepted) or a fragment of the reason
TARGET_RULES = [
    (google, "{UN}", "_", "example.com", "alice", "PRIMARY", "t", None),
    (google, "{UN,TD}", "_", "example.com", "testUser", "PRIMARY", "TestTenant.com", None),
    (google, "{UN}", "_", "example.com", "john smith", "PRIMARY", "t", "may contain only"),
    (google, "{UN}", "_", "example.com", "a+b", "PRIMARY", "t", "may contain only"),
    (google, "{UN}", "_", "example.com", "x" * 65, "PRIMARY", "t", "longer than 64"),
    (google, "{UN}", "_", "example.com", "postmaster", "PRIMARY", "t", "reserved"),
    (google, "{UN}", "_", None, "alice", "PRIMARY", "t", "local@domain"),
    (google, "{UN}", "_", "example.com", "alice.", "PRIMARY", "t", "dot"),
    (salesforce, "{UN}", "_", "example.com", "alice", "PRIMARY", "t", None),
    (salesforce, "{UD, UN, TD, IDP}", "-", None, "user@provisioning.com", "PRIMARY", "carbon.super", None),
    (google, "{UD, UN, TD, IDP}", "-", None, "user@provisioning.com", "PRIMARY", "carbon.super", None),
    (salesforce, "{UN}", "_", None, "alice", "PRIMARY", "t", "email address"),
    (salesforce, "{UN,TD}", "_", "example.com", "a" * 60, "PRIMARY", "tenant.com", "at most 80"),
    (scim, "{UN}", "_", None, "anything goes", "PRIMARY", "t", None),
]


@pytest.mark.parametrize("target,pattern,separator,domain,username,store,tenant,why", TARGET_RULES)
def test_target_rules_reject_with_a_clear_reason(target, pattern, separator, domain, username, store, tenant, why):
    name = build_user_name(pattern, separator, domain, username=username, user_store=store, tenant=tenant).user_name
    connector = target()
    if why is None:
        connector.check_user_name(name)
    else:
        with pytest.raises(Rejected, match=why) as err:
            connector.check_user_name(name)
        assert err.value.field  # names the field the target would refuse
