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
