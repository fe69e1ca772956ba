"""Google Workspace connector: the Admin SDK Directory API v1, with a delegated service account.

Authentication is google-auth's service account flow with domain-wide delegation (`subject` =
the admin to impersonate); the key's own `token_uri` is honoured. Every call goes through
`GoogleConnector._request`, which drops mutating calls in dry-run, paces to
`requests_per_second`, and translates failures:

    requests / google-auth transport errors, 5xx, 408, 412  -> TransientError
    429, 403 userRateLimitExceeded/rateLimitExceeded/quotaExceeded -> RateLimited (Retry-After)
    401 after one token refresh, other 403, refused assertion -> AuthFailed
    400 -> Rejected (naming the field)    404 -> NotFound    409 -> AlreadyExists

Account mapping: id = Google's user id, user_name = email = primaryEmail, external_id = the
externalIds entry of type "organization", active = not suspended, display_name = name.displayName
(else name.fullName). `email` is not a separate attribute in Google: updates ignore it.

Mapped attributes (the connector's `attributes:`) travel in Account.extra under their target
name: `organizations.<field>` is a field of the primary organization, `phones.<type>` and
`relations.<type>` the value of the entry of that type, `customSchemas.<schema>.<field>` a custom
field (read with projection=full), `orgUnitPath` itself. PATCH replaces arrays whole, so an update
of one of them starts from the arrays the user has.
"""

import json
import logging
import re
import secrets
import threading
import time
import unicodedata
from dataclasses import replace
from typing import Any, Iterator, Optional
from urllib.parse import quote

import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.oauth2 import service_account

from connectors.base import Account, BatchOp, RemoteGroup
from connectors.errors import (AlreadyExists, AuthFailed, ConfigError, ConnectorError, NotFound,
                               Rejected, TransientError, for_status, retry_after_seconds)
from models.config import GoogleSettings
from models.mapping import as_text

log = logging.getLogger(__name__)
SCOPES = ("https://www.googleapis.com/auth/admin.directory.user",
          "https://www.googleapis.com/auth/admin.directory.group")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
