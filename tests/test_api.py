"""The event API: authentication, validation, size limit, idempotency, durability, status, OpenAPI."""

import json
import os
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from deployments.api import create_app, sign
from helpers import event, write_config
from models.config import load_config
from models.db import session_scope
from models.tables import Event
from sandbox.scim import ScimSandbox

HMAC_SECRET = "test-hmac-" + uuid.uuid4().hex
TOKEN = "test-token-" + uuid.uuid4().hex


@pytest.fixture
def scim():
    with ScimSandbox() as server:
        yield server


@pytest.fixture
def config_path(tmp_path, scim):
    os.environ["TEST_API_HMAC"], os.environ["TEST_API_TOKEN"] = HMAC_SECRET, TOKEN
    return write_config(tmp_path, scim, top="api: {hmac_secret: env:TEST_API_HMAC, token: env:TEST_API_TOKEN, "
                                             "max_body_bytes: 2048}")


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


def post(client, body, *, secret=HMAC_SECRET, token=None, headers=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    elif secret:
        h["X-Outbound-Signature"] = sign(secret, raw)
    return client.post("/v1/events", content=raw, headers=h)


def stored() -> list[str]:
    with session_scope() as session:
        return [e.id for e in session.exec(select(Event))]


def test_hmac_signature_is_accepted_and_the_event_stored_before_dispatch(client, recorder):
    ev = event(username="alice")
    response = post(client, ev)
    assert response.status_code == 202, response.text
    assert response.json() == {"id": ev["id"], "status": "accepted", "duplicate": False}
    assert stored() == [ev["id"]]
    assert recorder.calls == [(ev["id"], "user.created", "api")]


def test_bearer_token_is_accepted(client):
    ev = event(username="bob")
    assert post(client, ev, token=TOKEN).status_code == 202
    assert stored() == [ev["id"]]


@pytest.mark.parametrize("how", ["bad-secret", "tampered", "missing", "bad-token", "malformed"])
def test_bad_or_missing_authentication_is_401_and_nothing_stored(client, recorder, how):
    ev = event(username="mallory")
    raw = json.dumps(ev).encode()
    headers = {"bad-secret": {"X-Outbound-Signature": sign("wrong", raw)},
               "tampered": {"X-Outbound-Signature": sign(HMAC_SECRET, raw + b" ")},
               "missing": {},
               "bad-token": {"Authorization": "Bearer nope"},
               "malformed": {"X-Outbound-Signature": "md5=abc"}}[how]
    response = client.post("/v1/events", content=raw, headers=headers)
    assert response.status_code == 401
    assert HMAC_SECRET not in response.text and TOKEN not in response.text
    assert stored() == [] and recorder.calls == []


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
    assert client.get(f"/v1/events/{ev['id']}").status_code == 401
    response = client.get(f"/v1/events/{ev['id']}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.json()["status"] == "accepted" and response.json()["outcomes"] == []
    path = f"/v1/events/{ev['id']}"
    assert client.get(path, headers={"X-Outbound-Signature": sign(HMAC_SECRET, path.encode())}).status_code == 200
    assert client.get("/v1/events/nope", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_healthz_and_openapi_document(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    doc = client.get("/openapi.json").json()
    assert {"/v1/events", "/v1/events/{event_id}", "/healthz"} <= set(doc["paths"])
    post_op = doc["paths"]["/v1/events"]["post"]
    assert {"202", "401", "413", "422"} <= set(post_op["responses"])
    assert post_op["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/IdentityEvent"
    schemas = doc["components"]["schemas"]
    assert {"IdentityEvent", "EventUser", "EventStatus", "EventAccepted"} <= set(schemas)
    assert "user" in schemas["IdentityEvent"]["properties"]
    assert HMAC_SECRET not in json.dumps(doc) and TOKEN not in json.dumps(doc)


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
