"""Salesforce connector: User records through the REST API (simple-salesforce), OAuth 2.0 tokens.

Every remote call goes through `SalesforceConnector._call`, which drops mutating calls in dry-run,
renews an expired session once, and translates failures at this edge:

    simple_salesforce / requests                      connectors.errors
    ─────────────────────────────────────────────     ──────────────────────────────────────────
    401 INVALID_SESSION_ID                            new token, one retry; then AuthFailed
    token endpoint 4xx (invalid_grant, ...)           AuthFailed (Salesforce's error, never a secret)
    403 REQUEST_LIMIT_EXCEEDED, 429                   RateLimited
    other 401/403                                     AuthFailed
    404 NOT_FOUND, ENTITY_IS_DELETED                  NotFound
    DUPLICATE_USERNAME, user in this org              AlreadyExists
    DUPLICATE_USERNAME, user not in this org          Rejected ("taken in another Salesforce org")
    REQUIRED_FIELD_MISSING, INVALID_FIELD,            Rejected naming the field
      FIELD_INTEGRITY_EXCEPTION, STRING_TOO_LONG, ...
    5xx, UNABLE_TO_LOCK_ROW, timeouts, resets         TransientError

Salesforce users cannot be deleted: `delete_user` deactivates (and can free the username).
Public groups, permission sets and queues are out of scope: `supports_groups` is False.
"""

import json
import logging
import re
import threading
import time
import unicodedata
from dataclasses import replace
from typing import Any, Callable, Iterator, Optional, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession

from connectors.base import Account, BatchOp
from connectors.errors import (AlreadyExists, AuthFailed, ConfigError, ConnectorError, NotFound, RateLimited,
                               Rejected, TransientError, retry_after_seconds)
from models.config import SalesforceSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
COLLECTION_SIZE = 200  # sObject Collections accept at most 200 records per request
USERNAME_MAX = 80
# Account attribute -> User field. display_name has no writable twin: Name is FirstName + LastName.
FIELDS = {"user_name": "Username", "given_name": "FirstName", "family_name": "LastName", "email": "Email",
          "active": "IsActive", "external_id": "FederationIdentifier"}
BASE_SELECT = ("Id", "Username", "FirstName", "LastName", "Name", "Email", "IsActive", "FederationIdentifier")
FIELD_ERRORS = {"REQUIRED_FIELD_MISSING", "INVALID_FIELD", "FIELD_INTEGRITY_EXCEPTION", "INVALID_EMAIL_ADDRESS",
                "STRING_TOO_LONG", "INVALID_CROSS_REFERENCE_KEY", "INVALID_FIELD_FOR_INSERT_UPDATE",
                "FIELD_CUSTOM_VALIDATION_EXCEPTION", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                "JSON_PARSER_ERROR", "INVALID_TYPE_ON_FIELD_IN_RECORD", "MALFORMED_QUERY"}
TRANSIENT_CODES = {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG", "QUERY_TIMEOUT"}
_SOQL_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
                 "\f": "\\f"}
