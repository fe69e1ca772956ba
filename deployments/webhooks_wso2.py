"""WSO2 Identity Server 7 and Asgardeo webhooks on the event API (`outbound api`), with `sources.wso2` set.

    GET  /v1/webhooks/wso2   the WebSub verification (hub.mode=subscribe|unsubscribe, hub.topic,
                             hub.challenge): answers 200 with hub.challenge as text/plain.
    POST /v1/webhooks/wso2   a webhook (a Security Event Token, see models.wso2).

Order of checks on POST, each refusing before anything is stored: size (413); signature (401):
`x-wso2-event-signature` (WSO2 IS) or `x-hub-signature` (Asgardeo), `sha256=<hex HMAC-SHA256 of the
raw body>` keyed with the UTF-8 bytes of any of `sources.wso2.secrets`; the body (400, naming the
field); `iat` within `iat_tolerance` of this server's clock (401); a `jti` received before (409,
nothing applied again); the events it stands for (422 when the engine refuses one: an unknown
IdP, a username its store's rule refuses; none is stored then).

Accepted: every identity event it stands for, with the receipt of its `jti`, is stored in the
outbox in one transaction before the answer (202 with their ids: `GET /v1/events/{id}` reads each),
then dispatched like a `POST /v1/events`. A webhook of which nothing is provisioned (an event type
this engine does not use, a local login, a user the store does not know) is answered 200, what
was left out and why listed under `ignored`, and counted in the receipt, so that the sender does
not retry it.
"""

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.exc import IntegrityError

from models.ingest import accept_all
from models import receipts
from models.availability import STORE_UNAVAILABLE
from models.config import Config
from models.db import session_scope
from models.secrets import SecretError, resolve
from models.validation import InvalidInput
from models.wso2 import MalformedWebhook, parse_webhook, to_events

log = logging.getLogger("outbound.api.wso2")

SOURCE = "wso2"
PATH = "/v1/webhooks/wso2"
SIGNATURE_HEADERS = ("x-wso2-event-signature", "x-hub-signature")  # WSO2 IS, Asgardeo
MAX_CHALLENGE = 1024


def signature(secret: str | bytes, body: bytes) -> str:
    """The header value WSO2 sends for `body`: `sha256=<hex>` (for senders and tests)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(keys: list[bytes], headers, body: bytes) -> Optional[str]:
    """None when the signature header matches one key; else why not (never a secret)."""
    offered = next((headers.get(h) for h in SIGNATURE_HEADERS if headers.get(h)), "")
    if not offered:
        return "missing x-wso2-event-signature (or x-hub-signature) header"
    algorithm, _, digest = offered.strip().partition("=")
    if algorithm.lower() != "sha256" or not digest:
        return "the signature header must be sha256=<hex HMAC-SHA256 of the body>"
    matched = False
    for key in keys:  # every key, without stopping early: the time taken does not say which matched
        matched |= hmac.compare_digest(digest.lower().encode(), hmac.new(key, body, hashlib.sha256).hexdigest().encode())
    return None if matched else "the signature does not match any of sources.wso2.secrets"


def stale(iat_ms: int, tolerance: int, now: Optional[float] = None) -> Optional[str]:
    """Why the token's `iat` (milliseconds) is refused, or None."""
    now = time.time() if now is None else now
    if abs(now * 1000 - iat_ms) > tolerance * 1000:
        return f"iat {iat_ms} is more than {tolerance} s away from the server's clock (sources.wso2.iat_tolerance)"
    return None


@dataclass
class Received:
    replay_of: Optional[str] = None  # when the jti was received before: when
    events: list = field(default_factory=list)  # (id, type, trigger, status)
    ignored: list[str] = field(default_factory=list)


def receive(hook, config: Config, tries: int = 2) -> Received:
    """Map the webhook and store its events with its receipt; a jti seen before is a replay.

    A conflict that is not this jti (another webhook creating the same user at the same instant,
    as userCreated and registrationSuccess do) is read again once: the user exists by then.
    """
    tenant = config.tenant_domain
    with session_scope() as session:
        prior = receipts.seen(session, SOURCE, hook.jti)
        if prior is not None:
            return Received(replay_of=prior.received_at.isoformat())
        mapped = to_events(hook, config.sources.wso2, tenant, receipts.StoreDirectory(session, SOURCE, tenant))

    def keep_receipt(session):
        receipts.record(session, SOURCE, hook.jti, hook.iss, len(mapped.events), len(mapped.ignored),
                        mapped.links, tenant)

    try:
        accepted = accept_all(mapped.events, config, also=keep_receipt)
    except IntegrityError:  # the same jti (or event id) was stored concurrently: the other one won
        with session_scope() as session:
            prior = receipts.seen(session, SOURCE, hook.jti)
        if prior is None and tries > 1:
            return receive(hook, config, tries - 1)
        if prior is None:
            raise
        return Received(replay_of=prior.received_at.isoformat())
    return Received(events=[(a.event_id, e["type"], e["trigger"], a.status) for a, e in zip(accepted, mapped.events)],
                    ignored=mapped.ignored)