RATE_REASONS = {"userRateLimitExceeded", "rateLimitExceeded", "quotaExceeded"}
API_PATH = "/admin/directory/v1/"
BATCH_PATH = "/batch/admin/directory_v1"
RESERVED = {"abuse", "postmaster"}
_LOCAL = re.compile(r"[a-z0-9_'.\-]+")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def query_value(value: str) -> str:
    """A value for Google's search syntax: single-quoted, with quotes and backslashes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def slugify(name: str) -> str:
    """The local part of a group address made from a local group name ('Sales EMEA' -> 'sales-emea')."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9_.'-]+", "-", ascii_name)
    slug = re.sub(r"\.{2,}", ".", slug).strip(".-")[:64].strip(".-")
    if not slug:
        raise Rejected(f"group name {name!r}: nothing usable for an email address", field="email")
    return slug


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
    """google-auth's transport for token calls, over our session; a failing token endpoint is
    reported at once instead of being retried with backoff inside google-auth."""

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        response = super().__call__(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)
        if response.status >= 500 or response.status in (408, 429):
            raise TransientError(f"token endpoint: HTTP {response.status}", status=response.status,
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


class GoogleConnector:
    supports_groups = True
    # Google's address is the username (primaryEmail): there is no separate email to manage.
    read_only_attributes = ("email",)
    batch_size = 1000  # Google's limit of calls in one batch request

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

    def _request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                 data: bytes | None = None, headers: dict | None = None, cost: int = 1) -> requests.Response | None:
        """Send one call (path relative to the Directory API, or absolute from '/')."""
        if self.dry_run and method in MUTATING:
            log.info("dry-run: %s %s not sent connector=%s", method, path, self.name)
            return None
        url = f"{self.base_url}{path if path.startswith('/') else API_PATH + path}"
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
                raise TransientError(f"{method} {path}: token refresh failed, retryable") from exc
            raise AuthFailed(f"{method} {path}: the token endpoint refused the service account "
                             f"({_refresh_detail(exc)})") from exc
        except google.auth.exceptions.TransportError as exc:
            raise TransientError(f"{method} {path}: token endpoint unreachable ({type(exc.__cause__).__name__})") from exc
        except requests.Timeout as exc:
            raise TransientError(f"{method} {path}: timed out") from exc
        except requests.RequestException as exc:
            raise TransientError(f"{method} {path}: connection failed ({type(exc).__name__})") from exc
        if response.status_code >= 400:
            raise error_for(f"{method} {path}", response.status_code, _body(response.content), response.headers)
        return response

    @staticmethod
    def _json(response: requests.Response | None) -> dict:
        if response is None or response.status_code == 204 or not response.content:
            return {}
        body = _body(response.content)
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

    # --- users --------------------------------------------------------------------------

    def _account(self, user: dict) -> Account:
        name = user.get("name") or {}
        external = next((e.get("value") for e in user.get("externalIds") or []
                         if isinstance(e, dict) and e.get("type") == "organization"), None)
        return Account(id=user.get("id"), user_name=user.get("primaryEmail", ""), email=user.get("primaryEmail"),
                       external_id=external, given_name=name.get("givenName"), family_name=name.get("familyName"),
                       display_name=name.get("displayName") or name.get("fullName") or None,
                       active=not user.get("suspended", False),
                       extra={t: read_mapped(user, t) for t in self.extra_targets})

    def _insert_body(self, account: Account) -> dict:
        body = {
            "primaryEmail": account.user_name,
            "name": {"givenName": account.given_name or self.settings.default_given_name,
                     "familyName": account.family_name or self.settings.default_family_name},
            # Nobody learns this password: the user sets their own (or signs in through SSO).
            "password": secrets.token_urlsafe(32),
            "changePasswordAtNextLogin": True,
            "suspended": not account.active,
        }
        if account.display_name:
            body["name"]["displayName"] = account.display_name
        if account.external_id:
            body["externalIds"] = [{"type": "organization", "value": account.external_id}]
        for target, value in account.extra.items():
            if value is not None and target in self.extra_targets:
                write_mapped(body, target, value, {})
        return body

    def _patch_body(self, changes: dict[str, Any], external_ids: Optional[list] = None,
                    current: Optional[dict] = None) -> dict:
        """The PATCH body for `changes`; `current` (the user as Google holds it) keeps the entries of
        arrays we do not manage."""
        body: dict[str, Any] = {}
        name: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "given_name":
                name["givenName"] = value or self.settings.default_given_name
            elif key == "family_name":
                name["familyName"] = value or self.settings.default_family_name
            elif key == "display_name":
                name["displayName"] = value
            elif key == "user_name":
                body["primaryEmail"] = value
            elif key == "active":
                body["suspended"] = not value
            elif key == "external_id":
                kept = [e for e in external_ids or [] if isinstance(e, dict) and e.get("type") != "organization"]
                body["externalIds"] = kept + ([{"type": "organization", "value": value}] if value else [])
            elif key.startswith("extra.") and key[len("extra."):] in self.extra_targets:
                write_mapped(body, key[len("extra."):], value, current or {})
            else:  # email is primaryEmail here (user_name)
                log.debug("google: change %s not applicable connector=%s", key, self.name)
        if name:
            body["name"] = name
        return body

    def check_user_name(self, user_name: str) -> None:
        """Raise Rejected unless Google would accept this primary address.

        Local part: 1-64 of lowercase letters, digits, . _ - ' (Google lowercases usernames and
        refuses + = < > , & !), no leading/trailing or doubled dot, not abuse/postmaster; a DNS
        domain; at most 320 characters in all.
        """
        def reject(why: str):
            raise Rejected(f"primaryEmail {user_name!r}: {why}", field="primaryEmail")

        local, at, domain = user_name.rpartition("@")
        if not at or not local or not domain:
            reject("must be an address local@domain")
        if len(user_name) > 320:
            reject("longer than 320 characters")
        if user_name != user_name.lower():
            reject("must be lowercase (Google lowercases usernames, so it would never match)")
        if len(local) > 64:
            reject("the part before @ is longer than 64 characters")
        if not _LOCAL.fullmatch(local):
            reject("the part before @ may contain only letters, digits and . _ - '")
        if local.startswith(".") or local.endswith(".") or ".." in local:
            reject("the part before @ may not start or end with a dot, or hold two dots in a row")
        if local in RESERVED:
            reject(f"{local!r} is reserved by Google")
        labels = domain.split(".")
        if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
            reject(f"{domain!r} is not a domain name")

    def create_user(self, account: Account) -> Account:
        """Create the user; a taken address raises AlreadyExists (find_user(user_name=) then finds it)."""
        response = self._request("POST", "users", json_body=self._insert_body(account))
        return self._account(self._json(response)) if response is not None else account

    def get_user(self, remote_id: str) -> Account:
        return self._account(self._json(self._request("GET", f"users/{_key(remote_id)}", params=self._projection or None)))

    def _needs_current(self, changes: dict[str, Any]) -> bool:
        """Whether a PATCH of `changes` replaces an array of which it sets only one entry."""
        return any(k == "external_id" or k.split(".", 2)[1:2] in (["organizations"], ["phones"], ["relations"])
                   for k in changes)

    def find_user(self, *, external_id: Optional[str] = None, user_name: Optional[str] = None,
                  email: Optional[str] = None) -> Optional[Account]:
        """Find the user by externalId (organization type), then by primary address; None if neither.

        `email` adds nothing here: a Google username is the primary address itself.
        """
        if external_id:
            params = {"customer": self.customer, "query": f"externalId:{query_value(external_id)}", "maxResults": 10,
                      **self._projection}
            for user in self._json(self._request("GET", "users", params=params)).get("users") or []:
                account = self._account(user)
                if account.external_id == external_id:  # the search may match more loosely than we need
                    return account
        if user_name:
            try:
                user = self._json(self._request("GET", f"users/{_key(user_name)}", params=self._projection or None))
            except NotFound:
                return None
            # A user key also matches ids and aliases: only the primary address itself is this user.
            if str(user.get("primaryEmail", "")).lower() == user_name.lower():
                return self._account(user)
        return None

    def update_user(self, remote_id: str, changes: dict[str, Any], current: Account) -> Account:
        """Change only the given managed attributes (PATCH; never the password)."""
        external_ids, raw = None, None
        if self._needs_current(changes) and not self.dry_run:
            # PATCH replaces arrays: keep the entries (externalIds of other types, other phones) the target holds.
            raw = self._json(self._request("GET", f"users/{_key(remote_id)}"))
            external_ids = raw.get("externalIds")
        body = self._patch_body(changes, external_ids, raw)
        if not body:
            return current
        response = self._request("PATCH", f"users/{_key(remote_id)}", json_body=body)
        if response is None:
            return replace(current, **{k: v for k, v in changes.items() if hasattr(current, k)})
        return self._account(self._json(response))

    def disable_user(self, remote_id: str) -> None:
        """Suspend the user."""
        self._request("PATCH", f"users/{_key(remote_id)}", json_body={"suspended": True})

    def enable_user(self, remote_id: str) -> None:
        self._request("PATCH", f"users/{_key(remote_id)}", json_body={"suspended": False})

    def delete_user(self, remote_id: str) -> None:
        """Delete the user; one already gone is fine."""
        try:
            self._request("DELETE", f"users/{_key(remote_id)}")
        except NotFound:
            log.info("google: user already gone remote_id=%s connector=%s", remote_id, self.name)

    def iter_users(self) -> Iterator[Account]:
        """Every user of the customer, 500 a page."""
        for user in self._pages("users", "users", {"customer": self.customer, "maxResults": 500, **self._projection}):
            yield self._account(user)

    # --- groups -------------------------------------------------------------------------

    def group_email(self, name: str) -> str:
        """The group's address: `name` itself if it is one, else `<slugified name>@<domain>`."""
        return name.lower() if "@" in name else f"{slugify(name)}@{self.domain}"

    def _member_ids(self, group_id: str) -> frozenset[str]:
        members = self._pages(f"groups/{_key(group_id)}/members", "members", {"maxResults": 200})
        return frozenset(m["id"] for m in members if m.get("id"))

    def _group(self, group: dict) -> RemoteGroup:
        return RemoteGroup(id=group["id"], name=group.get("name") or group.get("email", ""),
                           member_ids=self._member_ids(group["id"]))

    def create_group(self, name: str, member_ids: list[str], external_id: Optional[str] = None) -> RemoteGroup:
        """Create the group `<slugified name>@<connector domain, else the admin's domain>`, with members."""
        body = {"email": self.group_email(name), "name": name[:73]}
        response = self._request("POST", "groups", json_body=body)
        if response is None:
            return RemoteGroup(name=name, member_ids=frozenset(member_ids), external_id=external_id)
        group = self._json(response)
        self.add_members(group["id"], member_ids)
        return RemoteGroup(id=group["id"], name=group.get("name", name), member_ids=frozenset(member_ids),
                           external_id=external_id)

    def get_group(self, remote_id: str) -> RemoteGroup:
        return self._group(self._json(self._request("GET", f"groups/{_key(remote_id)}")))

    def find_group(self, name: str) -> Optional[RemoteGroup]:
        """The group with the address `name` maps to (see group_email), or None."""
        try:
            return self.get_group(self.group_email(name))
        except NotFound:
            return None

    def _member_calls(self, calls: list[tuple[str, str, Optional[dict]]], fine: type[ConnectorError]) -> None:
        """Run member calls (one request, or one batch); `fine` errors are the wanted state already."""
        if len(calls) == 1:
            method, path, body = calls[0]
            try:
                self._request(method, path, json_body=body)
            except fine:
                pass
            return
        errors = [r for r in self._batch_calls(calls) if isinstance(r, ConnectorError) and not isinstance(r, fine)]
        if errors:
            raise errors[0]

    def add_members(self, group_id: str, member_ids: list[str]) -> None:
        """Add users (by id) to the group; members already there are fine."""
        path = f"groups/{_key(group_id)}/members"
        self._member_calls([("POST", path, {"id": m}) for m in member_ids], AlreadyExists)

    def remove_members(self, group_id: str, member_ids: list[str]) -> None:
        """Remove users (by id) from the group; members already gone are fine."""
        base = f"groups/{_key(group_id)}/members/"
        self._member_calls([("DELETE", base + _key(m), None) for m in member_ids], NotFound)

    def delete_group(self, remote_id: str) -> None:
        try:
            self._request("DELETE", f"groups/{_key(remote_id)}")
        except NotFound:
            log.info("google: group already gone remote_id=%s connector=%s", remote_id, self.name)

    def iter_groups(self) -> Iterator[RemoteGroup]:
        """Every group of the customer with its members (one member listing per group)."""
        for group in self._pages("groups", "groups", {"customer": self.customer, "maxResults": 200}):
            yield self._group(group)

    # --- batch --------------------------------------------------------------------------

    def _op_call(self, op: BatchOp, current: Optional[dict] = None) -> tuple[str, str, Optional[dict]]:
        if op.kind == "create" and op.account is not None:
            return "POST", "users", self._insert_body(op.account)
        if not op.remote_id:
            raise Rejected(f"batch op {op.kind!r} needs a remote_id")
        path = f"users/{_key(op.remote_id)}"
        if op.kind == "update":
            current = current or {}
            return "PATCH", path, self._patch_body(op.changes, current.get("externalIds"), current)
        if op.kind in ("disable", "enable"):
            return "PATCH", path, {"suspended": op.kind == "disable"}
        if op.kind == "delete":
            return "DELETE", path, None
        raise Rejected(f"unknown batch op {op.kind!r}")

    def apply_batch(self, ops: list[BatchOp]) -> list[Any]:
        """Apply user operations through Google's batch endpoint, 1,000 calls per request.

        Results align with `ops`: an Account (create/update), None (done), or the ConnectorError
        that call met (a delete that found nothing is done). Never raises for one op.
        """
        results: list[Any] = [None] * len(ops)
        current = self._current_users(ops, results)
        calls, where = [], []
        for index, op in enumerate(ops):
            if results[index] is not None:  # its user could not be read
                continue
            try:
                calls.append(self._op_call(op, current.get(index)))
                where.append(index)
            except Rejected as exc:
                results[index] = exc
        if self.dry_run:
            for index in where:
                op = ops[index]
                results[index] = op.account if op.kind == "create" else None
            log.info("dry-run: batch of %d calls not sent connector=%s", len(where), self.name)
            return results
        for index, answer in zip(where, self._batch_calls(calls)):
            op = ops[index]
            if isinstance(answer, NotFound) and op.kind == "delete":
                answer = None
            elif isinstance(answer, dict):
                answer = self._account(answer) if op.kind in ("create", "update") and answer else None
            results[index] = answer
        return results

    def _current_users(self, ops: list[BatchOp], results: list[Any]) -> dict[int, dict]:
        """The users (as Google holds them) of updates that set one entry of an array, read in one batch;
        a user that cannot be read makes its update fail with that error."""
        need = [i for i, op in enumerate(ops) if op.kind == "update" and op.remote_id and self._needs_current(op.changes)]
        if not need or self.dry_run:
            return {}
        found = {}
        answers = self._batch_calls([("GET", f"users/{_key(ops[i].remote_id)}", None) for i in need])
        for index, answer in zip(need, answers):
            if isinstance(answer, dict):
                found[index] = answer
            else:
                results[index] = answer
        return found

    def _batch_calls(self, calls: list[tuple[str, str, Optional[dict]]]) -> list[Any]:
        """Send calls as batch requests; each answer is the JSON body (dict) or a ConnectorError."""
        answers: list[Any] = []
        for start in range(0, len(calls), self.batch_size):
            chunk = calls[start:start + self.batch_size]
            boundary = "batch_" + secrets.token_hex(12)
            try:
                response = self._request("POST", BATCH_PATH, data=_multipart(chunk, boundary), cost=len(chunk),
                                         headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})
            except ConnectorError as exc:
                answers.extend([exc] * len(chunk))
                continue
            if response is None:  # dry-run
                answers.extend([None] * len(chunk))
                continue
            answers.extend(_parse_batch(response, chunk))
        return answers