_EMAIL_FORM = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def soql_quote(value: str) -> str:
    """A SOQL string literal holding exactly `value` (quotes, backslashes, control characters escaped)."""
    out = []
    for ch in str(value):
        if ch in _SOQL_ESCAPES:
            out.append(_SOQL_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"


def make_alias(given: Optional[str], family: Optional[str], user_name: str) -> str:
    """An Alias (at most 8 ASCII characters): first letter of the given name + 7 of the family name."""
    def fold(text: Optional[str]) -> str:
        text = unicodedata.normalize("NFKD", text or "")
        return re.sub(r"[^a-z0-9]", "", text.encode("ascii", "ignore").decode().lower())

    alias = (fold(given)[:1] + fold(family)[:7]) or fold(user_name.split("@")[0])[:8]
    return alias[:8] or "user"


class TokenSource:
    """Fetches an access token and the instance URL from the login server; holds the secrets."""

    def __init__(self, settings: SalesforceSettings, session: requests.Session, *, client_id: str,
                 client_secret: Optional[str] = None, password: Optional[str] = None,
                 security_token: Optional[str] = None, private_key: Optional[str] = None):
        self.kind = settings.auth.type
        self.login_url = settings.login_url
        self.token_url = f"{settings.login_url}/services/oauth2/token"
        self.audience = settings.auth.audience or settings.login_url
        self.username = settings.auth.username
        self.client_id = client_id
        self._session = session
        self._client_secret, self._password, self._security_token = client_secret, password, security_token
        self._private_key = private_key
        self.fetched = 0

    def __repr__(self) -> str:
        return f"TokenSource(kind={self.kind!r}, token_url={self.token_url!r}, username={self.username!r})"

    def _form(self) -> dict:
        if self.kind == "jwt":
            import jwt

            claims = {"iss": self.client_id, "sub": self.username, "aud": self.audience,
                      "exp": int(time.time()) + 180}
            try:
                assertion = jwt.encode(claims, self._private_key, algorithm="RS256")
            except (ValueError, TypeError, jwt.PyJWTError) as exc:
                raise ConfigError(f"the JWT private key cannot sign ({type(exc).__name__}): is it an RSA PEM key?") from None
            return {"grant_type": JWT_GRANT, "assertion": assertion}
        if self.kind == "password":
            return {"grant_type": "password", "client_id": self.client_id, "client_secret": self._client_secret,
                    "username": self.username, "password": (self._password or "") + (self._security_token or "")}
        return {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._client_secret}

    def fetch(self) -> tuple[str, str]:
        """Return (access_token, instance_url) from the token endpoint."""
        self.fetched += 1
        try:
            response = self._session.post(self.token_url, data=self._form(), headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise TransientError(f"token endpoint {self.token_url}: {type(exc).__name__}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(f"token endpoint {self.token_url}: HTTP {response.status_code}",
                                 status=response.status_code,
                                 retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not body.get("access_token") or not body.get("instance_url"):
            error = body.get("error", "no token") if isinstance(body, dict) else "no token"
            detail = body.get("error_description", "") if isinstance(body, dict) else ""
            raise AuthFailed(f"Salesforce refused the {self.kind} login at {self.token_url}: HTTP "
                             f"{response.status_code} {error}" + (f": {detail}" if detail else ""),
                             status=response.status_code)
        return body["access_token"], body["instance_url"].rstrip("/")


class SalesforceConnector:
    """Salesforce Users through the REST API. Groups are out of scope (supports_groups is False)."""

    supports_groups = False
    deletes_users = False  # Salesforce refuses to delete users: delete_user deactivates
    read_only_attributes = ("display_name",)  # Name is computed from FirstName and LastName

    def __init__(self, name: str, settings: SalesforceSettings, session: requests.Session, tokens: TokenSource,
                 dry_run: bool = False, extra_fields: tuple[str, ...] = ()):
        self.name = name
        self.settings = settings
        # The User fields the connector's attribute mapping manages (Account.extra, keyed by field name).
        self.extra_fields = tuple(extra_fields)
        self.session = session
        self.tokens = tokens
        self.dry_run = dry_run
        self._sf: Optional[Salesforce] = None
        self._lock = threading.Lock()
        self._profile_id: Optional[str] = None
        self._retry_after = threading.local()
        session.hooks.setdefault("response", []).append(self._remember_retry_after)

    def __repr__(self) -> str:
        return f"SalesforceConnector(name={self.name!r}, login_url={self.settings.login_url!r})"

    # --- the one choke point ------------------------------------------------------------

    def _client(self) -> Salesforce:
        with self._lock:
            if self._sf is None:
                self._sf = self._login()
            return self._sf

    def _login(self) -> Salesforce:
        token, instance_url = self.tokens.fetch()
        return Salesforce(instance_url=instance_url, session_id=token, version=self.settings.api_version,
                          session=self.session)

    def _renew(self, stale: Salesforce) -> Salesforce:
        with self._lock:
            if self._sf is stale:  # another thread may have renewed already
                self._sf = self._login()
            return self._sf

    def _remember_retry_after(self, response, *args, **kwargs):
        self._retry_after.value = response.headers.get("Retry-After")

    def _call(self, what: str, fn: Callable[[Salesforce], T], *, mutating: bool = False) -> Optional[T]:
        """Run one simple-salesforce call, translating every failure into connectors.errors."""
        if mutating and self.dry_run:
            log.info("dry-run: %s not sent connector=%s", what, self.name)
            return None
        sf = self._client()
        for attempt in (1, 2):
            try:
                return fn(sf)
            except SalesforceExpiredSession as exc:
                if attempt == 2:
                    raise AuthFailed(f"{what}: the session was refused again after a new login "
                                     f"({_codes(exc.content) or 'HTTP 401'})", status=401) from exc
                log.info("session expired, logging in again connector=%s", self.name)
                sf = self._renew(sf)
            except SalesforceError as exc:
                raise self._error(what, exc.status, exc.content) from exc
            except requests.Timeout as exc:
                raise TransientError(f"{what}: timed out") from exc
            except requests.ConnectionError as exc:
                raise TransientError(f"{what}: connection failed ({type(exc).__name__})") from exc
            except requests.RequestException as exc:
                raise TransientError(f"{what}: {type(exc).__name__}") from exc
            except ValueError as exc:  # a truncated or non-JSON answer
                raise TransientError(f"{what}: the answer is not JSON ({type(exc).__name__})") from exc
        raise AssertionError("unreachable")

    def _error(self, what: str, status: int, content: Any) -> ConnectorError:
        items = content if isinstance(content, list) else [content] if isinstance(content, dict) else []
        first = items[0] if items and isinstance(items[0], dict) else {}
        code = first.get("errorCode") or first.get("statusCode") or first.get("error") or ""
        message = first.get("message") or first.get("error_description") or ""
        if not items and isinstance(content, (str, bytes)):
            message = (content.decode(errors="replace") if isinstance(content, bytes) else content)[:200]
        retry_after = retry_after_seconds(getattr(self._retry_after, "value", None))
        return _translate(what, status, code, message, first.get("fields") or [], retry_after)

    def _json_call(self, what: str, method: str, path: str, body: Any = None, mutating: bool = True) -> Any:
        kwargs = {"data": json.dumps(body, ensure_ascii=False).encode()} if body is not None else {}
        return self._call(what, lambda sf: sf.restful(path, method=method, **kwargs), mutating=mutating)

    # --- queries ------------------------------------------------------------------------

    def _select(self) -> str:
        extra = [f for f in self.extra_fields if f not in BASE_SELECT]
        return ", ".join((*BASE_SELECT, *extra))

    def _query(self, soql: str) -> Iterator[dict]:
        """Every record of a SOQL query, page by page (nextRecordsUrl); renews the session once."""
        seen: set[str] = set()
        renewed = False
        while True:
            sf = self._client()
            pages = sf.query_all_iter(soql)
            try:
                while True:
                    try:
                        record = next(pages)
                    except StopIteration:
                        return
                    if record.get("Id") in seen:
                        continue
                    seen.add(record.get("Id"))
                    yield record
            except SalesforceExpiredSession as exc:
                if renewed:
                    raise AuthFailed("query: the session was refused again after a new login", status=401) from exc
                renewed = True
                self._renew(sf)  # and start over, skipping what was already yielded
            except SalesforceError as exc:
                raise self._error("query", exc.status, exc.content) from exc
            except requests.Timeout as exc:
                raise TransientError("query: timed out") from exc
            except requests.RequestException as exc:
                raise TransientError(f"query: connection failed ({type(exc).__name__})") from exc
            except ValueError as exc:
                raise TransientError(f"query: the answer is not JSON ({type(exc).__name__})") from exc

    def _first(self, soql: str) -> Optional[dict]:
        return next(iter(self._query(soql)), None)

    def profile_id(self) -> str:
        """The Id of the configured profile, looked up once by name."""
        if self._profile_id is None:
            record = self._first(f"SELECT Id, Name FROM Profile WHERE Name = {soql_quote(self.settings.profile)} LIMIT 1")
            if record is None:
                raise ConfigError(f"connector {self.name}: Salesforce has no profile named {self.settings.profile!r}")
            self._profile_id = record["Id"]
        return self._profile_id

    # --- mapping ------------------------------------------------------------------------

    def _account(self, record: dict) -> Account:
        """A User record as an Account; display_name is Salesforce's computed (read-only) Name."""
        return Account(id=record.get("Id"), user_name=record.get("Username") or "", email=record.get("Email"),
                       given_name=record.get("FirstName"), family_name=record.get("LastName"),
                       display_name=record.get("Name") or None, active=bool(record.get("IsActive")),
                       external_id=record.get("FederationIdentifier"),
                       extra={f: record.get(f) for f in self.extra_fields})

    def _create_fields(self, account: Account) -> dict:
        family = account.family_name or account.user_name.split("@")[0]
        fields = {**self.settings.defaults,
                  "Username": account.user_name, "LastName": family, "Email": account.email or account.user_name,
                  "Alias": make_alias(account.given_name, family, account.user_name),
                  "ProfileId": self.profile_id(), "IsActive": account.active}
        if account.given_name:
            fields["FirstName"] = account.given_name
        if account.external_id:
            fields["FederationIdentifier"] = account.external_id
        # A mapped field that came out empty is not sent: the target's default stays.
        fields.update({k: v for k, v in account.extra.items() if k in self.extra_fields and v is not None})
        return fields

    def _created(self, account: Account, fields: dict, remote_id: Optional[str]) -> Account:
        name = " ".join(p for p in (fields.get("FirstName"), fields["LastName"]) if p)
        return replace(account, id=remote_id, family_name=fields["LastName"], email=fields["Email"],
                       display_name=name)

    @staticmethod
    def _patch_fields(changes: dict[str, Any]) -> dict:
        """Account changes as User fields (display_name is dropped: Salesforce computes Name)."""
        fields = {}
        for key, value in changes.items():
            if key in FIELDS:
                fields[FIELDS[key]] = value
            elif key.startswith("extra."):
                fields[key[len("extra."):]] = value
            elif key == "extra" and isinstance(value, dict):
                fields.update(value)
        return fields

    # --- users --------------------------------------------------------------------------

    def check_user_name(self, user_name: str) -> None:
        """Reject a username Salesforce would refuse: it must be an email address of at most 80 characters."""
        if len(user_name) > USERNAME_MAX:
            raise Rejected(f"Username: {len(user_name)} characters; Salesforce allows at most {USERNAME_MAX}",
                           field="Username")
        if not _EMAIL_FORM.match(user_name):
            raise Rejected("Username: Salesforce usernames must be in the form of an email address (name@domain.tld)",
                           field="Username")

    def create_user(self, account: Account) -> Account:
        """Create the user in Salesforce."""
        fields = self._create_fields(account)
        try:
            body = self._json_call(f"create user {account.user_name}", "POST", "sobjects/User", fields)
        except AlreadyExists as exc:
            raise self._username_conflict(account.user_name, exc) from exc
        return self._created(account, fields, body["id"] if body else None)

    def _username_conflict(self, user_name: str, exc: ConnectorError) -> ConnectorError:
        """DUPLICATE_USERNAME: AlreadyExists when the user is in this org, else a cross-org collision."""
        if exc.field != "Username":
            return exc
        if self.find_user(user_name=user_name) is not None:
            return AlreadyExists(f"Username {user_name} already exists in this Salesforce org", status=exc.status,
                                 field="Username")
        return Rejected(f"Username {user_name} is taken in another Salesforce org (usernames are unique across "
                        f"all Salesforce orgs): choose another pattern or domain", status=exc.status, field="Username")

    def get_user(self, remote_id: str) -> Account:
        """Read the user by its Id (18 or 15 characters)."""
        path = f"sobjects/User/{_record_id(remote_id)}"
        fields = self._select().replace(" ", "")
        return self._account(self._call(f"get user {remote_id}", lambda sf: sf.restful(path, params={"fields": fields})))

    def find_user(self, *, external_id: Optional[str] = None, user_name: Optional[str] = None,
                  email: Optional[str] = None) -> Optional[Account]:
        """Find the user (active or not) by FederationIdentifier, then by Username, then by Email."""
        for field, value in (("FederationIdentifier", external_id), ("Username", user_name), ("Email", email)):
            if not value:
                continue
            for record in self._query(f"SELECT {self._select()} FROM User WHERE {field} = {soql_quote(value)} LIMIT 2"):
                if str(record.get(field) or "").lower() == value.lower():
                    return self._account(record)
        return None

    def update_user(self, remote_id: str, changes: dict[str, Any], current: Account) -> Account:
        """PATCH only the changed fields."""
        fields = self._patch_fields(changes)
        if not fields:
            return current
        try:
            self._json_call(f"update user {remote_id}", "PATCH", f"sobjects/User/{_record_id(remote_id)}", fields)
        except AlreadyExists as exc:
            raise self._username_conflict(str(fields.get("Username")), exc) from exc
        return _applied(current, changes)

    def disable_user(self, remote_id: str) -> None:
        self._json_call(f"disable user {remote_id}", "PATCH", f"sobjects/User/{_record_id(remote_id)}", {"IsActive": False})

    def enable_user(self, remote_id: str) -> None:
        self._json_call(f"enable user {remote_id}", "PATCH", f"sobjects/User/{_record_id(remote_id)}", {"IsActive": True})

    def delete_user(self, remote_id: str) -> None:
        """Deactivate the user (Salesforce cannot delete users); optionally free its username."""
        fields: dict[str, Any] = {"IsActive": False}
        if self.settings.free_username_on_deprovision:
            user_name = self.get_user(remote_id).user_name
            freed = freed_username(user_name, remote_id)
            if freed != user_name:
                fields["Username"] = freed
        self._json_call(f"deactivate user {remote_id}", "PATCH", f"sobjects/User/{_record_id(remote_id)}", fields)

    def iter_users(self) -> Iterator[Account]:
        """Every standard (human) user, active or not, page by page."""
        for record in self._query(f"SELECT {self._select()} FROM User WHERE UserType = 'Standard'"):
            yield self._account(record)

    # --- groups: out of scope -------------------------------------------------------------

    def _no_groups(self, *args, **kwargs):
        raise NotImplementedError("the Salesforce connector does not manage groups")

    create_group = get_group = find_group = add_members = remove_members = delete_group = iter_groups = _no_groups

    # --- batches: sObject Collections ------------------------------------------------------

    def apply_batch(self, ops: list[BatchOp]) -> list[Any]:
        """Apply ops through sObject Collections (200 records a request); results align with ops."""
        results: list[Any] = [None] * len(ops)
        creates = [i for i, op in enumerate(ops) if op.kind == "create"]
        updates = [i for i, op in enumerate(ops) if op.kind in ("update", "disable", "enable", "delete")]
        for i, op in enumerate(ops):
            if op.kind not in ("create", "update", "disable", "enable", "delete"):
                results[i] = Rejected(f"unknown batch operation {op.kind!r}")
        for start in range(0, len(creates), COLLECTION_SIZE):
            self._create_chunk(ops, creates[start:start + COLLECTION_SIZE], results)
        for start in range(0, len(updates), COLLECTION_SIZE):
            self._update_chunk(ops, updates[start:start + COLLECTION_SIZE], results)
        return results

    def _collection(self, what: str, method: str, records: list[dict]) -> Optional[list[dict]]:
        return self._json_call(what, method, "composite/sobjects", {"allOrNone": False, "records": records})

    def _create_chunk(self, ops: list[BatchOp], idx: list[int], results: list[Any]) -> None:
        fields_by_op = {}
        for i in idx:
            try:
                fields_by_op[i] = self._create_fields(ops[i].account)
            except ConnectorError as exc:
                results[i] = exc
        todo = list(fields_by_op)
        if not todo:
            return
        records = [{"attributes": {"type": "User"}, **fields_by_op[i]} for i in todo]
        try:
            answer = self._collection(f"create {len(records)} users", "POST", records)
        except ConnectorError as exc:
            for i in todo:
                results[i] = exc
            return
        for n, i in enumerate(todo):
            item = answer[n] if answer else {"success": True, "id": None}
            if item.get("success"):
                results[i] = self._created(ops[i].account, fields_by_op[i], item.get("id"))
            else:
                error = self._item_error(f"create user {ops[i].account.user_name}", item)
                if isinstance(error, AlreadyExists):
                    error = self._username_conflict(ops[i].account.user_name, error)
                results[i] = error

    def _update_chunk(self, ops: list[BatchOp], idx: list[int], results: list[Any]) -> None:
        fields_by_op: dict[int, dict] = {}
        need_names = [ops[i].remote_id for i in idx if ops[i].kind == "delete"
                      and self.settings.free_username_on_deprovision]
        names = {}
        if need_names:
            try:
                names = {r["Id"]: r["Username"] for r in self._query(
                    f"SELECT Id, Username FROM User WHERE Id IN ({', '.join(soql_quote(n) for n in need_names)})")}
            except ConnectorError as exc:
                for i in idx:
                    results[i] = exc
                return
        for i in idx:
            op = ops[i]
            if op.kind == "update":
                fields = self._patch_fields(op.changes)
            elif op.kind == "delete":
                fields = {"IsActive": False}
                if op.remote_id in names:
                    freed = freed_username(names[op.remote_id], op.remote_id)
                    if freed != names[op.remote_id]:
                        fields["Username"] = freed
            else:
                fields = {"IsActive": op.kind == "enable"}
            if fields:
                fields_by_op[i] = fields
        todo = list(fields_by_op)
        if not todo:
            return
        records = [{"attributes": {"type": "User"}, "id": ops[i].remote_id, **fields_by_op[i]} for i in todo]
        try:
            answer = self._collection(f"update {len(records)} users", "PATCH", records)
        except ConnectorError as exc:
            for i in todo:
                results[i] = exc
            return
        updated = []
        for n, i in enumerate(todo):
            item = answer[n] if answer else {"success": True}
            if item.get("success"):
                if ops[i].kind == "update":
                    updated.append(i)
            else:
                error = self._item_error(f"{ops[i].kind} user {ops[i].remote_id}", item)
                if isinstance(error, AlreadyExists):
                    error = self._username_conflict(str(fields_by_op[i].get("Username")), error)
                results[i] = error
        if updated and not self.dry_run:
            # One query re-reads every updated user, so the batch returns what Salesforce holds.
            ids = ", ".join(soql_quote(ops[i].remote_id) for i in updated)
            try:
                accounts = {r["Id"]: self._account(r)
                            for r in self._query(f"SELECT {self._select()} FROM User WHERE Id IN ({ids})")}
            except ConnectorError as exc:
                accounts, missing = {}, exc
            else:
                missing = None
            for i in updated:
                results[i] = accounts.get(ops[i].remote_id) or missing or NotFound(f"user {ops[i].remote_id} vanished")

    def _item_error(self, what: str, item: dict) -> ConnectorError:
        errors = item.get("errors") or [{}]
        first = errors[0]
        code = first.get("statusCode") or first.get("errorCode") or ""
        status = 404 if code in ("NOT_FOUND", "ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY") \
            and not first.get("fields") else 400
        return _translate(what, status, code, first.get("message") or "", first.get("fields") or [], None)


def _translate(what: str, status: int, code: str, message: str, fields: list, retry_after) -> ConnectorError:
    """The most specific connectors.errors for one Salesforce error."""
    field = fields[0] if fields else _field_in(message)
    text = f"{what}: HTTP {status} {code}".rstrip() + (f": {message}" if message else "")
    if code == "REQUEST_LIMIT_EXCEEDED" or status == 429:
        return RateLimited(text, status=status, retry_after=retry_after)
    if code == "DUPLICATE_USERNAME":
        return AlreadyExists(text, status=status, field="Username")
    if code in ("DUPLICATE_VALUE", "DUPLICATE_EXTERNAL_ID"):
        return AlreadyExists(text, status=status, field=field)
    if code in ("NOT_FOUND", "ENTITY_IS_DELETED") or status == 404:
        return NotFound(text, status=status)
    if code in TRANSIENT_CODES or status >= 500 or status == 408:
        return TransientError(text, status=status, retry_after=retry_after)
    if code in FIELD_ERRORS:
        return Rejected(text, status=status, field=field)
    if status in (401, 403) and not code.startswith("INSUFFICIENT_ACCESS"):
        return AuthFailed(text, status=status)
    return Rejected(text, status=status, field=field)


def _field_in(message: str) -> Optional[str]:
    """The field a message names: "No such column 'X'" or "X: ..."."""
    match = re.search(r"No such column '([A-Za-z0-9_]+)'", message or "") or re.match(r"^([A-Za-z0-9_]+): ", message or "")
    return match.group(1) if match else None


def _record_id(remote_id: str) -> str:
    """A Salesforce record Id, checked before it goes into a URL path."""
    if not re.fullmatch(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?", remote_id or ""):
        raise NotFound(f"{remote_id!r} is not a Salesforce record Id")
    return remote_id


def _codes(content: Any) -> str:
    if isinstance(content, list):
        return ", ".join(str(i.get("errorCode")) for i in content if isinstance(i, dict))
    return ""


def _applied(current: Account, changes: dict[str, Any]) -> Account:
    """The account after a successful PATCH of `changes`."""
    plain = {k: v for k, v in changes.items() if k in FIELDS}
    extra = dict(current.extra)
    for key, value in changes.items():
        if key.startswith("extra."):
            extra[key[len("extra."):]] = value
    updated = replace(current, **plain, extra=extra)
    if "given_name" in plain or "family_name" in plain:
        updated = replace(updated, display_name=" ".join(p for p in (updated.given_name, updated.family_name) if p))
    return updated


def freed_username(user_name: str, remote_id: str) -> str:
    """A username that frees `user_name` for reuse: deprovisioned-<id tail>.<local>@<domain>, ≤ 80 chars."""
    if user_name.startswith("deprovisioned-"):
        return user_name
    local, _, domain = user_name.rpartition("@")
    prefix = f"deprovisioned-{remote_id[-9:-3] if len(remote_id) >= 15 else remote_id[-6:]}."
    room = USERNAME_MAX - len(domain) - 1
    new_local = (prefix + local)[:room] if room > len(prefix) else prefix.rstrip(".")
    return f"{new_local}@{domain}"[:USERNAME_MAX]


def build(cfg, dry_run: bool = False) -> SalesforceConnector:
    """Build the connector for a configuration entry; the only place its secrets are resolved."""
    from connectors.http import build_session
    from models.secrets import SCHEMES, resolve

    settings: SalesforceSettings = cfg.salesforce
    auth = settings.auth

    def secret(ref: Optional[str]) -> Optional[str]:
        return resolve(ref) if ref else None

    client_id = resolve(auth.client_id) if auth.client_id.startswith(SCHEMES) else auth.client_id
    tokens = TokenSource(settings, build_session(settings, pool_size=2), client_id=client_id,
                         client_secret=secret(auth.client_secret), password=secret(auth.password),
                         security_token=secret(auth.security_token), private_key=secret(auth.private_key))
    return SalesforceConnector(cfg.name, settings, build_session(settings), tokens, dry_run=dry_run,
                               extra_fields=cfg.attribute_map.extra_targets)
