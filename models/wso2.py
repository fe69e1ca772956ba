"""WSO2 Identity Server 7 and Asgardeo webhooks, read into this engine's identity events.

A webhook body is a Security Event Token (RFC 8417): `{iss, jti, iat, rci, events: {<event-type
URI>: {...}}}`, `iat` in milliseconds. Each event type this engine provisions from becomes one or
more identity events (the dicts `models.events.parse_event` validates); any other type is ignored
and said so. What each one becomes (docs/sources.md has the same table):

    user/event-type/userCreated              user.created    trigger by initiatorType, or jit
    registration/event-type/registrationSuccess  user.created  (ADMIN console, APPLICATION api,
                                                             USER self_signup; a user created in a
                                                             `jit_user_stores` store: jit + its IdP)
    user/event-type/userProfileUpdated       user.updated    added and updated claims; removed
                                                             attributes.* emptied
    user/event-type/userDeleted | userDisabled | userEnabled    user.deleted | disabled | enabled
    login/event-type/loginSuccess            user.federated_login when an authenticationMethods
                                             entry is in `federated_authenticators`; else ignored
    role/event-type/roleUsersUpdated, roleCreated   user.roles_changed per user added or removed

Later events name the user by WSO2's user id (a profile update carries no username), so the id of
every user created is linked to the local user (`links`) and looked up through a `Directory`.
Claims become user fields and `attributes.*` through WSO2's default claim dialect (DEFAULT_CLAIMS),
which the configuration extends. The user store is the user's `{UD}`; the tenant must be this
engine's `tenant_domain` (its `{TD}`).
"""

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.validation import InvalidInput, invalid, pattern

EVENT_BASE = "https://schemas.identity.wso2.org/events/"
USER_CREATED = "user/event-type/userCreated"
REGISTRATION_SUCCESS = "registration/event-type/registrationSuccess"
PROFILE_UPDATED = "user/event-type/userProfileUpdated"
USER_DELETED = "user/event-type/userDeleted"
USER_DISABLED = "user/event-type/userDisabled"
USER_ENABLED = "user/event-type/userEnabled"
LOGIN_SUCCESS = "login/event-type/loginSuccess"
ROLE_USERS_UPDATED = "role/event-type/roleUsersUpdated"
ROLE_CREATED = "role/event-type/roleCreated"

USERNAME_CLAIM = "http://wso2.org/claims/username"
# WSO2's default claim dialect (http://wso2.org/claims): claim URI -> user field or attributes.<key>.
DEFAULT_CLAIMS = {
    USERNAME_CLAIM: "username",
    "http://wso2.org/claims/emailaddress": "email",
    "http://wso2.org/claims/givenname": "given_name",
    "http://wso2.org/claims/lastname": "family_name",
    "http://wso2.org/claims/displayName": "display_name",
    "http://wso2.org/claims/emailAddresses": "attributes.email_addresses",
    "http://wso2.org/claims/organization": "attributes.organization",
    "http://wso2.org/claims/department": "attributes.department",
    "http://wso2.org/claims/title": "attributes.title",
    "http://wso2.org/claims/telephone": "attributes.telephone",
    "http://wso2.org/claims/mobile": "attributes.mobile",
    "http://wso2.org/claims/country": "attributes.country",
    "http://wso2.org/claims/locality": "attributes.locality",
    "http://wso2.org/claims/employeeNumber": "attributes.employee_number",
}
USER_FIELDS = ("username", "email", "given_name", "family_name", "display_name")
TRIGGER_OF_INITIATOR = {"ADMIN": "console", "APPLICATION": "api", "USER": "self_signup"}


def claim_target_problem(target: str) -> Optional[str]:
    """Why `target` cannot receive a claim (None when it can): a user field, `attributes.<key>` or ""."""
    if target == "" or target in USER_FIELDS:
        return None
    key = target.removeprefix("attributes.")
    if target.startswith("attributes.") and 0 < len(key) <= 128:
        return None
    return f"must be one of {', '.join(USER_FIELDS)}, attributes.<key> or \"\" (got {target[:80]!r})"


class MalformedWebhook(InvalidInput):
    """The body is not a WSO2 webhook this engine can read (the field named): a 400, not a 422."""

    def __init__(self, problems: list[str]):
        super().__init__("webhook", problems)


def local_name(user_store: str, username: str) -> tuple[str, str]:
    """The (user store, username) the identity store keys a WSO2 user by, as models.events reads an
    event's: WSO2's `STORE/name` form split, the name in NFC."""
    username = username.strip()
    store, slash, name = username.partition("/")
    if slash and store and name:
        user_store, username = store, name
    return user_store.upper(), unicodedata.normalize("NFC", username)


# --- the payload -----------------------------------------------------------------------------
# Lenient about what this engine does not read (WSO2 adds fields between releases), strict about
# what it does.

class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


ClaimValue = Union[str, int, float, bool, list[Union[str, int, float, bool]], None]


class Claim(_Loose):
    uri: str = Field(min_length=1, max_length=255)
    value: ClaimValue = None


class Named(_Loose):
    id: Optional[str] = None
    name: Optional[str] = Field(default=None, max_length=255)


