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

Dispatch (deployments.dispatch): with a reachable Prefect server (PREFECT_API_URL) the API emits
the Prefect event `outbound.user.<type>` and the `provision-user` deployment's trigger starts the
run on a worker (the scale-out path); otherwise it wakes the drainer threads of a child process
(deployments.drain_process: the low-latency path), so this process only accepts. Who may call it:
deployments.api_auth; what the OpenAPI document says: deployments.openapi.
"""

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from deployments.api_auth import Authenticator, sign
from deployments.dispatch import AutoDispatch, DispatchMode, InProcess
from deployments.drain_process import DrainProcess
from deployments.openapi import (PROBLEMS, RETRY_AFTER_HEADER, SECURITY, ConnectorOutcome, EventAccepted, EventStatus,
                                 Health, Problem, describe)
from deployments.webhooks_wso2 import mount_wso2
from models.availability import STORE_UNAVAILABLE, store_up
from models.config import Config
from models.validation import InvalidInput

# Names callers import from here, though each now lives in its own module.
__all__ = ["AutoDispatch", "InProcess", "create_app", "sign"]

log = logging.getLogger("outbound.api")

RETRY_AFTER = 5  # seconds: what a sender is told to wait while the state store is unreachable


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
    # The drain process starts with the app (lifespan) when in-process is sure, else at the first event.
    dispatcher = dispatch if callable(dispatch) else AutoDispatch(dispatch,
                                                                  DrainProcess(config_path, connectors, workers))

    @asynccontextmanager
    async def lifespan(_app):
        if isinstance(dispatcher, AutoDispatch):  # a warm drain process before the first request, off the loop
            await asyncio.to_thread(dispatcher.start)
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

    describe(app)
    return app
