"""Accounts and groups as SCIM resources and back (scim2-models for the core schema, paths for the rest)."""

from typing import Any, Optional

from pydantic import ValidationError
from pydantic.networks import validate_email
from pydantic_core import PydanticCustomError
from scim2_models import Email, Group, Name, User

from connectors.base import Account, RemoteGroup
from connectors.errors import Rejected, TransientError
from models.mapping import ENTERPRISE, as_text

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
_PATHS = {"user_name": "userName", "given_name": "name.givenName", "family_name": "name.familyName",
          "display_name": "displayName", "active": "active", "external_id": "externalId"}


USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


def to_scim(account: Account, extra_targets: tuple[str, ...]) -> dict:
    """The User resource for `account`; Rejected when the SCIM schema refuses a value."""
    body = _plain_user(account) if _plain(account) else _modelled_user(account)
    for target, value in account.extra.items():
        if value is not None and target in extra_targets:
            set_path(body, target, _scim_value(target, value))
    return body


def _plain(account: Account) -> bool:
    """Whether every core value is a string (or absent) and `active` a bool: what scim2-models takes as it is."""
    return type(account.active) is bool and all(
        v is None or type(v) is str for v in (account.user_name, account.external_id, account.given_name,
                                              account.family_name, account.display_name, account.email))


def _plain_user(account: Account) -> dict:
    """The body scim2-models' User dumps for plain values, built as a dict: the model cost ~0.1 ms a user,
    a tenth of a 10,000-user reconciliation's own CPU. The one check it made on plain values is the
    email's, made here with the same validator (pydantic's EmailStr), normalising as it does."""
    body: dict[str, Any] = {"schemas": [USER_SCHEMA]}
    if account.external_id is not None:
        body["externalId"] = account.external_id
    if account.user_name is not None:
        body["userName"] = account.user_name
    if account.given_name or account.family_name:
        body["name"] = {k: v for k, v in (("familyName", account.family_name), ("givenName", account.given_name))
                        if v is not None}
    if account.display_name is not None:
        body["displayName"] = account.display_name
    body["active"] = account.active
    if account.email:
        try:
            email = validate_email(account.email)[1]
        except PydanticCustomError:
            raise Rejected(f"{account.user_name}: the SCIM schema refuses it (Email: value)", field="email") from None
        body["emails"] = [{"value": email, "type": "work", "primary": True}]
    return body


def _modelled_user(account: Account) -> dict:
    """The body through scim2-models' User, for values that are not plain (it refuses or converts them)."""
    try:
        user = User(
            user_name=account.user_name,
            external_id=account.external_id,
            name=Name(given_name=account.given_name, family_name=account.family_name)
            if (account.given_name or account.family_name) else None,
            display_name=account.display_name,
            emails=[Email(value=account.email, primary=True, type="work")] if account.email else None,
            active=account.active,
        )
    except ValidationError as exc:  # e.g. an email address scim2-models refuses: the target would too
        field = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "user"
        raise Rejected(f"{account.user_name}: the SCIM schema refuses it ({exc.title}: {field})",
                       field="email" if exc.title == "Email" else field) from None
    return user.model_dump()


def from_scim(payload: dict, extra_targets: tuple[str, ...]) -> Account:
    """The Account a User resource holds; TransientError when it is not valid SCIM."""
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
        extra={t: _read_path(payload, t) for t in extra_targets},
    )


def group_from_scim(payload: dict) -> RemoteGroup:
    group = Group.model_validate(payload)
    return RemoteGroup(id=group.id, name=group.display_name or "", external_id=group.external_id,
                       member_ids=frozenset(m.value for m in group.members or [] if m.value))


def patch_paths(changes: dict[str, Any]) -> dict[str, Any]:
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


def patch_body(changes: dict[str, Any]) -> dict:
    """A PatchOp replacing each changed attribute. Built as JSON, not with the core User model, which
    refuses extension paths (`urn:...:enterprise:2.0:User:department`)."""
    return {"schemas": [PATCH_OP],
            "Operations": [{"op": "replace", "path": path, "value": value}
                           for path, value in patch_paths(changes).items()]}


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


def set_path(resource: dict, path: str, value: Any) -> None:
    """Set the attribute at `path` (core, dotted or an extension URN) in a SCIM resource."""
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