class WUser(_Loose):
    id: Optional[str] = Field(default=None, max_length=255)
    userStoreDomain: Optional[str] = Field(default=None, max_length=64)  # in role events
    claims: list[Claim] = Field(default_factory=list, max_length=200)
    addedClaims: list[Claim] = Field(default_factory=list, max_length=200)
    updatedClaims: list[Claim] = Field(default_factory=list, max_length=200)
    removedClaims: list[Claim] = Field(default_factory=list, max_length=200)


class WRole(_Loose):
    id: Optional[str] = None
    name: Optional[str] = Field(default=None, min_length=1, max_length=255)
    users: list[WUser] = Field(default_factory=list, max_length=1000)
    addedUsers: list[WUser] = Field(default_factory=list, max_length=1000)
    removedUsers: list[WUser] = Field(default_factory=list, max_length=1000)


class EventData(_Loose):
    initiatorType: Optional[str] = None
    action: Optional[str] = None
    user: Optional[WUser] = None
    tenant: Optional[Named] = None
    userStore: Optional[Named] = None
    authenticationMethods: list[str] = Field(default_factory=list)
    role: Optional[WRole] = None


Jti = Field(min_length=1, max_length=100, pattern=pattern(r"^[A-Za-z0-9_.:-]+$", "1 to 100 of A-Z a-z 0-9 _ . : -"))


class Webhook(_Loose):
    iss: str = Field(min_length=1, max_length=1024)
    jti: str = Jti
    iat: int = Field(ge=0)  # milliseconds since the epoch
    rci: Optional[str] = None
    events: dict[str, dict[str, Any]] = Field(min_length=1, max_length=20)


def parse_webhook(raw: bytes) -> Webhook:
    """The webhook's SET; InvalidInput naming the field when it is not one."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # also undecodable bytes
        raise MalformedWebhook([f"(root): not valid JSON ({exc})"]) from None
    if not isinstance(data, dict):
        raise MalformedWebhook(["(root): must be a JSON object {iss, jti, iat, events}"])
    try:
        return Webhook.model_validate(data)
    except ValidationError as exc:
        raise MalformedWebhook(invalid("webhook", exc).problems) from None


# --- the mapping -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Known:
    """A local user as the mapping needs it."""

    user_store: str
    username: str
    roles: frozenset[str] = frozenset()


class Directory(Protocol):
    def find(self, remote_id: Optional[str], user_store: Optional[str], username: Optional[str]) -> Optional[Known]:
        """The local user WSO2's `remote_id` was linked to, else the one with that store and username."""


@dataclass
class Mapped:
    events: list[dict] = field(default_factory=list)  # identity events, for models.events.parse_event
    links: list[tuple[str, str, str]] = field(default_factory=list)  # (WSO2 user id, user store, username)
    ignored: list[str] = field(default_factory=list)  # what was left out, and why


def _text(value: ClaimValue) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or None
    return str(value).strip() or None


