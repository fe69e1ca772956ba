"""Attribute mappings: the configuration (parsing, validation, the field_map alias), evaluation, and
each connector writing and reading mapped attributes against its sandbox."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.base import Account, BatchOp
from connectors.factory import get_connector
from models.config import parse_config
from models.identity import UserView
from models.mapping import ENTERPRISE, compile_map
from models.validation import InvalidInput
from sandbox.google import GoogleSandbox
from sandbox.salesforce import SalesforceSandbox
from sandbox.scim import ScimSandbox
from targets import google_config, salesforce_config, scim2_config
from tasks.plan import desired_account

DEPT = f"{ENTERPRISE}:department"
CUSTOM = "urn:example:params:scim:schemas:extension:acme:2.0:User"
SCIM2 = {"base_url": "http://127.0.0.1:1/v2", "auth": {"type": "bearer", "token": "env:X"}}


def config_with(attributes: dict, type_: str = "scim2", **section):
    settings_ = {"scim2": SCIM2,
                 "google": {"service_account_key": "env:K", "admin_email": "admin@example.com"},
                 "salesforce": {"auth": {"type": "client_credentials", "client_id": "id", "client_secret": "env:S"}}}
    return parse_config({"tenant_domain": "example.com", "connectors": [
        {"name": "c", "type": type_, "attributes": attributes, type_: {**settings_[type_], **section}}]})


def problems(attributes: dict, type_: str = "scim2", **section) -> str:
    with pytest.raises(InvalidInput) as err:
        config_with(attributes, type_, **section)
    return str(err.value)


def user(**attributes) -> UserView:
    return UserView(id="u1", username="ann", user_store="PRIMARY", tenant="example.com", email="Ann@Example.com",
                    given_name="Ann", family_name=None, display_name=None, active=True, deleted=False, source="api",
                    attributes=attributes)


# --- the configuration -------------------------------------------------------------------------

def test_no_mapping_leaves_the_account_as_before():
    cfg = config_with({}).connectors[0]
    account = desired_account(user(dept="R&D"), "ann", cfg)
    assert account.extra == {} and account.display_name == "Ann" and account.email == "Ann@Example.com"


def test_fields_attributes_constants_templates_and_filters():
    cfg = config_with({DEPT: "attributes.dept", "title": "attributes.title|default:Staff",
                       "displayName": "{given_name} {family_name} ({attributes.dept|upper})",
                       "userType": {"constant": "Employee"}, "nickName": "email|lower",
                       "profileUrl": "https://intranet/{{people}}/{user_name}"}).connectors[0]
    account = desired_account(user(dept="R&D"), "ann.x", cfg)
    assert account.display_name == "Ann (R&D)"  # a mapped core field replaces its default; no double space
    assert account.extra == {DEPT: "R&D", "title": "Staff", "userType": "Employee", "nickName": "ann@example.com",
                             "profileUrl": "https://intranet/{people}/ann.x"}
    assert cfg.attribute_map.explain()[0] == "displayName ← {given_name} {family_name} ({attributes.dept|upper})"
    # A value that comes out empty holds nothing: the target's value is left alone.
    assert desired_account(user(), "ann", cfg).extra[DEPT] is None
    template = compile_map("salesforce", {"Cost_Center__c": "CC-{attributes.dept|upper}"}).extra[0][1]
    assert template.value({}, {"dept": "ops"}) == "CC-OPS" and template.value({}, {}) is None


@pytest.mark.parametrize("attributes, named", [
    ({"titel": "attributes.title"}, "attributes.titel: unknown SCIM attribute 'titel'; valid: displayName"),
    ({"title": "atributes.title"}, "attributes.title: unknown local value 'atributes.title'"),
    ({"title": "{given_name"}, "attributes.title: template '{given_name': unmatched '{'"),
    ({"title": "{}"}, "attributes.title: template '{}': empty placeholder"),
    ({"title": "email|shout"}, "attributes.title: unknown filter 'shout' on 'email'"),
    ({"title": "attributes."}, "attributes.title: 'attributes.' needs a key"),
    ({"title": {"constant": [1]}}, "attributes.title: a constant is written {constant:"),
    ({"userName": "email"}, "attributes.userName: 'userName' cannot be mapped: the username comes from"),
    ({f"{ENTERPRISE}:dept": "email"}, "the enterprise extension has no attribute 'dept'; valid: employeeNumber"),
    ({"displayName": "email", "title": "email"}, None),
])
def test_a_bad_mapping_is_refused_at_load_naming_the_target_and_the_value(attributes, named):
    if named is None:
        config_with(attributes)
        return
    text = problems(attributes)
    assert named in text, text
    assert f"(got {next(iter(attributes.values()))!r})" in text


def test_targets_are_checked_per_connector_type():
    assert "unknown Google user field 'department'" in problems({"department": "email"}, "google")
    assert "customSchemas.<schema>.<field>" in problems({"customSchemas.x": "email"}, "google")
    assert "'primaryEmail' cannot be mapped" in problems({"primaryEmail": "email"}, "google")
    assert "'Name' cannot be mapped: Salesforce computes it" in problems({"Name": "email"}, "salesforce")
    assert "'Cost Center' is not a Salesforce field name" in problems({"Cost Center": "email"}, "salesforce")
    config_with({"organizations.department": "attributes.dept", "phones.mobile": "attributes.mobile",
                 "relations.manager": "attributes.manager", "customSchemas.hr.badge": "attributes.badge"}, "google")
    config_with({"Department": "attributes.dept", "Cost_Center__c": "attributes.cc"}, "salesforce")
    config_with({f"{CUSTOM}:costCenter": "attributes.cc"})  # a custom schema: the server's /Schemas decide


def test_field_map_is_an_alias_of_attributes():
    cfg = config_with({"Title": "attributes.title"}, "salesforce", field_map={"Department": "dept"}).connectors[0]
    assert dict(cfg.attribute_map.extra)["Department"].text == "attributes.dept"
    assert cfg.attribute_map.extra_targets == ("Title", "Department")
    text = problems({"Department": "attributes.other"}, "salesforce", field_map={"Department": "dept"})
    assert "salesforce.field_map.Department: also mapped in attributes.Department" in text


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_any_text_either_compiles_or_is_refused_with_a_message(text):
    try:
        source = compile_map("scim2", {"title": text}).extra[0][1]
    except ValueError as exc:
        assert str(exc).startswith("title: ") and repr(text) in str(exc)
    else:
        value = source.value({"given_name": "Ann"}, {"k": 1})
        assert value is None or isinstance(value, (str, int))


# --- SCIM ------------------------------------------------------------------------------------

SCIM_MAP = {DEPT: "attributes.dept", f"{ENTERPRISE}:manager": "attributes.manager", "title": "attributes.title",
            "phoneNumbers": "attributes.phone", f"{CUSTOM}:costCenter": "attributes.cc"}


def scim_connector(server, **extra):
    cfg = scim2_config(server, **extra).model_dump(mode="json", exclude_unset=True)
    from models.config import ConnectorConfig

    return get_connector(ConnectorConfig.model_validate({**cfg, "attributes": SCIM_MAP}))


def mapped_account(name: str, **values) -> Account:
    return Account(user_name=name, external_id=f"id-{name}", given_name="Ann", family_name="Smith",
                   extra={DEPT: values.get("dept"), f"{ENTERPRISE}:manager": values.get("manager"),
                          "title": values.get("title"), "phoneNumbers": values.get("phone"),
                          f"{CUSTOM}:costCenter": values.get("cc")})


@pytest.mark.parametrize("patch", [True, False])
def test_scim_writes_and_reads_the_enterprise_extension_custom_schemas_and_phones(patch):
    with ScimSandbox(custom_schemas=(CUSTOM,), patch_supported=patch) as server:
        scim = scim_connector(server)
        boss = scim.create_user(mapped_account("boss", dept="Board"))
        ann = scim.create_user(mapped_account("ann", dept="R&D", manager=boss.id, title="Eng", phone="+1 555", cc="42"))
        assert ann.extra == {DEPT: "R&D", f"{ENTERPRISE}:manager": boss.id, "title": "Eng", "phoneNumbers": "+1 555",
                             f"{CUSTOM}:costCenter": "42"}
        raw = next(u for u in server.users() if u["userName"] == "ann")
        assert raw[ENTERPRISE] == {"department": "R&D", "manager": {"value": boss.id}} and CUSTOM in raw["schemas"]
        assert raw["phoneNumbers"] == [{"value": "+1 555", "type": "work", "primary": True}]
        # PATCH (or GET + PUT on a server without PATCH) changes just the mapped attributes.
        updated = scim.update_user(ann.id, {f"extra.{DEPT}": "Ops", "extra.title": "Lead"}, ann)
        assert updated.extra[DEPT] == "Ops" and updated.extra["title"] == "Lead"
        assert scim.get_user(ann.id).extra[f"{CUSTOM}:costCenter"] == "42"


def test_scim_bulk_carries_mapped_attributes():
    with ScimSandbox(bulk=(True, 10, 1_048_576)) as server:
        scim = scim_connector(server)
        created = scim.apply_batch([BatchOp("create", account=mapped_account(f"u{i}", dept="R&D")) for i in range(3)])
        assert all(isinstance(a, Account) for a in created), created
        results = scim.apply_batch([BatchOp("update", remote_id=a.id, changes={f"extra.{DEPT}": "Ops"}) for a in created])
        assert results == [None] * 3
        assert {a.extra[DEPT] for a in scim.iter_users()} == {"Ops"}
        assert [r for r in server.requests if r[0] == "PATCH"] == []  # the updates went through /Bulk


# --- Google ------------------------------------------------------------------------------------

def test_google_writes_organizations_phones_relations_and_custom_schemas_keeping_other_entries():
    from models.config import ConnectorConfig

    with GoogleSandbox() as server:
        base = google_config(server).model_dump(mode="json", exclude_unset=True)
        cfg = ConnectorConfig.model_validate({**base, "attributes": {
            "organizations.department": "attributes.dept", "organizations.title": "attributes.title",
            "phones.work": "attributes.phone", "relations.manager": "attributes.manager",
            "customSchemas.hr.badge": "attributes.badge"}})
        google = get_connector(cfg)
        domain = server.domains[0]
        extra = {"organizations.department": "R&D", "organizations.title": "Eng", "phones.work": "+1 555",
                 "relations.manager": f"boss@{domain}", "customSchemas.hr.badge": 17}
        ann = google.create_user(Account(user_name=f"ann@{domain}", given_name="Ann", family_name="Smith",
                                         external_id="id-ann", extra=extra))
        assert google.get_user(ann.id).extra == extra
        # Someone adds a mobile number and a second organization in the Admin console: ours change, theirs stay.
        raw = server._users[ann.id]
        raw["phones"].append({"type": "mobile", "value": "+1 777"})
        raw["organizations"].append({"name": "Volunteers", "title": "Chair"})
        changes = {"extra.organizations.department": "Ops", "extra.phones.work": "+1 666",
                   "extra.customSchemas.hr.badge": 18}
        updated = google.update_user(ann.id, changes, ann)
        assert updated.extra["organizations.department"] == "Ops" and updated.extra["organizations.title"] == "Eng"
        assert {p["type"]: p["value"] for p in raw["phones"]} == {"work": "+1 666", "mobile": "+1 777"}
        assert raw["organizations"][1] == {"name": "Volunteers", "title": "Chair"}
        # The batch path reads the users' arrays first, in one batch, and does the same.
        [result] = google.apply_batch([BatchOp("update", remote_id=ann.id, changes={"extra.phones.work": "+1 444"})])
        assert result.extra == {**updated.extra, "phones.work": "+1 444"}
        assert {p["type"]: p["value"] for p in raw["phones"]} == {"work": "+1 444", "mobile": "+1 777"}
        # As Google, the sandbox shows custom schemas only in the full projection (which the connector asks for).
        assert "customSchemas" not in google._json(google._request("GET", f"users/{ann.id}"))


# --- Salesforce --------------------------------------------------------------------------------

def test_salesforce_writes_standard_and_custom_fields():
    from models.config import ConnectorConfig

    with SalesforceSandbox(custom_fields=("Cost_Center__c",)) as server:
        base = salesforce_config(server).model_dump(mode="json", exclude_unset=True)
        cfg = ConnectorConfig.model_validate({**base, "attributes": {"Department": "attributes.dept",
                                                                       "Cost_Center__c": "attributes.cc"}})
        sf = get_connector(cfg)
        ann = sf.create_user(Account(user_name="ann@example.com", family_name="Smith", email="ann@example.com",
                                     extra={"Department": "R&D", "Cost_Center__c": None}))
        assert server.users[ann.id]["Department"] == "R&D" and server.users[ann.id].get("Cost_Center__c") is None
        assert sf.get_user(ann.id).extra == {"Department": "R&D", "Cost_Center__c": None}
        sf.update_user(ann.id, {"extra.Cost_Center__c": "CC-9"}, ann)
        assert sf.get_user(ann.id).extra["Cost_Center__c"] == "CC-9"


def test_explain_shows_each_mapped_attribute_with_its_source_and_value(tmp_path, sqlite_url):
    import yaml
    from typer.testing import CliRunner

    from deployments.cli import app
    from models.ingest import accept
    from models.config import Config

    data = {"tenant_domain": "example.com", "connectors": [{"name": "app", "type": "scim2", "scim2": SCIM2,
                                                            "attributes": {DEPT: "attributes.dept",
                                                                           "title": "attributes.title"}}]}
    path = tmp_path / "outbound.yaml"
    path.write_text(yaml.safe_dump(data))
    accept({"id": "e1", "type": "user.created", "user": {"username": "ann", "attributes": {"dept": "R&D"}}},
           Config.model_validate(data))
    result = CliRunner().invoke(app, ["explain", "ann", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "attributes:      title ← attributes.title = (nothing: the target's value is left alone)" in result.output
    assert f"\n                   {DEPT} ← attributes.dept = 'R&D'\n" in result.output


def test_the_probe_checks_mapped_attributes_against_what_the_target_has():
    from connectors.probe import check as probe
    from models.config import ConnectorConfig

    def errors(profile) -> list[str]:
        return [p["what"] for p in profile["problems"] if p["severity"] == "error"]

    with ScimSandbox(custom_schemas=(CUSTOM,)) as server:
        base = scim2_config(server).model_dump(mode="json", exclude_unset=True)
        good = {DEPT: "attributes.dept", f"{CUSTOM}:costCenter": "attributes.cc"}
        assert errors(probe(ConnectorConfig.model_validate({**base, "attributes": good}))) == []
        bad = {f"{CUSTOM}:costCentre": "attributes.cc", "urn:other:schema:1.0:User:x": "attributes.x"}
        assert errors(probe(ConnectorConfig.model_validate({**base, "attributes": bad}))) == [
            f"attributes: schema {CUSTOM} has no attribute 'costCentre'",
            "attributes: urn:other:schema:1.0:User:x maps to schema urn:other:schema:1.0:User, which the server "
            "does not advertise"]
    with SalesforceSandbox(custom_fields=("Cost_Center__c",)) as sf:
        base = salesforce_config(sf).model_dump(mode="json", exclude_unset=True)
        ok = ConnectorConfig.model_validate({**base, "attributes": {"Department": "attributes.d",
                                                                     "Cost_Center__c": "attributes.c"}})
        assert errors(probe(ok)) == []
        wrong = ConnectorConfig.model_validate({**base, "attributes": {"Cost_Centre__c": "attributes.c",
                                                                        "UserType": "attributes.t"}})
        assert errors(probe(wrong)) == ["attributes: the User object has no field Cost_Centre__c",
                                        "attributes: UserType cannot be written on the User object"]