# --- helpers ---------------------------------------------------------------------------

def read_mapped(user: dict, target: str) -> Any:
    """A mapped attribute's value in a Google user resource (None when absent)."""
    head, _, rest = target.partition(".")
    if head == "organizations":
        orgs = [o for o in user.get("organizations") or [] if isinstance(o, dict)]
        primary = next((o for o in orgs if o.get("primary")), orgs[0] if orgs else {})
        return primary.get(rest)
    if head in ("phones", "relations"):
        entry = next((e for e in user.get(head) or [] if isinstance(e, dict) and e.get("type") == rest), {})
        return entry.get("value")
    if head == "customSchemas":
        schema, _, field = rest.partition(".")
        values = (user.get("customSchemas") or {}).get(schema)
        return values.get(field) if isinstance(values, dict) else None
    return user.get(target)


def write_mapped(body: dict, target: str, value: Any, current: dict) -> None:
    """Set a mapped attribute in a request body. An array (organizations, phones, relations) starts
    from `current`'s, so that only our entry changes."""
    head, _, rest = target.partition(".")
    if head in ("organizations", "phones", "relations"):
        if head not in body:
            body[head] = [dict(e) for e in current.get(head) or [] if isinstance(e, dict)]
        entries = body[head]
        if head == "organizations":
            entry = next((o for o in entries if o.get("primary")), entries[0] if entries else None)
            if entry is None:
                entry = {"primary": True}
                entries.append(entry)
            entry[rest] = as_text(value)
        else:
            entry = next((e for e in entries if e.get("type") == rest), None)
            if entry is None:
                entries.append({"type": rest, "value": as_text(value)})
            else:
                entry["value"] = as_text(value)
    elif head == "customSchemas":  # typed by the schema: sent as the value is
        schema, _, field = rest.partition(".")
        body.setdefault("customSchemas", {}).setdefault(schema, {})[field] = value
    else:
        body[target] = as_text(value)


