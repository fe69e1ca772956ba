"""A Google Workspace Directory API stand-in on a free 127.0.0.1 port, with its own service account.

What it enforces, as Google does:
- OAuth 2.0 JWT bearer grant at `POST /token`: the assertion must be signed (RS256) by a key the
  sandbox issued (`kid` = private_key_id), `iss` = the service account's client_email, `sub` = one
  of the configured admins (domain-wide delegation), `scope` only delegated scopes, `exp` in the
  future and at most one hour after `iat`. The audience: google-auth always sends
  https://oauth2.googleapis.com/token as `aud`, whatever `token_uri` the key names, and Google
  accepts exactly its token URLs; the sandbox accepts those and its own /token URL, nothing else.
  Errors are Google's: 400 `invalid_grant` (bad signature, unknown account or subject, expired),
  401 `unauthorized_client` (a scope that was not delegated).
- Opaque bearer tokens that expire (`token_lifetime`; `reported_lifetime` is what `expires_in`
  claims, so a test can make tokens die earlier than the client believes) and carry their scopes:
  401 `authError` when missing/unknown/expired, 403 `insufficientPermissions` for a missing scope.
- Directory API v1 users, groups and members, and the customer's domains (`customer/<id>/domains`,
  with the domain read-only scope): required fields, owned domains, unique emails
  (409 "Entity already exists."), get by id or email, PATCH/PUT with patch semantics, DELETE,
  paged lists (users maxResults <= 500, groups and members <= 200, larger values are a 400 naming
  the parameter), `query=externalId:...`; and the batch endpoint `POST /batch/admin/directory_v1`
  (multipart/mixed of application/http parts, at most 1,000 calls, answered in any order with
  `Content-ID: <response-...>`).
- User aliases (`users/<key>/aliases`: list, insert, delete; scope admin.directory.user or
  admin.directory.user.alias): an alias must be in one of the customer's domains (400 `Domain not
  found.`), unique across users' and groups' addresses and aliases (409 "Entity already exists."),
  of a known user (404); the user resource lists its `aliases`, and a user key may be an alias.
- Org units (`org_units`: the paths that exist) and licences (`licences`: "product/sku" -> seats):
  see `sandbox.google_workspace`; a user's orgUnitPath must be an org unit.
- A rate limit (`rate_limit` calls per `rate_window` seconds, every call inside a batch counts):
  past it, 403 with reason `userRateLimitExceeded`, as the Directory API answers.

State lives in memory behind one lock. The server, fault injection, tokens and page tokens are the
shared ones (`sandbox.http`, `sandbox.oauth`, `sandbox.paging`); the batch wire format is
`sandbox.google_batch`.
"""

import hashlib
import json
import random
import secrets
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Optional
from urllib.parse import parse_qsl, unquote

from werkzeug.wrappers import Request, Response

from sandbox import google_batch
from sandbox.faults import FaultPlan
from sandbox.google_batch import MAX_BATCH, split_multipart
from sandbox.http import HttpError, HttpSandbox, json_response
from sandbox.oauth import AssertionRefused, Tokens, assertion_claims, assertion_key_id, rsa_key_pem
from sandbox.paging import page
from sandbox.google_workspace import LICENSING_PREFIX, SCOPE_LICENSING, SCOPE_ORGUNIT, Licensing, OrgUnits

SCOPE_USER = "https://www.googleapis.com/auth/admin.directory.user"
SCOPE_GROUP = "https://www.googleapis.com/auth/admin.directory.group"
SCOPE_USER_RO = SCOPE_USER + ".readonly"
SCOPE_ALIAS = SCOPE_USER + ".alias"
SCOPE_GROUP_RO = SCOPE_GROUP + ".readonly"
SCOPE_MEMBER = "https://www.googleapis.com/auth/admin.directory.group.member"
SCOPE_DOMAIN_RO = "https://www.googleapis.com/auth/admin.directory.domain.readonly"
GOOGLE_TOKEN_AUDIENCES = ("https://oauth2.googleapis.com/token", "https://www.googleapis.com/oauth2/v4/token",
                          "https://accounts.google.com/o/oauth2/token")
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
PREFIX = "/admin/directory/v1/"
BATCH_PATHS = ("/batch/admin/directory_v1", "/batch")
JSON = "application/json; charset=UTF-8"
SHORT_LIVED = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
               "Check your iat and exp values in the JWT claim.")
