"""SCIM specifics beyond the contract suite: every auth mode over real HTTP, and PUT when PATCH is off."""

import os

import pytest
import requests

from connectors.errors import AuthFailed
from connectors.scim2 import filter_eq
from connectors.factory import get_connector
from models.config import ConnectorConfig
from sandbox.scim import ScimSandbox
from test_connector_contract import make_account


def connector_for(sandbox: ScimSandbox, name: str, auth: dict, **extra):
    cfg = ConnectorConfig.model_validate({"name": name, "type": "scim2",
                                          "scim2": {"base_url": sandbox.url, "auth": auth, **extra}})
    return get_connector(cfg)


def test_basic_auth(monkeypatch):
    monkeypatch.setenv("T_SCIM_PW", "correct horse")
    with ScimSandbox(basic_users={"provisioner": "correct horse"}) as sandbox:
        good = connector_for(sandbox, "basic-ok", {"type": "basic", "username": "provisioner", "password": "env:T_SCIM_PW"})
        assert good.create_user(make_account()).id
        monkeypatch.setenv("T_SCIM_PW_BAD", "battery staple")
        bad = connector_for(sandbox, "basic-bad", {"type": "basic", "username": "provisioner", "password": "env:T_SCIM_PW_BAD"})
        with pytest.raises(AuthFailed) as info:
            bad.find_user(user_name="x")
        assert "battery staple" not in str(info.value)


def test_oauth2_client_credentials_with_one_refresh(monkeypatch):
    monkeypatch.setenv("T_SCIM_SECRET", "s3cret-for-oauth")
    with ScimSandbox(oauth_clients={"outbound": "s3cret-for-oauth"}) as sandbox:
        auth = {"type": "oauth2", "token_url": sandbox.token_url, "client_id": "outbound",
                "client_secret": "env:T_SCIM_SECRET", "scope": "scim"}
        connector = connector_for(sandbox, "oauth-ok", auth)
        connector.create_user(make_account())
        assert len(sandbox.issued_tokens) == 1  # cached, not fetched per request
        sandbox.revoke_tokens()  # the next call gets a 401, refreshes once and succeeds
        connector.create_user(make_account())
        assert len(sandbox.issued_tokens) == 2
        monkeypatch.setenv("T_SCIM_SECRET_BAD", "nope")
        bad = connector_for(sandbox, "oauth-bad", {**auth, "client_secret": "env:T_SCIM_SECRET_BAD"})
        with pytest.raises(AuthFailed):
            bad.find_user(user_name="x")


def test_put_when_patch_is_not_supported_keeps_other_attributes():
    with ScimSandbox(patch_supported=False) as sandbox:
        os.environ["T_SCIM_TOKEN_PUT"] = sandbox.token
        connector = connector_for(sandbox, "put-only", {"type": "bearer", "token": "env:T_SCIM_TOKEN_PUT"})
        created = connector.create_user(make_account())
        # Something set in the target by someone else: an update of ours must not reset it.
        raw = requests.get(f"{sandbox.url}/Users/{created.id}", headers={"Authorization": f"Bearer {sandbox.token}"}).json()
        raw.pop("meta", None)
        raw["title"] = "Chief Tester"
        requests.put(f"{sandbox.url}/Users/{created.id}", json=raw,
                     headers={"Authorization": f"Bearer {sandbox.token}"}).raise_for_status()
        connector.update_user(created.id, {"family_name": "Byron"}, created)
        connector.disable_user(created.id)
        methods = {m for m, p in sandbox.requests if p.startswith(f"/v2/Users/{created.id}")}
        assert "PATCH" not in methods and "PUT" in methods
        stored = requests.get(f"{sandbox.url}/Users/{created.id}", headers={"Authorization": f"Bearer {sandbox.token}"}).json()
        assert stored["name"]["familyName"] == "Byron" and stored["active"] is False
        assert stored["title"] == "Chief Tester"


@pytest.mark.parametrize("value, expected", [
    ('plain', 'userName eq "plain"'),
    ('a"b', 'userName eq "a\\"b"'),
    ('back\\slash', 'userName eq "back\\\\slash"'),
    ('ünï', 'userName eq "ünï"'),
])
def test_filter_values_are_escaped(value, expected):
    assert filter_eq("userName", value) == expected
