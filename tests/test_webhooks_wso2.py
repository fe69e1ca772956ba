"""WSO2 IS / Asgardeo webhooks: the documented payloads, signed, through the real HTTP endpoint, then
drained to real SCIM servers; and what is refused (signature, replay, stale iat, malformed body)."""

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from apiserver import served
from deployments.api import create_app
from deployments.webhooks_wso2 import signature
from models.config import load_config
from models.db import session_scope
from models.tables import Event, User, WebhookReceipt
from sandbox.scim import ScimSandbox

FIXTURES = Path(__file__).parent / "fixtures" / "wso2"
SECRET, NEXT_SECRET = "wso2-secret-" + uuid.uuid4().hex, "wso2-next-" + uuid.uuid4().hex
BASE = "https://schemas.identity.wso2.org/events/"


def documented(name: str, **changes) -> dict:
    """The documentation's example payload `name`, with a fresh iat (the examples' are long past)."""
    body = json.loads((FIXTURES / f"{name}.json").read_text())
    body["iat"] = int(time.time() * 1000)
    body.update(changes)
    return body


def data_of(body: dict) -> dict:
    return next(iter(body["events"].values()))


def created(user_id: str, username: str, store: str = "PRIMARY", initiator: str = "ADMIN", uri: str = "userCreated",
            **claims) -> dict:
    """The documented userCreated (or registrationSuccess) example, for another user."""
    body = documented(uri, jti=str(uuid.uuid4()))
    data = data_of(body)
    data["initiatorType"], data["userStore"]["name"], data["user"]["id"] = initiator, store, user_id
    data["user"]["claims"] = [{"uri": "http://wso2.org/claims/username", "value": username},
                              *({"uri": f"http://wso2.org/claims/{k}", "value": v} for k, v in claims.items())]
    return body


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, event_id, event_type, trigger):
        self.calls.append((event_id, event_type, trigger))


@pytest.fixture
def targets():
    with ScimSandbox() as org, ScimSandbox() as idp, ScimSandbox() as by_role:
        yield {"org": org, "idp": idp, "role": by_role}


@pytest.fixture
def config_path(tmp_path, targets, monkeypatch):
    monkeypatch.setenv("TEST_WSO2_SECRET", SECRET)
    monkeypatch.setenv("TEST_WSO2_SECRET_NEXT", NEXT_SECRET)
    monkeypatch.setenv("TEST_API_TOKEN", "token-" + uuid.uuid4().hex)
    connectors = ""
    for name, server in targets.items():
        monkeypatch.setenv(f"TEST_SCIM_{name.upper()}", server.token)
        level = {"org": "", "idp": "\n    organization_level: false", "role": "\n    roles: [ROLE]"}[name]
        connectors += f"""
  - name: {name}-app
    type: scim2{level}
    scim2:
      base_url: {server.url}
      auth: {{type: bearer, token: env:TEST_SCIM_{name.upper()}}}"""
    path = tmp_path / "outbound.yaml"
    path.write_text(f"""tenant_domain: myorg.com
retry: {{attempts: 2, base_delay: 0.01, max_delay: 0.05, jitter: 0.1}}
api: {{token: env:TEST_API_TOKEN}}
identity_providers:
  - name: google
    jit_provisioning: true
    connectors: [idp-app]
sources:
  wso2:
    secrets: [env:TEST_WSO2_SECRET, env:TEST_WSO2_SECRET_NEXT]
    iat_tolerance: 60
    federated_authenticators: {{GoogleOIDCAuthenticator: google}}
    jit_user_stores: {{GOOGLE: google}}
    claims: {{"http://wso2.org/claims/agent/Name": attributes.agent_name}}
connectors:{connectors}
""")
    return path


@pytest.fixture
def api(config_path, sqlite_url):
    recorder = Recorder()
    with served(create_app(load_config(config_path), str(config_path), dispatch=recorder)) as (url, log):
        yield url, recorder, log


