"""SCIM 2.0 (RFC 7643/7644) connector: payloads with scim2-models, HTTP with requests."""

import json
import logging
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

import requests
import urllib3
from pydantic import ValidationError
from scim2_models import Email, Group, GroupMember, Name, PatchOp, PatchOperation, User

from connectors.base import Account, BatchOp, RemoteGroup
from connectors.errors import (ConnectorError, NotFound, OutcomeUnknown, Rejected, TransientError, for_status,
                               retry_after_seconds)
from models.config import Scim2Settings
from models.mapping import ENTERPRISE, as_text

log = logging.getLogger(__name__)
SCIM_JSON = "application/scim+json"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def filter_eq(attribute: str, value: str) -> str:
    """A SCIM `eq` filter whose value is a properly escaped JSON string (RFC 7644 §3.4.2.2)."""
    return f"{attribute} eq {json.dumps(value, ensure_ascii=False)}"


class Scim2Connector:
    supports_groups = True

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

    # --- the one choke point -------------------------------------------------------------

    def _request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                 _refreshed: bool = False, cut_off_unknown: bool = False) -> requests.Response | None:
        """Send one request; HTTP errors become the shared error tree. With `cut_off_unknown`, a request
        that may have reached the server before the connection failed raises OutcomeUnknown."""
        if self.dry_run and method in MUTATING:
            log.info("dry-run: %s %s not sent connector=%s", method, path, self.name)
            return None
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
            if cut_off_unknown and _maybe_sent(exc):
                raise OutcomeUnknown(f"{method} {path}: {what} after sending; its operations may have been applied") from exc
            raise TransientError(f"{method} {path}: {what}") from exc
        if response.status_code == 401 and not _refreshed and hasattr(self.session.auth, "refresh"):
            self.session.auth.refresh()  # one token refresh, then it is an auth failure
            return self._request(method, path, json_body=json_body, params=params, _refreshed=True,
                                 cut_off_unknown=cut_off_unknown)
        if response.status_code >= 400:
            raise self._error(method, path, response)
        return response

    def _error(self, method: str, path: str, response: requests.Response) -> Exception:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {}
        detail = body.get("detail") if isinstance(body, dict) else None
        scim_type = body.get("scimType") if isinstance(body, dict) else None
        text = f"{method} {path}: HTTP {status}" + (f" {scim_type}" if scim_type else "") + (f": {detail}" if detail else "")
        return for_status(status, text, retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                          field=_field_in(detail))

    def _json(self, response: requests.Response | None) -> dict:
        if response is None or response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise TransientError(f"{response.request.method} {response.url}: the answer is not JSON") from exc

    # --- users --------------------------------------------------------------------------

    def _to_scim(self, account: Account) -> dict:
        try:
            return self._to_scim_user(account)
        except ValidationError as exc:  # e.g. an email address scim2-models refuses: the target would too
            field = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "user"
            raise Rejected(f"{account.user_name}: the SCIM schema refuses it ({exc.title}: {field})",
                           field="email" if exc.title == "Email" else field) from None

    def _to_scim_user(self, account: Account) -> dict:
        user = User(
            user_name=account.user_name,
            external_id=account.external_id,
            name=Name(given_name=account.given_name, family_name=account.family_name)
            if (account.given_name or account.family_name) else None,
            display_name=account.display_name,
            emails=[Email(value=account.email, primary=True, type="work")] if account.email else None,
            active=account.active,
        )
        body = user.model_dump()
        for target, value in account.extra.items():
            if value is not None and target in self.extra_targets:
                _set_path(body, target, _scim_value(target, value))
        return body

    def _from_scim(self, payload: dict) -> Account:
        try:
            # Extension attributes (enterprise, custom schemas) are read below, by the mapping: the
            # core model refuses keys it does not know.
            user = User.model_validate({k: v for k, v in payload.items() if not k.startswith("urn:")})
        except ValidationError as exc:
            raise TransientError(f"the target answered a User that is not valid SCIM: {exc.error_count()} errors") from exc
        emails = user.emails or []
        primary = next((e for e in emails if e.primary), emails[0] if emails else None)
        return Account(
            id=user.id, user_name=user.user_name or "", external_id=user.external_id,
            given_name=user.name.given_name if user.name else None,
            family_name=user.name.family_name if user.name else None,
            display_name=user.display_name, email=primary.value if primary else None,
            active=True if user.active is None else bool(user.active),
            extra={t: _read_path(payload, t) for t in self.extra_targets},
        )

    def check_user_name(self, user_name: str) -> None:
        if not user_name.strip():
            raise Rejected("userName: must not be empty", field="userName")

    def create_user(self, account: Account) -> Account:
        """Create the user in the target."""
        response = self._request("POST", "/Users", json_body=self._to_scim(account))
        return self._from_scim(self._json(response)) if response is not None else account

    def get_user(self, remote_id: str) -> Account:
        return self._from_scim(self._json(self._request("GET", f"/Users/{remote_id}")))

    def _search(self, resource: str, filter_: str, count: int = 2) -> list[dict]:
        body = self._json(self._request("GET", f"/{resource}", params={"filter": filter_, "count": count}))
        return body.get("Resources") or []

    def find_user(self, *, external_id: Optional[str] = None, user_name: Optional[str] = None,
                  email: Optional[str] = None) -> Optional[Account]:
        """Find the user by externalId, then by userName, then (only when asked) by a single matching email."""
        if external_id:
            try:
                found = self._search("Users", filter_eq("externalId", external_id))
            except Rejected:  # some servers do not filter on externalId
                found = []
            if found:
                return self._from_scim(found[0])
        if user_name:
            found = self._search("Users", filter_eq("userName", user_name))
            # userName is case-insensitive in SCIM, so an exact match is not guaranteed.
            for item in found:
                if str(item.get("userName", "")).lower() == user_name.lower():
                    return self._from_scim(item)
        if email:
            try:
                found = self._search("Users", filter_eq("emails.value", email))
            except Rejected:  # a server that cannot filter on emails: no match by email
                found = []
            if len(found) == 1:  # an address two accounts share identifies neither
                return self._from_scim(found[0])
        return None

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
        turns group sync off."""
        if capabilities.get("base_url") not in (None, self.base_url):
            return  # probed at another address: it says nothing about this one
        spc = capabilities.get("service_provider_config")
        if isinstance(spc, dict) and spc:
            self._spc = spc
        if capabilities.get("group_type") is False:
            self.supports_groups = False
            log.warning("connector=%s: the SCIM server has no Group resource type (outbound check): group sync "
                        "is off; remove groups: from this connector or enable groups on the server", self.name)

    def patch_supported(self) -> bool:
        if self.settings.update_method != "auto":
            return self.settings.update_method == "patch"
        return bool((self.service_provider_config().get("patch") or {}).get("supported"))

    def update_user(self, remote_id: str, changes: dict[str, Any], current: Account) -> Account:
        """Change only the given managed attributes (PATCH when supported, else PUT)."""
        if not changes:
            return current
        if self.patch_supported():
            response = self._request("PATCH", f"/Users/{remote_id}", json_body=_patch_body(changes))
        else:
            # PUT replaces the resource: start from what the target holds so nothing else is reset.
            raw = self._json(self._request("GET", f"/Users/{remote_id}"))
            raw.pop("meta", None)
            for path, value in _patch_paths(changes).items():
                _set_path(raw, path, value)
            response = self._request("PUT", f"/Users/{remote_id}", json_body=raw)
        body = self._json(response)
        if body:
            return self._from_scim(body)
        # 204 No Content (allowed by RFC 7644), or a dry run that sent nothing.
        return current if self.dry_run else self.get_user(remote_id)

    def disable_user(self, remote_id: str) -> None:
        self._set_active(remote_id, False)

    def enable_user(self, remote_id: str) -> None:
        self._set_active(remote_id, True)

    def _set_active(self, remote_id: str, active: bool) -> None:
        if self.patch_supported():
            op = PatchOp[User](operations=[PatchOperation[User](op="replace", path="active", value=active)])
            self._request("PATCH", f"/Users/{remote_id}", json_body=op.model_dump())
        else:
            self.update_user(remote_id, {"active": active}, self.get_user(remote_id))

    def delete_user(self, remote_id: str) -> None:
        self._request("DELETE", f"/Users/{remote_id}")

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

    def iter_users(self) -> Iterator[Account]:
        """Every user in the target, page by page (startIndex/count)."""
        for item in self._iter("Users"):
            yield self._from_scim(item)

    # --- batches: /Bulk (RFC 7644 §3.7) -------------------------------------------------

    def bulk_limits(self) -> Optional[tuple[int, int]]:
        """(maxOperations, maxPayloadSize) when the server supports /Bulk, else None.

        The payload size is lowered to what a 413 has taught us (a proxy may cap bodies below what
        the ServiceProviderConfig advertises).
        """
        bulk = self.service_provider_config().get("bulk") or {}
        if not bulk.get("supported") or not (bulk.get("maxOperations") or 0) > 0:
            return None
        max_bytes = int(bulk.get("maxPayloadSize") or 1_048_576)
        if self._payload_cap is not None:
            max_bytes = min(max_bytes, self._payload_cap)
        return int(bulk["maxOperations"]), max_bytes

    def apply_batch(self, ops: list[BatchOp], max_workers: int = 1) -> list[Any]:
        """Apply user operations through /Bulk when the server has it, else one call each over a thread pool.

        Requests are sized to the server's bulk.maxOperations and bulk.maxPayloadSize; one refused
        with 413 is split in two and sent again; an operation too large for any bulk request goes on
        its own. Results align with `ops`: an Account (create/update), None (done), or the
        ConnectorError that call met (a delete that found nothing is done; an operation the server
        did not answer is OutcomeUnknown). Never raises for one op.
        """
        limits = self.bulk_limits()
        if limits is None or (not self.patch_supported() and any(o.kind != "create" and o.kind != "delete"
                                                                 for o in ops)):
            return self._one_by_one(ops, max_workers)
        max_ops = limits[0]
        results: list[Any] = [None] * len(ops)
        alone: list[int] = []
        chunk: list[tuple[int, dict]] = []
        size = _ENVELOPE_BYTES
        for index, op in enumerate(ops):
            try:
                item = self._bulk_item(index, op)
            except ConnectorError as exc:
                results[index] = exc
                continue
            max_bytes = self.bulk_limits()[1]  # re-read: a 413 on an earlier request may have lowered it
            item_size = _json_size(item)
            if _ENVELOPE_BYTES + item_size > max_bytes:
                alone.append(index)
                continue
            if chunk and (len(chunk) >= max_ops or size + 2 + item_size > max_bytes):
                self._send_bulk(ops, chunk, results)
                chunk, size = [], _ENVELOPE_BYTES
            size += item_size + (2 if chunk else 0)  # json.dumps separates list items with ", "
            chunk.append((index, item))
        if chunk:
            self._send_bulk(ops, chunk, results)
        if alone:
            for index, result in zip(alone, self._one_by_one([ops[i] for i in alone], max_workers)):
                results[index] = result
        return results

    def _bulk_item(self, index: int, op: BatchOp) -> dict:
        item: dict[str, Any] = {"bulkId": f"op{index}"}
        if op.kind == "create":
            item.update(method="POST", path="/Users", data=self._to_scim(op.account))
        elif op.kind == "delete":
            item.update(method="DELETE", path=f"/Users/{op.remote_id}")
        elif op.kind in ("update", "disable", "enable"):
            changes = op.changes if op.kind == "update" else {"active": op.kind == "enable"}
            item.update(method="PATCH", path=f"/Users/{op.remote_id}", data=_patch_body(changes))
        else:
            raise Rejected(f"unknown batch operation {op.kind!r}")
        return item

    def _send_bulk(self, ops: list[BatchOp], chunk: list[tuple[int, dict]], results: list[Any]) -> None:
        body = {"schemas": [BULK_REQUEST], "Operations": [item for _, item in chunk]}
        try:
            response = self._request("POST", "/Bulk", json_body=body, cut_off_unknown=True)
        except ConnectorError as exc:
            if exc.status == 413:
                self._split_after_413(ops, chunk, results, _json_size(body))
                return
            for index, _ in chunk:  # the whole request failed: so did each of its operations
                results[index] = exc
            return
        if response is None:  # dry-run
            for index, _ in chunk:
                results[index] = ops[index].account if ops[index].kind == "create" else None
            return
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        answers = [a for a in self._json(response).get("Operations") or [] if isinstance(a, dict)]
        paired = match_answers([item for _, item in chunk], answers)
        for position, (index, item) in enumerate(chunk):
            op, answer = ops[index], paired.get(position)
            if answer is None:
                results[index] = OutcomeUnknown(f"{item['method']} {item['path']}: no answer in the bulk response; "
                                                f"it may have been applied")
                continue
            try:
                status = int(answer.get("status") or 0)
            except (TypeError, ValueError):
                status = 0
            response_body = answer.get("response") if isinstance(answer.get("response"), dict) else {}
            if not 200 <= status < 600:
                results[index] = OutcomeUnknown(f"{item['method']} {item['path']}: the bulk response gives no "
                                                f"status; it may have been applied")
            elif status >= 400:
                error = self._bulk_error(item, status, response_body, retry_after)
                results[index] = None if isinstance(error, NotFound) and op.kind == "delete" else error
            elif op.kind == "create":
                created = _created_id(answer)
                results[index] = op.account.with_id(created) if created else OutcomeUnknown(
                    "POST /Users: created, but the bulk response gives no location or id")
            else:
                results[index] = None

    def _split_after_413(self, ops: list[BatchOp], chunk: list[tuple[int, dict]], results: list[Any],
                         size: int) -> None:
        """The server refused the request as too large: remember the size, then send it in two halves."""
        self._payload_cap = min(self._payload_cap or size, size - 1)
        log.info("connector=%s bulk request of %d operations (%d bytes) refused with 413; splitting",
                 self.name, len(chunk), size)
        if len(chunk) > 1:
            half = len(chunk) // 2
            self._send_bulk(ops, chunk[:half], results)
            self._send_bulk(ops, chunk[half:], results)
            return
        index = chunk[0][0]  # one operation too large for /Bulk: its own request has no bulk limit
        results[index] = self._one_by_one([ops[index]], 1)[0]

    def _bulk_error(self, item: dict, status: int, body: dict, retry_after: float | None = None) -> Exception:
        detail, scim_type = (v if isinstance(v, str) else None for v in (body.get("detail"), body.get("scimType")))
        text = (f"{item['method']} {item['path']}: HTTP {status}" + (f" {scim_type}" if scim_type else "")
                + (f": {detail}" if detail else ""))
        return for_status(status, text, retry_after=retry_after, field=_field_in(detail))

    def _one_by_one(self, ops: list[BatchOp], max_workers: int) -> list[Any]:
        """The fallback without /Bulk: one call per op, at most `max_workers` at a time."""
        from concurrent.futures import ThreadPoolExecutor

        def run(op: BatchOp) -> Any:
            try:
                if op.kind == "create":
                    return self.create_user(op.account)
                if op.kind == "update":
                    return self.update_user(op.remote_id, op.changes, op.account or Account(user_name=""))
                if op.kind in ("disable", "enable"):
                    self._set_active(op.remote_id, op.kind == "enable")
                elif op.kind == "delete":
                    try:
                        self.delete_user(op.remote_id)
                    except NotFound:
                        pass
                else:
                    raise Rejected(f"unknown batch operation {op.kind!r}")
                return None
            except ConnectorError as exc:
                return exc

        if max_workers <= 1:
            return [run(op) for op in ops]
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"scim-{self.name}") as pool:
            return list(pool.map(run, ops))

    # --- groups -------------------------------------------------------------------------

    def _group(self, payload: dict) -> RemoteGroup:
        group = Group.model_validate(payload)
        return RemoteGroup(id=group.id, name=group.display_name or "", external_id=group.external_id,
                           member_ids=frozenset(m.value for m in group.members or [] if m.value))

    def create_group(self, name: str, member_ids: list[str], external_id: Optional[str] = None) -> RemoteGroup:
        group = Group(display_name=name, external_id=external_id,
                      members=[GroupMember(value=m) for m in member_ids] or None)
        response = self._request("POST", "/Groups", json_body=group.model_dump())
        return self._group(self._json(response)) if response is not None else RemoteGroup(name=name)

    def get_group(self, remote_id: str) -> RemoteGroup:
        return self._group(self._json(self._request("GET", f"/Groups/{remote_id}")))

    def find_group(self, name: str) -> Optional[RemoteGroup]:
        for item in self._search("Groups", filter_eq("displayName", name)):
            if item.get("displayName") == name:
                return self._group(item)
        return None

    def _members_patch(self, group_id: str, op: str, member_ids: list[str]) -> None:
        if not member_ids:
            return
        if op == "add":
            ops = [{"op": "add", "path": "members", "value": [{"value": m} for m in member_ids]}]
        else:
            ops = [{"op": "remove", "path": f"members[value eq {json.dumps(m)}]"} for m in member_ids]
        body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops}
        self._request("PATCH", f"/Groups/{group_id}", json_body=body)

    def add_members(self, group_id: str, member_ids: list[str]) -> None:
        self._members_patch(group_id, "add", member_ids)

    def remove_members(self, group_id: str, member_ids: list[str]) -> None:
        self._members_patch(group_id, "remove", member_ids)

    def delete_group(self, remote_id: str) -> None:
        self._request("DELETE", f"/Groups/{remote_id}")

    def iter_groups(self) -> Iterator[RemoteGroup]:
        for item in self._iter("Groups"):
            yield self._group(item)


_PATHS = {"user_name": "userName", "given_name": "name.givenName", "family_name": "name.familyName",
          "display_name": "displayName", "active": "active", "external_id": "externalId"}


def _patch_paths(changes: dict[str, Any]) -> dict[str, Any]:
    """Account changes as SCIM paths and values; `extra.<target>` keys are mapped attributes."""
    out = {}
    for key, value in changes.items():
        if key == "email":
            out["emails"] = [{"value": value, "primary": True, "type": "work"}]
        elif key in _PATHS:
            out[_PATHS[key]] = value
        elif key.startswith("extra."):
            out[key[len("extra."):]] = _scim_value(key[len("extra."):], value)
    return out


def _patch_body(changes: dict[str, Any]) -> dict:
    """A PatchOp replacing each changed attribute. Built as JSON, not with the core User model, which
    refuses extension paths (`urn:...:enterprise:2.0:User:department`)."""
    return {"schemas": [PATCH_OP],
            "Operations": [{"op": "replace", "path": path, "value": value}
                           for path, value in _patch_paths(changes).items()]}


def _split_urn(path: str) -> Optional[tuple[str, str]]:
    """(schema URN, attribute) of an extension path, else None."""
    if not path.startswith("urn:"):
        return None
    schema, _, attribute = path.rpartition(":")
    return schema, attribute


def _scim_value(target: str, value: Any) -> Any:
    """A mapped value as SCIM holds it: a manager is a reference ({"value": <the manager's id>}), a
    phone number the one primary work number; the other core and enterprise attributes are strings
    (a custom schema's attribute is sent as the value is: the server's schema types it)."""
    if target == f"{ENTERPRISE}:manager":
        return {"value": as_text(value)}
    if target == "phoneNumbers":
        return [{"value": as_text(value), "type": "work", "primary": True}]
    urn = _split_urn(target)
    return value if urn and urn[0] != ENTERPRISE else as_text(value)


def _read_path(resource: dict, path: str) -> Any:
    """A mapped attribute's value in a SCIM resource, the inverse of _scim_value (None when absent)."""
    urn = _split_urn(path)
    if urn:
        value = (resource.get(urn[0]) or {}).get(urn[1]) if isinstance(resource.get(urn[0]), dict) else None
    else:
        head, _, tail = path.partition(".")
        value = resource.get(head)
        if tail:
            value = value.get(tail) if isinstance(value, dict) else None
    if isinstance(value, dict):  # a reference (manager)
        return value.get("value")
    if isinstance(value, list):  # a multi-valued attribute (phoneNumbers): its primary value
        items = [v for v in value if isinstance(v, dict)]
        chosen = next((v for v in items if v.get("primary")), items[0] if items else {})
        return chosen.get("value")
    return value


def _set_path(resource: dict, path: str, value: Any) -> None:
    urn = _split_urn(path)
    if urn:  # an extension attribute lives in the extension's object, and the resource lists the schema
        resource.setdefault(urn[0], {})[urn[1]] = value
        schemas = resource.setdefault("schemas", [])
        if urn[0] not in schemas:
            schemas.append(urn[0])
        return
    head, _, tail = path.partition(".")
    if tail:
        resource.setdefault(head, {})[tail] = value
    else:
        resource[head] = value


def _json_size(value: Any) -> int:
    """Bytes of `value` as _request sends it."""
    return len(json.dumps(value, ensure_ascii=False).encode())


_ENVELOPE_BYTES = _json_size({"schemas": [BULK_REQUEST], "Operations": []})


def _resource_path(reference: Any) -> Optional[str]:
    """`/<Type>/<id>` of a resource URL or path (the last two segments), so a location matches a path."""
    if not isinstance(reference, str) or not reference:
        return None
    parts = [p for p in urlsplit(reference).path.split("/") if p]
    return "/" + "/".join(parts[-2:]) if len(parts) >= 2 else None


def _consistent(item: dict, answer: dict) -> bool:
    """Whether `answer` may be the answer to `item` (what it says, when it says it, agrees)."""
    method = answer.get("method")
    if method and str(method).upper() != item["method"]:
        return False
    if answer.get("bulkId") and answer["bulkId"] != item["bulkId"]:
        return False
    where = _resource_path(answer.get("location"))
    return not (where and item["method"] != "POST" and where != _resource_path(item["path"]))


def match_answers(items: list[dict], answers: list[dict]) -> dict[int, dict]:
    """Pair bulk request operations (by position) with BulkResponse operations (RFC 7644 §3.7.3).

    By bulkId when the answer has one; else by method and location (the resource path), for
    operations other than POST, in request order; else by position, when the server answered every
    operation and the answer at that position agrees with the operation. An operation left unpaired
    got no answer.
    """
    paired: dict[int, dict] = {}
    by_id = {item["bulkId"]: k for k, item in enumerate(items)}
    rest = []
    for a, answer in enumerate(answers):
        bulk_id = answer.get("bulkId")
        k = by_id.get(bulk_id) if isinstance(bulk_id, str) else None
        if k is not None and k not in paired:
            paired[k] = answer
        else:
            rest.append((a, answer))
    left = []
    for a, answer in rest:
        method, where = str(answer.get("method") or "").upper(), _resource_path(answer.get("location"))
        k = None
        if where and not answer.get("bulkId"):
            k = next((k for k, item in enumerate(items) if k not in paired and item["method"] != "POST"
                      and item["method"] == method and _resource_path(item["path"]) == where), None)
        if k is not None:
            paired[k] = answer
        else:
            left.append((a, answer))
    if len(answers) == len(items):
        for a, answer in left:
            if a not in paired and _consistent(items[a], answer):
                paired[a] = answer
    return paired


def _created_id(answer: dict) -> Optional[str]:
    """The id of the resource a POST answer created: the last segment of its location, else the body's id."""
    location = answer.get("location")
    found = location.rstrip("/").rsplit("/", 1)[-1] if isinstance(location, str) else None
    response = answer.get("response")
    fallback = response.get("id") if isinstance(response, dict) else None
    return found or (fallback if isinstance(fallback, str) and fallback else None)


def _maybe_sent(exc: Exception) -> bool:
    """Whether a failed request may have reached the server (not refused, not a connect timeout)."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return not isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))
    return True


def _field_in(detail: Optional[str]) -> Optional[str]:
    """The attribute a SCIM error detail names, when it quotes one ('userName' ...)."""
    if detail and "'" in detail:
        parts = detail.split("'")
        if len(parts) >= 3:
            return parts[1]
    return None


def build(cfg, dry_run: bool = False) -> Scim2Connector:
    """Build the connector for a configuration entry; the only place its secrets are resolved."""
    from connectors.auth import BearerToken, ClientCredentials
    from connectors.http import build_session
    from models.config import BasicAuth, BearerAuth
    from models.secrets import resolve

    settings: Scim2Settings = cfg.scim2
    session = build_session(settings)
    auth = settings.auth
    if isinstance(auth, BearerAuth):
        session.auth = BearerToken(resolve(auth.token))
    elif isinstance(auth, BasicAuth):
        session.auth = (auth.username, resolve(auth.password))
    else:
        session.auth = ClientCredentials(auth.token_url, auth.client_id, resolve(auth.client_secret),
                                         auth.scope, build_session(settings))
    return Scim2Connector(cfg.name, settings, session, dry_run=dry_run, extra_targets=cfg.attribute_map.extra_targets)
