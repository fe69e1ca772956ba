"""Identity events: the JSON that the CLI, the HTTP API and Prefect events carry."""

import json
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from models.validation import InvalidInput, invalid

EVENT_TYPES = ("user.created", "user.updated", "user.deleted", "user.disabled", "user.enabled",
               "user.roles_changed", "user.federated_login")
TRIGGERS = ("api", "console", "self_signup", "jit", "federated_login", "import")
MAX_EVENT_BYTES = 64 * 1024
MAX_DEPTH = 8

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Email = Annotated[str, StringConstraints(strip_whitespace=True, max_length=320,
                                         pattern=r"^[^@\s\"<>(),;:\\]+@[^@\s\"<>(),;:\\]+\.[^@\s\"<>(),;:\\]+$")]
# Usernames reach SCIM filters and SOQL (escaped there); control characters never do.
Username = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255,
                                            pattern=r"^[^\x00-\x1f\x7f]+$")]
UserStore = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                             pattern=r"^[A-Za-z0-9_.-]+$")]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]
Scalar = Union[str, int, float, bool, None]


class EventUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

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

    @model_validator(mode="after")
    def _split_store_prefix(self):
        # WSO2 names secondary-store users "STORE/name": accept that form too.
        if "/" in self.username:
            store, _, name = self.username.partition("/")
            if store and name:
                self.user_store, self.username = store.upper(), name
        return self


class IdentityEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

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


def _depth(value: Any, level: int = 0) -> int:
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def parse_event(raw: bytes | str | dict) -> IdentityEvent:
    """Validate an event; raise InvalidInput naming every bad field."""
    if isinstance(raw, (bytes, str)):
        size = len(raw.encode() if isinstance(raw, str) else raw)
        if size > MAX_EVENT_BYTES:
            raise InvalidInput("event", [f"(root): the event is {size} bytes, more than the limit of {MAX_EVENT_BYTES}"])
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput("event", [f"(root): not valid JSON ({exc})"]) from None
    if not isinstance(raw, dict):
        raise InvalidInput("event", ["(root): must be a JSON object"])
    if _depth(raw) > MAX_DEPTH:
        raise InvalidInput("event", [f"(root): nested deeper than {MAX_DEPTH} levels"])
    try:
        return IdentityEvent.model_validate(raw)
    except ValidationError as exc:
        raise invalid("event", exc) from None