__all__ = ["GoogleSandbox", "ApiError", "parse_query", "split_multipart", "MAX_BATCH"]


class ApiError(HttpError):
    """An answer in Google's error shape: {"error": {"code", "message", "errors": [...]}}."""

    content_type = JSON

    def __init__(self, code: int, message: str, reason: str = "invalid", domain: str = "global",
                 location: str | None = None, status: str | None = None, headers=()):
        item = {"message": message, "domain": domain, "reason": reason}
        if location:  # Google names the location for parameters and headers, not for body fields
            item.update(locationType="parameter" if location != "Authorization" else "header", location=location)
        body = {"error": {"code": code, "message": message, "errors": [item]}}
        if status:
            body["error"]["status"] = status
        super().__init__(code, body, headers)
        self.code, self.body = code, body


def _not_found(key: str) -> ApiError:
    return ApiError(404, f"Resource Not Found: {key}", reason="notFound")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _merge(target: dict, patch: dict) -> None:
    """Patch semantics: nested objects merge, arrays and scalars replace, null clears."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def parse_query(query: str) -> list[tuple[str, str]]:
    """Google's user search syntax: `field:value` terms; values may be 'single-quoted' with \\ escapes."""
    terms, i, n = [], 0, len(query)
    while i < n:
        while i < n and query[i] == " ":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and query[i] not in ":=":
            i += 1
        if i >= n:
            raise ApiError(400, "Invalid Input: query", location="query")
        field = query[start:i].strip()
        i += 1
        value = []
        if i < n and query[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ApiError(400, "Invalid Input: query", location="query")
                ch = query[i]
                if ch == "\\" and i + 1 < n:
                    value.append(query[i + 1])
                    i += 2
                elif ch == "'":
                    i += 1
                    break
                else:
                    value.append(ch)
                    i += 1
        else:
            while i < n and query[i] != " ":
                value.append(query[i])
                i += 1
        terms.append((field, "".join(value)))
    return terms



class GoogleSandbox(HttpSandbox):
    """Serve the Directory API on http://127.0.0.1:<port> from a thread; `stop()` ends it."""

    name = "google-sandbox"

    def __init__(self, domains: list[str] | None = None, admins: list[str] | None = None,
                 delegated_scopes: list[str] | None = None, token_lifetime: float = 3600,
                 reported_lifetime: float | None = None, rate_limit: int | None = None,
                 rate_window: float = 1.0, host: str = "127.0.0.1", port: int = 0,
                 faults: FaultPlan | None = None, seed: int | None = None, org_units: list[str] | None = None,
                 licences: dict[str, int] | None = None):
        self.domains = [d.lower() for d in (domains or ["example.com"])]
        self.admins = [a.lower() for a in (admins or [f"admin@{self.domains[0]}"])]
        self.delegated_scopes = set(delegated_scopes or (SCOPE_USER, SCOPE_GROUP, SCOPE_DOMAIN_RO,
                                                         SCOPE_ORGUNIT, SCOPE_LICENSING))
        self.token_lifetime, self.reported_lifetime = token_lifetime, reported_lifetime
        self.rate_limit, self.rate_window = rate_limit, rate_window
        self.customer_id = "C0" + secrets.token_hex(4)
        self.client_email = "outbound@sandbox-project.iam.gserviceaccount.com"
        self.client_id = str(100000000000000000000 + secrets.randbelow(10 ** 20))
        self._private_key_pem, public_key_pem = rsa_key_pem()
        self.private_key_id = secrets.token_hex(20)
        self._public_keys = {self.private_key_id: public_key_pem}
        self._tokens = Tokens()
        self._users: dict[str, dict] = {}
        self._user_ids: dict[str, str] = {}   # lower-cased primaryEmail -> id
        self._groups: dict[str, dict] = {}
        self._group_ids: dict[str, str] = {}  # lower-cased email -> id
        self._alias_ids: dict[str, str] = {}  # lower-cased user alias -> user id
        self._members: dict[str, dict[str, dict]] = {}  # group id -> member id -> member
        self.org_units = OrgUnits(org_units or [], ApiError)
        self.licensing = Licensing(licences or {}, ApiError, self._user_or_none, (self.customer_id, *self.domains))
        self._calls: deque[float] = deque()
        self._lock = threading.RLock()
        self._random = random.Random(seed)
        # Creates refused because the address was taken: where nothing refused them, each would be a
        # second account (the lost-answer tests count them).
        self.duplicate_creates = 0
        self._serve(host, port, faults)

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def tokens_issued(self) -> int:
        return self._tokens.issued

    # --- the service account --------------------------------------------------------------

    def service_account_info(self) -> dict:
        """The JSON key of the sandbox's service account (token_uri points at the sandbox)."""
        return {"type": "service_account", "project_id": "sandbox-project", "private_key_id": self.private_key_id,
                "private_key": self._private_key_pem, "client_email": self.client_email, "client_id": self.client_id,
                "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": self.token_url,
                "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                "universe_domain": "googleapis.com"}

    def write_key(self, path) -> dict:
        """Write the JSON key to `path` (mode 0600) and return it."""
        import os

        info = self.service_account_info()
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(info, handle)
        return info

    def revoke_tokens(self) -> None:
        """Forget every issued access token (clients holding one get 401 next time)."""
        self._tokens.revoke()

    # --- inspection for tests and the demo ------------------------------------------------

    def users(self) -> list[dict]:
        with self._lock:
            return [self._public_user(u) for u in self._users.values()]

    def groups(self) -> list[dict]:
        with self._lock:
            return [dict(g) for g in self._groups.values()]

    # --- HTTP -----------------------------------------------------------------------------

    def _answer(self, request: Request) -> Response:
        method, path, body = request.method, request.path, request.get_data()
        headers = {k.lower(): v for k, v in request.headers.items()}
        if path == "/token" and method == "POST":
            status, payload, extra = self._token(body)
            return json_response(payload, status, extra, "application/json; charset=utf-8")
        if path in BATCH_PATHS and method == "POST":
            status, raw, ctype, extra = self._batch(headers, body)
            return Response(raw, status=status, headers=extra, content_type=ctype)
        status, payload, extra = self._call(method, path, request.environ.get("QUERY_STRING", ""), headers, body)
        return json_response(payload, status, extra, JSON)

    # --- OAuth ----------------------------------------------------------------------------

    def _token(self, body: bytes) -> tuple[int, dict, list]:
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        if form.get("grant_type") != JWT_BEARER:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}, []
        assertion = form.get("assertion", "")
        try:
            kid = assertion_key_id(assertion)
        except AssertionRefused:
            return 400, _grant_error("Invalid JWT."), []
        key = self._public_keys.get(kid) if kid else None
        if key is None:
            return 400, _grant_error("Invalid JWT Signature."), []
        try:
            claims = assertion_claims(assertion, key, [*GOOGLE_TOKEN_AUDIENCES, self.token_url],
                                      require=["iss", "aud", "exp", "iat", "scope"], leeway=30)
        except AssertionRefused as exc:
            return 400, _grant_error({"InvalidSignatureError": "Invalid JWT Signature.",
                                      "ExpiredSignatureError": SHORT_LIVED,
                                      "InvalidAudienceError": "Invalid JWT: Failed audience check."}
                                     .get(exc.reason, f"Invalid JWT: {exc.reason}.")), []
        if claims["iss"] != self.client_email:
            return 400, _grant_error("Invalid grant: account not found"), []
        if claims["exp"] - claims["iat"] > 3600:
            return 400, _grant_error(SHORT_LIVED), []
        subject = str(claims.get("sub") or "").lower()
        if subject not in self.admins:
            return 400, _grant_error("Invalid email or User ID"), []
        scopes = set(str(claims["scope"]).split())
        allowed = set(self.delegated_scopes)
        # Delegating a scope also allows its read-only variant, as Google does.
        allowed |= {s + ".readonly" for s in self.delegated_scopes}
        if not scopes or not scopes <= allowed:
            return 401, {"error": "unauthorized_client",
                         "error_description": "Client is unauthorized to retrieve access tokens using this method, "
                                              "or client not authorized for any of the scopes requested."}, []
        token = self._tokens.issue({"scopes": scopes, "subject": subject}, self.token_lifetime, prefix="ya29.sandbox-")
        reported = self.token_lifetime if self.reported_lifetime is None else self.reported_lifetime
        return 200, {"access_token": token, "expires_in": max(0, int(reported)), "token_type": "Bearer"}, []

    def _authorize(self, headers: dict) -> set[str]:
        value = headers.get("authorization", "")
        token = value[7:].strip() if value.lower().startswith("bearer ") else ""
        grant = self._tokens.check(token)
        if grant is None:
            raise ApiError(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                                "login cookie or other valid authentication credential.",
                           reason="authError", location="Authorization", status="UNAUTHENTICATED",
                           headers=[("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/", '
                                                         'error="invalid_token"')])
        return grant["scopes"]

    def _count_call(self) -> None:
        if not self.rate_limit:
            return
        with self._lock:
            now = time.monotonic()
            while self._calls and self._calls[0] <= now - self.rate_window:
                self._calls.popleft()
            if len(self._calls) >= self.rate_limit:
                raise ApiError(403, "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute per "
                                    "user' of service 'admin.googleapis.com'.",
                               reason="userRateLimitExceeded", domain="usageLimits", status="PERMISSION_DENIED")
            self._calls.append(now)

    # --- one API call ---------------------------------------------------------------------

    def _call(self, method: str, path: str, query: str, headers: dict, body: bytes,
              scopes: set[str] | None = None) -> tuple[int, Optional[dict], list]:
        """Serve one Directory API call (directly or from inside a batch)."""
        try:
            if scopes is None:
                scopes = self._authorize(headers)
            self._count_call()
            licensing = path.startswith(LICENSING_PREFIX)
            if not path.startswith(PREFIX) and not licensing:
                raise ApiError(404, "Not Found", reason="notFound")
            segments = path[len(LICENSING_PREFIX if licensing else PREFIX):].split("/")
            params = dict(parse_qsl(query, keep_blank_values=True))
            payload = None
            if body:
                try:
                    payload = json.loads(body)
                except ValueError:
                    raise ApiError(400, "Invalid JSON payload received.", reason="parseError") from None
                if not isinstance(payload, dict):
                    raise ApiError(400, "Invalid JSON payload received.", reason="parseError")
            with self._lock:
                if licensing:
                    _need(scopes, (SCOPE_LICENSING,) + ((SCOPE_LICENSING + ".readonly",) if method == "GET" else ()))
                    status, result = self.licensing.route(method, segments, params, payload or {})
                else:
                    status, result = self._route(method, segments, params, payload or {}, scopes)
            return status, result, []
        except ApiError as exc:
            return exc.code, exc.body, exc.headers

    def _route(self, method: str, seg: list[str], params: dict, body: dict, scopes: set[str]):
        read = method == "GET"
        if seg[0] == "users" and len(seg) in (3, 4) and seg[2] == "aliases":
            _need(scopes, (SCOPE_USER, SCOPE_ALIAS) + ((SCOPE_USER_RO, SCOPE_ALIAS + ".readonly") if read else ()))
            if len(seg) == 3 and method == "GET":
                return 200, self._list_aliases(seg[1])
            if len(seg) == 3 and method == "POST":
                return 200, self._insert_alias(seg[1], body)
            if len(seg) == 4 and method == "DELETE":
                self._delete_alias(seg[1], unquote(seg[3]))
                return 204, None
        elif seg[0] == "users":
            _need(scopes, (SCOPE_USER,) + ((SCOPE_USER_RO,) if read else ()))
            if len(seg) == 1 and method == "GET":
                return 200, self._list_users(params)
            if len(seg) == 1 and method == "POST":
                return 200, self._insert_user(body)
            if len(seg) == 2 and method == "GET":
                return 200, self._public_user(self._user(seg[1]), _full(params))
            if len(seg) == 2 and method in ("PATCH", "PUT"):
                return 200, self._update_user(seg[1], body)
            if len(seg) == 2 and method == "DELETE":
                self._delete_user(seg[1])
                return 204, None
        elif seg[0] == "customer" and len(seg) == 3 and seg[2] == "domains" and read:
            _need(scopes, (SCOPE_DOMAIN_RO, SCOPE_DOMAIN_RO.removesuffix(".readonly")))
            if seg[1] not in ("my_customer", self.customer_id):
                raise ApiError(400, "Bad Request", reason="badRequest")
            return 200, {"kind": "admin#directory#domains", "domains": [
                {"domainName": d, "isPrimary": i == 0, "verified": True} for i, d in enumerate(self.domains)]}
        elif seg[0] == "customer" and len(seg) >= 3 and seg[2] == "orgunits":
            _need(scopes, (SCOPE_ORGUNIT,) + ((SCOPE_ORGUNIT + ".readonly",) if read else ()))
            if seg[1] not in ("my_customer", self.customer_id):
                raise ApiError(400, "Bad Request", reason="badRequest")
            return self.org_units.route(method, seg, params, body)
        elif seg[0] == "groups":
            member_call = len(seg) >= 3 and seg[2] == "members"
            allowed = (SCOPE_GROUP,) + ((SCOPE_GROUP_RO,) if read else ()) + ((SCOPE_MEMBER,) if member_call else ())
            _need(scopes, allowed)
            if len(seg) == 1 and method == "GET":
                return 200, self._list_groups(params)
            if len(seg) == 1 and method == "POST":
                return 200, self._insert_group(body)
            if len(seg) == 2 and method == "GET":
                return 200, dict(self._group(seg[1]))
            if len(seg) == 2 and method in ("PATCH", "PUT"):
                return 200, self._update_group(seg[1], body)
            if len(seg) == 2 and method == "DELETE":
                self._delete_group(seg[1])
                return 204, None
            if member_call and len(seg) == 3 and method == "GET":
                return 200, self._list_members(seg[1], params)
            if member_call and len(seg) == 3 and method == "POST":
                return 200, self._insert_member(seg[1], body)
            if member_call and len(seg) == 4 and method == "GET":
                group = self._group(seg[1])
                return 200, dict(self._member(group["id"], seg[3]))
            if member_call and len(seg) == 4 and method == "DELETE":
                group = self._group(seg[1])
                self._members[group["id"]].pop(self._member(group["id"], seg[3])["id"])
                group["directMembersCount"] = str(len(self._members[group["id"]]))
                return 204, None
        raise ApiError(404, "Not Found", reason="notFound")

    # --- users ----------------------------------------------------------------------------

    def _user(self, key: str) -> dict:
        user = self._user_or_none(key)
        if user is None:
            raise _not_found("userKey")
        return user

    def _user_or_none(self, key: str) -> dict | None:
        uid = key if key in self._users else self._user_ids.get(key.lower()) or self._alias_ids.get(key.lower())
        return self._users.get(uid) if uid else None

    def _public_user(self, user: dict, full: bool = True) -> dict:
        """The user as the API shows it; custom schema values only in the full projection (as Google)."""
        hidden = ("password", "hashFunction") if full else ("password", "hashFunction", "customSchemas")
        out = {k: v for k, v in user.items() if k not in hidden}
        out["name"] = dict(user.get("name") or {})
        out["name"]["fullName"] = f"{out['name'].get('givenName', '')} {out['name'].get('familyName', '')}".strip()
        return out

    def _check_email(self, email: Any, what: str = "primary_user_email") -> str:
        if not isinstance(email, str) or email.count("@") != 1 or not email.split("@")[0]:
            raise ApiError(400, f"Invalid Input: {what}")
        local, domain = email.lower().split("@")
        if domain not in self.domains:
            raise ApiError(400, "Domain not found.", reason="notFound")
        if len(local) > 64 or ".." in local or local.startswith(".") or local.endswith("."):
            raise ApiError(400, f"Invalid Input: {what}")
        return f"{local}@{domain}"

    def _check_user_fields(self, user: dict, creating: bool) -> None:
        name = user.get("name")
        if creating or "name" in user:
            if not isinstance(name, dict):
                raise ApiError(400, "Invalid Given/Family Name: GivenName")
            for field, label in (("givenName", "GivenName"), ("familyName", "FamilyName")):
                value = name.get(field)
                if not isinstance(value, str) or not value.strip() or len(value) > 60 or set(value) & set("<>="):
                    raise ApiError(400, f"Invalid Given/Family Name: {label}")
        for key in ("organizations", "phones", "relations"):
            if key in user and not (isinstance(user[key], list) and all(isinstance(e, dict) for e in user[key])):
                raise ApiError(400, f"Invalid Input: {key}")
        if "customSchemas" in user and not (isinstance(user["customSchemas"], dict) and all(
                isinstance(v, dict) for v in user["customSchemas"].values())):
            raise ApiError(400, "Invalid Input: customSchemas")
        if creating or "password" in user:
            password = user.get("password")
            if not isinstance(password, str) or (not user.get("hashFunction") and (
                    not 8 <= len(password) <= 100 or not password.isascii())):
                raise ApiError(400, "Invalid Password")

    def _insert_user(self, body: dict) -> dict:
        user = json.loads(json.dumps(body))
        for readonly in ("id", "aliases", "nonEditableAliases"):
            user.pop(readonly, None)
        user["primaryEmail"] = self._check_email(user.get("primaryEmail"))
        self._check_user_fields(user, creating=True)
        self.org_units.check_user(user)
        if self._taken(user["primaryEmail"]):
            self.duplicate_creates += 1
            raise ApiError(409, "Entity already exists.", reason="duplicate")
        uid = str(100000000000000000000 + self._random.randrange(10 ** 20))
        # Only a digest is kept: a sandbox has no business holding plaintext passwords either.
        user["password"] = hashlib.sha256(user["password"].encode()).hexdigest()
        user.update(kind="admin#directory#user", id=uid, etag=f'"{secrets.token_hex(8)}"',
                    customerId=self.customer_id, creationTime=_now(), isAdmin=False,
                    suspended=bool(user.get("suspended", False)), orgUnitPath=user.get("orgUnitPath", "/"),
                    emails=[{"address": user["primaryEmail"], "primary": True}])
        self._users[uid] = user
        self._user_ids[user["primaryEmail"]] = uid
        return self._public_user(user)

    def _update_user(self, key: str, body: dict) -> dict:
        user = self._user(key)
        patch = json.loads(json.dumps(body))
        for readonly in ("id", "kind", "etag", "customerId", "creationTime", "isAdmin", "aliases", "nonEditableAliases"):
            patch.pop(readonly, None)
        if isinstance(patch.get("name"), dict):
            patch["name"].pop("fullName", None)
            merged = dict(user.get("name") or {})
            _merge(merged, patch["name"])
            self._check_user_fields({"name": merged}, creating=False)
        self._check_user_fields({k: patch[k] for k in ("organizations", "phones", "relations", "customSchemas")
                                 if k in patch}, creating=False)
        self.org_units.check_user(patch)
        if "password" in patch:
            self._check_user_fields({"password": patch["password"], "hashFunction": patch.get("hashFunction")},
                                    creating=False)
            patch["password"] = hashlib.sha256(str(patch["password"]).encode()).hexdigest()
        if "primaryEmail" in patch:
            email = self._check_email(patch["primaryEmail"])
            if email != user["primaryEmail"]:
                if self._taken(email):
                    raise ApiError(409, "Entity already exists.", reason="duplicate")
                del self._user_ids[user["primaryEmail"]]
                self._user_ids[email] = user["id"]
            patch["primaryEmail"] = email
        _merge(user, patch)
        user["etag"] = f'"{secrets.token_hex(8)}"'
        return self._public_user(user)

    def _delete_user(self, key: str) -> None:
        user = self._user(key)
        del self._users[user["id"]]
        del self._user_ids[user["primaryEmail"]]
        for alias in user.get("aliases") or []:
            self._alias_ids.pop(alias, None)
        for members in self._members.values():
            members.pop(user["id"], None)
        self.licensing.release(user["id"])

    def _taken(self, email: str) -> bool:
        """Whether a user's or group's address or a user's alias is `email` (lower-cased)."""
        return email in self._user_ids or email in self._group_ids or email in self._alias_ids

    def _alias(self, user: dict, alias: str) -> dict:
        return {"kind": "admin#directory#alias", "id": user["id"], "etag": f'"{secrets.token_hex(8)}"',
                "primaryEmail": user["primaryEmail"], "alias": alias}

    def _list_aliases(self, key: str) -> dict:
        user = self._user(key)
        return {"kind": "admin#directory#aliases", "etag": f'"{secrets.token_hex(8)}"',
                "aliases": [self._alias(user, a) for a in user.get("aliases") or []]}

    def _insert_alias(self, key: str, body: dict) -> dict:
        user = self._user(key)
        alias = self._check_email(body.get("alias"), what="alias")
        if self._taken(alias):
            raise ApiError(409, "Entity already exists.", reason="duplicate")
        user.setdefault("aliases", []).append(alias)
        self._alias_ids[alias] = user["id"]
        user["etag"] = f'"{secrets.token_hex(8)}"'
        return self._alias(user, alias)

    def _delete_alias(self, key: str, alias: str) -> None:
        user = self._user(key)
        alias = alias.lower()
        if alias not in (user.get("aliases") or []):
            raise _not_found("alias")
        user["aliases"].remove(alias)
        if not user["aliases"]:
            del user["aliases"]  # Google leaves the field out when there is none
        del self._alias_ids[alias]
        user["etag"] = f'"{secrets.token_hex(8)}"'

    def _matches(self, user: dict, terms: list[tuple[str, str]]) -> bool:
        for field, value in terms:
            if field == "externalId":
                if not any(e.get("value") == value for e in user.get("externalIds") or []):
                    return False
            elif field == "email":
                if user["primaryEmail"] != value.lower():
                    return False
            elif field == "isSuspended":
                if bool(user.get("suspended")) != (value.lower() == "true"):
                    return False
            elif field in ("givenName", "familyName"):
                if (user.get("name") or {}).get(field, "").lower() != value.lower():
                    return False
            else:
                raise ApiError(400, "Invalid Input: query", location="query")
        return True

    def _scope_filter(self, params: dict) -> str | None:
        """The domain a list is limited to (None: the whole customer)."""
        customer, domain = params.get("customer"), params.get("domain")
        if not customer and not domain:
            raise ApiError(400, "Bad Request", reason="badRequest")
        if customer and customer not in ("my_customer", self.customer_id):
            raise ApiError(400, "Bad Request", reason="badRequest")
        if domain and domain.lower() not in self.domains:
            raise ApiError(400, "Domain not found.", reason="notFound")
        return domain.lower() if domain else None

    def _list_users(self, params: dict) -> dict:
        domain = self._scope_filter(params)
        terms = parse_query(params["query"]) if params.get("query") else []
        users = [u for u in self._users.values()
                 if (domain is None or u["primaryEmail"].endswith("@" + domain)) and self._matches(u, terms)]
        return _listing("users", users, params, 500, 100, lambda u: self._public_user(u, _full(params)))

    # --- groups and members ---------------------------------------------------------------

    def _group(self, key: str) -> dict:
        gid = key if key in self._groups else self._group_ids.get(key.lower())
        if gid is None:
            raise _not_found("groupKey")
        return self._groups[gid]

    def _insert_group(self, body: dict) -> dict:
        email = self._check_email(body.get("email"), what="email")
        if self._taken(email):
            raise ApiError(409, "Entity already exists.", reason="duplicate")
        name = body.get("name") or email.split("@")[0]
        if len(name) > 73 or set(name) & set("<>="):
            raise ApiError(400, "Invalid Input: name")
        gid = "0" + secrets.token_hex(7)
        group = {"kind": "admin#directory#group", "id": gid, "etag": f'"{secrets.token_hex(8)}"', "email": email,
                 "name": name, "description": body.get("description", ""), "directMembersCount": "0",
                 "adminCreated": True, "nonEditableAliases": []}
        self._groups[gid] = group
        self._group_ids[email] = gid
        self._members[gid] = {}
        return dict(group)

    def _update_group(self, key: str, body: dict) -> dict:
        group = self._group(key)
        for field in ("name", "description"):
            if field in body:
                group[field] = body[field]
        return dict(group)

    def _delete_group(self, key: str) -> None:
        group = self._group(key)
        del self._groups[group["id"]], self._group_ids[group["email"]], self._members[group["id"]]

    def _list_groups(self, params: dict) -> dict:
        domain = self._scope_filter(params)
        groups = [g for g in self._groups.values() if domain is None or g["email"].endswith("@" + domain)]
        return _listing("groups", groups, params, 200, 200, dict)

    def _member(self, gid: str, key: str) -> dict:
        members = self._members[gid]
        if key in members:
            return members[key]
        for member in members.values():
            if member["email"] == key.lower():
                return member
        raise _not_found("memberKey")

    def _insert_member(self, group_key: str, body: dict) -> dict:
        group = self._group(group_key)
        key = body.get("id") or body.get("email")
        if not key:
            raise ApiError(400, "Missing required field: member", reason="required")
        if key in self._users or str(key).lower() in self._user_ids:
            target, kind = self._user(key), "USER"
            email = target["primaryEmail"]
        elif key in self._groups or str(key).lower() in self._group_ids:
            target, kind = self._group(key), "GROUP"
            email = target["email"]
        else:
            raise _not_found("memberKey")
        members = self._members[group["id"]]
        if target["id"] in members:
            raise ApiError(409, "Member already exists.", reason="duplicate")
        member = {"kind": "admin#directory#member", "id": target["id"], "email": email,
                  "role": body.get("role", "MEMBER"), "type": kind, "status": "ACTIVE",
                  "etag": f'"{secrets.token_hex(8)}"'}
        members[target["id"]] = member
        group["directMembersCount"] = str(len(members))
        return dict(member)

    def _list_members(self, group_key: str, params: dict) -> dict:
        group = self._group(group_key)
        return _listing("members", list(self._members[group["id"]].values()), params, 200, 200, dict)

    # --- batch ----------------------------------------------------------------------------

    def _batch(self, headers: dict, body: bytes) -> tuple[int, bytes, str, list]:
        def fail(error: ApiError):
            return error.code, json.dumps(error.body).encode(), JSON, error.headers

        try:
            scopes = self._authorize(headers)
        except ApiError as exc:
            return fail(exc)
        boundary = google_batch.boundary(headers.get("content-type", ""))
        if not headers.get("content-type", "").lower().startswith("multipart/mixed") or not boundary:
            return fail(ApiError(400, "Bad Request: a batch request must be multipart/mixed", reason="badRequest"))
        parts = split_multipart(body, boundary)
        if len(parts) > MAX_BATCH:
            return fail(ApiError(400, f"A batch request cannot contain more than {MAX_BATCH} calls.",
                                 reason="badRequest"))
        answers = []
        for content_id, method, path, query, inner_headers, inner_body in google_batch.calls(parts):
            if method is None:
                status, result, extra = 400, ApiError(400, "Bad Request", reason="badRequest").body, []
            else:
                inner_scopes = scopes if "authorization" not in inner_headers else None
                status, result, extra = self._call(method, path, query, inner_headers, inner_body, scopes=inner_scopes)
            answers.append((content_id, status, result, extra))
        self._random.shuffle(answers)  # Google answers batch calls in any order: clients must use Content-ID
        raw, content_type = google_batch.encode(answers)
        return 200, raw, content_type, []


def _listing(key: str, items: list, params: dict, limit: int, default: int, render) -> dict:
    """One page of a Directory API list: `key` holds the items (left out when none), then nextPageToken."""
    items, token = page(items, params, limit, default, ApiError)
    out = {"kind": f"admin#directory#{key}", "etag": f'"{secrets.token_hex(8)}"'}
    if items:
        out[key] = [render(item) for item in items]
    if token:
        out["nextPageToken"] = token
    return out


def _full(params: dict) -> bool:
    """Whether a users.get/list asks for the full projection (custom schemas included)."""
    return params.get("projection") in ("full", "custom")


def _need(scopes: set[str], any_of: tuple[str, ...]) -> None:
    if not scopes & set(any_of):
        raise ApiError(403, "Request had insufficient authentication scopes.", reason="insufficientPermissions",
                       status="PERMISSION_DENIED")


def _grant_error(description: str) -> dict:
    return {"error": "invalid_grant", "error_description": description}


def main() -> None:  # pragma: no cover - manual trials
    import argparse

    parser = argparse.ArgumentParser(description="Serve the Google Directory API sandbox.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default="google-sandbox-sa.json", help="where to write the service account key")
    args = parser.parse_args()
    sandbox = GoogleSandbox(port=args.port).start()
    sandbox.write_key(args.key)
    print(f"Google Directory API sandbox on {sandbox.url} (admin {sandbox.admins[0]}, key in {args.key})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sandbox.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
