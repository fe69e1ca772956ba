"""SCIM 2.0 (RFC 7643/7644) connector: payloads with scim2-models, HTTP with requests."""

import json
import logging
from typing import Any, Iterator, Optional

import requests
from pydantic import ValidationError
from scim2_models import Email, Group, GroupMember, Name, PatchOp, PatchOperation, User

from connectors.base import Account, BatchOp, RemoteGroup
from connectors.errors import (AlreadyExists, AuthFailed, ConnectorError, NotFound, Rejected, RateLimited,
                               TransientError, for_status, retry_after_seconds)
from models.config import Scim2Settings

log = logging.getLogger(__name__)
SCIM_JSON = "application/scim+json"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def filter_eq(attribute: str, value: str) -> str:
    """A SCIM `eq` filter whose value is a properly escaped JSON string (RFC 7644 §3.4.2.2)."""
    return f"{attribute} eq {json.dumps(value, ensure_ascii=False)}"


class Scim2Connector:
    supports_groups = True

    def __init__(self, name: str, settings: Scim2Settings, session: requests.Session, dry_run: bool = False):
        self.name = name
        self.settings = settings
        self.session = session
        self.base_url = settings.base_url
        self.dry_run = dry_run
        self._spc: Optional[dict] = None
        self.requests_sent = 0

    # --- the one choke point -------------------------------------------------------------

    def _request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                 _refreshed: bool = False) -> requests.Response | None:
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
        except requests.Timeout as exc:
            raise TransientError(f"{method} {path}: timed out") from exc
        except requests.RequestException as exc:  # refused, reset, or dropped mid-response
            raise TransientError(f"{method} {path}: connection failed ({type(exc).__name__})") from exc
        if response.status_code == 401 and not _refreshed and hasattr(self.session.auth, "refresh"):
            self.session.auth.refresh()  # one token refresh, then it is an auth failure
            return self._request(method, path, json_body=json_body, params=params, _refreshed=True)
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
        return user.model_dump()

    def _from_scim(self, payload: dict) -> Account:
        try:
            user = User.model_validate(payload)
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

    def patch_supported(self) -> bool:
        if self.settings.update_method != "auto":
            return self.settings.update_method == "patch"
        return bool((self.service_provider_config().get("patch") or {}).get("supported"))

    def update_user(self, remote_id: str, changes: dict[str, Any], current: Account) -> Account:
        """Change only the given managed attributes (PATCH when supported, else PUT)."""
        if not changes:
            return current
        if self.patch_supported():
            ops = [PatchOperation[User](op="replace", path=path, value=value)
                   for path, value in _patch_paths(changes).items()]
            response = self._request("PATCH", f"/Users/{remote_id}", json_body=PatchOp[User](operations=ops).model_dump())
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
        """(maxOperations, maxPayloadSize) when the server supports /Bulk, else None."""
        bulk = self.service_provider_config().get("bulk") or {}
        if not bulk.get("supported") or not (bulk.get("maxOperations") or 0) > 0:
            return None
        return int(bulk["maxOperations"]), int(bulk.get("maxPayloadSize") or 1_048_576)

    def apply_batch(self, ops: list[BatchOp], max_workers: int = 1) -> list[Any]:
        """Apply user operations through /Bulk when the server has it, else one call each over a thread pool.

        Results align with `ops`: an Account (create/update), None (done), or the ConnectorError
        that call met (a delete that found nothing is done). Never raises for one op.
        """
        limits = self.bulk_limits()
        if limits is None or (not self.patch_supported() and any(o.kind != "create" and o.kind != "delete"
                                                                 for o in ops)):
            return self._one_by_one(ops, max_workers)
        max_ops, max_bytes = limits
        results: list[Any] = [None] * len(ops)
        chunk: list[tuple[int, dict]] = []
        size = 0
        for index, op in enumerate(ops):
            try:
                item = self._bulk_item(index, op)
            except ConnectorError as exc:
                results[index] = exc
                continue
            item_size = len(json.dumps(item, ensure_ascii=False).encode())
            if chunk and (len(chunk) >= max_ops or size + item_size + 200 > max_bytes):
                self._send_bulk(ops, chunk, results)
                chunk, size = [], 0
            chunk.append((index, item))
            size += item_size + 1
        if chunk:
            self._send_bulk(ops, chunk, results)
        return results

    def _bulk_item(self, index: int, op: BatchOp) -> dict:
        item: dict[str, Any] = {"bulkId": f"op{index}"}
        if op.kind == "create":
            item.update(method="POST", path="/Users", data=self._to_scim(op.account))
        elif op.kind == "delete":
            item.update(method="DELETE", path=f"/Users/{op.remote_id}")
        elif op.kind in ("update", "disable", "enable"):
            changes = op.changes if op.kind == "update" else {"active": op.kind == "enable"}
            patch = PatchOp[User](operations=[PatchOperation[User](op="replace", path=path, value=value)
                                              for path, value in _patch_paths(changes).items()])
            item.update(method="PATCH", path=f"/Users/{op.remote_id}", data=patch.model_dump())
        else:
            raise Rejected(f"unknown batch operation {op.kind!r}")
        return item

    def _send_bulk(self, ops: list[BatchOp], chunk: list[tuple[int, dict]], results: list[Any]) -> None:
        body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
                "Operations": [item for _, item in chunk]}
        try:
            response = self._request("POST", "/Bulk", json_body=body)
        except ConnectorError as exc:  # the whole request failed: so did each of its operations
            for index, _ in chunk:
                results[index] = exc
            return
        if response is None:  # dry-run
            for index, _ in chunk:
                results[index] = ops[index].account if ops[index].kind == "create" else None
            return
        answers = {a.get("bulkId"): a for a in self._json(response).get("Operations") or []}
        for index, item in chunk:
            op, answer = ops[index], answers.get(item["bulkId"])
            if answer is None:
                results[index] = TransientError(f"{item['method']} {item['path']}: no answer in the bulk response")
                continue
            status = int(answer.get("status") or 0)
            if status >= 400:
                error = self._bulk_error(item, status, answer.get("response") or {})
                results[index] = None if isinstance(error, NotFound) and op.kind == "delete" else error
            elif op.kind == "create":
                location = answer.get("location") or ""
                results[index] = op.account.with_id(location.rstrip("/").rsplit("/", 1)[-1] or None)
            else:
                results[index] = None

    def _bulk_error(self, item: dict, status: int, body: dict) -> Exception:
        detail, scim_type = body.get("detail"), body.get("scimType")
        text = (f"{item['method']} {item['path']}: HTTP {status}" + (f" {scim_type}" if scim_type else "")
                + (f": {detail}" if detail else ""))
        if status == 429:
            return RateLimited(text, status=status)
        if status == 404:
            return NotFound(text, status=status)
        if status == 409:
            return AlreadyExists(text, status=status)
        if status in (401, 403):
            return AuthFailed(text, status=status)
        if status in (408, 412) or status >= 500:
            return TransientError(text, status=status)
        return Rejected(text, status=status, field=_field_in(detail))

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
    out = {}
    for key, value in changes.items():
        if key == "email":
            out["emails"] = [{"value": value, "primary": True, "type": "work"}]
        elif key in _PATHS:
            out[_PATHS[key]] = value
    return out


def _set_path(resource: dict, path: str, value: Any) -> None:
    head, _, tail = path.partition(".")
    if tail:
        resource.setdefault(head, {})[tail] = value
    else:
        resource[head] = value


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
    return Scim2Connector(cfg.name, settings, session, dry_run=dry_run)
