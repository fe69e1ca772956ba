"""The HTTP event API (`outbound api`): authenticate, validate, store in the outbox, then dispatch.

    POST /v1/events        an identity event (JSON). 202 {"id", "status"} once it is stored;
                           200 with the stored status when the id was seen before (not applied again).
    GET  /v1/events/{id}   its status and the outcome per connector.
    GET  /healthz          liveness (always 200), with whether the state store answers.
    GET  /readyz           readiness: 503 while the state store is unreachable.

Authentication (401 otherwise), the default being Standard Webhooks (see deployments.webhooks):

    webhook-id: <unique message id>
    webhook-timestamp: <unix seconds>              refused if more than 5 minutes off the server's clock
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<payload>")> [v1,<…> …]

where key is the base64-decoded part of a `whsec_…` secret from `api.webhook_secrets` (any of them
verifies, so a secret is rotated by adding the new one, moving senders, removing the old one) and
payload is the raw body for POST and the request path as sent (`/v1/events/<id>`) for GET. Or
`Authorization: Bearer <api.token>`. The unsigned-timestamp `X-Outbound-Signature: sha256=<hex>`
(HMAC of the body with `api.hmac_secret`) is accepted only with `api.legacy_signature: true`.
A request replayed within the 5 minutes carries the same event id: it is answered from the outbox
(200, duplicate) and not applied again.

Order of checks on POST, each refusing before anything is stored: size (413), authentication
(401), validation (422, naming every bad field). The event is committed to the outbox before the
answer; dispatch happens after the commit and a dispatch failure does not lose it: `sweep-events`
re-dispatches whatever stays unfinished. With the state store unreachable, POST and GET answer 503
with Retry-After: never 202 for an event that was not stored.

Dispatch: with a reachable Prefect server (PREFECT_API_URL) the API emits the Prefect event
`outbound.user.<type>` and the `provision-user` deployment's trigger starts the run on a worker
(the scale-out path); otherwise it runs the flow in this process on a small thread pool (the
low-latency path).
"""

import asyncio
import contextvars
import hashlib
import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Callable, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from models.config import ApiSettings, Config
from models.events import IdentityEvent
from deployments import webhooks
from deployments.webhooks_wso2 import mount_wso2
from models.availability import STORE_UNAVAILABLE, store_up
from models.secrets import SecretError, resolve
from models.validation import InvalidInput

log = logging.getLogger("outbound.api")

EVENT_PREFIX = "outbound."
LEGACY_SIGNATURE_HEADER = "X-Outbound-Signature"
RETRY_AFTER = 5  # seconds: what a sender is told to wait while the state store is unreachable
DispatchMode = Literal["auto", "prefect", "in-process"]


# --- response models (they make the OpenAPI document) ----------------------------------------

class EventAccepted(BaseModel):
    id: str
    status: str
    duplicate: bool = False


class ConnectorOutcome(BaseModel):
    connector: str
    action: str
    operation: str
    status: str
    remote_id: Optional[str] = None
    remote_name: Optional[str] = None
    reason: str = ""
    error: Optional[str] = None


class EventStatus(BaseModel):
    id: str
    type: str
    trigger: str
    status: str
    received_at: datetime
    finished_at: Optional[datetime] = None
    error: Optional[str] = None
    outcomes: list[ConnectorOutcome]


class Health(BaseModel):
    status: str
    store: Literal["up", "down"]


class Problem(BaseModel):
    error: str
    problems: list[str] = []
    fields: list[str] = []


# --- authentication --------------------------------------------------------------------------

