"""Secrets never leak: run the demo-like flow through all three sandboxes, failing scenarios and the
operator CLI with distinctive secret values, then search every log line (all loggers at DEBUG, and
the run logs kept by Prefect), every artifact (read back through the Prefect API), every CLI output,
every exception message and every row of the state store: zero hits. And TLS is verified by default;
plain http:// is refused off loopback unless allow_insecure_http.
"""

import asyncio
import json
import logging
import os
import uuid

import pytest
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from deployments.cli import app
from deployments.webhooks import new_secret
from helpers import event
from models.db import get_engine
from sandbox.google import GoogleSandbox
from sandbox.salesforce import SalesforceSandbox
from sandbox.scim import ScimSandbox
from sandbox.servers import Sandboxes

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()
MARK = uuid.uuid4().hex[:10]
SECRETS = {
    "scim_token": f"SCIM-TOKEN-{MARK}-zq",
    "sf_client_secret": f"SF-CLIENT-SECRET-{MARK}",
    "sf_password": f"SF-PASSWORD-{MARK}",
    "sf_security_token": f"SF-SECTOKEN-{MARK}",
    "api_hmac": f"API-HMAC-{MARK}",
    "api_webhook": new_secret(),
    "api_token": f"API-TOKEN-{MARK}",
    "oauth_client_secret": f"OAUTH-CLIENT-SECRET-{MARK}",
}


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        try:
            line = f"{record.name} {record.levelname} {record.getMessage()} {record.args!r}"
        except Exception:  # a record that cannot format is still searched by its parts
            line = f"{record.name} {record.msg!r} {record.args!r}"
        if record.exc_info:
            line += " " + logging.Formatter().formatException(record.exc_info)
        self.lines.append(line)


@pytest.fixture
def captured():
    handler = Collect()
    names = ["", "urllib3", "requests", "google", "google.auth", "prefect", "prefect.flow_runs", "prefect.task_runs",
             "httpx", "outbound", "connectors", "flows", "tasks", "simple_salesforce"]
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    yield handler
    for name in names:
        logging.getLogger(name).removeHandler(handler)
        logging.getLogger(name).setLevel(saved[name])


