"""Attribute mappings: which local value each target attribute of a connector takes.

A connector's `attributes:` section maps a target attribute (SCIM path or schema URN, Google
field, Salesforce User field) to a local value:

    title: attributes.title                        # the user's free-form attribute `title`
    displayName: "{given_name} {family_name}"      # a template
    "urn:...:enterprise:2.0:User:department": attributes.dept|default:Unassigned
    userType: {constant: Employee}                 # a fixed value

A value is one reference (a local field, or `attributes.<key>`) with optional filters (`|lower`,
`|upper`, `|trim`, `|default:<text>`), a template of such references in braces (`{{` and `}}`
for literal braces; a template whose references are all empty has no value), or
`{constant: <text>}`. A reference is kept as it is (a number stays a
number); a template gives text. A value that comes out empty is "nothing held": the target's
value is left alone, as for any managed attribute we hold no value for.

Each connector type says which targets it knows (`TARGETS`): a few stand for a core managed
field (SCIM displayName is the account's display_name) and replace its default; the others are
carried in `Account.extra` under the target's name, compared by the planner and written by the
connector. Targets the engine itself owns (the username, externalId, active) cannot be mapped.
"""

import re
import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Union

from models.errors import MappingError

# What a value may refer to: the user as the store holds it, plus `user_name`, the account's
# username on this connector (after the naming pattern).
LOCAL_FIELDS = ("id", "username", "user_store", "tenant", "user_name", "email", "given_name", "family_name",
                "display_name")
FILTERS = ("lower", "upper", "trim", "default")
ATTRIBUTE_KEY = re.compile(r"^[^\s{}|]{1,128}$")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
ENTERPRISE_ATTRIBUTES = ("employeeNumber", "costCenter", "organization", "division", "department", "manager")
SCIM_CORE = "urn:ietf:params:scim:schemas:core:2.0:User"

# Per connector type: target -> the core account field it sets (None: an extra attribute).
SCIM_TARGETS: dict[str, Optional[str]] = {
    "displayName": "display_name", "name.givenName": "given_name", "name.familyName": "family_name",
    "emails": "email",
    **{t: None for t in ("title", "nickName", "profileUrl", "userType", "preferredLanguage", "locale", "timezone",
                         "name.middleName", "name.honorificPrefix", "name.honorificSuffix", "name.formatted",
                         "phoneNumbers")},
    **{f"{ENTERPRISE}:{a}": None for a in ENTERPRISE_ATTRIBUTES},
}
GOOGLE_ORGANIZATION = ("department", "title", "costCenter", "description", "location", "name")
GOOGLE_PHONE_TYPES = ("work", "home", "mobile", "work_mobile", "work_fax", "home_fax", "pager", "main", "other")
GOOGLE_RELATION_TYPES = ("manager", "assistant", "dotted_line_manager", "admin_assistant", "exec_assistant")
GOOGLE_TARGETS: dict[str, Optional[str]] = {
    "name.givenName": "given_name", "name.familyName": "family_name", "name.displayName": "display_name",
    "orgUnitPath": None,
    **{f"organizations.{f}": None for f in GOOGLE_ORGANIZATION},
    **{f"phones.{t}": None for t in GOOGLE_PHONE_TYPES},
    **{f"relations.{t}": None for t in GOOGLE_RELATION_TYPES},
}
SALESFORCE_TARGETS: dict[str, Optional[str]] = {"FirstName": "given_name", "LastName": "family_name",
                                                "Email": "email"}
# Targets the engine owns: naming, linking and enabling are not a mapping's business.
OWNED = {
    "scim2": {"userName": "the username comes from the connector's pattern", "externalId": "it links accounts",
              "active": "it follows the user's state", "id": "the server assigns it", "password": "never sent"},
    "google": {"primaryEmail": "the username comes from the connector's pattern", "externalIds": "it links accounts",
               "suspended": "it follows the user's state", "password": "never sent", "id": "Google assigns it",
               "name.fullName": "Google computes it"},
    "salesforce": {"Username": "the username comes from the connector's pattern",
                   "FederationIdentifier": "it links accounts", "IsActive": "it follows the user's state",
                   "Id": "Salesforce assigns it", "Name": "Salesforce computes it from FirstName and LastName",
                   "ProfileId": "it comes from salesforce.profile or salesforce.profile_rules"},
}
# `manager:` names the local manager (a username or user id); the planner sends, in this target
# attribute, what the target knows the manager's account by (see tasks.managers).
MANAGER = "manager"
MANAGER_TARGETS = {"scim2": f"{ENTERPRISE}:manager", "google": "relations.manager", "salesforce": "ManagerId"}
_URN_TARGET = re.compile(r"^(urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:\S+):([A-Za-z][A-Za-z0-9_$-]*)$")
_GOOGLE_CUSTOM = re.compile(r"^customSchemas\.([A-Za-z][A-Za-z0-9_]{0,99})\.([A-Za-z][A-Za-z0-9_]{0,99})$")
_SALESFORCE_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")