class Authenticator:
    """Check a request's Standard Webhooks signature, bearer token or (if enabled) legacy signature.

    The secrets are resolved once, when the API starts, and never shown: a webhook secret that is
    not in the `whsec_<base64>` form stops the start with its field and reference named.
    """

    def __init__(self, settings: Optional[ApiSettings]):
        if settings is None or not (settings.webhook_secrets or settings.token or settings.legacy_signature):
            raise InvalidInput("configuration", ["api: set api.webhook_secrets and/or api.token "
                                                 "(secret references) before starting the event API"])
        self._keys, problems = [], []
        for i, ref in enumerate(settings.webhook_secrets):
            try:
                self._keys.append(webhooks.secret_key(resolve(ref)))
            except SecretError as exc:
                problems.append(f"api.webhook_secrets[{i}]: {exc}")
            except ValueError as exc:
                problems.append(f"api.webhook_secrets[{i}] ({ref}): {exc}")
        if problems:
            raise InvalidInput("configuration", problems)
        self._token = resolve(settings.token).encode() if settings.token else None
        self._hmac = resolve(settings.hmac_secret).encode() if settings.legacy_signature else None

    def __repr__(self) -> str:
        return "Authenticator(<secrets hidden>)"

    def check(self, headers, payload: bytes, legacy_payload: Optional[bytes] = None) -> Optional[str]:
        """None when the request is authenticated, else why not (never a secret).

        `payload` is what a webhook signature covers after `id.timestamp.`; the legacy signature
        covers `legacy_payload` (default: the same).
        """
        auth = headers.get("authorization", "")
        if self._token is not None and auth[:7].lower() == "bearer ":
            if hmac.compare_digest(auth[7:].strip().encode(), self._token):
                return None
            return "bad bearer token"
        if self._keys and headers.get(webhooks.SIGNATURE_HEADER):
            return webhooks.verify(self._keys, headers, payload)
        legacy = headers.get(LEGACY_SIGNATURE_HEADER.lower(), "")
        if self._hmac is not None and legacy.startswith("sha256="):
            signed = payload if legacy_payload is None else legacy_payload
            expected = hmac.new(self._hmac, signed, hashlib.sha256).hexdigest()
            return None if hmac.compare_digest(legacy[7:].strip().lower().encode(), expected.encode()) else \
                "bad X-Outbound-Signature"
        return "missing webhook-signature headers or bearer token"


def sign(secret: str | bytes, body: bytes) -> str:
    """The legacy X-Outbound-Signature value for `body` (only accepted with api.legacy_signature: true)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


# --- dispatch --------------------------------------------------------------------------------

def prefect_event_name(event_type: str) -> str:
    return EVENT_PREFIX + event_type  # user.created -> outbound.user.created


def run_tags(trigger: str, connectors: list[str]) -> list[str]:
    return [f"trigger:{trigger}", *(f"connector:{c}" for c in connectors)]


def emit(event_id: str, event_type: str, trigger: str) -> None:
    """Emit the Prefect event that the provision-user deployment's trigger listens for."""
    from prefect.events import emit_event

    emitted = emit_event(event=prefect_event_name(event_type),
                         resource={"prefect.resource.id": f"outbound.event.{event_id}",
                                   "prefect.resource.name": event_id},
                         payload={"event_id": event_id, "trigger": trigger})
    if emitted is None:
        raise RuntimeError("Prefect did not accept the event (no events client)")


