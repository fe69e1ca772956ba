"""SCIM transport: the one request choke point (auth refresh, dry-run, errors) and the reads built on it."""

import json
import logging
from dataclasses import replace
from typing import Any, Iterator, Optional

import requests

from connectors.base import Capabilities
from connectors.errors import (DryRunRejected, NotFound, OutcomeUnknown, Rejected, TransientError, for_status,
                               read_applies_nothing, retry_after_seconds)
from connectors.http import maybe_sent
from models.config import Scim2Settings

log = logging.getLogger("connectors.scim2")
SCIM_JSON = "application/scim+json"


def filter_eq(attribute: str, value: str) -> str:
    """A SCIM `eq` filter whose value is a properly escaped JSON string (RFC 7644 §3.4.2.2)."""
    return f"{attribute} eq {json.dumps(value, ensure_ascii=False)}"


class Transport:
    """The connector's HTTP side: every request goes through `_request`."""

    capabilities = Capabilities(groups=True, deletes_users=True, uses_profile=True, batched_lookup=True)

    def __init__(self, name: str, settings: Scim2Settings, session: requests.Session, dry_run: bool = False,
                 extra_targets: tuple[str, ...] = ()):
        self.name = name
        # The attributes the connector's mapping adds (Account.extra, keyed by SCIM path or schema URN).
        self.extra_targets = tuple(extra_targets)
        self.settings = settings
        self.session = session
        self.base_url = settings.base_url
        self.dry_run = dry_run
        self._spc: Optional[dict] = None
        self._payload_cap: Optional[int] = None  # the bulk body size a 413 showed the server refuses
        self.requests_sent = 0
        if settings.lookup == "each":  # a batch's accounts one find_user at a time (see Lookups)
            self.capabilities = replace(self.capabilities, batched_lookup=False)
        if settings.create == "optimistic" and not dry_run:  # still proven before use (see Uniqueness)
            self.capabilities = replace(self.capabilities, optimistic_create=True)

    # --- the one choke point -------------------------------------------------------------

    def _request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                 cut_off_unknown: bool = False) -> requests.Response:
        """Send one request; HTTP errors become the shared error tree. With `cut_off_unknown`, a request
        that may have reached the server before the connection failed raises OutcomeUnknown. On a dry
        run anything but a read (a GET, a POST …/.search) raises DryRunRejected instead of being sent."""
        with read_applies_nothing("GET" if _is_search(method, path) else method):
            return self._send(method, path, json_body=json_body, params=params, cut_off_unknown=cut_off_unknown)

    def _send(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
              _refreshed: bool = False, cut_off_unknown: bool = False) -> requests.Response:
        if self.dry_run and method != "GET" and not _is_search(method, path):
            raise DryRunRejected(method, path, json_body)
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        headers = {"Accept": SCIM_JSON}
        data = None
        if json_body is not None:
            headers["Content-Type"] = SCIM_JSON
            data = json.dumps(json_body, ensure_ascii=False).encode()
        try:
            self.requests_sent += 1
            response = self.session.request(method, url, data=data, params=params, headers=headers)
        except requests.RequestException as exc:  # refused, timed out, reset, or dropped mid-response
            what = "timed out" if isinstance(exc, requests.Timeout) else f"connection failed ({type(exc).__name__})"
            sent = maybe_sent(exc)
            if cut_off_unknown and sent:
                raise OutcomeUnknown(f"{method} {path}: {what} after sending; its operations may have been applied") from exc
            raise TransientError(f"{method} {path}: {what}", maybe_applied=sent) from exc
        if response.status_code == 401 and not _refreshed and hasattr(self.session.auth, "refresh"):
            self.session.auth.refresh()  # one token refresh, then it is an auth failure
            return self._send(method, path, json_body=json_body, params=params, _refreshed=True,
                              cut_off_unknown=cut_off_unknown)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            raise scim_error(f"{method} {path}", response.status_code, body if isinstance(body, dict) else {},
                             retry_after_seconds(response.headers.get("Retry-After")))
        return response

    def _json(self, response: requests.Response) -> dict:
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise TransientError(f"{response.request.method} {response.url}: the answer is not JSON") from exc

    # --- reads -------------------------------------------------------------------------

    def _search(self, resource: str, filter_: str, count: int = 2) -> list[dict]:
        body = self._json(self._request("GET", f"/{resource}", params={"filter": filter_, "count": count}))
        return body.get("Resources") or []

    def _iter(self, resource: str) -> Iterator[dict]:
        start, size = 1, self.settings.page_size
        while True:
            body = self._json(self._request("GET", f"/{resource}", params={"startIndex": start, "count": size}))
            items = body.get("Resources") or []
            yield from items
            total = int(body.get("totalResults") or 0)
            start += len(items)
            if not items or start > total:
                return

    # --- what the server supports --------------------------------------------------------

    def service_provider_config(self) -> dict:
        """The server's ServiceProviderConfig, read once ({} when it has none)."""
        if self._spc is None:
            try:
                self._spc = self._json(self._request("GET", "/ServiceProviderConfig"))
            except (NotFound, Rejected):
                self._spc = {}
        return self._spc

    def use_profile(self, capabilities: dict) -> None:
        """Act on a stored capability profile (from `outbound check`) instead of asking the server:
        its ServiceProviderConfig decides PATCH or PUT and the bulk sizes; no Group resource type
        turns group sync off; its Group schema says whether displayName is caseExact."""
        if capabilities.get("base_url") not in (None, self.base_url):
            return  # probed at another address: it says nothing about this one
        spc = capabilities.get("service_provider_config")
        if isinstance(spc, dict) and spc:
            self._spc = spc
        if isinstance(capabilities.get("group_name_case_exact"), bool):
            self.capabilities = replace(self.capabilities,
                                        group_names_case_exact=capabilities["group_name_case_exact"])
        if capabilities.get("group_type") is False:
            self.capabilities = replace(self.capabilities, groups=False)
            log.warning("connector=%s: the SCIM server has no Group resource type (outbound check): group sync "
                        "is off; remove groups: from this connector or enable groups on the server", self.name)

    def patch_supported(self) -> bool:
        if self.settings.update_method != "auto":
            return self.settings.update_method == "patch"
        return bool((self.service_provider_config().get("patch") or {}).get("supported"))


def _is_search(method: str, path: str) -> bool:
    """A POST to …/.search (RFC 7644 §3.4.3) reads, as a GET does."""
    return method == "POST" and path.rstrip("/").endswith("/.search")


def scim_error(what: str, status: int, body: dict, retry_after: float | None) -> Exception:
    """The error a SCIM error answer means (a whole response or one bulk operation's)."""
    detail, scim_type = (v if isinstance(v, str) else None for v in (body.get("detail"), body.get("scimType")))
    text = f"{what}: HTTP {status}" + (f" {scim_type}" if scim_type else "") + (f": {detail}" if detail else "")
    return for_status(status, text, retry_after=retry_after, field=_field_in(detail))


def _field_in(detail: Optional[str]) -> Optional[str]:
    """The attribute a SCIM error detail names, when it quotes one ('userName' ...)."""
    if detail and "'" in detail:
        parts = detail.split("'")
        if len(parts) >= 3:
            return parts[1]
    return None
