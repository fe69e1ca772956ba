"""Target rules: values a connector chooses per user from their roles and attributes.

An admin configures, on a target, rules that the attribute map alone cannot express:

    google:
      org_unit:                        # one value, first match wins, else the default
        rules:
          - {roles: [admins], value: /IT/Admins}
          - {attribute: dept, equals: [Sales, Presales], value: /Sales}
          - {attribute: dept, value: "/Departments/{attributes.dept}"}   # any value of dept
        default: /Staff
      licences:                        # every entry whose roles the user has
        - {roles: [staff], product: Google-Apps, sku: "1010020027"}
      aliases:                         # every entry whose roles the user has (no roles: every user)
        - {value: "{username}@alias.example.com"}           # a template giving one address
        - {roles: [sales], attribute: aliases}               # a list of addresses in the attributes

Each becomes an extra attribute of the connector's attribute map (`RuleSource`, `SetSource`), so
the planner compares it with what the target holds and apply writes it like any mapped field: a
change of the rule's answer is an update, a change in the target is drift. A set (licences) is
compared as canonical text: the sorted entries joined by ", ", or `none` for the empty set, so that
losing the last role removes what the rule granted rather than leaving it alone. Aliases are such a
set too (`AliasSource`), of lower-cased addresses.
"""

from dataclasses import dataclass
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.errors import MappingError
from models.mapping import Source, parse_source

NONE = "none"  # the canonical text of an empty set
LICENCES = "licences"  # the extra attribute of a Google connector's licences (not a user field)
ALIASES = "aliases"  # the extra attribute of a Google connector's email aliases (their own endpoint)
PERMISSION_SETS = "permission_sets"  # a Salesforce connector's PermissionSetAssignment rows, by set name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Rule(_Strict):
    """One rule: a condition on roles or one attribute, and the value it gives."""

    roles: Optional[list[str]] = Field(default=None, min_length=1)  # any of these roles ("*": any user)
    attribute: Optional[str] = Field(default=None, min_length=1, max_length=128)
    # The attribute equals one of these (compared trimmed, without case); absent: it has any value.
    equals: Optional[list[str]] = Field(default=None, min_length=1)
    value: str = Field(min_length=1, max_length=1024)

    @model_validator(mode="before")
    @classmethod
    def _one_equals(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("equals"), (str, int, float)):
            data = {**data, "equals": [str(data["equals"])]}
        return data

    @model_validator(mode="after")
    def _condition(self):
        if (self.roles is None) == (self.attribute is None):
            raise ValueError("a rule names either roles: [...] or attribute: <key>, not "
                             + ("both" if self.roles else "neither"))
        if self.equals is not None and self.attribute is None:
            raise ValueError("equals: goes with attribute:")
        try:
            value_source(self.value)
        except MappingError as exc:
            raise ValueError(f"value {self.value!r}: {exc}") from None
        return self

    def describe(self) -> str:
        if self.roles is not None:
            return "any user" if "*" in self.roles else f"role {' or '.join(self.roles)}"
        if self.equals is None:
            return f"attribute {self.attribute} set"
        return f"attribute {self.attribute} = {' or '.join(self.equals)}"

    def matches(self, roles: frozenset[str], attributes: dict) -> bool:
        if self.roles is not None:
            return "*" in self.roles or bool(roles & set(self.roles))
        got = attributes.get(self.attribute)
        if got is None or (isinstance(got, str) and not got.strip()):
            return False
        if self.equals is None:
            return True
        text = str(got).strip().casefold()
        return any(text == e.strip().casefold() for e in self.equals)


class Rules(_Strict):
    """First match wins; `default` when none matches (none: the target's value is left alone)."""

    rules: list[Rule] = Field(default_factory=list)
    default: Optional[str] = Field(default=None, min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _something(self):
        if not self.rules and self.default is None:
            raise ValueError("give rules: [...], a default:, or both")
        return self

    def literal_values(self) -> list[str]:
        """The values written without placeholders (those `outbound check` can verify exist)."""
        values = [r.value for r in self.rules] + ([self.default] if self.default else [])
        return [v for v in dict.fromkeys(values) if "{" not in v]


class Grant(_Strict):
    """A Google licence (product and SKU) for users with any of `roles` ("*": every user)."""

    roles: list[str] = Field(min_length=1)
    product: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    sku: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="before")
    @classmethod
    def _sku_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("sku"), int):  # 1010020027 unquoted in YAML
            data = {**data, "sku": str(data["sku"])}
        return data

    @property
    def key(self) -> str:
        return f"{self.product}/{self.sku}"


class PermissionSetGrant(_Strict):
    """A Salesforce permission set (its API Name) for users with any of `roles` ("*": every user)."""

    roles: list[str] = Field(min_length=1)
    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")

    @property
    def key(self) -> str:
        return self.name


