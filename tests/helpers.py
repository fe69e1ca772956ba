"""Shared test set-up: a configuration for a sandbox, and events."""

import itertools
import os
import uuid
from pathlib import Path

_counter = itertools.count()


def write_config(tmp_path: Path, scim, *, extra_connector: str = "", top: str = "", name: str = "app",
                 attempts: int = 4) -> Path:
    env = f"TEST_SCIM_TOKEN_{next(_counter)}"
    os.environ[env] = scim.token
    path = tmp_path / f"outbound-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(f"""tenant_domain: example.com
retry: {{attempts: {attempts}, base_delay: 0.01, max_delay: 0.05, jitter: 0.1}}
{top}
connectors:
  - name: {name}
    type: scim2
    scim2:
      base_url: {scim.url}
      auth: {{type: bearer, token: env:{env}}}
{extra_connector}
""")
    return path


def event(type_: str = "user.created", username: str = "alice", trigger: str = "api", **user) -> dict:
    body = {"username": username}
    if type_ in ("user.created", "user.updated", "user.federated_login") and not user:
        body.update(email=f"{username}@example.com", given_name=username.title(), family_name="Liddell")
    body.update(user)
    ev = {"id": f"evt-{uuid.uuid4().hex[:12]}", "type": type_, "trigger": trigger, "user": body}
    return ev


def send(tmp_path: Path, config: Path, ev: dict) -> tuple[int, str]:
    """Run `outbound event` on `ev` in-process (under the session's Prefect harness)."""
    import json

    from typer.testing import CliRunner

    from deployments.cli import app

    path = tmp_path / f"{ev['id']}.json"
    path.write_text(json.dumps(ev))
    result = CliRunner().invoke(app, ["event", str(path), "--config", str(config)])
    return result.exit_code, result.output


def write_connector_config(tmp_path: Path, entry: dict) -> str:
    """A configuration of one connector (`entry`, as the config file has it) with fast retries; the
    connector factory's cache is cleared, so the next run builds the connector from this file."""
    import yaml

    from connectors.factory import clear_cache

    path = tmp_path / f"outbound-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({"tenant_domain": "example.com", "connectors": [entry],
                                    "retry": {"attempts": 2, "base_delay": 0.01, "max_delay": 0.05, "jitter": 0.1}}))
    clear_cache()
    return str(path)


def store_user(name: str, roles=(), active=True, **attributes) -> None:
    """Put `name` in the identity store (as the API would) with these roles and attributes."""
    from models.db import session_scope
    from models.events import EventUser
    from models.identity import upsert_user

    with session_scope() as session:
        upsert_user(session, EventUser(username=name, email=f"{name}@example.com", given_name=name.title(),
                                       family_name="Smith", roles=list(roles), attributes=attributes, active=active),
                    "example.com", source="api")


def reconcile(config, *args, code=0) -> str:
    """`outbound reconcile` in-process; its output, once its exit code is `code`."""
    from typer.testing import CliRunner

    from deployments.cli import app

    result = CliRunner().invoke(app, ["reconcile", "--config", config, *args])
    assert result.exit_code == code, result.output
    return result.output
