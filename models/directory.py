"""A directory entry as the identity store sees it: the pure part of an LDAP / Active Directory pull.

No network and no store here: an entry's raw attributes (name -> list of bytes, as the server sent
them) become a `Mapped` user or an `EntryProblem` naming the DN and the attribute; groups are
flattened for the role rules; a mapped user and the stored one become the events between them.
"""

import re
import uuid
from datetime import datetime, timedelta
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Optional

from models.config import LdapSourceSettings
from models.groupgraph import flatten  # the one walk of nested groups; re-exported for the LDAP pull
from models.identity import UserView
from models.usernames import normalized

UAC_ACCOUNTDISABLE = 0x2  # userAccountControl's ACCOUNTDISABLE bit
BINARY_ANCHORS = ("objectguid",)  # 16 bytes on the wire, shown as the UUID AD's tools show
_GENERALIZED_TIME = re.compile(r"^\d{14}(?:[.,]\d+)?Z$")
_PROFILE = ("email", "given_name", "family_name", "display_name")


@dataclass(frozen=True)
class EntryProblem:
    dn: str
    attribute: str
    problem: str

    def __str__(self) -> str:
        return f"{self.dn}: {self.attribute}: {self.problem}"


@dataclass
class Mapped:
    """A user entry, mapped: its anchor, DN, the user's fields and the watermark attribute's value."""

    anchor: str
    dn: str
    user: dict  # EventUser fields, without roles (they come from the groups)
    stamp: Optional[str] = None
    sources: dict = field(default_factory=dict)  # user field -> LDAP attribute it came from

    @cached_property
    def username(self) -> str:
        """The username in NFC, worked out once; ValueError naming a refused character."""
        return normalized(self.user["username"])


_SPACED = re.compile(r"\s[,=]|[,=]\s|^\s|\s$")


def normalized_dn(dn: str) -> str:
    """A DN compared without regard to case or the spaces around its separators."""
    if not _SPACED.search(dn):  # the usual case: what the server sent has no such spaces
        return dn.lower()
    return ",".join("=".join(p.strip() for p in rdn.split("=", 1)) for rdn in dn.split(",")).lower()


def anchor_value(attribute: str, values: list[bytes]) -> str:
    """The anchor as text: objectGUID's 16 bytes (little-endian fields, as AD stores them) as a UUID."""
    raw = values[0]
    if attribute.lower() in BINARY_ANCHORS:
        if len(raw) != 16:
            raise ValueError(f"must be 16 bytes, the server sent {len(raw)}")
        return str(uuid.UUID(bytes_le=raw))
    text = raw.decode("utf-8").strip()
    if not text:
        raise ValueError("is empty")
    if len(text) > 255:
        raise ValueError(f"is {len(text)} characters, more than 255")
    return text


def is_disabled(attrs: dict[str, list[bytes]], settings: LdapSourceSettings) -> bool:
    """AD's userAccountControl bit 2, ppolicy's pwdAccountLockedTime (any value: locked, for now or
    for good), or the configured attribute holding one of its values."""
    uac = attrs.get("useraccountcontrol")
    if uac:
        try:
            if int(uac[0]) & UAC_ACCOUNTDISABLE:
                return True
        except ValueError:
            pass
    if attrs.get("pwdaccountlockedtime"):
        return True
    rule = settings.disabled
    if rule is not None:
        values = [v.decode("utf-8", "replace") for v in attrs.get(rule.attribute.lower(), [])]
        if values and (not rule.values or {v.lower() for v in values} & {r.lower() for r in rule.values}):
            return True
    return False


def requested_attributes(settings: LdapSourceSettings) -> list[str]:
    """What a user search asks for: the mapped attributes, the anchor, the watermark and the
    disabled markers (a server leaves out names its schema does not know)."""
    names = [*settings.attributes, settings.anchor, settings.watermark, "userAccountControl", "pwdAccountLockedTime"]
    if settings.disabled is not None:
        names.append(settings.disabled.attribute)
    return list(dict.fromkeys(names))


def map_entry(dn: str, raw: dict[str, list[bytes]], settings: LdapSourceSettings) -> Mapped | EntryProblem:
    """One user entry: the anchor and username must be there; every value must be UTF-8 text."""
    attrs = {name.lower(): values for name, values in raw.items() if values}
    anchor_values = attrs.get(settings.anchor.lower())
    if not anchor_values:
        return EntryProblem(dn, settings.anchor, "the anchor attribute is missing (is it readable by the bind account?)")
    if len(anchor_values) > 1:
        return EntryProblem(dn, settings.anchor, f"the anchor has {len(anchor_values)} values; it must have one")
    try:
        anchor = anchor_value(settings.anchor, anchor_values)
    except (ValueError, UnicodeDecodeError) as exc:
        return EntryProblem(dn, settings.anchor, f"the anchor {exc}")
    user: dict = {"user_store": settings.user_store, "active": not is_disabled(attrs, settings)}
    extra: dict = {}
    sources: dict = {}
    for attribute, target in settings.attributes.items():
        values = attrs.get(attribute.lower())
        try:
            value = values[0].decode("utf-8").strip() if values else None
        except UnicodeDecodeError:
            return EntryProblem(dn, attribute, "not UTF-8 text (a binary attribute cannot be mapped)")
        if target == "username" and not value:
            return EntryProblem(dn, attribute, "the username attribute is missing or empty")
        if target.startswith("attributes."):
            extra[target.removeprefix("attributes.")] = value or None
        else:
            user[target] = value or None
        sources[target] = attribute
    if extra:
        user["attributes"] = extra
    stamp_values = attrs.get(settings.watermark.lower())
    stamp = stamp_values[0].decode("ascii", "replace") if stamp_values else None
    return Mapped(anchor=anchor, dn=dn, user=user, stamp=stamp, sources=sources)


