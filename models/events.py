"""Identity events: the JSON that the CLI, the HTTP API and Prefect events carry."""

import json
import math
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from models.usernames import normalized
from models.validation import InvalidInput, field_path, invalid, pattern

EVENT_TYPES = ("user.created", "user.updated", "user.deleted", "user.disabled", "user.enabled",
               "user.roles_changed", "user.federated_login")
TRIGGERS = ("api", "console", "self_signup", "jit", "federated_login", "import", "directory")
MAX_EVENT_BYTES = 64 * 1024
MAX_DEPTH = 8

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Email = Annotated[str, StringConstraints(strip_whitespace=True, max_length=320, pattern=pattern(
    r"^[^@\s\"<>(),;:\\]+@[^@\s\"<>(),;:\\]+\.[^@\s\"<>(),;:\\]+$",
    "an email address such as name@example.com: one @, a dot in the domain, "
    "no spaces, quotes, brackets, commas, semicolons, colons or backslashes"))]
# Usernames reach SCIM filters and SOQL (escaped there); control characters never do (models.usernames).
Username = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
UserStore = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=pattern(
    r"^[A-Za-z0-9_.-]+$", "1 to 64 of A-Z a-z 0-9 _ . -"))]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=pattern(
    r"^[A-Za-z0-9_.:@-]+$", "1 to 128 of A-Z a-z 0-9 _ . : @ -"))]
Scalar = Union[str, int, float, bool, None]
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_STORE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class EventUser(BaseModel):
    # Strict: the types are those of the OpenAPI document; `"active": 0` is a sender's bug, not a false.
    model_config = ConfigDict(extra="forbid", strict=True)

    username: Username
    user_store: UserStore = "PRIMARY"
    email: Optional[Email] = None
    given_name: Optional[Text] = None
    family_name: Optional[Text] = None
    display_name: Optional[Text] = None
    active: Optional[bool] = None
    roles: Optional[list[Text]] = Field(default=None, max_length=500)
    groups: Optional[list[Text]] = Field(default=None, max_length=500)
    attributes: Optional[dict[Annotated[str, StringConstraints(max_length=128)], Scalar]] = Field(
        default=None, max_length=100)

    @field_validator("username")
    @classmethod
    def _store_prefix_is_a_user_store(cls, value: str) -> str:
        store, slash, name = value.partition("/")
        if slash and store and name and not _STORE.match(store):
            raise ValueError(f"the user store prefix {store[:70]!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        return normalized(value)

    @model_validator(mode="after")
    def _split_store_prefix(self):
        # WSO2 names secondary-store users "STORE/name": accept that form too.
        if "/" in self.username:
            store, _, name = self.username.partition("/")
            if store and name:
                self.user_store, self.username = store.upper(), name
        return self


class IdentityEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: EventId
    type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    trigger: Literal[TRIGGERS] = "api"  # type: ignore[valid-type]
    idp: Optional[Text] = None
    user: EventUser

    @model_validator(mode="after")
    def _consistent(self):
        if self.type == "user.federated_login":
            if not self.idp:
                raise ValueError("a user.federated_login event needs 'idp'")
            self.trigger = "federated_login"
        if self.trigger == "federated_login" and not self.idp:
            raise ValueError("trigger federated_login needs 'idp'")
        return self


def _unsafe(value: Any) -> list[str]:
    """Problems no schema rule catches: nesting deeper than MAX_DEPTH, and strings or numbers the
    store cannot hold (NUL, unpaired surrogates, NaN/Infinity). Iterative: hostile depth cannot
    exhaust the stack."""
    problems: list[str] = []
    stack: list[tuple[tuple, Any]] = [((), value)]
    while stack and len(problems) < 20:
        loc, node = stack.pop()
        if isinstance(node, (dict, list)):
            if len(loc) >= MAX_DEPTH:
                return [f"(root): nested deeper than {MAX_DEPTH} levels"]
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if isinstance(key, str) and _BAD_CHARS.search(key):
                    problems.append(f"{field_path((*loc, key))}: the key contains a NUL character or an unpaired "
                                    f"surrogate (shown escaped)")
                    continue
                stack.append(((*loc, key), child))
        elif isinstance(node, str) and _BAD_CHARS.search(node):
            problems.append(f"{field_path(loc)}: contains a NUL character or an unpaired surrogate")
        elif isinstance(node, float) and not math.isfinite(node):
            problems.append(f"{field_path(loc)}: must be a finite number")
    return problems


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_event(raw: bytes | str | dict) -> IdentityEvent:
    """Validate an event; raise InvalidInput naming every bad field."""
    if isinstance(raw, (bytes, str)):
        size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
        if size > MAX_EVENT_BYTES:
            raise InvalidInput("event", [f"(root): the event is {size} bytes, more than the limit of {MAX_EVENT_BYTES}"])
        try:
            raw = json.loads(raw, parse_constant=_no_constants)
        except RecursionError:
            raise InvalidInput("event", [f"(root): nested deeper than {MAX_DEPTH} levels"]) from None
        except ValueError as exc:  # also too-long integers, NaN/Infinity, undecodable bytes
            raise InvalidInput("event", [f"(root): not valid JSON ({exc})"]) from None
    if not isinstance(raw, dict):
        raise InvalidInput("event", ["(root): must be a JSON object"])
    problems = _unsafe(raw)
    if problems:
        raise InvalidInput("event", problems)
    try:
        return IdentityEvent.model_validate(raw)
    except ValidationError as exc:
        raise invalid("event", exc) from None
