"""`make demo`, last phase: WSO2-shaped webhooks sent through the real endpoint, `POST /v1/webhooks/wso2`.

The event API is served on a free loopback port for the phase; the webhooks are signed as WSO2
Identity Server signs them. What they store is drained by the demo like every other event.
"""

import json
import os
import secrets
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

SECRET_ENV, TOKEN_ENV = "DEMO_WSO2_WEBHOOK_SECRET", "DEMO_API_TOKEN"
EVENTS = "https://schemas.identity.wso2.org/events/"


def config_section() -> str:
    """The configuration the phase needs (secrets set in this process's environment, by reference)."""
    os.environ.setdefault(SECRET_ENV, secrets.token_hex(32))
    os.environ.setdefault(TOKEN_ENV, secrets.token_hex(16))
    return f"api: {{token: env:{TOKEN_ENV}}}\nsources:\n  wso2:\n    secrets: [env:{SECRET_ENV}]\n"


def _webhook(tenant: str, kind: str, data: dict) -> dict:
    # The shape of WSO2 Identity Server 7's documented examples (docs/sources.md).
    return {"iss": f"https://localhost:9443/t/{tenant}", "jti": str(uuid.uuid4()), "iat": int(time.time() * 1000),
            "rci": str(uuid.uuid4()), "events": {EVENTS + kind: {
                **data, "tenant": {"id": "1", "name": tenant}, "userStore": {"id": "UFJJTUFSWQ==", "name": "PRIMARY"}}}}


def sample_webhooks(tenant: str) -> list[dict]:
    def claims(username, given, family):
        return [{"uri": "http://wso2.org/claims/username", "value": username},
                {"uri": "http://wso2.org/claims/emailaddress", "value": f"{username}@{tenant}"},
                {"uri": "http://wso2.org/claims/givenname", "value": given},
                {"uri": "http://wso2.org/claims/lastname", "value": family}]

    return [
        _webhook(tenant, "user/event-type/userCreated", {"initiatorType": "ADMIN", "action": "REGISTER", "user": {
            "id": "wso2-demo-1", "claims": claims("wso2.ada", "Ada", "Lovelace")}}),
        _webhook(tenant, "registration/event-type/registrationSuccess", {"initiatorType": "USER", "action": "REGISTER",
                 "user": {"id": "wso2-demo-2", "claims": claims("wso2.alan", "Alan", "Turing")}}),
        _webhook(tenant, "user/event-type/userProfileUpdated", {"initiatorType": "ADMIN", "action": "UPDATE", "user": {
            "id": "wso2-demo-1", "updatedClaims": [{"uri": "http://wso2.org/claims/lastname", "value": "King"}]}}),
        _webhook(tenant, "session/event-type/sessionEstablished", {"user": {"id": "wso2-demo-1"}}),
    ]


@contextmanager
def _served(app) -> Iterator[str]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="demo-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the event API did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def send(config, config_path: str) -> list[str]:
    """Post the sample webhooks through the event API; one line per webhook saying what became of it."""
    import httpx

    from deployments.api import create_app
    from deployments.webhooks_wso2 import PATH, signature

    lines = []
    # Dispatch does nothing here: the demo drains the outbox itself right after.
    with _served(create_app(config, config_path, dispatch=lambda *_: None)) as url:
        for hook in sample_webhooks(config.tenant_domain):
            body = json.dumps(hook).encode()
            response = httpx.post(url + PATH, content=body, timeout=30, headers={
                "Content-Type": "application/json", "x-wso2-event-signature": signature(os.environ[SECRET_ENV], body)})
            kind = next(iter(hook["events"])).removeprefix(EVENTS)
            answer = response.json()
            made = ", ".join(f"{e['type']} (trigger {e['trigger']})" for e in answer.get("events", [])) or "nothing"
            lines.append(f"{kind}: {response.status_code} -> {made}"
                         + (f"; ignored: {'; '.join(answer['ignored'])}" if answer.get("ignored") else ""))
    return lines