@dataclass(frozen=True)
class Ref:
    """One reference with its filters: `attributes.dept|lower|default:none`."""

    field: str  # a LOCAL_FIELDS name, or attributes.<key>
    filters: tuple[tuple[str, Optional[str]], ...] = ()

    def value(self, local: dict, attributes: dict) -> Any:
        if self.field.startswith("attributes."):
            value = attributes.get(self.field[len("attributes."):])
        else:
            value = local.get(self.field)
        for name, arg in self.filters:
            if name == "default":
                value = arg if value is None or (isinstance(value, str) and not value.strip()) else value
            elif isinstance(value, str):
                value = value.lower() if name == "lower" else value.upper() if name == "upper" else value.strip()
        return value


@dataclass(frozen=True)
class Source:
    """A compiled local value: a constant, one reference, or a template (text and references)."""

    text: str  # as written, for messages and `explain`
    constant: Any = None
    ref: Optional[Ref] = None
    parts: tuple[Union[str, Ref], ...] = ()

    def why(self, local: dict, attributes: dict) -> str:
        """Where the value comes from, for `explain`."""
        return self.text

    def value(self, local: dict, attributes: dict) -> Any:
        if self.ref is not None:
            value = self.ref.value(local, attributes)
        elif self.parts:
            texts = [p if isinstance(p, str) else _text(p.value(local, attributes)) for p in self.parts]
            filled = any(t.strip() for p, t in zip(self.parts, texts) if not isinstance(p, str))
            rendered = "".join(texts)
            # Nothing to fill the template with is no value (not "CC-"); no stray spaces from missing parts.
            value = " ".join(rendered.split()) if filled or not any(isinstance(p, Ref) for p in self.parts) else None
        else:
            value = self.constant
        if value == "" or (isinstance(value, str) and not value.strip()):
            return None
        return value


