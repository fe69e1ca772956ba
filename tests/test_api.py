"""The event API: authentication, validation, size limit, idempotency, durability, status, OpenAPI."""

import base64
import json
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from deployments.api import create_app, sign
from deployments.webhooks import new_secret, sign_headers
from helpers import event, write_config
from models.config import load_config
from models.db import session_scope
from models.tables import Event, User
from sandbox.scim import ScimSandbox

WEBHOOK_SECRET, NEXT_SECRET, OTHER_SECRET = new_secret(), new_secret(24), new_secret()
HMAC_SECRET = "test-hmac-" + uuid.uuid4().hex
TOKEN = "test-token-" + uuid.uuid4().hex


@pytest.fixture
def scim():
    with ScimSandbox() as server:
        yield server


@pytest.fixture
def config_path(tmp_path, scim, monkeypatch):
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("TEST_WEBHOOK_SECRET_NEXT", NEXT_SECRET)
    monkeypatch.setenv("TEST_API_TOKEN", TOKEN)
    return write_config(tmp_path, scim, top="api: {webhook_secrets: [env:TEST_WEBHOOK_SECRET, env:TEST_WEBHOOK_SECRET_NEXT], "
                                             "token: env:TEST_API_TOKEN, max_body_bytes: 2048}")


class Recorder:
    """A dispatcher that only remembers what it was asked to start."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def __call__(self, event_id, event_type, trigger):
        self.calls.append((event_id, event_type, trigger))
        if self.fail:
            raise RuntimeError("Prefect is down")


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def client(config_path, sqlite_url, recorder):
    with TestClient(create_app(load_config(config_path), str(config_path), dispatch=recorder)) as c:
        yield c


def post(client, body, *, secret=WEBHOOK_SECRET, token=None, headers=None, timestamp=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    elif secret:
        h.update(sign_headers(secret, raw, timestamp=timestamp))
    return client.post("/v1/events", content=raw, headers=h)


def stored() -> list[str]:
    with session_scope() as session:
        return [e.id for e in session.exec(select(Event))]


def test_a_webhook_signature_is_accepted_and_the_event_stored_before_dispatch(client, recorder):
    ev = event(username="alice")
    response = post(client, ev)
    assert response.status_code == 202, response.text
    assert response.json() == {"id": ev["id"], "status": "accepted", "duplicate": False}
    assert stored() == [ev["id"]]
    assert recorder.calls == [(ev["id"], "user.created", "api")]


def test_any_secret_in_the_list_verifies_so_a_secret_rotates_without_downtime(client):
    first, second, both = event(username="rot1"), event(username="rot2"), event(username="rot3")
    assert post(client, first, secret=WEBHOOK_SECRET).status_code == 202
    assert post(client, second, secret=NEXT_SECRET).status_code == 202
    # A sender mid-rotation signs with a retired secret and the new one: one valid entry is enough.
    assert post(client, both, secret=[OTHER_SECRET, NEXT_SECRET]).status_code == 202
    assert sorted(stored()) == sorted([first["id"], second["id"], both["id"]])


def test_bearer_token_is_accepted(client):
    ev = event(username="bob")
    assert post(client, ev, token=TOKEN).status_code == 202
    assert stored() == [ev["id"]]


@pytest.mark.parametrize("skew, accepted", [(-301, False), (301, False), (-290, True), (290, True)])
def test_the_timestamp_must_be_within_five_minutes_either_way(client, recorder, skew, accepted):
    ev = event(username="tim")
    response = post(client, ev, timestamp=int(time.time()) + skew)
    assert response.status_code == (202 if accepted else 401), response.text
    assert stored() == ([ev["id"]] if accepted else [])
    if not accepted:
        assert "webhook-timestamp" in response.json()["error"] and recorder.calls == []


@pytest.mark.parametrize("how", ["wrong-secret", "tampered-body", "other-id", "other-timestamp", "missing",
                                 "no-v1", "bad-token", "garbage-timestamp", "legacy-off"])
def test_bad_or_missing_authentication_is_401_and_nothing_stored(client, recorder, how):
    ev = event(username="mallory")
    raw = json.dumps(ev).encode()
    good = sign_headers(WEBHOOK_SECRET, raw)
    headers = {"wrong-secret": sign_headers(OTHER_SECRET, raw),
               "tampered-body": sign_headers(WEBHOOK_SECRET, raw + b" "),
               "other-id": {**good, "webhook-id": "msg_other"},
               "other-timestamp": {**good, "webhook-timestamp": str(int(good["webhook-timestamp"]) - 1)},
               "missing": {},
               "no-v1": {**good, "webhook-signature": good["webhook-signature"].replace("v1,", "v2,")},
               "bad-token": {"Authorization": "Bearer nope"},
               "garbage-timestamp": {**good, "webhook-timestamp": "-1e9"},
               # The old header, even correctly made, is refused unless api.legacy_signature is true.
               "legacy-off": {"X-Outbound-Signature": sign(WEBHOOK_SECRET, raw)}}[how]
    response = client.post("/v1/events", content=raw, headers=headers)
    assert response.status_code == 401, response.text
    for secret in (WEBHOOK_SECRET, NEXT_SECRET, TOKEN):
        assert secret not in response.text
    assert stored() == [] and recorder.calls == []


def test_a_replayed_request_is_not_applied_twice(client, recorder):
    """The captured request verifies again inside the window, but its event id is in the outbox."""
    disable, enable = event("user.disabled", username="rita"), event("user.enabled", username="rita")
    assert post(client, event(username="rita")).status_code == 202
    raw = json.dumps(disable).encode()
    captured = {"Content-Type": "application/json", **sign_headers(WEBHOOK_SECRET, raw)}
    assert client.post("/v1/events", content=raw, headers=captured).status_code == 202
    assert post(client, enable).status_code == 202
    replay = client.post("/v1/events", content=raw, headers=captured)
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    with session_scope() as session:
        assert session.exec(select(User).where(User.username == "rita")).one().active is True
    assert len(recorder.calls) == 3 and len(stored()) == 3


def test_the_legacy_signature_only_when_asked_for(tmp_path, scim, sqlite_url, monkeypatch, recorder):
    monkeypatch.setenv("TEST_API_HMAC", HMAC_SECRET)
    path = write_config(tmp_path, scim, top="api: {legacy_signature: true, hmac_secret: env:TEST_API_HMAC}")
    with TestClient(create_app(load_config(path), str(path), dispatch=recorder)) as c:
        ev = event(username="olga")
        raw = json.dumps(ev).encode()
        assert c.post("/v1/events", content=raw, headers={"X-Outbound-Signature": sign("wrong", raw)}).status_code == 401
        assert c.post("/v1/events", content=raw, headers={"X-Outbound-Signature": sign(HMAC_SECRET, raw)}).status_code == 202
        route = f"/v1/events/{ev['id']}"
        assert c.get(route, headers={"X-Outbound-Signature": sign(HMAC_SECRET, route.encode())}).status_code == 200


def test_webhook_secrets_must_be_whsec_references_named_at_start_never_shown(tmp_path, scim, monkeypatch):
    from models.secrets import SecretError
    from models.validation import InvalidInput

    monkeypatch.setenv("TEST_WH_OK", WEBHOOK_SECRET)
    monkeypatch.setenv("TEST_WH_BAD", "not-a-whsec-Secr3tValue")
    monkeypatch.setenv("TEST_WH_SHORT", "whsec_" + base64.b64encode(b"short").decode())
    path = write_config(tmp_path, scim, top="api: {webhook_secrets: [env:TEST_WH_OK, env:TEST_WH_BAD, env:TEST_WH_SHORT]}")
    with pytest.raises(InvalidInput) as caught:
        create_app(load_config(path))
    message = str(caught.value)
    assert "api.webhook_secrets[1] (env:TEST_WH_BAD): expected whsec_" in message
    assert "api.webhook_secrets[2] (env:TEST_WH_SHORT)" in message and "5 bytes" in message
    assert "Secr3tValue" not in message and WEBHOOK_SECRET not in message and "[0]" not in message

    path = write_config(tmp_path, scim, top="api: {webhook_secrets: [env:TEST_WH_UNSET_ANYWHERE]}")
    with pytest.raises(InvalidInput, match=r"api.webhook_secrets\[0\]: env:TEST_WH_UNSET_ANYWHERE"):
        create_app(load_config(path))

    # At load: a literal value instead of a reference, and the legacy secret without the switch.
    for api, expected in (("{webhook_secrets: [whsec_AAAALiteral]}", "api.webhook_secrets[0]: must be a secret reference"),
                          ("{hmac_secret: env:X}", "legacy_signature: true"),
                          ("{legacy_signature: true}", "needs hmac_secret")):
        path = write_config(tmp_path, scim, top=f"api: {api}")
        with pytest.raises(InvalidInput) as caught:
            load_config(path)
        assert expected in str(caught.value) and "AAAALiteral" not in str(caught.value)
    assert not isinstance(caught.value, SecretError)


def test_invalid_event_is_422_naming_the_fields_and_nothing_stored(client, recorder):
    response = post(client, {"id": "e-1", "type": "user.exploded", "user": {"username": "", "shoe_size": 9}})
    assert response.status_code == 422
    fields = response.json()["fields"]
    assert {"type", "user.username", "user.shoe_size"} <= set(fields), response.json()
    response = post(client, b"{not json")
    assert response.status_code == 422 and "not valid JSON" in response.text
    assert stored() == [] and recorder.calls == []


def test_body_over_the_limit_is_413_and_nothing_stored(client, recorder):
    ev = event(username="big", attributes={"blob": "x" * 3000})
    response = post(client, ev)
    assert response.status_code == 413
    assert stored() == [] and recorder.calls == []


def test_a_repeated_event_is_answered_from_the_outbox_not_applied_twice(client, recorder):
    ev = event(username="carol")
    assert post(client, ev).status_code == 202
    with session_scope() as session:
        session.get(Event, ev["id"]).status = "succeeded"
    again = post(client, ev)
    assert again.status_code == 200
    assert again.json() == {"id": ev["id"], "status": "succeeded", "duplicate": True}
    assert len(recorder.calls) == 1 and stored() == [ev["id"]]


def test_the_event_is_durable_when_dispatch_fails(config_path, sqlite_url):
    failing = Recorder(fail=True)
    with TestClient(create_app(load_config(config_path), str(config_path), dispatch=failing)) as c:
        ev = event(username="dora")
        response = post(c, ev)
    assert response.status_code == 202 and response.json()["status"] == "accepted"
    with session_scope() as session:
        assert session.get(Event, ev["id"]).status == "accepted"  # the sweeper will pick it up
    assert failing.calls


def test_get_status_needs_authentication_and_knows_unknown_ids(client):
    ev = event(username="erin")
    post(client, ev)
    path = f"/v1/events/{ev['id']}"
    assert client.get(path).status_code == 401
    response = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.json()["status"] == "accepted" and response.json()["outcomes"] == []
    # Signed like a POST, the payload being the path: a signature is good for that path, for 5 minutes.
    assert client.get(path, headers=sign_headers(NEXT_SECRET, path.encode())).status_code == 200
    assert client.get(path, headers=sign_headers(WEBHOOK_SECRET, b"/v1/events/other")).status_code == 401
    stale = sign_headers(WEBHOOK_SECRET, path.encode(), timestamp=int(time.time()) - 600)
    assert client.get(path, headers=stale).status_code == 401
    assert client.get(path, headers={"X-Outbound-Signature": sign(WEBHOOK_SECRET, path.encode())}).status_code == 401
    assert client.get("/v1/events/nope", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_health_readiness_and_openapi_document(client):
    assert client.get("/healthz").json() == {"status": "ok", "store": "up"}
    assert client.get("/readyz").json() == {"status": "ready", "store": "up"}
    doc = client.get("/openapi.json").json()
    assert {"/v1/events", "/v1/events/{event_id}", "/healthz", "/readyz"} <= set(doc["paths"])
    post_op = doc["paths"]["/v1/events"]["post"]
    assert {"200", "202", "401", "413", "422", "503"} <= set(post_op["responses"])
    assert "Retry-After" in post_op["responses"]["503"]["headers"]
    assert {"200", "401", "404", "503"} <= set(doc["paths"]["/v1/events/{event_id}"]["get"]["responses"])
    assert {"bearerToken", "webhookSignature"} <= set(doc["components"]["securitySchemes"])
    assert post_op["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/IdentityEvent"
    schemas = doc["components"]["schemas"]
    assert {"IdentityEvent", "EventUser", "EventStatus", "EventAccepted"} <= set(schemas)
    assert "user" in schemas["IdentityEvent"]["properties"]
    for secret in (WEBHOOK_SECRET, NEXT_SECRET, TOKEN):
        assert secret not in json.dumps(doc)


def test_api_without_credentials_configured_refuses_to_start(tmp_path, scim):
    from models.validation import InvalidInput

    with pytest.raises(InvalidInput, match="api"):
        create_app(load_config(write_config(tmp_path, scim)))


@pytest.mark.usefixtures("prefect_harness")
def test_in_process_dispatch_provisions_and_names_tags_and_artifacts_the_run(config_path, sqlite_url, scim):
    """The low-latency path end to end, then the run read back from the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterTags

    app = create_app(load_config(config_path), str(config_path), dispatch="in-process")
    ev = event(username="frank")
    with TestClient(app) as c:
        assert post(c, ev).status_code == 202
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            body = c.get(f"/v1/events/{ev['id']}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
            if body["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.1)
    assert body["status"] == "succeeded", body
    assert [(o["connector"], o["operation"], o["status"]) for o in body["outcomes"]] == [("app", "create", "succeeded")]
    assert [u["userName"] for u in scim.users()] == ["frank"]

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["trigger:api"])))
        run = next(r for r in runs if ev["id"] in r.name)
        assert run.name == f"provision frank@PRIMARY ({ev['id']})"
        assert {"trigger:api", "connector:app"} <= set(run.tags)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
        assert any(a.type == "table" for a in artifacts)
