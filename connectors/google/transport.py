"""Google transport: the one request choke point (pacing, dry-run, errors) and google-auth's session.

    requests / google-auth transport errors, 5xx, 408, 412  -> TransientError
    429, 403 userRateLimitExceeded/rateLimitExceeded/quotaExceeded -> RateLimited (Retry-After)
    401 after one token refresh, other 403, refused assertion -> AuthFailed
    400 -> Rejected (naming the field)    404 -> NotFound    409 -> AlreadyExists
"""

import json
import logging
import re
import threading
import time
from typing import Any, Iterator, Optional
from urllib.parse import quote

import google.auth.exceptions
import google.auth.transport.requests
import requests

from connectors.base import Capabilities
from connectors.errors import (AuthFailed, ConnectorError, DryRunRejected, TransientError, for_status,
                               read_applies_nothing, retry_after_seconds, token_error)
from connectors.http import maybe_sent
from models.config import GoogleSettings

log = logging.getLogger("connectors.google")
RATE_REASONS = {"userRateLimitExceeded", "rateLimitExceeded", "quotaExceeded"}
API_PATH = "/admin/directory/v1/"
_PASSWORD = re.compile(rb'"password": "[^"]*"')


class _Pacer:
    """Keep under `rate` calls per second: each call books its slot, and waits for it if need be."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, cost: int = 1) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + cost * self.interval
        if start > now:
            time.sleep(start - now)  # pacing only: retrying is the orchestrator's job


class _TokenRequest(google.auth.transport.requests.Request):
    """google-auth's transport for token calls, over our session; a token endpoint that is down or
    pacing us is reported at once (by the one token rule) instead of being retried inside google-auth.
    Other refusals go back to google-auth, whose RefreshError `_request` turns into AuthFailed."""

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        response = super().__call__(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)
        if response.status >= 500 or response.status in (408, 429):
            raise token_error(response.status, f"token endpoint: HTTP {response.status}",
                              retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        return response


def authorized_session(credentials, settings: GoogleSettings) -> google.auth.transport.requests.AuthorizedSession:
    """An AuthorizedSession with our session's TLS trust, pools and headers, for API and token calls.

    On a 401 it refreshes the token exactly once and resends; a second 401 is returned to us.
    """
    from connectors.http import build_session

    # At DEBUG, google-auth's transport logs whole bodies and headers: our generated password,
    # the signed assertion, the bearer token. Those are never logged.
    transport_log = logging.getLogger("google.auth.transport.requests")
    if transport_log.level < logging.INFO:
        transport_log.setLevel(logging.INFO)
    base = build_session(settings)
    session = google.auth.transport.requests.AuthorizedSession(
        credentials, refresh_status_codes=(401,), max_refresh_attempts=1, auth_request=_TokenRequest(base))
    session.verify, session.trust_env = base.verify, base.trust_env
    session.headers.update(base.headers)
    for prefix, adapter in base.adapters.items():
        session.mount(prefix, adapter)
    return session


class Transport:
    """The connector's HTTP side: every call goes through `_request`."""

    # Google's address is the username (primaryEmail): there is no separate email to manage. A batch
    # request carries at most 1000 calls.
    capabilities = Capabilities(groups=True, deletes_users=True, max_batch=1000, read_only_attributes=("email",))

    def __init__(self, name: str, settings: GoogleSettings, session: requests.Session, *,
                 domain: Optional[str] = None, requests_per_second: Optional[float] = None, dry_run: bool = False,
                 extra_targets: tuple[str, ...] = ()):
        self.name = name
        self.extra_targets = tuple(extra_targets)
        # Custom schema fields come back only with projection=full.
        self._projection = {"projection": "full"} if any(t.startswith("customSchemas.") for t in extra_targets) else {}
        self.settings = settings
        self.session = session
        self.base_url = settings.api_base_url
        self.customer = settings.customer
        # Groups get addresses in the connector's `domain`, else the impersonated admin's domain.
        self.domain = (domain or settings.admin_email.rpartition("@")[2]).lower()
        self.dry_run = dry_run
        self._pacer = _Pacer(requests_per_second) if requests_per_second else None
        self.requests_sent = 0

    # --- the one choke point -------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        """Send one call (path relative to the Directory API, or absolute from '/'). On a dry run
        anything but a GET raises DryRunRejected instead of being sent."""
        with read_applies_nothing(method):
            return self._send(method, path, **kwargs)

    def _send(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
              data: bytes | None = None, headers: dict | None = None, cost: int = 1,
              base: Optional[str] = None) -> requests.Response:
        if self.dry_run and method != "GET":
            raise DryRunRejected(method, path, _without_password(json_body, data))
        # `base`: another Google API's root (the Licensing API) for an absolute `path`.
        url = f"{base or self.base_url}{path if path.startswith('/') else API_PATH + path}"
        headers = {"Accept": "application/json", **(headers or {})}
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(json_body, ensure_ascii=False).encode()
        if self._pacer:
            self._pacer.wait(cost)
        try:
            self.requests_sent += 1
            response = self.session.request(method, url, data=data, params=params, headers=headers,
                                            timeout=self.settings.timeout)
        except google.auth.exceptions.RefreshError as exc:
            if getattr(exc, "retryable", False):
                raise TransientError(f"{method} {path}: token refresh failed, retryable", maybe_applied=False) from exc
            raise AuthFailed(f"{method} {path}: the token endpoint refused the service account "
                             f"({refresh_detail(exc)})") from exc
        except google.auth.exceptions.TransportError as exc:
            raise TransientError(f"{method} {path}: token endpoint unreachable ({type(exc.__cause__).__name__})",
                                 maybe_applied=False) from exc
        except requests.Timeout as exc:
            raise TransientError(f"{method} {path}: timed out") from exc
        except requests.RequestException as exc:
            raise TransientError(f"{method} {path}: connection failed ({type(exc).__name__})",
                                 maybe_applied=maybe_sent(exc)) from exc
        if response.status_code >= 400:
            raise error_for(f"{method} {path}", response.status_code, body_of(response.content), response.headers)
        return response

    @staticmethod
    def _json(response: requests.Response) -> dict:
        if response.status_code == 204 or not response.content:
            return {}
        body = body_of(response.content)
        if not isinstance(body, dict):
            raise TransientError(f"{response.request.method} {response.url}: the answer is not JSON")
        return body

    def _pages(self, path: str, key: str, params: dict) -> Iterator[dict]:
        params = dict(params)
        while True:
            body = self._json(self._request("GET", path, params=params))
            yield from body.get(key) or []
            token = body.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = token


def _without_password(json_body: Any, data: bytes | None) -> Any:
    """What a refused dry-run call would have sent, minus the generated password."""
    if isinstance(json_body, dict) and "password" in json_body:
        return {**json_body, "password": "***"}
    if json_body is None and data is not None:
        return _PASSWORD.sub(b'"password": "***"', data).decode(errors="replace")
    return json_body


def key(value: str) -> str:
    """A user/group/member key as one path segment."""
    return quote(value, safe="@")


def body_of(content: bytes) -> Any:
    try:
        return json.loads(content) if content else {}
    except ValueError:
        return None


def _field_of(items: list, message: str) -> Optional[str]:
    """The field a Google error names: its `location`, else what the message says."""
    for item in items:
        if isinstance(item, dict) and item.get("location"):
            return item["location"]
    if "GivenName" in message:
        return "name.givenName"
    if "FamilyName" in message:
        return "name.familyName"
    if "primary_user_email" in message or "Domain not found" in message:
        return "primaryEmail"
    if "Password" in message:
        return "password"
    match = re.search(r"(?:Invalid Input|Missing required field|Invalid value for):?\s*([A-Za-z_.]+)", message)
    return match.group(1) if match else None


def error_for(what: str, status: int, body: Any, headers) -> ConnectorError:
    """The ConnectorError for a Google error answer (a whole request or one batch part)."""
    error = body.get("error") if isinstance(body, dict) else None
    items: list = []
    if isinstance(error, dict):
        message, items = str(error.get("message") or ""), error.get("errors") or []
    else:
        message = str(body.get("error_description") or error or "") if isinstance(body, dict) else ""
    reasons = {i.get("reason") for i in items if isinstance(i, dict)}
    reason = next(iter(sorted(r for r in reasons if r)), None)
    text = f"{what}: HTTP {status}" + (f" {reason}" if reason else "") + (f": {message}" if message else "")
    retry_after = retry_after_seconds(headers.get("Retry-After")) if headers else None
    return for_status(status, text, retry_after=retry_after, field=_field_of(items, message),
                      rate_limited=status == 403 and bool(reasons & RATE_REASONS))


def refresh_detail(exc: Exception) -> str:
    """The token endpoint's error code and description (never the assertion)."""
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    detail = " ".join(str(data[k]) for k in ("error", "error_description") if data.get(k))
    return detail or type(exc).__name__