class AliasRule(_Strict):
    """Email aliases for users with any of `roles` (absent or "*": every user): `value`, a template
    giving one address ("{username}@alias.example.com"; `{UN}` is the username too), or `attribute`,
    a key of the user's attributes holding a list of addresses (or text separated by commas)."""

    roles: Optional[list[str]] = Field(default=None, min_length=1)
    value: Optional[str] = Field(default=None, min_length=3, max_length=320)
    attribute: Optional[str] = Field(default=None, min_length=1, max_length=128, pattern=r"^[^\s{}|]+$")

    @model_validator(mode="after")
    def _one(self):
        if (self.value is None) == (self.attribute is None):
            raise ValueError("an alias entry gives either value: <address template> or attribute: <key>, not "
                             + ("both" if self.value is not None else "neither"))
        if self.value is not None:
            if "{" not in self.value:
                raise ValueError(f"value {self.value!r}: no placeholder, so every user would get the same "
                                 f"alias; write a template such as \"{{username}}@alias.example.com\"")
            if "@" not in self.value:
                raise ValueError(f"value {self.value!r}: not an address template (local@domain)")
            try:
                self._template()
            except MappingError as exc:
                raise ValueError(f"value {self.value!r}: {exc}") from None
        return self

    def _template(self) -> Source:
        return parse_source(self.value.replace("{UN}", "{username}"))

    def describe(self) -> str:
        who = "any user" if self.roles is None or "*" in self.roles else f"role {' or '.join(self.roles)}"
        return f"{who}: " + (self.value if self.value is not None else f"attributes.{self.attribute}")

    def applies(self, roles: frozenset[str]) -> bool:
        return self.roles is None or "*" in self.roles or bool(roles & set(self.roles))

    def addresses(self, local: dict, attributes: dict) -> list[str]:
        """The lower-cased addresses this entry gives one user."""
        if self.value is not None:
            got = self._template().value(local, attributes)
            items = [] if got is None else [got]
        else:
            got = attributes.get(self.attribute)
            items = [] if got is None else got if isinstance(got, (list, tuple, set)) else str(got).split(",")
        return [str(i).strip().lower() for i in items if i is not None and str(i).strip()]


def value_source(text: str) -> Source:
    """A rule's value: literal text, or a template when it holds braces ("/Dept/{attributes.dept}")."""
    if "{" in text or "}" in text:
        return parse_source(text)
    return Source(text=repr(text), constant=text)


def _roles(local: dict) -> frozenset[str]:
    return frozenset(local.get("roles") or ())


@dataclass(frozen=True)
class RuleSource:
    """An attribute map entry whose value is the first matching rule's (see `Rules`)."""

    text: str  # where it is configured: google.org_unit
    rules: Rules

    def choose(self, local: dict, attributes: dict) -> tuple[Optional[str], str]:
        """(the value, which rule gave it) for one user."""
        roles = _roles(local)
        for n, rule in enumerate(self.rules.rules, 1):
            if rule.matches(roles, attributes):
                value = value_source(rule.value).value(local, attributes)
                return value, f"{self.text} rule {n} ({rule.describe()})"
        if self.rules.default is not None:
            return value_source(self.rules.default).value(local, attributes), f"{self.text} default"
        return None, f"{self.text}: no rule matches and there is no default"

    def value(self, local: dict, attributes: dict) -> Optional[str]:
        return self.choose(local, attributes)[0]

    def why(self, local: dict, attributes: dict) -> str:
        return self.choose(local, attributes)[1]


@dataclass(frozen=True)
class SetSource:
    """An attribute map entry whose value is the set of grants whose roles the user has, as text.

    An inactive user holds none: a suspended account keeps no licence seat.
    """

    text: str  # google.licences
    grants: tuple[Grant, ...]

    def chosen(self, local: dict) -> list[tuple[Grant, int]]:
        if local.get("active") is False:
            return []
        roles = _roles(local)
        return [(g, n) for n, g in enumerate(self.grants, 1) if "*" in g.roles or roles & set(g.roles)]

    def value(self, local: dict, attributes: dict) -> str:
        return set_text(g.key for g, _ in self.chosen(local))

    def why(self, local: dict, attributes: dict) -> str:
        chosen = self.chosen(local)
        if local.get("active") is False:
            return f"{self.text}: the user is inactive, so none"
        if not chosen:
            return f"{self.text}: no entry's roles match, so none"
        return f"{self.text} " + ", ".join(f"entry {n} (role {' or '.join(g.roles)})" for g, n in chosen)


def set_text(keys) -> str:
    """A set's canonical text: its entries sorted and joined by ", ", or `none`."""
    keys = sorted(set(keys))
    return ", ".join(keys) if keys else NONE


def set_of(text: Any) -> set[str]:
    """The entries of a set's canonical text."""
    if not isinstance(text, str) or text.strip() in ("", NONE):
        return set()
    return {k.strip() for k in text.split(",") if k.strip()}


@dataclass(frozen=True)
class AliasSource:
    """An attribute map entry whose value is the set of a user's email aliases (see `AliasRule`), as
    text. The primary address itself is never an alias of its own account."""

    text: str  # google.aliases
    rules: tuple[AliasRule, ...]

    def chosen(self, local: dict, attributes: dict) -> list[tuple[int, list[str]]]:
        roles, primary = _roles(local), str(local.get("user_name") or "").lower()
        out = []
        for n, rule in enumerate(self.rules, 1):
            if rule.applies(roles):
                got = [a for a in rule.addresses(local, attributes) if a != primary]
                if got:
                    out.append((n, got))
        return out

    def value(self, local: dict, attributes: dict) -> str:
        return set_text(a for _, got in self.chosen(local, attributes) for a in got)

    def why(self, local: dict, attributes: dict) -> str:
        chosen = self.chosen(local, attributes)
        if not chosen:
            return f"{self.text}: no entry gives this user an address, so none"
        return f"{self.text} " + ", ".join(f"entry {n} ({self.rules[n - 1].describe()})" for n, _ in chosen)