class _Reader:
    """One webhook's events, read with one configuration."""

    def __init__(self, hook: Webhook, settings, tenant_domain: str, directory: Directory):
        self.hook, self.settings, self.tenant_domain, self.directory = hook, settings, tenant_domain, directory
        self.claims = {**DEFAULT_CLAIMS, **settings.claims}
        self.out, self.problems = Mapped(), []
        self.roles: dict[tuple[str, str], set[str]] = {}  # roles as this webhook leaves them, per user

    # helpers

    def fields(self, claims: list[Claim], removed: list[Claim] = ()) -> dict:
        """User fields and attributes from claims (a removed claim empties its attribute)."""
        user: dict[str, Any] = {}
        attributes: dict[str, Any] = {}
        for claim, value in [*((c, _text(c.value)) for c in claims), *((c, None) for c in removed)]:
            target = self.claims.get(claim.uri, "")
            if target.startswith("attributes."):
                attributes[target.removeprefix("attributes.")] = value
            elif target and value is not None:
                user[target] = value
        if attributes:
            user["attributes"] = attributes
        return user

    def store_of(self, data: EventData, wuser: Optional[WUser] = None) -> str:
        name = (wuser.userStoreDomain if wuser else None) or (data.userStore.name if data.userStore else None)
        return (name or "PRIMARY").upper()

    def trigger_of(self, data: EventData) -> str:
        return TRIGGER_OF_INITIATOR.get((data.initiatorType or "").upper(), "api")

    def jit_idp(self, store: str) -> Optional[str]:
        return next((idp for name, idp in self.settings.jit_user_stores.items() if name.upper() == store), None)

    def known(self, wuser: Optional[WUser], store: str) -> Optional[Known]:
        if wuser is None:
            return None
        username = _text(next((c.value for c in wuser.claims if c.uri == USERNAME_CLAIM), None))
        return self.directory.find(wuser.id, store, username)

    def emit(self, type_: str, trigger: str, user: dict, idp: Optional[str] = None) -> None:
        event = {"type": type_, "trigger": trigger, "user": user}
        if idp:
            event["idp"] = idp
        self.out.events.append(event)

    # event types

    def created(self, where: str, data: EventData) -> None:
        user = self.fields(data.user.claims if data.user else [])
        if "username" not in user:
            self.problems.append(f"{where}.user.claims: no {USERNAME_CLAIM} claim: the user cannot be named")
            return
        store = self.store_of(data)
        idp = self.jit_idp(store)
        self.emit("user.created", "jit" if idp else self.trigger_of(data), {**user, "user_store": store}, idp)
        if data.user and data.user.id:
            self.out.links.append((data.user.id, *local_name(store, user["username"])))

    def updated(self, where: str, data: EventData) -> None:
        known = self.known(data.user, self.store_of(data))
        if known is None:
            self.out.ignored.append(f"{where}: user {data.user.id if data.user else None!r} is not in the store")
            return
        change = self.fields([*data.user.addedClaims, *data.user.updatedClaims], data.user.removedClaims)
        change.pop("username", None)  # a rename is not followed: the username is the account's key
        if not change:
            self.out.ignored.append(f"{where}: no claim this engine maps changed")
            return
        self.emit("user.updated", self.trigger_of(data), {**change, "username": known.username,
                                                          "user_store": known.user_store})

    def status(self, type_: str):
        def handle(where: str, data: EventData) -> None:
            known = self.known(data.user, self.store_of(data))
            if known is None:
                self.out.ignored.append(f"{where}: user {data.user.id if data.user else None!r} is not in the store")
                return
            self.emit(type_, self.trigger_of(data), {"username": known.username, "user_store": known.user_store})
        return handle

    def login(self, where: str, data: EventData) -> None:
        idp = next((self.settings.federated_authenticators[m] for m in data.authenticationMethods
                    if m in self.settings.federated_authenticators), None)
        if idp is None:
            self.out.ignored.append(f"{where}: not through a federated authenticator listed in "
                                    f"sources.wso2.federated_authenticators ({', '.join(data.authenticationMethods)})")
            return
        store = self.store_of(data)
        user = self.fields(data.user.claims if data.user else [])
        known = self.known(data.user, store)
        if known is not None:
            user.update(username=known.username, user_store=known.user_store)
        elif "username" not in user:
            self.problems.append(f"{where}.user.claims: no {USERNAME_CLAIM} claim: the user cannot be named")
            return
        else:
            user["user_store"] = store
            if data.user and data.user.id:
                self.out.links.append((data.user.id, *local_name(store, user["username"])))
        self.emit("user.federated_login", "federated_login", user, idp)

    def role_users(self, where: str, data: EventData) -> None:
        role = data.role
        if role is None or not role.name:
            self.problems.append(f"{where}.role.name: required field is missing")
            return
        changes = [(u, True) for u in (*role.users, *role.addedUsers)] + [(u, False) for u in role.removedUsers]
        for wuser, added in changes:
            known = self.known(wuser, self.store_of(data, wuser))
            if known is None:
                self.out.ignored.append(f"{where}: user {wuser.id!r} ({'added to' if added else 'removed from'} "
                                        f"{role.name!r}) is not in the store")
                continue
            key = (known.user_store, known.username)
            roles = self.roles.setdefault(key, set(known.roles))
            (roles.add if added else roles.discard)(role.name)
            self.emit("user.roles_changed", self.trigger_of(data),
                      {"username": known.username, "user_store": known.user_store, "roles": sorted(roles)})

    def read(self) -> Mapped:
        handlers = {USER_CREATED: self.created, REGISTRATION_SUCCESS: self.created, PROFILE_UPDATED: self.updated,
                    USER_DELETED: self.status("user.deleted"), USER_DISABLED: self.status("user.disabled"),
                    USER_ENABLED: self.status("user.enabled"), LOGIN_SUCCESS: self.login,
                    ROLE_USERS_UPDATED: self.role_users, ROLE_CREATED: self.role_users}
        for uri, body in self.hook.events.items():
            handler = handlers.get(uri.removeprefix(EVENT_BASE)) if uri.startswith(EVENT_BASE) else None
            where = f"events.{uri}"
            if handler is None:
                self.out.ignored.append(f"{where}: not an event type this engine provisions from")
                continue
            try:
                data = EventData.model_validate(body)
            except ValidationError as exc:
                self.problems += [f"{where}.{p}" for p in invalid("webhook", exc).problems]
                continue
            tenant = data.tenant.name if data.tenant else None
            if tenant is not None and tenant.lower() != self.tenant_domain.lower():
                self.problems.append(f"{where}.tenant.name: {tenant[:80]!r} is not this engine's tenant_domain "
                                     f"{self.tenant_domain!r}")
                continue
            handler(where, data)
        if self.problems:
            raise MalformedWebhook(self.problems)
        events = self.out.events
        for n, event in enumerate(events, 1):
            event["id"] = f"wso2-{self.hook.jti}" + (f"-{n}" if len(events) > 1 else "")
        return self.out


def to_events(hook: Webhook, settings, tenant_domain: str, directory: Directory) -> Mapped:
    """The identity events a webhook stands for; MalformedWebhook (naming the field) when it cannot be read."""
    return _Reader(hook, settings, tenant_domain, directory).read()
