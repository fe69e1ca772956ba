"""Accounts as Google user resources and back, and the addresses Google accepts.

id = Google's user id, user_name = email = primaryEmail, external_id = the externalIds entry of type
"organization", active = not suspended, display_name = name.displayName (else name.fullName).
`email` is not a separate attribute in Google: updates ignore it.

Mapped attributes travel in Account.extra under their target name: `organizations.<field>` is a
field of the primary organization, `phones.<type>` and `relations.<type>` the value of the entry of
that type, `customSchemas.<schema>.<field>` a custom field, `orgUnitPath` itself. PATCH replaces
arrays whole, so an update of one of them starts from the arrays the user has.
"""

import re
import secrets
import unicodedata
from typing import Any, Optional

from connectors.base import Account
from connectors.errors import Rejected
from models.config import GoogleSettings
from models.mapping import as_text
from models.target_rules import ALIASES, LICENCES, set_text

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


def check_address(user_name: str) -> None:
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


def to_account(user: dict, extra_targets: tuple[str, ...]) -> Account:
    name = user.get("name") or {}
    external = next((e.get("value") for e in user.get("externalIds") or []
                     if isinstance(e, dict) and e.get("type") == "organization"), None)
    return Account(id=user.get("id"), user_name=user.get("primaryEmail", ""), email=user.get("primaryEmail"),
                   external_id=external, given_name=name.get("givenName"), family_name=name.get("familyName"),
                   display_name=name.get("displayName") or name.get("fullName") or None,
                   active=not user.get("suspended", False),
                   extra={t: read_mapped(user, t) for t in extra_targets})


def insert_body(account: Account, settings: GoogleSettings, extra_targets: tuple[str, ...]) -> dict:
    body = {
        "primaryEmail": account.user_name,
        "name": {"givenName": account.given_name or settings.default_given_name,
                 "familyName": account.family_name or settings.default_family_name},
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
        if value is not None and target in extra_targets and target not in (LICENCES, ALIASES):  # their own APIs
            write_mapped(body, target, value, {})
    return body


def patch_body(changes: dict[str, Any], settings: GoogleSettings, extra_targets: tuple[str, ...],
               external_ids: Optional[list] = None, current: Optional[dict] = None) -> dict:
    """The PATCH body for `changes`; `current` (the user as Google holds it) keeps the entries of
    arrays we do not manage."""
    body: dict[str, Any] = {}
    name: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "given_name":
            name["givenName"] = value or settings.default_given_name
        elif key == "family_name":
            name["familyName"] = value or settings.default_family_name
        elif key == "display_name":
            name["displayName"] = value
        elif key == "user_name":
            body["primaryEmail"] = value
        elif key == "active":
            body["suspended"] = not value
        elif key == "external_id":
            kept = [e for e in external_ids or [] if isinstance(e, dict) and e.get("type") != "organization"]
            body["externalIds"] = kept + ([{"type": "organization", "value": value}] if value else [])
        elif key.startswith("extra.") and key[len("extra."):] in extra_targets \
                and key not in (f"extra.{LICENCES}", f"extra.{ALIASES}"):
            write_mapped(body, key[len("extra."):], value, current or {})
        # anything else (email is primaryEmail here, user_name) has nothing to change
    if name:
        body["name"] = name
    return body


def needs_current(changes: dict[str, Any]) -> bool:
    """Whether a PATCH of `changes` replaces an array of which it sets only one entry."""
    return any(k == "external_id" or k.split(".", 2)[1:2] in (["organizations"], ["phones"], ["relations"])
               for k in changes)


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
    if target == LICENCES:  # read from the Licensing API (connectors.google.licences)
        return None
    if target == ALIASES:  # the user resource lists its editable aliases (written by connectors.google.aliases)
        return set_text(str(a).lower() for a in user.get("aliases") or [] if a)
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