def secret_values(boxes: Sandboxes) -> dict[str, str]:
    """The known values plus the sandboxes' generated keys (searched by a distinctive slice)."""
    values = dict(SECRETS)
    for name, pem in (("google_private_key", boxes.google.service_account_info()["private_key"]),
                      ("sf_private_key", boxes.salesforce.private_key_pem)):
        body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        values[name] = body[len(body) // 2]
        values[name + "_escaped"] = json.dumps(pem)[40:100]  # as it would look inside JSON
    values["google_access_token_prefix"] = "ya29.sandbox-"
    return values


def config_text(boxes: Sandboxes, scim_token_env: str = "SECRETS_SCIM_TOKEN") -> str:
    sf = boxes.salesforce
    return boxes.config_yaml().replace("env:SANDBOX_SCIM_TOKEN", f"env:{scim_token_env}").replace(
        f'auth: {{type: jwt, client_id: {sf.client_id}, username: {sf.username},\n'
        f'              private_key: "file:{sf.private_key_file}"}}',
        f'auth: {{type: password, client_id: {sf.client_id}, client_secret: env:SECRETS_SF_SECRET, '
        f'username: {sf.username}, password: env:SECRETS_SF_PASSWORD, security_token: env:SECRETS_SF_TOKEN}}') + (
        "api: {webhook_secrets: [env:SECRETS_API_WEBHOOK], legacy_signature: true, hmac_secret: env:SECRETS_API_HMAC, "
        "token: env:SECRETS_API_TOKEN}\n")


def dump_store() -> list[str]:
    engine = get_engine()
    rows = []
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            rows += [f"{table} {tuple(r)!r}" for r in conn.execute(text(f'SELECT * FROM "{table}"'))]
    return rows


async def prefect_records() -> tuple[list[str], list[str]]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        artifacts = await client.read_artifacts(limit=200)
        logs = await client.read_logs(limit=200)
    return ([f"{a.key} {a.type} {a.description} {a.data!r}" for a in artifacts],
            [f"{log.name} {log.message}" for log in logs])


def test_no_secret_appears_anywhere(tmp_path, sqlite_url, captured, monkeypatch):
    from connectors.factory import get_connector
    from connectors.errors import ConnectorError
    from deployments.api import create_app, sign
    from deployments.webhooks import sign_headers
    from models.config import load_config

    places: dict[str, list[str]] = {"cli": [], "exceptions": [], "api": []}
    with ScimSandbox(token=SECRETS["scim_token"]) as scim, GoogleSandbox() as google, SalesforceSandbox() as sf:
        sf.client_secret, sf.password = SECRETS["sf_client_secret"], SECRETS["sf_password"]
        sf.security_token = SECRETS["sf_security_token"]
        boxes = Sandboxes(scim=scim, google=google, salesforce=sf)
        values = secret_values(boxes)
        monkeypatch.setenv("SANDBOX_GOOGLE_KEY", json.dumps(google.service_account_info()))
        for env, key in (("SECRETS_SCIM_TOKEN", "scim_token"), ("SECRETS_SF_SECRET", "sf_client_secret"),
                         ("SECRETS_SF_PASSWORD", "sf_password"), ("SECRETS_SF_TOKEN", "sf_security_token"),
                         ("SECRETS_API_HMAC", "api_hmac"), ("SECRETS_API_TOKEN", "api_token"),
                         ("SECRETS_API_WEBHOOK", "api_webhook"),
                         ("SECRETS_WRONG_TOKEN", "oauth_client_secret")):
            monkeypatch.setenv(env, SECRETS[key])
        good = tmp_path / "outbound.yaml"
        good.write_text(config_text(boxes))
        bad = tmp_path / "wrong-token.yaml"  # SCIM answers 401 to this token: an auth failure
        bad.write_text(config_text(boxes, scim_token_env="SECRETS_WRONG_TOKEN"))

        def cli(*args, config=good):
            result = runner.invoke(app, [*args, *(["--config", str(config)] if config else [])])
            places["cli"].append(f"{args} exit={result.exit_code} {result.output}")
            if result.exception and not isinstance(result.exception, SystemExit):
                places["exceptions"].append(f"{type(result.exception).__name__}: {result.exception!r}")
            return result

        def send(ev, config=good):
            path = tmp_path / f"{ev['id']}.json"
            path.write_text(json.dumps(ev))
            return cli("event", str(path), "-v", config=config)

        # The demo's story: create (all three targets), update, disable, delete.
        alice = event(username="alice", roles=["sales"], groups=["all-staff"], email="alice@example.com",
                      given_name="Alice", family_name="Liddell")
        assert send(alice).exit_code == 0, places["cli"][-1]
        assert send(event("user.updated", username="alice", family_name="Hargreaves")).exit_code == 0
        assert send(event("user.created", username="bob", email="bob@example.com", given_name="Bob",
                          family_name="Builder")).exit_code == 0
        assert send(event("user.disabled", username="bob")).exit_code == 0
        # Failing scenarios: a wrong token (auth failure), a request the target rejects, faults.
        assert send(event("user.created", username="carol", email="carol@example.com", given_name="Carol",
                          family_name="C"), config=bad).exit_code == 1
        assert send(event("user.created", username="dave", email="a..b@example.com", given_name="D",
                          family_name="D")).exit_code in (0, 1)
        from sandbox.faults import FaultPlan

        for box in (scim, google, sf):  # faults on every target: 5xx, 429 and dropped connections
            box.faults.plan = FaultPlan(rate=0.5, kinds=("5xx", "429", "drop"), seed=3)
        send(event("user.updated", username="alice", given_name="Al"))
        for box in (scim, google, sf):
            box.faults.plan = FaultPlan()
        for args in (("runs",), ("runs", "--json"), ("explain", "alice"), ("explain", "carol"),
                     ("runs", "--status", "failed")):
            cli(*args, config=good if args[0] == "explain" else None)
        if "status" in {c.name or c.callback.__name__ for c in app.registered_commands}:
            cli("status")

        # Exceptions raised straight from connectors with bad credentials.
        cfg = load_config(bad)
        for name in ("scim-app",):
            try:
                get_connector(cfg.connector(name)).find_user(user_name="nobody@example.com")
            except ConnectorError as exc:
                chain, cur = [], exc
                while cur is not None:
                    chain.append(f"{type(cur).__name__}: {cur} {cur!r} {getattr(cur, 'args', '')}")
                    cur = cur.__cause__ or cur.__context__
                places["exceptions"] += chain
        monkeypatch.setenv("SECRETS_SF_PASSWORD", "not-the-password")
        try:
            get_connector(load_config(good).connector("salesforce")).find_user(user_name="x@example.com")
        except ConnectorError as exc:
            places["exceptions"].append(f"{type(exc).__name__}: {exc} {exc!r}")
        monkeypatch.setenv("SECRETS_SF_PASSWORD", SECRETS["sf_password"])

        # The event API: bad and good authentication, its problems and its status answers.
        from fastapi.testclient import TestClient

        with TestClient(create_app(load_config(good), str(good), dispatch=lambda *a: None)) as client:
            body = json.dumps(event(username="erin")).encode()
            for headers in ({"Authorization": "Bearer wrong"}, {"X-Outbound-Signature": sign("nope", body)},
                            {"X-Outbound-Signature": sign(SECRETS["api_hmac"], body)},
                            sign_headers(new_secret(), body), sign_headers(SECRETS["api_webhook"], body),
                            {"Authorization": f"Bearer {SECRETS['api_token']}"}):
                r = client.post("/v1/events", content=body, headers=headers)
                places["api"].append(f"{r.status_code} {r.text} {dict(r.headers)}")
            r = client.get(f"/v1/events/{alice['id']}", headers={"Authorization": f"Bearer {SECRETS['api_token']}"})
            places["api"].append(r.text)
            places["api"].append(client.get("/openapi.json").text)

    artifacts, run_logs = asyncio.run(prefect_records())
    places.update(log_lines=captured.lines, prefect_run_logs=run_logs, artifacts=artifacts, store_rows=dump_store())
    hits = [(where, name, item[:200]) for where, items in places.items() for item in items
            for name, value in values.items() if value in item]
    searched = {where: len(items) for where, items in places.items()}
    print(f"\nsecret values: {len(values)}; places searched: {sum(searched.values())} {searched}; hits: {len(hits)}")
    assert len(captured.lines) > 50 and len(artifacts) > 0 and len(places["store_rows"]) > 10
    assert any("Authorization" in line or "POST" in line for line in captured.lines)  # urllib3 did log at DEBUG
    assert hits == [], hits


# --- TLS and plain http ------------------------------------------------------------------------

def test_tls_is_verified_by_default(monkeypatch):
    """Without ca_bundle the sandbox's private CA is not trusted: a clear error, nothing sent."""
    from connectors.errors import ConnectorError
    from connectors.factory import get_connector
    from targets import salesforce_config

    # This machine sets REQUESTS_CA_BUNDLE (and may set CURL_CA_BUNDLE); requests lets those override
    # Session.verify when trust_env is on, so with them set the test would prove the environment's
    # CA choice, not ours. Unset, the connector must fall back to verification against the system CAs.
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(var, raising=False)
    with SalesforceSandbox() as sandbox:
        cfg = salesforce_config(sandbox)
        cfg.salesforce.ca_bundle = None
        assert cfg.salesforce.verify_tls is True
        before = sandbox.api_calls
        with pytest.raises(ConnectorError) as info:
            get_connector(cfg).find_user(user_name="nobody@example.com")
        message = str(info.value)
        assert "certificate" in message.lower() or "ssl" in message.lower(), message
        assert sandbox.api_calls == before
        # With the sandbox's CA, the same connector works.
        assert get_connector(salesforce_config(sandbox)).find_user(user_name="nobody@example.com") is None


def test_plain_http_needs_loopback_or_allow_insecure_http():
    from models.config import parse_config
    from models.validation import InvalidInput

    def scim(url, **extra):
        return {"tenant_domain": "x", "connectors": [{"name": "a", "type": "scim2", "scim2": {
            "base_url": url, "auth": {"type": "bearer", "token": "env:T"}, **extra}}]}

    assert parse_config(scim("http://127.0.0.1:9/v2")).connectors[0].scim2.base_url == "http://127.0.0.1:9/v2"
    with pytest.raises(InvalidInput, match="loopback"):
        parse_config(scim("http://scim.example.com/v2"))
    assert parse_config(scim("http://scim.example.com/v2", allow_insecure_http=True))
    with pytest.raises(InvalidInput, match="credentials"):
        parse_config(scim(f"https://u:{SECRETS['scim_token']}@scim.example.com/v2"))
