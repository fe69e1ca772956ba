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

This module is the HTTP side: the service account and its grant, routing with the scopes each call
needs, the rate limit, the batch endpoint. The users, aliases, groups and members and their rules are
`sandbox.google_directory`; the batch wire format `sandbox.google_batch`; the server, fault
injection, tokens and page tokens the shared `sandbox.http`, `sandbox.oauth`, `sandbox.paging`. State
lives in memory behind one lock.
"""

import json
import random
import secrets
import threading
import time
from collections import deque
from typing import Optional
from urllib.parse import parse_qsl, unquote

from werkzeug.wrappers import Request, Response

from sandbox import google_batch
from sandbox.faults import FaultPlan
from sandbox.google_batch import MAX_BATCH, split_multipart
from sandbox.google_directory import Directory, full_projection, parse_query
from sandbox.google_errors import JSON, ApiError
from sandbox.google_workspace import LICENSING_PREFIX, SCOPE_LICENSING, SCOPE_ORGUNIT, Licensing, OrgUnits
from sandbox.http import HttpSandbox, json_response
from sandbox.oauth import AssertionRefused, Tokens, assertion_claims, assertion_key_id, rsa_key_pem

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
SHORT_LIVED = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
               "Check your iat and exp values in the JWT claim.")
__all__ = ["GoogleSandbox", "ApiError", "parse_query", "split_multipart", "MAX_BATCH"]


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
        self._random = random.Random(seed)
        self.org_units = OrgUnits(org_units or [], ApiError)
        self.directory = Directory(self.domains, self.customer_id, self.org_units, self._random)
        self.licensing = Licensing(licences or {}, ApiError, self.directory.user_or_none,
                                   (self.customer_id, *self.domains))
        self._calls: deque[float] = deque()
        self._lock = threading.RLock()
        self._serve(host, port, faults)

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def tokens_issued(self) -> int:
        return self._tokens.issued

    @property
    def duplicate_creates(self) -> int:
        return self.directory.duplicate_creates

    @property
    def _users(self) -> dict[str, dict]:  # the stored users, for a test that edits one as an admin would
        return self.directory.users

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
            return [self.directory.public_user(u) for u in self.directory.users.values()]

    def groups(self) -> list[dict]:
        with self._lock:
            return [dict(g) for g in self.directory.groups.values()]

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
                return 200, self.directory.list_aliases(seg[1])
            if len(seg) == 3 and method == "POST":
                return 200, self.directory.insert_alias(seg[1], body)
            if len(seg) == 4 and method == "DELETE":
                self.directory.delete_alias(seg[1], unquote(seg[3]))
                return 204, None
        elif seg[0] == "users":
            _need(scopes, (SCOPE_USER,) + ((SCOPE_USER_RO,) if read else ()))
            if len(seg) == 1 and method == "GET":
                return 200, self.directory.list_users(params)
            if len(seg) == 1 and method == "POST":
                return 200, self.directory.insert_user(body)
            if len(seg) == 2 and method == "GET":
                return 200, self.directory.public_user(self.directory.user(seg[1]), full_projection(params))
            if len(seg) == 2 and method in ("PATCH", "PUT"):
                return 200, self.directory.update_user(seg[1], body)
            if len(seg) == 2 and method == "DELETE":
                self.licensing.release(self.directory.delete_user(seg[1]))
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
                return 200, self.directory.list_groups(params)
            if len(seg) == 1 and method == "POST":
                return 200, self.directory.insert_group(body)
            if len(seg) == 2 and method == "GET":
                return 200, dict(self.directory.group(seg[1]))
            if len(seg) == 2 and method in ("PATCH", "PUT"):
                return 200, self.directory.update_group(seg[1], body)
            if len(seg) == 2 and method == "DELETE":
                self.directory.delete_group(seg[1])
                return 204, None
            if member_call and len(seg) == 3 and method == "GET":
                return 200, self.directory.list_members(seg[1], params)
            if member_call and len(seg) == 3 and method == "POST":
                return 200, self.directory.insert_member(seg[1], body)
            if member_call and len(seg) == 4 and method == "GET":
                return 200, dict(self.directory.member(self.directory.group(seg[1])["id"], seg[3]))
            if member_call and len(seg) == 4 and method == "DELETE":
                self.directory.delete_member(seg[1], seg[3])
                return 204, None
        raise ApiError(404, "Not Found", reason="notFound")

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
