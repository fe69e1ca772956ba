"""One `connectors:` entry: which target, which users (roles, groups, organisation level), how
usernames are made and accounts matched, how users leave (deprovision, orphans), how fast and how
safely it runs (concurrency, quarantine), and its compiled attribute map."""

from typing import Any, Literal, Optional, Union

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from models.config.base import Name, Strict
from models.config.targets import GoogleSettings, HttpSettings, SalesforceSettings, Scim2Settings
from models.mapping import AttributeMap, MappingError, compile_map
from models.patterns import PatternError, parse_pattern
from models.validation import problems_of


class QuarantineBackoff(Strict):
    """How long a quarantined connector waits before the next probe: `initial`, times `factor` per failed probe, capped at `max`."""

    initial: float = Field(default=30.0, ge=0, le=86400)
    max: float = Field(default=900.0, ge=0, le=86400)
    factor: float = Field(default=2.0, ge=1, le=100)

    def after(self, current: float) -> float:
        """The wait after one more failed probe, given the current wait (0 when the quarantine opens)."""
        return min(self.max, current * self.factor if current else self.initial)


class StagedDeprovision(Strict):
    """`deprovision: {first: suspend, then: delete, after_days: 30}`: switch the account off when the
    user leaves scope, and delete it once it has been off (by us) for `after_days`."""

    first: Literal["suspend", "disable"]
    then: Literal["delete"]
    after_days: int = Field(ge=1, le=3650)


class GroupNesting(Strict):
    """How nested groups count (`eng-platform` nested in `engineering`): `flatten` makes a member of
    eng-platform a member of engineering; `direct` counts only the groups a user was put in.

    rules: for the connector's `roles:` rule (met by a role the user holds or a group they are in).
    push: for the members a pushed group gets in the target (SCIM and Google groups).
    """

    rules: Literal["flatten", "direct"] = "flatten"
    push: Literal["flatten", "direct"] = "flatten"


