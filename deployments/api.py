"""The HTTP event API (`outbound api`): authenticate, validate, store in the outbox, then dispatch.

    POST /v1/events        an identity event (JSON). 202 {"id", "status"} once it is stored;
                           200 with the stored status when the id was seen before (not applied again).
    GET  /v1/events/{id}   its status and the outcome per connector.
    GET  /healthz          liveness.

Order of checks on POST, each refusing before anything is stored: size (413), authentication
(401: `X-Outbound-Signature: sha256=<hex>` HMAC-SHA256 of the raw body with `api.hmac_secret`, or
`Authorization: Bearer <api.token>`), validation (422, naming every bad field). The event is
committed to the outbox before the answer; dispatch happens after the commit and a dispatch failure
does not lose it: `sweep-events` re-dispatches whatever stays unfinished.

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
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Callable, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from models.config import ApiSettings, Config
from models.events import IdentityEvent
from models.secrets import resolve
from models.validation import InvalidInput

log = logging.getLogger("outbound.api")

EVENT_PREFIX = "outbound."
SIGNATURE_HEADER = "X-Outbound-Signature"
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


class Problem(BaseModel):
    error: str
    problems: list[str] = []
    fields: list[str] = []


# --- authentication --------------------------------------------------------------------------

class Authenticator:
    """Check a request's signature or bearer token; the secrets are resolved once, never shown."""

    def __init__(self, settings: Optional[ApiSettings]):
        if settings is None or not (settings.hmac_secret or settings.token):
            raise InvalidInput("configuration", ["api: set api.hmac_secret and/or api.token "
                                                 "(secret references) before starting the event API"])
        self._hmac = resolve(settings.hmac_secret).encode() if settings.hmac_secret else None
        self._token = resolve(settings.token).encode() if settings.token else None

    def __repr__(self) -> str:
        return "Authenticator(<secrets hidden>)"

    def check(self, headers, signed: bytes) -> bool:
        """True when the bearer token matches, or the HMAC of `signed` matches the signature header."""
        ok = False
        auth = headers.get("authorization", "")
        if self._token is not None and auth[:7].lower() == "bearer ":
            ok = hmac.compare_digest(auth[7:].strip().encode(), self._token)
        signature = headers.get(SIGNATURE_HEADER.lower(), "")
        if not ok and self._hmac is not None and signature.startswith("sha256="):
            expected = hmac.new(self._hmac, signed, hashlib.sha256).hexdigest()
            ok = hmac.compare_digest(signature[7:].strip().lower().encode(), expected.encode())
        return ok


def sign(secret: str | bytes, body: bytes) -> str:
    """The X-Outbound-Signature value for `body` (for senders and tests)."""
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
    wake-up while every drainer is busy is not lost: a drainer looks again before it sleeps.
    """

    def __init__(self, config_path: Optional[str], connectors: list[str], workers: int = 2):
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
        from prefect import tags

        from flows.provision import provision_user

        while True:
            with self._wake:
                while not self._pending_wakes and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                self._pending_wakes = 0  # one drain serves every wake-up so far
            try:
                with tags("trigger:event", *(f"connector:{c}" for c in self.connectors)):
                    asyncio.run(provision_user(config_path=self.config_path))
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

def _problem(status: int, error: str, problems: list[str] = ()) -> JSONResponse:
    fields = [p.split(":", 1)[0] for p in problems]
    return JSONResponse(Problem(error=error, problems=list(problems), fields=fields).model_dump(), status_code=status)


def _event_status(event_id: str) -> Optional[EventStatus]:
    from deployments.cli import stored_outcomes
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
    from deployments.ingest import accept

    auth = Authenticator(config.api)
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

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.post("/v1/events", status_code=202, response_model=EventAccepted, tags=["events"],
              responses={200: {"model": EventAccepted, "description": "Seen before: the stored status"},
                         401: {"model": Problem}, 413: {"model": Problem}, 422: {"model": Problem}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/IdentityEvent"}}}}})
    async def post_event(request: Request):
        """Store an identity event in the outbox, then start provisioning it."""
        body = await _read_limited(request, limit)
        if body is None:
            return _problem(413, f"the body is larger than {limit} bytes")
        if not auth.check(request.headers, body):
            return _problem(401, "missing or bad signature or token")
        try:
            accepted = await asyncio.to_thread(accept, body, config)
        except InvalidInput as exc:
            return _problem(422, "invalid event", exc.problems)
        if not accepted.new:
            return JSONResponse(EventAccepted(id=accepted.event_id, status=accepted.status,
                                              duplicate=True).model_dump(), status_code=200)
        event = IdentityEvent.model_validate_json(body) if body else None
        try:
            how = dispatcher(accepted.event_id, event.type, event.trigger)
            log.info("event=%s type=%s stored and dispatched (%s)", accepted.event_id, event.type, how or "custom")
        except Exception as exc:  # stored already: the sweeper re-dispatches it
            log.warning("event=%s stored; dispatch failed (%s: %s); sweep-events will retry",
                        accepted.event_id, type(exc).__name__, exc)
        return JSONResponse(EventAccepted(id=accepted.event_id, status=accepted.status).model_dump(), status_code=202)

    @app.get("/v1/events/{event_id}", response_model=EventStatus, tags=["events"],
             responses={401: {"model": Problem}, 404: {"model": Problem}})
    async def get_event_status(event_id: str, request: Request):
        """The event's status and its outcome on each connector (bearer token, or the HMAC of the path)."""
        if not auth.check(request.headers, request.url.path.encode()):
            return _problem(401, "missing or bad signature or token")
        status = await asyncio.to_thread(_event_status, event_id)
        if status is None:
            return _problem(404, f"no event {event_id!r}")
        return JSONResponse(status.model_dump(mode="json"))

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            event_schema = IdentityEvent.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(event_schema.pop("$defs", {}))
            components["IdentityEvent"] = event_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
