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