def as_text(value: Any) -> Any:
    """A value for a string attribute: numbers and flags as text (True as "true"); None stays None."""
    return None if value is None else _text(value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_ref(expr: str) -> Ref:
    field, *filters = [p.strip() for p in expr.split("|")]
    if field.startswith("attributes."):
        key = field[len("attributes."):]
        if not ATTRIBUTE_KEY.match(key):
            raise MappingError(f"{field!r} needs a key after 'attributes.' (no spaces, braces or |)")
    elif field not in LOCAL_FIELDS:
        raise MappingError(f"unknown local value {field!r}; use one of {', '.join(LOCAL_FIELDS)}, "
                           f"attributes.<key>, a template such as \"{{given_name}} {{family_name}}\", "
                           f"or {{constant: <text>}}")
    parsed = []
    for f in filters:
        name, colon, arg = f.partition(":")
        if name not in FILTERS or (name == "default") != bool(colon):
            raise MappingError(f"unknown filter {f!r} on {field!r}; use lower, upper, trim or default:<text>")
        parsed.append((name, arg if colon else None))
    return Ref(field, tuple(parsed))


def parse_source(value: Any) -> Source:
    """Compile one mapping value; raise MappingError saying what is wrong with it."""
    if isinstance(value, dict):
        if set(value) != {"constant"} or not isinstance(value["constant"], (str, int, float, bool)):
            raise MappingError("a constant is written {constant: <text, number or true/false>}")
        return Source(text=f"constant {value['constant']!r}", constant=value["constant"])
    if not isinstance(value, str) or not value.strip():
        raise MappingError("must be a local value (text) or {constant: <text>}")
    if "{" not in value and "}" not in value:
        return Source(text=value, ref=parse_ref(value))
    parts: list[Union[str, Ref]] = []
    at = 0
    for m in _PLACEHOLDER.finditer(value):
        parts.append(value[at:m.start()])
        token = m.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        elif m.group(1) is None:
            raise MappingError(f"template {value!r}: unmatched {token!r} at position {m.start()} "
                               f"(write {token * 2} for a literal brace)")
        elif not m.group(1).strip():
            raise MappingError(f"template {value!r}: empty placeholder {{}}")
        else:
            parts.append(parse_ref(m.group(1)))
        at = m.end()
    parts.append(value[at:])
    return Source(text=value, parts=tuple(p for p in parts if p != ""))


def check_target(kind: str, target: str) -> Optional[str]:
    """The core account field `target` sets on a connector of type `kind` (None: an extra attribute).

    Raise MappingError naming the target and the valid ones when the connector cannot have it.
    """
    owned = OWNED[kind].get(target)
    if owned:
        raise MappingError(f"{target!r} cannot be mapped: {owned}")
    if kind == "scim2":
        if target in SCIM_TARGETS:
            return SCIM_TARGETS[target]
        m = _URN_TARGET.match(target)
        if m and m.group(1) == ENTERPRISE:
            raise MappingError(f"{target!r}: the enterprise extension has no attribute {m.group(2)!r}; "
                               f"valid: {', '.join(ENTERPRISE_ATTRIBUTES)}")
        if m and m.group(1) != SCIM_CORE:
            return None  # a custom schema's attribute: the server's /Schemas decide (outbound check)
        core = [t for t in SCIM_TARGETS if not t.startswith("urn:")]
        raise MappingError(f"unknown SCIM attribute {target!r}; valid: {', '.join(core)}, "
                           f"{ENTERPRISE}:<{'|'.join(ENTERPRISE_ATTRIBUTES)}>, or <schema URN>:<attribute> "
                           f"of an extension the server advertises")
    if kind == "google":
        if target in GOOGLE_TARGETS:
            return GOOGLE_TARGETS[target]
        if _GOOGLE_CUSTOM.match(target):
            return None
        raise MappingError(f"unknown Google user field {target!r}; valid: {', '.join(GOOGLE_TARGETS)}, or "
                           f"customSchemas.<schema>.<field>")
    if target in SALESFORCE_TARGETS:
        return SALESFORCE_TARGETS[target]
    if _SALESFORCE_FIELD.match(target):
        return None  # any User field, custom ones (Department__c) included: Salesforce decides
    raise MappingError(f"{target!r} is not a Salesforce field name (letters, digits and _, such as "
                       f"Department or Cost_Center__c)")


@dataclass(frozen=True)
class AttributeMap:
    """A connector's compiled mapping: core overrides and extra attributes, each with its source."""

    core: tuple[tuple[str, str, Source], ...] = ()  # (account field, target, source)
    extra: tuple[tuple[str, Source], ...] = ()  # (target, source)
    manager: Optional[Source] = None  # the local manager's username or id (`manager:`)
    manager_target: Optional[str] = None  # where the manager's account goes (MANAGER_TARGETS)

    @property
    def extra_targets(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.extra) + ((self.manager_target,) if self.manager_target else ())

    def __bool__(self) -> bool:
        return bool(self.core or self.extra or self.manager)

    def evaluate(self, local: dict, attributes: dict) -> tuple[dict[str, Any], dict[str, Any]]:
        """(core field -> value, extra target -> value) for one user."""
        core = {f: s.value(local, attributes) for f, _, s in self.core}
        return core, {t: s.value(local, attributes) for t, s in self.extra}

    def explain(self, local: Optional[dict] = None, attributes: Optional[dict] = None) -> list[str]:
        """One line per mapping, `target ← source`, for operators; with a user's values, `= value` too."""
        pairs = [(t, s) for _, t, s in self.core] + list(self.extra)
        if self.manager is not None:
            pairs.append((f"{self.manager_target} (the manager's account, by {MANAGER})", self.manager))
        if local is None:
            return [f"{t} ← {s.text}" for t, s in pairs]
        values = [(s.why(local, attributes or {}), s.value(local, attributes or {})) for _, s in pairs]
        return [f"{t} ← {why} = " + ("(nothing: the target's value is left alone)" if v is None else repr(v))
                for (t, s), (why, v) in zip(pairs, values)]

    def with_extra(self, entries: tuple) -> "AttributeMap":
        """This map with more extra attributes (target rules: `models.target_rules`)."""
        return dataclasses.replace(self, extra=self.extra + tuple(entries))


def local_values(user: Any, user_name: Optional[str]) -> dict[str, Any]:
    """The local fields a mapping may refer to, from a user as the policy sees it (with the roles and
    state that target rules read)."""
    return {"id": user.id, "username": user.username, "user_store": user.user_store, "tenant": user.tenant,
            "user_name": user_name, "email": user.email, "given_name": user.given_name,
            "family_name": user.family_name, "display_name": user.display_name,
            "roles": frozenset(user.roles), "active": user.active}


def compile_map(kind: str, attributes: dict[str, Any]) -> AttributeMap:
    """Compile a connector's `attributes:` section; raise MappingError naming every bad entry."""
    problems, core, extra, seen = [], [], [], {}
    manager = None
    for target, value in attributes.items():
        if target == MANAGER:
            try:
                manager = parse_source(value)
            except MappingError as exc:
                problems.append(f"{target}: {exc} (got {value!r})")
            if MANAGER_TARGETS[kind] in attributes:
                problems.append(f"{MANAGER_TARGETS[kind]}: {MANAGER} already sets it from the local manager; "
                                f"map only one of them")
            continue
        try:
            field = check_target(kind, target)
            source = parse_source(value)
        except MappingError as exc:
            problems.append(f"{target}: {exc} (got {value!r})")
            continue
        if field is None:
            extra.append((target, source))
        elif field in seen:
            problems.append(f"{target}: sets {field} as {seen[field]!r} does; map only one of them")
        else:
            seen[field] = target
            core.append((field, target, source))
    if problems:
        raise MappingError("; ".join(problems), problems)
    return AttributeMap(tuple(core), tuple(extra), manager, MANAGER_TARGETS[kind] if manager else None)
