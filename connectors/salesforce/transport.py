"""Salesforce transport: the one call choke point (session renewal, dry-run, errors) and SOQL queries.

    simple_salesforce / requests                      connectors.errors
    ─────────────────────────────────────────────     ──────────────────────────────────────────
    401 INVALID_SESSION_ID                            new token, one retry; then AuthFailed
    token endpoint refusal (invalid_grant, ...)       the one token rule (errors.token_error)
    403 REQUEST_LIMIT_EXCEEDED, 429                   RateLimited
    other 401/403                                     AuthFailed
    404 NOT_FOUND, ENTITY_IS_DELETED                  NotFound
    DUPLICATE_USERNAME, user in this org              AlreadyExists
    DUPLICATE_USERNAME, user not in this org          Rejected ("taken in another Salesforce org")
    REQUIRED_FIELD_MISSING, INVALID_FIELD,            Rejected naming the field
      FIELD_INTEGRITY_EXCEPTION, STRING_TOO_LONG, ...
    5xx, UNABLE_TO_LOCK_ROW, timeouts, resets         TransientError
"""

import json
import logging
import re
import threading
from typing import Any, Callable, Iterator, Optional, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession

from connectors.base import Capabilities
from connectors.errors import (AlreadyExists, AuthFailed, ConfigError, ConnectorError, DryRunRejected, NotFound,
                               RateLimited, Rejected, TransientError, for_status, read_applies_nothing,
                               retry_after_seconds)
from connectors.http import maybe_sent
from connectors.salesforce.auth import TokenSource
from connectors.salesforce.mapping import BASE_SELECT, soql_quote
from models.config import SalesforceSettings

log = logging.getLogger("connectors.salesforce")
T = TypeVar("T")

FIELD_ERRORS = {"REQUIRED_FIELD_MISSING", "INVALID_FIELD", "FIELD_INTEGRITY_EXCEPTION", "INVALID_EMAIL_ADDRESS",
                "STRING_TOO_LONG", "INVALID_CROSS_REFERENCE_KEY", "INVALID_FIELD_FOR_INSERT_UPDATE",
                "FIELD_CUSTOM_VALIDATION_EXCEPTION", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                "JSON_PARSER_ERROR", "INVALID_TYPE_ON_FIELD_IN_RECORD", "MALFORMED_QUERY"}
TRANSIENT_CODES = {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG", "QUERY_TIMEOUT"}


class Transport:
    """The connector's API side: every REST call goes through `_call`, every query through `_query`."""

    # Salesforce refuses to delete users (delete_user deactivates); Name is computed from
    # FirstName and LastName; public groups, permission sets and queues are out of scope. sObject
    # Collections accept at most 200 records per request.
    capabilities = Capabilities(groups=False, deletes_users=False, max_batch=200,
                                read_only_attributes=("display_name",))

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
        return f"{type(self).__name__}(name={self.name!r}, login_url={self.settings.login_url!r})"

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

    def _call(self, what: str, fn: Callable[[Salesforce], T], *, method: str = "GET", path: str = "",
              body: Any = None) -> T:
        """Run one simple-salesforce call (`method` `path` with `body`), translating every failure into
        connectors.errors. On a dry run anything but a GET raises DryRunRejected instead of being sent."""
        if self.dry_run and method != "GET":
            raise DryRunRejected(method, path, body)
        with read_applies_nothing(method):
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
                    raise TransientError(f"{what}: connection failed ({type(exc).__name__})",
                                         maybe_applied=maybe_sent(exc)) from exc
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
        return translate(what, status, code, message, first.get("fields") or [], retry_after)

    def _json_call(self, what: str, method: str, path: str, body: Any = None) -> Any:
        kwargs = {"data": json.dumps(body, ensure_ascii=False).encode()} if body is not None else {}
        return self._call(what, lambda sf: sf.restful(path, method=method, **kwargs), method=method, path=path,
                          body=body)

    # --- queries ------------------------------------------------------------------------

    def _select(self) -> str:
        extra = [f for f in self.extra_fields if f not in BASE_SELECT]
        return ", ".join((*BASE_SELECT, *extra))

    def _query(self, soql: str) -> Iterator[dict]:
        """Every record of a SOQL query, page by page (nextRecordsUrl); renews the session once."""
        with read_applies_nothing("GET"):  # a query is a read, whatever it is for
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


def translate(what: str, status: int, code: str, message: str, fields: list, retry_after) -> ConnectorError:
    """The most specific connectors.errors for one Salesforce error: its error code first, then the
    HTTP status by the shared table."""
    field = fields[0] if fields else _field_in(message)
    text = f"{what}: HTTP {status} {code}".rstrip() + (f": {message}" if message else "")
    if code == "REQUEST_LIMIT_EXCEEDED":
        return RateLimited(text, status=status, retry_after=retry_after)
    if code == "DUPLICATE_USERNAME":
        return AlreadyExists(text, status=status, field="Username")
    if code in ("DUPLICATE_VALUE", "DUPLICATE_EXTERNAL_ID"):
        return AlreadyExists(text, status=status, field=field)
    if code in ("NOT_FOUND", "ENTITY_IS_DELETED"):
        return NotFound(text, status=status)
    if code in TRANSIENT_CODES:
        return TransientError(text, status=status, retry_after=retry_after)
    answered = status < 500 and status not in (404, 408, 429)
    if answered and (code in FIELD_ERRORS or code.startswith("INSUFFICIENT_ACCESS")):
        return Rejected(text, status=status, field=field)
    return for_status(status, text, retry_after=retry_after, field=field)


def _field_in(message: str) -> Optional[str]:
    """The field a message names: "No such column 'X'" or "X: ..."."""
    match = re.search(r"No such column '([A-Za-z0-9_]+)'", message or "") or re.match(r"^([A-Za-z0-9_]+): ", message or "")
    return match.group(1) if match else None


def _codes(content: Any) -> str:
    if isinstance(content, list):
        return ", ".join(str(i.get("errorCode")) for i in content if isinstance(i, dict))
    return ""


def record_id(remote_id: str) -> str:
    """A Salesforce record Id, checked before it goes into a URL path."""
    if not re.fullmatch(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?", remote_id or ""):
        raise NotFound(f"{remote_id!r} is not a Salesforce record Id")
    return remote_id