def prefect_server_reachable(timeout: float = 2.0) -> bool:
    """A Prefect API is configured (PREFECT_API_URL) and answers its health check."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return False
    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class InProcess:
    """Drain the outbox in this process: each accepted event wakes a drainer, which provisions
    everything pending in batches (one flow run per batch, not per event) until nothing is left.

    `workers` drainers run at once; they claim disjoint users, so a burst spreads over them. A
    wake-up while every drainer is busy is not lost: a drainer looks again before it sleeps. Every
    LOOK_EVERY seconds an idle drainer also looks for retries that have come due.
    """

    LOOK_EVERY = 15.0  # seconds between looks at the outbox when no event wakes a drainer

    def __init__(self, config_path: Optional[str], connectors: list[str], workers: int = 2):
        from flows.warm import warm_up

        warm_up()  # what a first batch would build, built here, before any drainer thread exists
        self.config_path = config_path
        self.connectors = connectors
        self._wake = threading.Condition()
        self._pending_wakes = 0
        self._stopped = False
        # The Prefect settings in force where the app was made (e.g. a test server) go with each run.
        self._context = contextvars.copy_context()
        self._threads = [threading.Thread(target=self._context.copy().run, args=(self._loop,), daemon=True,
                                          name=f"outbound-drain-{i}") for i in range(max(1, workers))]
        self._started = False

    def __call__(self, event_id: str, event_type: str, trigger: str) -> None:
        with self._wake:
            if not self._started:
                self._started = True
                for thread in self._threads:
                    thread.start()
            self._pending_wakes += 1
            self._wake.notify()

    def _loop(self) -> None:
        # One event loop and one pair of Prefect API clients for the thread's life. Prefect makes new
        # clients for each run otherwise (three, each parsing certifi's CA bundle for its TLS context,
        # and checking the server's version): that was half of a lone event's time at rest.
        loop = asyncio.new_event_loop()
        try:
            while not self._stopped:
                try:
                    loop.run_until_complete(self._drain_with_clients())
                except Exception as exc:  # the Prefect API is unreachable: the outbox keeps the events
                    log.warning("in-process drainer cannot reach the Prefect API: %s: %s", type(exc).__name__, exc)
                    with self._wake:
                        if not self._stopped:
                            self._wake.wait(timeout=self.LOOK_EVERY)
        finally:
            loop.close()

    async def _drain_with_clients(self) -> None:
        from prefect.context import AsyncClientContext, SyncClientContext

        with SyncClientContext.get_or_create():
            async with AsyncClientContext.get_or_create():
                while self._work_waits():  # blocks this thread while idle: nothing else runs on its loop
                    await self._drain_once()

    def _work_waits(self) -> bool:
        """Wait until woken or LOOK_EVERY passes with a retry due; False once stopped."""
        from models.outbox import waiting_count

        while True:
            with self._wake:
                if not self._pending_wakes and not self._stopped:
                    self._wake.wait(timeout=self.LOOK_EVERY)
                if self._stopped:
                    return False
                woken, self._pending_wakes = self._pending_wakes, 0  # one drain serves every wake-up so far
            try:  # unwoken: only when a retry has come due (or an event was stored by another process)
                if woken or waiting_count():
                    return True
            except Exception as exc:  # the store is down: look again later
                log.warning("in-process drainer cannot read the outbox: %s", exc)

    async def _drain_once(self) -> None:
        from prefect import tags

        from flows.provision import provision_user

        try:
            with tags("trigger:event", *(f"connector:{c}" for c in self.connectors)):
                await provision_user(config_path=self.config_path, return_state=True)
        except Exception as exc:  # the outbox keeps the events; the sweeper will try again
            log.warning("in-process drain failed: %s: %s", type(exc).__name__, exc)

    def shutdown(self, wait: bool = True) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        if wait and self._started:
            for thread in self._threads:
                thread.join(timeout=60)


class AutoDispatch:
    """Emit to Prefect when its server is reachable, else run in-process; re-checked every 30 s."""

    def __init__(self, mode: DispatchMode, in_process: InProcess, recheck: float = 30.0):
        self.mode, self.in_process, self.recheck = mode, in_process, recheck
        self._checked_at, self._reachable = 0.0, False
        self._lock = threading.Lock()
        self._context = contextvars.copy_context()

    def use_prefect(self) -> bool:
        if self.mode != "auto":
            return self.mode == "prefect"
        with self._lock:
            if time.monotonic() - self._checked_at > self.recheck:
                self._reachable = self._context.copy().run(prefect_server_reachable)
                self._checked_at = time.monotonic()
            return self._reachable

    def __call__(self, event_id: str, event_type: str, trigger: str) -> str:
        if self.use_prefect():
            self._context.copy().run(emit, event_id, event_type, trigger)
            return "prefect"
        self.in_process(event_id, event_type, trigger)
        return "in-process"

    def shutdown(self, wait: bool = True) -> None:
        self.in_process.shutdown(wait=wait)


# --- the app ---------------------------------------------------------------------------------

RETRY_AFTER_HEADER = {"Retry-After": {"description": "Seconds to wait before sending again",
                                      "schema": {"type": "integer"}}}
PROBLEM_DESCRIPTIONS = {
    401: "Missing, expired or wrong webhook signature, or wrong bearer token; nothing stored",
    404: "No event with this id",
    413: "The body is larger than api.max_body_bytes; nothing stored",
    422: "Not JSON, or bad fields (each named); nothing stored",
    503: "The state store is unreachable; nothing stored (or not known to be): send it again after Retry-After",
}
# Either a bearer token, or the three Standard Webhooks headers together.
SECURITY = [{"bearerToken": []}, {"webhookId": [], "webhookTimestamp": [], "webhookSignature": []}]
SECURITY_SCHEMES = {
    "bearerToken": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <api.token>"},
    "webhookId": {"type": "apiKey", "in": "header", "name": webhooks.ID_HEADER,
                  "description": "A unique message id chosen by the sender"},
    "webhookTimestamp": {"type": "apiKey", "in": "header", "name": webhooks.TIMESTAMP_HEADER,
                         "description": "Seconds since the epoch; refused more than 5 minutes away"},
    "webhookSignature": {"type": "apiKey", "in": "header", "name": webhooks.SIGNATURE_HEADER,
                         "description": "v1,<base64 HMAC-SHA256 of 'id.timestamp.payload'>, space-separated"},
}


def PROBLEMS(*codes: int) -> dict:  # noqa: N802 - reads as a declaration in the route decorators
    out = {}
    for code in codes:
        out[code] = {"model": Problem, "description": PROBLEM_DESCRIPTIONS[code]}
        if code == 503:
            out[code]["headers"] = RETRY_AFTER_HEADER
    return out


def _problem(status: int, error: str, problems: list[str] = (), headers: Optional[dict] = None) -> JSONResponse:
    fields = [p.split(":", 1)[0] for p in problems]
    return JSONResponse(Problem(error=error, problems=list(problems), fields=fields).model_dump(), status_code=status,
                        headers=headers)


def _unavailable(what: str, exc: Exception) -> JSONResponse:
    # The driver's message names the host and port, never the password; the class is enough to act on.
    log.warning("%s: state store unreachable (%s); answered 503", what, type(exc).__name__)
    return _problem(503, "the state store is unreachable: send the request again after Retry-After "
                         "(an event stored before the outage is then answered as a duplicate)",
                    headers={"Retry-After": str(RETRY_AFTER)})


async def _store_answers(timeout: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(asyncio.to_thread(store_up), timeout)
    except asyncio.TimeoutError:
        return False


def _event_status(event_id: str) -> Optional[EventStatus]:
    from deployments.outcomes import stored_outcomes
    from models.db import session_scope
    from models.runstate import get_event

    with session_scope() as session:
        event = get_event(session, event_id)
        if event is None:
            return None
        head = dict(id=event.id, type=event.type, trigger=event.trigger, status=event.status,
                    received_at=event.received_at, finished_at=event.finished_at, error=event.error)
    return EventStatus(**head, outcomes=[ConnectorOutcome(**o) for o in stored_outcomes(event_id)])


async def _read_limited(request: Request, limit: int) -> Optional[bytes]:
    """The raw body, or None as soon as it is longer than `limit`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            return None
    return bytes(body)