# --- groups ------------------------------------------------------------------------------

def roles_by_dn(groups: dict[str, set[str]], rules: dict[str, list[str]]) -> dict[str, set[str]]:
    """User DN (normalised) -> the roles the rules give it, through nested groups."""
    roles: dict[str, set[str]] = {}
    for group_dn, names in rules.items():
        for member in flatten(groups, normalized_dn(group_dn)):
            roles.setdefault(member, set()).update(names)
    return roles


# --- watermarks --------------------------------------------------------------------------

def watermark_problem(attribute: str, value: Optional[str], highest_usn: Optional[int] = None) -> Optional[str]:
    """Why a stored watermark cannot be used (the pull is then full), or None."""
    if value is None:
        return "no watermark yet (first pull)"
    if attribute == "modifyTimestamp":
        return None if _GENERALIZED_TIME.match(value) else f"modifyTimestamp watermark {value!r} is not a GeneralizedTime"
    if not value.isdigit():
        return f"uSNChanged watermark {value!r} is not a number"
    if highest_usn is not None and int(value) > highest_usn:
        # Another domain controller (USNs are per DC), or one restored from a backup.
        return f"uSNChanged watermark {value} is above the server's highestCommittedUSN {highest_usn}"
    return None


def changed_filter(user_filter: str, attribute: str, value: str, overlap_seconds: int = 0) -> str:
    """The user filter, narrowed to entries changed since the watermark.

    modifyTimestamp: `>=` the watermark less `overlap_seconds`, because the watermark is the latest
    stamp read, and an entry changed during the previous search after the search had passed it has an
    earlier stamp than some entry read later; entries read again map to no event. uSNChanged needs no
    overlap: its watermark is the highestCommittedUSN read before the search began.
    """
    if attribute == "uSNChanged":
        return f"(&{user_filter}(uSNChanged>={int(value) + 1}))"
    since = datetime.strptime(value[:14], "%Y%m%d%H%M%S") - timedelta(seconds=overlap_seconds)
    return f"(&{user_filter}(modifyTimestamp>={since:%Y%m%d%H%M%S}Z))"


def next_watermark(attribute: str, previous: Optional[str], stamps: Iterable[Optional[str]],
                   highest_usn: Optional[int] = None) -> Optional[str]:
    """modifyTimestamp: the latest one read (GeneralizedTime in UTC sorts as text); uSNChanged: the
    highestCommittedUSN read before the search began."""
    if attribute == "uSNChanged":
        return str(highest_usn) if highest_usn is not None else previous
    latest = max((s for s in stamps if s and _GENERALIZED_TIME.match(s)), default=None)
    return max(filter(None, (previous if previous and _GENERALIZED_TIME.match(previous) else None, latest)),
               default=None)


# --- Active Directory's tombstones -----------------------------------------------------------

def deleted_objects_container(base_dn: str) -> Optional[str]:
    """CN=Deleted Objects of the domain that holds `base_dn` (its trailing DC= components), or None."""
    rdns = [r.strip() for r in base_dn.split(",")]
    domain = []
    for rdn in reversed(rdns):
        if not rdn.lower().startswith("dc="):
            break
        domain.insert(0, rdn)
    return "CN=Deleted Objects," + ",".join(domain) if domain else None


def tombstone_anchors(tombstones: Iterable[tuple[str, dict[str, list[bytes]]]], attribute: str) -> list[str]:
    """The anchors (objectGUID as AD shows it) of tombstones; one without a readable anchor is skipped
    (nothing could have been linked to it)."""
    anchors = []
    for _, raw in tombstones:
        attrs = {name.lower(): values for name, values in raw.items() if values}
        if not any(v.upper() == b"TRUE" for v in attrs.get("isdeleted", ())):
            continue
        try:
            anchors.append(anchor_value(attribute, attrs[attribute.lower()]))
        except (KeyError, ValueError, UnicodeDecodeError):
            continue
    return anchors


# --- events ------------------------------------------------------------------------------

def changes(mapped: Mapped, roles: set[str], stored: Optional[UserView]) -> list[tuple[str, dict]]:
    """(event type, user) pairs that bring the stored user to the entry's state, in order."""
    user = {**mapped.user, "roles": sorted(roles)}
    if stored is None or stored.deleted:
        return [("user.created", user)]
    key = {"username": stored.username, "user_store": stored.user_store}
    events = []
    profile = {name: mapped.user.get(name) for name in _PROFILE if name in mapped.user}
    # A value the directory no longer has is left as stored: an update cannot clear a profile field.
    differs = {n: v for n, v in profile.items() if v is not None and getattr(stored, n) != v}
    attributes = {k: v for k, v in (mapped.user.get("attributes") or {}).items() if stored.attributes.get(k) != v}
    if differs or attributes:
        events.append(("user.updated", {**key, **differs, **({"attributes": attributes} if attributes else {})}))
    if stored.active != mapped.user["active"]:
        events.append(("user.enabled" if mapped.user["active"] else "user.disabled", dict(key)))
    if set(stored.roles) != roles:
        events.append(("user.roles_changed", {**key, "roles": sorted(roles)}))
    return events
