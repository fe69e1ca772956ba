"""Accounts as Salesforce User records and back; SOQL literals, aliases and freed usernames."""

import re
import unicodedata
from dataclasses import replace
from typing import Any, Optional

from connectors.base import Account

USERNAME_MAX = 80
# Account attribute -> User field. display_name has no writable twin: Name is FirstName + LastName.
FIELDS = {"user_name": "Username", "given_name": "FirstName", "family_name": "LastName", "email": "Email",
          "active": "IsActive", "external_id": "FederationIdentifier"}
BASE_SELECT = ("Id", "Username", "FirstName", "LastName", "Name", "Email", "IsActive", "FederationIdentifier")
_SOQL_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
                 "\f": "\\f"}


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


def to_account(record: dict, extra_fields: tuple[str, ...]) -> Account:
    """A User record as an Account; display_name is Salesforce's computed (read-only) Name."""
    return Account(id=record.get("Id"), user_name=record.get("Username") or "", email=record.get("Email"),
                   given_name=record.get("FirstName"), family_name=record.get("LastName"),
                   display_name=record.get("Name") or None, active=bool(record.get("IsActive")),
                   external_id=record.get("FederationIdentifier"),
                   extra={f: record.get(f) for f in extra_fields})


def create_fields(account: Account, defaults: dict, profile_id: str, extra_fields: tuple[str, ...]) -> dict:
    family = account.family_name or account.user_name.split("@")[0]
    fields = {**defaults,
              "Username": account.user_name, "LastName": family, "Email": account.email or account.user_name,
              "Alias": make_alias(account.given_name, family, account.user_name),
              "ProfileId": profile_id, "IsActive": account.active}
    if account.given_name:
        fields["FirstName"] = account.given_name
    if account.external_id:
        fields["FederationIdentifier"] = account.external_id
    # A mapped field that came out empty is not sent: the target's default stays.
    fields.update({k: v for k, v in account.extra.items() if k in extra_fields and v is not None})
    return fields


def created(account: Account, fields: dict, remote_id: Optional[str]) -> Account:
    """The account a create of `fields` made (Name as Salesforce computes it)."""
    name = " ".join(p for p in (fields.get("FirstName"), fields["LastName"]) if p)
    return replace(account, id=remote_id, family_name=fields["LastName"], email=fields["Email"], display_name=name)


def patch_fields(changes: dict[str, Any]) -> dict:
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


def applied(current: Account, changes: dict[str, Any]) -> Account:
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