def create_app(config: Config, config_path: Optional[str] = None, *,
               dispatch: DispatchMode | Callable[[str, str, str], object] = "auto", workers: int = 2) -> FastAPI:
    """The event API for `config`; `dispatch` is a mode or a callable(event_id, event_type, trigger)."""
    from models.ingest import GroupCommit

    auth = Authenticator(config.api)
    store = GroupCommit()
    limit = config.api.max_body_bytes
    connectors = [c.name for c in config.connectors if c.enabled]
    dispatcher = dispatch if callable(dispatch) else AutoDispatch(dispatch, InProcess(config_path, connectors, workers))

    @asynccontextmanager
    async def lifespan(_app):
        yield
        if hasattr(dispatcher, "shutdown"):  # let in-process runs finish, off the event loop
            await asyncio.to_thread(dispatcher.shutdown, True)

    app = FastAPI(title="outbound-provisioning event API", version="1", lifespan=lifespan,
                  description="Identity events in; provisioning to Google Workspace, Salesforce and SCIM 2.0 out.")
    app.state.dispatcher = dispatcher

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz():
        """Liveness: the process answers (always 200); `store` says whether the state store does."""
        return Health(status="ok", store="up" if await _store_answers() else "down")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {
        "model": Health, "description": "The state store is unreachable: send no traffic here for now",
        "headers": RETRY_AFTER_HEADER}})
    async def readyz():
        """Readiness: 200 when the state store answers, else 503 (a load balancer stops routing here)."""
        if await _store_answers():
            return Health(status="ready", store="up")
        return JSONResponse(Health(status="unavailable", store="down").model_dump(), status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER)})

    @app.post("/v1/events", status_code=202, response_model=EventAccepted, tags=["events"],
              responses={202: {"description": "Stored in the outbox (durable), then dispatched"},
                         200: {"model": EventAccepted, "description": "Seen before: the stored status"},
                         **PROBLEMS(401, 413, 422, 503)},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/IdentityEvent"}}}}, "security": SECURITY})
    async def post_event(request: Request):
        """Store an identity event in the outbox, then start provisioning it."""
        body = await _read_limited(request, limit)
        if body is None:
            return _problem(413, f"the body is larger than {limit} bytes")
        refused = auth.check(request.headers, body)
        if refused:
            log.info("POST /v1/events refused: %s", refused)
            return _problem(401, f"not authenticated: {refused}")
        try:
            accepted = await asyncio.wrap_future(store.submit(body, config))
        except InvalidInput as exc:
            return _problem(422, "invalid event", exc.problems)
        except STORE_UNAVAILABLE as exc:  # not stored (or not known to be): the sender must retry
            return _unavailable("POST /v1/events", exc)
        if not accepted.new:
            return JSONResponse(EventAccepted(id=accepted.event_id, status=accepted.status,
                                              duplicate=True).model_dump(), status_code=200)
        try:
            how = dispatcher(accepted.event_id, accepted.type, accepted.trigger)
            log.info("event=%s type=%s stored and dispatched (%s)", accepted.event_id, accepted.type, how or "custom")
        except Exception as exc:  # stored already: the sweeper re-dispatches it
            log.warning("event=%s stored; dispatch failed (%s: %s); sweep-events will retry",
                        accepted.event_id, type(exc).__name__, exc)
        return JSONResponse(EventAccepted(id=accepted.event_id, status=accepted.status).model_dump(), status_code=202)

    @app.get("/v1/events/{event_id}", response_model=EventStatus, tags=["events"],
             responses=PROBLEMS(401, 404, 503), openapi_extra={"security": SECURITY})
    async def get_event_status(event_id: str, request: Request):
        """The event's status and its outcome on each connector.

        Authenticated by bearer token, or by a Standard Webhooks signature whose payload is the
        request path as sent (`<webhook-id>.<webhook-timestamp>./v1/events/<id>`).
        """
        path = request.scope.get("raw_path") or request.url.path.encode()
        refused = auth.check(request.headers, path, legacy_payload=request.url.path.encode())
        if refused:
            log.info("GET /v1/events/{id} refused: %s", refused)
            return _problem(401, f"not authenticated: {refused}")
        try:
            status = await asyncio.to_thread(_event_status, event_id)
        except STORE_UNAVAILABLE as exc:
            return _unavailable("GET /v1/events/{id}", exc)
        if status is None:
            return _problem(404, f"no event {event_id!r}")
        return JSONResponse(status.model_dump(mode="json"))

    mount_wso2(app, config, dispatcher, _problem, _read_limited, _unavailable)
    if config.api.scim_token:  # the SCIM 2.0 service provider, an event source of its own
        from deployments.scim_source import scim_router

        app.include_router(scim_router(config, lambda: dispatcher))

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            event_schema = IdentityEvent.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(event_schema.pop("$defs", {}))
            components["IdentityEvent"] = event_schema
            schema["components"]["securitySchemes"] = SECURITY_SCHEMES
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