class ConnectorConfig(Strict):
    name: Name
    type: Literal["scim2", "google", "salesforce"]
    enabled: bool = True
    # Target attribute -> local value (see models.mapping); empty: today's fixed attributes only.
    attributes: dict[str, Any] = Field(default_factory=dict)
    organization_level: bool = True
    roles: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    # Overrides the top-level `group_nesting`, key by key (a key left out keeps the top-level value).
    group_nesting: Optional[GroupNesting] = None
    user_store_domain: Optional[str] = None
    pattern: Optional[str] = None
    separator: str = "_"
    domain: Optional[str] = None
    # None: the target's own default (delete for SCIM, suspend for Google, disable for Salesforce).
    # Or staged: {first: suspend|disable, then: delete, after_days: N} (see StagedDeprovision).
    deprovision: Optional[Union[Literal["delete", "disable", "suspend", "none"], StagedDeprovision]] = None
    on_collision: Literal["fail", "suffix"] = "fail"
    # How an unlinked account in the target is recognised as a user's, tried in this order. Email is
    # opt-in: two people can share a mailbox, and an address is reassigned when someone leaves.
    match: list[Literal["external_id", "user_name", "email"]] = Field(
        default_factory=lambda: ["external_id", "user_name"], min_length=1)
    max_concurrency: Optional[int] = Field(default=None, ge=1, le=1000)
    requests_per_second: Optional[float] = Field(default=None, gt=0)
    # Reconciliation: what to do with an account we manage that no desired user wants any more,
    # and how many deletes+disables one run may apply unreviewed (None: min(10% of the target, 50)).
    orphans: Literal["report", "disable", "delete"] = "report"
    max_deletions: Optional[int] = Field(default=None, ge=0)
    # Quarantine the connector after this many consecutive transient failures (an auth failure
    # quarantines at once), so a target that is down is not sent calls that cannot succeed; its
    # operations then wait with growing back-off.
    quarantine_after: int = Field(default=10, ge=1, le=10000)
    quarantine_backoff: QuarantineBackoff = Field(default_factory=QuarantineBackoff)
    scim2: Optional[Scim2Settings] = None
    google: Optional[GoogleSettings] = None
    salesforce: Optional[SalesforceSettings] = None
    _attribute_map: Optional[AttributeMap] = PrivateAttr(default=None)

    @property
    def target_url(self) -> str:
        """The target's address for messages: scheme, host, port and path, never credentials or a query."""
        from urllib.parse import urlsplit

        settings = self.scim2 or self.google or self.salesforce
        url = getattr(settings, "base_url", None) or getattr(settings, "api_base_url", None) or \
            getattr(settings, "login_url", None) or ""
        parts = urlsplit(url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}" if host else ""

    @field_validator("deprovision", mode="before")
    @classmethod
    def _deprovision(cls, value):
        """One message naming the valid choices, whichever form was meant."""
        if value is None or isinstance(value, StagedDeprovision):
            return value
        modes = ("delete", "disable", "suspend", "none")
        if isinstance(value, str) and value in modes:
            return value
        if isinstance(value, dict):
            try:
                return StagedDeprovision.model_validate(value)
            except ValidationError as exc:
                raise ValueError("; ".join(problems_of(exc))) from None
        raise ValueError(f"{value!r} is not one of {', '.join(modes)}, nor "
                         f"{{first: suspend|disable, then: delete, after_days: <days>}}")

    @field_validator("pattern")
    @classmethod
    def _pattern_parses(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                parse_pattern(value)
            except PatternError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _settings_match_type(self):
        for kind in ("scim2", "google", "salesforce"):
            present = getattr(self, kind) is not None
            if kind == self.type and not present:
                raise ValueError(f"a connector of type {kind} needs a '{kind}:' section")
            if kind != self.type and present:
                raise ValueError(f"a '{kind}:' section does not belong on a {self.type} connector")
        self._attribute_map = self._compile_attributes()
        return self

    def _compile_attributes(self) -> AttributeMap:
        mapping = dict(self.attributes)
        if self.salesforce is not None:
            for field, key in self.salesforce.field_map.items():
                alias = f"attributes.{key}"
                if field in mapping and mapping[field] != alias:
                    raise ValueError(f"salesforce.field_map.{field}: also mapped in attributes.{field} "
                                     f"({mapping[field]!r}); keep only the attributes: entry")
                mapping[field] = alias
        try:
            compiled = compile_map(self.type, mapping)
        except MappingError as exc:
            raise ValueError("; ".join(f"attributes.{p}" for p in exc.problems)) from None
        return compiled.with_extra(self._rule_attributes(compiled))

    def _rule_attributes(self, compiled: AttributeMap) -> tuple:
        """The target rules (models.target_rules) as extra attributes of the map."""
        from models.target_rules import ALIASES, LICENCES, PERMISSION_SETS, AliasSource, RuleSource, SetSource

        entries = []
        if self.google is not None and self.google.org_unit is not None:
            if "orgUnitPath" in compiled.extra_targets:
                raise ValueError("attributes.orgUnitPath: also set by google.org_unit; keep only one of them")
            entries.append(("orgUnitPath", RuleSource("google.org_unit", self.google.org_unit)))
        if self.google is not None and self.google.licences:
            entries.append((LICENCES, SetSource("google.licences", tuple(self.google.licences))))
        if self.google is not None and self.google.aliases:
            entries.append((ALIASES, AliasSource("google.aliases", tuple(self.google.aliases))))
        sf = self.salesforce
        if sf is not None:
            for target, rules, key in (("ProfileId", sf.profile_rules, "profile_rules"),
                                       ("UserRoleId", sf.role_rules, "role_rules")):
                if rules is not None:
                    if target in compiled.extra_targets:
                        raise ValueError(f"attributes.{target}: also set by salesforce.{key}; keep only one of them")
                    entries.append((target, RuleSource(f"salesforce.{key}", rules)))
            if sf.permission_sets:
                entries.append((PERMISSION_SETS, SetSource("salesforce.permission_sets", tuple(sf.permission_sets))))
        return tuple(entries)

    @property
    def attribute_map(self) -> AttributeMap:
        """The compiled `attributes:` section (with salesforce.field_map folded in)."""
        if self._attribute_map is None:
            self._attribute_map = self._compile_attributes()
        return self._attribute_map

    @property
    def settings(self) -> HttpSettings:
        return getattr(self, self.type)

    @property
    def deprovision_mode(self) -> str:
        """delete | disable | none; Google's `suspend` is its name for disable."""
        if isinstance(self.deprovision, StagedDeprovision):
            return "disable"  # first; the delete comes from the planner when it is due
        mode = self.deprovision or {"scim2": "delete", "google": "suspend", "salesforce": "disable"}[self.type]
        return "disable" if mode == "suspend" else mode

    @property
    def staged(self) -> Optional[StagedDeprovision]:
        """The suspend-then-delete settings, when deprovisioning is staged."""
        return self.deprovision if isinstance(self.deprovision, StagedDeprovision) else None