def post(url: str, body, *, secret: str = SECRET, header: str = "x-wso2-event-signature", sig: str | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", header: sig or signature(secret, raw)}
    return httpx.post(f"{url}/v1/webhooks/wso2", content=raw, headers=headers, timeout=30)


def drain(config_path) -> None:
    from flows.provision import provision_user

    asyncio.run(provision_user(config_path=str(config_path), return_state=True))


def accounts(server) -> dict[str, bool]:
    """userName -> active, of every account on a SCIM server."""
    return {u["userName"]: u.get("active", True) for u in server.users()}


def stored_events() -> list[tuple[str, str, str, str | None]]:
    with session_scope() as session:
        return [(e.id, e.type, e.trigger, e.idp) for e in session.exec(select(Event).order_by(Event.received_at))]


def user(username: str, store: str = "PRIMARY") -> User:
    with session_scope() as session:
        return session.exec(select(User).where(User.username == username, User.user_store == store)).one()


@pytest.mark.usefixtures("prefect_harness")
def test_every_documented_event_type_provisions_with_its_trigger_and_level(api, config_path, targets):
    url, recorder, log = api
    org, idp, by_role = targets["org"], targets["idp"], targets["role"]

    # userCreated, as documented: an admin in the console -> trigger console, organisation level.
    body = documented("userCreated")
    response = post(url, body)
    assert response.status_code == 202, response.text
    assert response.json()["events"] == [{"id": f"wso2-{body['jti']}", "type": "user.created", "trigger": "console",
                                          "status": "accepted"}]
    assert recorder.calls == [(f"wso2-{body['jti']}", "user.created", "console")]
    drain(config_path)
    john = user("johndoe@aol.com")
    assert (john.source, john.email, john.given_name, john.family_name) == ("console", "johndoe@aol.com", "John", "Doe")
    assert accounts(org) == {"johndoe@aol.com": True} and accounts(idp) == {}

    # registrationSuccess, as documented (ADMIN, user store DEFAULT): {UD} is the WSO2 user store.
    assert post(url, documented("registrationSuccess")).status_code == 202
    # ... and the self-registration the docs' table describes (initiatorType USER): self_signup.
    assert post(url, created("a1", "selfie", initiator="USER", uri="registrationSuccess")).status_code == 202
    # ... and one created by an application over SCIM: api.
    assert post(url, created("a2", "robot", initiator="APPLICATION")).status_code == 202
    drain(config_path)
    assert user("johndoe@aol.com", "DEFAULT").source == "console"
    assert (user("selfie").source, user("robot").source) == ("self_signup", "api")
    assert set(accounts(org)) == {"johndoe@aol.com", "selfie", "robot"}  # one John: see the end

    # Peter, whose id the documented profile, disable and enable examples use.
    assert post(url, created("85071750-3d1f-4ba4-b58f-991532e2742b", "peter@aol.com",
                             emailaddress="peter@aol.com", givenname="Peter", lastname="Parker")).status_code == 202
    # userProfileUpdated, as documented: it names the user only by id; the claims land in attributes.*
    body = documented("userProfileUpdated")
    response = post(url, body)
    assert response.status_code == 202, response.text
    assert response.json()["events"][0]["type"] == "user.updated"
    drain(config_path)
    assert user("peter@aol.com").attributes == {"organization": "myorg", "email_addresses": "peter@aol.com"}

    # userDisabled, then userEnabled, as documented: the account follows.
    assert post(url, documented("userDisabled")).status_code == 202
    drain(config_path)
    assert accounts(org)["peter@aol.com"] is False
    assert post(url, documented("userEnabled")).status_code == 202
    drain(config_path)
    assert accounts(org)["peter@aol.com"] is True

    # userDeleted, as documented: another id, but the username claim finds Peter; SCIM deletes.
    assert post(url, documented("userDeleted")).status_code == 202
    drain(config_path)
    assert "peter@aol.com" not in accounts(org) and user("peter@aol.com").deleted_at is not None

    # loginSuccess, as documented (BasicAuthenticator): a local login provisions nothing; 200, said why.
    response = post(url, documented("loginSuccess"))
    assert response.status_code == 200 and response.json()["events"] == []
    assert "federated authenticator" in response.json()["ignored"][0]
    # ... through a federated authenticator: user.federated_login via google -> the IdP-level connector only.
    body = documented("loginSuccess", jti=str(uuid.uuid4()))
    data_of(body)["authenticationMethods"] = ["GoogleOIDCAuthenticator"]
    data_of(body)["user"]["claims"][0]["value"] = "fed.user"
    response = post(url, body)
    assert response.json()["events"][0] | {"id": None} == {"id": None, "type": "user.federated_login",
                                                            "trigger": "federated_login", "status": "accepted"}
    drain(config_path)
    assert "fed.user" in accounts(idp) and "fed.user" not in accounts(org)

    # A user JIT-provisioned into google's JIT user store: trigger jit through google -> both levels.
    assert post(url, created("j1", "jit.user", store="GOOGLE")).status_code == 202
    drain(config_path)
    assert (user("jit.user", "GOOGLE").source, user("jit.user", "GOOGLE").idps) == ("jit", ["google"])
    assert "jit.user" in accounts(org) and "jit.user" in accounts(idp)

    # roleCreated then roleUsersUpdated, as documented: abcuser gains ROLE (the role-based connector
    # creates the account), then loses it (deprovisioned); the added AGENT user is not in the store.
    assert post(url, created("6c7f23d9-8083-4bf7-ab2c-885aa9faa186", "abcuser")).status_code == 202
    assert post(url, documented("roleCreated")).status_code == 202
    drain(config_path)
    assert accounts(by_role) == {"abcuser": True}
    response = post(url, documented("roleUsersUpdated"))
    assert response.status_code == 202
    assert [e["type"] for e in response.json()["events"]] == ["user.roles_changed"]
    assert "311b60cf-da6f-4378-8cd1-31e3e7026f4d" in response.json()["ignored"][0]
    drain(config_path)
    assert accounts(by_role) == {}

    with session_scope() as session:
        assert session.get(WebhookReceipt, "wso2:" + documented("loginSuccess")["jti"]).ignored == 1
    # Every event succeeded but one: John of the DEFAULT store has the same {UN} as John of PRIMARY,
    # and org-app names accounts by {UN} alone (on_collision: fail), which refuses the second.
    john_default = f"wso2-{documented('registrationSuccess')['jti']}"
    statuses = {e.id: (e.status, e.error or "") for e in _events()}
    status, error = statuses.pop(john_default)
    assert status == "failed" and "'johndoe@aol.com' on org-app is already provisioned" in error, error
    assert {status for status, _ in statuses.values()} == {"succeeded"}, statuses
    # The one failed run says so at ERROR (when an earlier test left Prefect's loggers propagating);
    # anything else at ERROR, and any traceback, is a fault.
    expected = ("ERROR prefect.flow_runs Finished in state Failed(", "johndoe@aol.com@DEFAULT")
    assert not [line for line in log.tracebacks()
                if not (line.startswith(expected[0]) and expected[1] in line and "Traceback" not in line)]


def _events() -> list[Event]:
    with session_scope() as session:
        return list(session.exec(select(Event)))


@pytest.fixture
def api_only(config_path, sqlite_url):
    recorder = Recorder()
    with served(create_app(load_config(config_path), str(config_path), dispatch=recorder)) as (url, _log):
        yield url, recorder


def test_asgardeo_header_and_the_second_secret_verify(api_only):
    url, recorder = api_only
    assert post(url, documented("userCreated"), header="X-Hub-Signature").status_code == 202
    assert post(url, created("b1", "bob"), secret=NEXT_SECRET).status_code == 202
    assert len(stored_events()) == 2


@pytest.mark.parametrize("how", ["wrong secret", "tampered body", "no header", "not sha256"])
def test_a_bad_signature_is_401_and_nothing_stored(api_only, how):
    url, recorder = api_only
    body = documented("userCreated")
    raw = json.dumps(body).encode()
    if how == "wrong secret":
        response = post(url, raw, secret="not-the-secret")
    elif how == "tampered body":
        response = post(url, raw.replace(b"John", b"Evil"), sig=signature(SECRET, raw))
    elif how == "no header":
        response = httpx.post(f"{url}/v1/webhooks/wso2", content=raw, headers={"Content-Type": "application/json"})
    else:
        response = post(url, raw, sig="sha1=" + signature(SECRET, raw)[7:])
    assert response.status_code == 401, response.text
    assert SECRET not in response.text
    assert stored_events() == [] and recorder.calls == []


def test_a_replayed_jti_is_refused_and_not_applied_twice(api_only):
    url, recorder = api_only
    body = documented("userCreated")
    assert post(url, body).status_code == 202
    again = post(url, body)
    assert again.status_code == 409 and "received" in again.json()["error"]
    # A replay that is a fresh copy (another iat, signed again) is the same token: refused too.
    assert post(url, {**body, "iat": body["iat"] + 1}).status_code == 409
    assert len(stored_events()) == 1 and len(recorder.calls) == 1


@pytest.mark.parametrize("skew", [-61, 61])
def test_an_iat_outside_the_tolerance_is_refused(api_only, skew):
    url, recorder = api_only
    body = documented("userCreated")
    body["iat"] += skew * 1000  # milliseconds
    response = post(url, body)
    assert response.status_code == 401 and response.json()["fields"] == ["iat"]
    assert stored_events() == []
    # The documented payload as published (iat in 2025) is stale too.
    published = json.loads((FIXTURES / "userCreated.json").read_text())
    assert post(url, published).status_code == 401


@pytest.mark.parametrize("mutate, field", [
    (lambda b: b.pop("jti"), "jti"),
    (lambda b: b.update(iat="yesterday"), "iat"),
    (lambda b: b.update(events={}), "events"),
    (lambda b: data_of(b)["user"].update(claims=[{"value": "x"}]), "user.claims[0].uri"),
    (lambda b: data_of(b)["user"].update(claims=[]), "user.claims"),
    (lambda b: data_of(b)["tenant"].update(name="other.org"), "tenant.name"),
])
def test_a_malformed_webhook_is_400_naming_the_field_and_nothing_stored(api_only, mutate, field):
    url, recorder = api_only
    body = documented("userCreated")
    mutate(body)
    response = post(url, body)
    assert response.status_code == 400, response.text
    assert any(field in p for p in response.json()["problems"]), response.json()
    assert stored_events() == [] and recorder.calls == []
    with session_scope() as session:
        assert list(session.exec(select(WebhookReceipt))) == []


def test_not_json_is_400(api_only):
    url, _ = api_only
    response = post(url, b"{not json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["problems"][0]


def test_unknown_event_types_are_acknowledged_ignored_and_counted(api_only):
    url, recorder = api_only
    body = documented("userCreated")
    body["events"] = {BASE + "session/event-type/sessionEstablished": {"user": {"id": "x"}}}
    response = post(url, body)
    assert response.status_code == 200 and response.json()["events"] == []
    assert "not an event type this engine provisions from" in response.json()["ignored"][0]
    from models.receipts import ignored_count

    with session_scope() as session:
        assert ignored_count(session, "wso2") == 1
    assert stored_events() == [] and recorder.calls == []
    assert post(url, body).status_code == 409  # its jti is kept all the same


def test_an_event_the_engine_refuses_is_422_and_nothing_stored(api_only):
    url, recorder = api_only
    response = post(url, created("c1", "x"))  # WSO2's default username rule wants 3 to 30 characters
    assert response.status_code == 422, response.text
    assert "user.username" in response.text
    assert stored_events() == []
    with session_scope() as session:
        assert list(session.exec(select(WebhookReceipt))) == []


def test_the_websub_handshake_echoes_the_challenge(api_only):
    url, _ = api_only
    params = {"hub.mode": "subscribe", "hub.topic": "myorg.dcbd6baa.schema.wso2.v1.event.login",
              "hub.challenge": "500c4833-91c6-4556-b9a9-1b8e5e00d48b", "hub.lease_seconds": "864000"}
    response = httpx.get(f"{url}/v1/webhooks/wso2", params=params)
    assert response.status_code == 200 and response.text == "500c4833-91c6-4556-b9a9-1b8e5e00d48b"
    assert response.headers["content-type"].startswith("text/plain")
    unsubscribe = httpx.get(f"{url}/v1/webhooks/wso2", params={**params, "hub.mode": "unsubscribe"})
    assert unsubscribe.text == params["hub.challenge"]
    assert httpx.get(f"{url}/v1/webhooks/wso2", params={"hub.mode": "publish"}).status_code == 400


def test_configuration_names_unknown_idps_and_bad_claim_targets(tmp_path):
    from models.config import parse_config
    from models.validation import InvalidInput

    with pytest.raises(InvalidInput) as exc:
        parse_config({"tenant_domain": "myorg.com", "sources": {"wso2": {
            "secrets": ["env:X"], "federated_authenticators": {"GoogleOIDCAuthenticator": "nope"},
            "claims": {"http://wso2.org/claims/department": "dept"}}}})
    text = str(exc.value)
    assert "sources.wso2.federated_authenticators.GoogleOIDCAuthenticator: unknown identity provider 'nope'" in text
    assert "claims.http://wso2.org/claims/department" in text
    with pytest.raises(InvalidInput, match="sources.wso2.secrets"):
        parse_config({"tenant_domain": "t", "sources": {"wso2": {"secrets": ["literal-secret"]}}})


def test_a_secret_that_does_not_resolve_stops_the_start(config_path, sqlite_url, monkeypatch):
    from models.validation import InvalidInput

    monkeypatch.delenv("TEST_WSO2_SECRET_NEXT")
    with pytest.raises(InvalidInput, match=r"sources.wso2.secrets\[1\]"):
        create_app(load_config(config_path), str(config_path), dispatch=Recorder())



def test_receipts_are_pruned_with_the_events_and_the_user_links_kept(db_url):
    from datetime import timedelta

    from models.config import RetentionSettings
    from models.retention import prune
    from models.tables import SourceUser, utcnow

    now = utcnow()
    with session_scope() as session:
        session.add(User(id="u1", username="alice", tenant="myorg.com", source="console"))
        session.flush()
        session.add(SourceUser(source="wso2", remote_id="r1", user_id="u1"))
        session.add(WebhookReceipt(jti="wso2:old", source="wso2", issuer="i", received_at=now - timedelta(days=3)))
        session.add(WebhookReceipt(jti="wso2:new", source="wso2", issuer="i", received_at=now))
    settings = RetentionSettings(events_days=2)
    assert prune(settings, dry_run=True).webhook_receipts == 1
    pruned = prune(settings)
    assert pruned.webhook_receipts == 1 and "1 webhook receipts" in pruned.summary()
    with session_scope() as session:
        assert [r.jti for r in session.exec(select(WebhookReceipt))] == ["wso2:new"]
        assert session.get(SourceUser, ("wso2", "r1")) is not None


def test_the_same_jti_twice_at_once_is_stored_once(api_only):
    """Whichever order the two deliveries reach the store in, one is stored and the other refused."""
    from concurrent.futures import ThreadPoolExecutor

    url, recorder = api_only
    body = documented("userCreated")
    with ThreadPoolExecutor(2) as pool:
        codes = sorted(pool.map(lambda _: post(url, body).status_code, range(2)))
    assert codes == [202, 409]
    assert len(stored_events()) == 1 and len(recorder.calls) == 1




def test_two_webhooks_creating_one_user_at_once_are_both_stored(config_path, sqlite_url, monkeypatch):
    """WSO2 sends userCreated and registrationSuccess for one creation. The second is made to lose
    the race for sure: the first is stored after the second looked the user up and before it
    wrote; its write then conflicts, and it is read again instead of failing."""
    import models.identity as identity
    from deployments.webhooks_wso2 import receive
    from models.wso2 import parse_webhook

    config = load_config(config_path)
    first, second = (parse_webhook(json.dumps(b).encode()) for b in
                     (created("d1", "dora"), created("d1", "dora", uri="registrationSuccess")))
    real, lookups = identity.find_users, []

    def first_wins(session, tenant, usernames):
        lookups.append(usernames)
        if len(lookups) == 1:  # the second's lookup: not there yet; the first is stored right after
            monkeypatch.setattr(identity, "find_users", real)
            receive(first, config)
            return []
        return real(session, tenant, usernames)

    monkeypatch.setattr(identity, "find_users", first_wins)
    received = receive(second, config)
    assert [e[0] for e in received.events] == [f"wso2-{second.jti}"]
    assert len(stored_events()) == 2 and user("dora").source == "console"


class FakeDirectory:
    """models.wso2.Directory over a dict: the mapping is a pure function of payload, settings and store."""

    def __init__(self, users: dict):
        self.users = users  # remote id -> Known

    def find(self, remote_id, user_store, username):
        return self.users.get(remote_id)


def test_claims_map_through_the_default_dialect_and_the_configuration():
    from models.config import Wso2WebhookSettings
    from models.wso2 import Known, parse_webhook, to_events

    settings = Wso2WebhookSettings(secrets=["env:X"], claims={
        "http://wso2.org/claims/department": "attributes.dept",      # a default URI, elsewhere
        "http://wso2.org/claims/mobile": "",                          # a default URI, dropped
        "http://wso2.org/claims/nickName": "display_name"})           # a URI of the configuration's own
    body = created("r1", "EU/eve", department="R&D", mobile="+1 555", nickName="Evie", country=["NL", "BE"])
    mapped = to_events(parse_webhook(json.dumps(body).encode()), settings, "myorg.com", FakeDirectory({}))
    [event] = mapped.events
    assert event["user"] == {"username": "EU/eve", "user_store": "PRIMARY", "display_name": "Evie",
                             "attributes": {"dept": "R&D", "country": "NL,BE"}}
    assert mapped.links == [("r1", "EU", "eve")]  # as the identity store keys the user
    from models.events import parse_event

    parsed = parse_event(event)  # the STORE/name form names the store
    assert (parsed.user.user_store, parsed.user.username) == ("EU", "eve")

    update = documented("userProfileUpdated")
    data_of(update)["user"]["removedClaims"] = [{"uri": "http://wso2.org/claims/organization"},
                                                {"uri": "http://wso2.org/claims/emailaddress"}]
    data_of(update)["user"]["addedClaims"] = []
    directory = FakeDirectory({"85071750-3d1f-4ba4-b58f-991532e2742b": Known("PRIMARY", "peter")})
    [event] = to_events(parse_webhook(json.dumps(update).encode()), settings, "myorg.com", directory).events
    # A removed claim empties its attribute; a removed profile field is left alone (see docs/sources.md).
    assert event["user"] == {"username": "peter", "user_store": "PRIMARY",
                             "attributes": {"email_addresses": "peter@aol.com", "organization": None}}
