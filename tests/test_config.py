import pytest

from models.config import load_config, parse_config
from models.validation import InvalidInput

MINIMAL = """
tenant_domain: example.com
connectors:
  - name: app
    type: scim2
    scim2:
      base_url: http://127.0.0.1:9000/scim/v2
      auth: {type: bearer, token: env:APP_TOKEN}
"""


def test_minimal_form_loads(tmp_path):
    path = tmp_path / "outbound.yaml"
    path.write_text(MINIMAL)
    config = load_config(path)
    app = config.connector("app")
    assert app.enabled and app.organization_level and app.deprovision_mode == "delete"
    assert app.scim2.auth.token == "env:APP_TOKEN"


def test_config_found_through_env_var(tmp_path, monkeypatch):
    path = tmp_path / "elsewhere.yaml"
    path.write_text(MINIMAL)
    monkeypatch.setenv("OUTBOUND_CONFIG", str(path))
    assert load_config().tenant_domain == "example.com"


def test_every_bad_field_is_listed_by_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""
tenant_domain: example.com
connectors:
  - name: app
    type: scim2
    deprovision: shred
    scim2:
      base_url: ftp://example.com
      auth: {type: bearer, token: s3cr3t-literal-value}
  - name: app2
    type: scim2
    colour: blue
""")
    with pytest.raises(InvalidInput) as info:
        load_config(path)
    message = str(info.value)
    assert "connectors[0].deprovision" in message and "'shred'" in message
    assert "connectors[0].scim2.auth.bearer.token" in message or "connectors[0].scim2.auth" in message
    assert "connectors[1].colour: unknown field" in message
    assert "connectors[1]" in message and "scim2" in message
    assert "s3cr3t-literal-value" not in message  # a secret put in by mistake is never echoed


def test_plain_http_only_on_loopback():
    data = {"tenant_domain": "x", "connectors": [{"name": "a", "type": "scim2", "scim2": {
        "base_url": "http://scim.example.com/v2", "auth": {"type": "bearer", "token": "env:T"}}}]}
    with pytest.raises(InvalidInput, match="loopback"):
        parse_config(data)
    data["connectors"][0]["scim2"]["allow_insecure_http"] = True
    assert parse_config(data).connectors[0].scim2.base_url == "http://scim.example.com/v2"


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(InvalidInput, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("tenant_domain: [unclosed\n")
    with pytest.raises(InvalidInput, match="line"):
        load_config(bad)


def test_unknown_connector_in_identity_provider():
    data = {"tenant_domain": "x", "identity_providers": [{"name": "idp", "connectors": ["nope"]}]}
    with pytest.raises(InvalidInput, match="unknown connectors: nope"):
        parse_config(data)


def test_field_errors_duplicate_names_and_patterns_are_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""
tenant_domain: example.com
user_stores:
  LDAP: {username_pattern: "([unclosed"}
connectors:
  - name: app
    type: scim2
    pattern: "{XX}_{UN"
    deprovision: shred
    scim2: {base_url: https://scim.example.com, auth: {type: bearer, token: env:T}}
  - name: app
    type: scim2
    pattern: "{UN}_{UD}"
    scim2: {base_url: https://scim.example.com, auth: {type: bearer, token: env:T}}
""")
    with pytest.raises(InvalidInput) as info:
        load_config(path)
    message = str(info.value)
    assert "connectors[0].deprovision" in message
    assert "connectors[0].pattern: pattern '{XX}_{UN': at position 2, unknown placeholder 'XX'" in message
    assert "allowed placeholders: {UN} {UD} {TD} {IDP}" in message
    assert "connectors[1].pattern: pattern '{UN}_{UD}': at position 5, unexpected '_{UD}'" in message
    assert "connectors: the name 'app' is used more than once (connectors[0], connectors[1])" in message
    assert "user_stores.LDAP.username_pattern: not a valid regular expression" in message


@pytest.mark.parametrize("pattern, position, what", [
    ("{UN", 4, "expected ',' or '}', the pattern ends"), ("UN", 1, "expected '{'"), ("{}", 2, "expected a placeholder"),
    ("{UN,,TD}", 5, "expected a placeholder"), ("{UN;TD}", 4, "expected ',' or '}'"), ("{UN, un}", 6, "unknown placeholder 'un'"),
])
def test_pattern_errors_name_the_position(pattern, position, what):
    data = {"tenant_domain": "x", "connectors": [{"name": "a", "type": "scim2", "pattern": pattern, "scim2": {
        "base_url": "https://scim.example.com", "auth": {"type": "bearer", "token": "env:T"}}}]}
    with pytest.raises(InvalidInput) as info:
        parse_config(data)
    assert f"at position {position}, {what}" in str(info.value), info.value


def test_duplicates_alone_are_still_refused():
    entry = {"name": "a", "type": "scim2", "scim2": {"base_url": "https://s.example.com",
                                                      "auth": {"type": "bearer", "token": "env:T"}}}
    with pytest.raises(InvalidInput) as info:
        parse_config({"tenant_domain": "x", "connectors": [entry, dict(entry)]})
    assert info.value.problems == ["connectors: the name 'a' is used more than once (connectors[0], connectors[1]); "
                                   "names must be unique"]


def test_names_are_explained_in_words_not_regex():
    data = {"tenant_domain": "x", "connectors": [{"name": "bad name!", "type": "scim2", "scim2": {
        "base_url": "https://s.example.com", "auth": {"type": "bearer", "token": "env:T"}}}]}
    with pytest.raises(InvalidInput) as info:
        parse_config(data)
    assert "connectors[0].name: must be 1 to 64 of A-Z a-z 0-9 _ . -" in str(info.value)
    assert "^[" not in str(info.value)


def test_retention_events_and_user_stores_have_defaults_and_limits():
    config = parse_config({"tenant_domain": "x"})
    r = config.retention
    assert (r.events_days, r.operations_days, r.attempts_days) == (90, 90, 30)
    assert config.events.upsert_unknown_users is False
    assert config.username_rule("ANY").pattern == r"^[\S]{3,30}$"
    with pytest.raises(InvalidInput, match="retention.attempts_days"):
        parse_config({"tenant_domain": "x", "retention": {"attempts_days": 0}})
    with pytest.raises(InvalidInput, match="events.upsert_unknown_users"):
        parse_config({"tenant_domain": "x", "events": {"upsert_unknown_users": "sometimes"}})