def _secret_keys(config: Config) -> list[bytes]:
    keys, problems = [], []
    for i, ref in enumerate(config.sources.wso2.secrets):
        try:
            keys.append(resolve(ref).encode())
        except SecretError as exc:
            problems.append(f"sources.wso2.secrets[{i}]: {exc}")
    if problems:
        raise InvalidInput("configuration", problems)
    return keys


def mount_wso2(app: FastAPI, config: Config, dispatcher, problem, read_limited, unavailable) -> None:
    """Serve the WSO2 webhook endpoint on `app` when `sources.wso2` is configured.

    `problem`, `read_limited` and `unavailable` are the event API's own answers (deployments.api),
    handed in so that both endpoints answer alike.
    """
    if config.sources.wso2 is None:
        return
    _problem, _read_limited, _unavailable = problem, read_limited, unavailable

    keys = _secret_keys(config)  # resolved once, at start; a reference that does not resolve stops it
    settings, limit = config.sources.wso2, config.api.max_body_bytes if config.api else 64 * 1024
    router = APIRouter(tags=["webhooks"])

    @router.get(PATH, response_class=PlainTextResponse,
                responses={400: {"description": "Not a WebSub verification request"}})
    async def verify_subscription(request: Request):
        """Answer WSO2's WebSub verification of a (un)subscription: echo hub.challenge."""
        query = request.query_params
        mode, challenge = query.get("hub.mode"), query.get("hub.challenge")
        if mode not in ("subscribe", "unsubscribe") or not challenge or len(challenge) > MAX_CHALLENGE:
            return _problem(400, "expected hub.mode=subscribe|unsubscribe and hub.challenge "
                                 f"(1 to {MAX_CHALLENGE} characters)")
        log.info("WSO2 WebSub %s verified for topic %r", mode, (query.get("hub.topic") or "")[:200])
        return PlainTextResponse(challenge)

    @router.post(PATH, status_code=202, responses={
        200: {"description": "Received; nothing in it is provisioned (see `ignored`)"},
        202: {"description": "Stored in the outbox (durable) with the receipt of its jti, then dispatched"},
        400: {"description": "Not a WSO2 webhook (the field named); nothing stored"},
        401: {"description": "Missing or wrong signature, or a stale iat; nothing stored"},
        409: {"description": "This jti was received before; nothing applied again"},
        413: {"description": "The body is larger than api.max_body_bytes; nothing stored"},
        422: {"description": "An event the engine refuses (each named); nothing stored"},
        503: {"description": "The state store is unreachable; nothing stored: send it again"}})
    async def post_webhook(request: Request):
        """Store the identity events a WSO2 IS / Asgardeo webhook stands for, then provision them."""
        body = await _read_limited(request, limit)
        if body is None:
            return _problem(413, f"the body is larger than {limit} bytes")
        refused = verify(keys, request.headers, body)
        if refused:
            log.info("POST %s refused: %s", PATH, refused)
            return _problem(401, f"not authenticated: {refused}")
        try:
            hook = parse_webhook(body)
        except InvalidInput as exc:
            return _problem(400, "not a WSO2 webhook", exc.problems)
        refused = stale(hook.iat, settings.iat_tolerance)
        if refused:
            log.info("POST %s jti=%s refused: %s", PATH, hook.jti, refused)
            return _problem(401, f"not accepted: {refused}", [f"iat: {refused}"])
        try:
            received = await asyncio.to_thread(receive, hook, config)
        except MalformedWebhook as exc:
            return _problem(400, "not a WSO2 webhook this engine can read; nothing stored", exc.problems)
        except InvalidInput as exc:
            return _problem(422, "webhook refused; nothing stored", exc.problems)
        except STORE_UNAVAILABLE as exc:
            return _unavailable(f"POST {PATH}", exc)
        if received.replay_of:
            log.info("POST %s jti=%s refused: a replay (first received %s)", PATH, hook.jti, received.replay_of)
            return _problem(409, f"jti {hook.jti!r} was received at {received.replay_of}; not applied again",
                            [f"jti: received before, at {received.replay_of}"])
        for event_id, type_, trigger, _status in received.events:
            try:
                dispatcher(event_id, type_, trigger)
            except Exception as exc:  # stored already: the sweeper re-dispatches it
                log.warning("event=%s stored; dispatch failed (%s: %s); sweep-events will retry",
                            event_id, type(exc).__name__, exc)
        if received.ignored:
            log.info("POST %s jti=%s: %d left out: %s", PATH, hook.jti, len(received.ignored),
                     "; ".join(received.ignored))
        answer = {"jti": hook.jti, "events": [{"id": i, "type": t, "trigger": tr, "status": s}
                                              for i, t, tr, s in received.events],
                  "ignored": received.ignored}
        return JSONResponse(answer, status_code=202 if received.events else 200)

    app.include_router(router)