def _key(value: str) -> str:
    """A user/group/member key as one path segment."""
    return quote(value, safe="@")


def _body(content: bytes) -> Any:
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


def _refresh_detail(exc: Exception) -> str:
    """The token endpoint's error code and description (never the assertion)."""
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    detail = " ".join(str(data[k]) for k in ("error", "error_description") if data.get(k))
    return detail or type(exc).__name__


def _multipart(calls: list[tuple[str, str, Optional[dict]]], boundary: str) -> bytes:
    chunks = []
    for index, (method, path, body) in enumerate(calls):
        lines = [f"{method} {API_PATH}{path} HTTP/1.1"]
        payload = b""
        if body is not None:
            payload = json.dumps(body, ensure_ascii=False).encode()
            lines += ["Content-Type: application/json; charset=UTF-8", f"Content-Length: {len(payload)}"]
        chunks.append(f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <item{index}>\r\n\r\n".encode()
                      + "\r\n".join(lines).encode() + b"\r\n\r\n" + payload + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def _parse_batch(response: requests.Response, chunk: list) -> list[Any]:
    """Each call's answer from a multipart/mixed batch response, matched by Content-ID."""
    ctype = response.headers.get("Content-Type", "")
    match = re.search(r'boundary="?([^";]+)"?', ctype)
    missing = TransientError("the batch response holds no answer for this call")
    if not ctype.lower().startswith("multipart/mixed") or not match:
        return [TransientError(f"the batch response is not multipart/mixed ({ctype})")] * len(chunk)
    answers: list[Any] = [missing] * len(chunk)
    delimiter = b"--" + match.group(1).encode()
    for part in response.content.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, _, http = part.strip(b"\r\n").partition(b"\r\n\r\n")
        cid = re.search(rb"Content-ID:\s*<response-item(\d+)>", head, re.IGNORECASE)
        if not cid or int(cid.group(1)) >= len(chunk):
            continue
        index = int(cid.group(1))
        status_head, _, payload = http.partition(b"\r\n\r\n")
        lines = status_head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            answers[index] = TransientError("the batch response holds an unreadable answer")
            continue
        headers = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        body = _body(payload.strip())
        method, path, _ = chunk[index]
        if status >= 400:
            answers[index] = error_for(f"{method} {path} (batch)", status, body, headers)
        else:
            answers[index] = body if isinstance(body, dict) else {}
    return answers


def _key_info(text: str, connector: str) -> dict:
    try:
        info = json.loads(text)
    except ValueError:
        raise ConfigError(f"connector {connector}: the service account key is not valid JSON") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ConfigError(f"connector {connector}: the service account key is not a service_account JSON key")
    return info


def build(cfg, dry_run: bool = False) -> GoogleConnector:
    """Build the connector for a configuration entry; the only place its key is resolved."""
    from models.config import check_url
    from models.secrets import resolve

    settings: GoogleSettings = cfg.google
    info = _key_info(resolve(settings.service_account_key), cfg.name)
    try:
        token_uri = check_url(info.get("token_uri") or "https://oauth2.googleapis.com/token",
                              settings.allow_insecure_http)
    except ValueError as exc:
        raise ConfigError(f"connector {cfg.name}: the key's token_uri {exc}") from None
    try:
        credentials = service_account.Credentials.from_service_account_info(
            {**info, "token_uri": token_uri}, scopes=list(SCOPES), subject=settings.admin_email)
    except (ValueError, KeyError, TypeError) as exc:
        # The library's message may quote the key: name the problem's kind only.
        raise ConfigError(f"connector {cfg.name}: the service account key cannot be used "
                          f"({type(exc).__name__}; check client_email, private_key and token_uri)") from None
    return GoogleConnector(cfg.name, settings, authorized_session(credentials, settings), domain=cfg.domain,
                           requests_per_second=cfg.requests_per_second, dry_run=dry_run,
                           extra_targets=cfg.attribute_map.extra_targets)
