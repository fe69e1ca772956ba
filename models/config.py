"""The configuration file (YAML), validated by pydantic.

Looked up as `--config PATH`, else `$OUTBOUND_CONFIG`, else `./outbound.yaml`. Secrets inside are
references (see `models.secrets`), resolved only when a connector is built.
"""

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from models.mapping import AttributeMap, MappingError, compile_map
from models.patterns import PatternError, parse_pattern
from models.secrets import SecretRef
from models.target_rules import AliasRule, Grant, PermissionSetGrant, Rules
from models.usernames import WSO2_DEFAULT_PATTERN, WSO2_DEFAULT_WORDS, UsernameRule
from models.validation import InvalidInput, field_path, pattern, problems_of
from models.wso2 import claim_target_problem

ORG_TRIGGERS = ("api", "console", "self_signup", "jit", "directory", "scim")
DEFAULT_CONFIG_FILE = "outbound.yaml"

Name = Annotated[str, Field(pattern=pattern(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                                            "1 to 64 of A-Z a-z 0-9 _ . -, starting with a letter or digit"))]
StoreName = Annotated[str, Field(pattern=pattern(r"^[A-Za-z0-9_.-]{1,64}$", "1 to 64 of A-Z a-z 0-9 _ . -"))]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_insecure_http: bool) -> str:
    """Accept https everywhere, http only on loopback unless explicitly allowed."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http(s) URL")
    if "@" in parsed.netloc:  # credentials in a URL end up in logs: they belong in `auth`, as references
        raise ValueError("must not hold credentials (user:password@); use a secret reference instead")
    if parsed.scheme == "http" and not allow_insecure_http and not _is_loopback(parsed.hostname):
        raise ValueError("plain http:// is only accepted for loopback addresses "
                         "(set allow_insecure_http: true to override)")
    return url.rstrip("/")


def _checked(field: str, url: str, allow_insecure_http: bool) -> str:
    """check_url, with the field's name in the message (the error is raised on the whole section)."""
    try:
        return check_url(url, allow_insecure_http)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


# --- SCIM 2.0 ---------------------------------------------------------------------------

class BasicAuth(Strict):
    type: Literal["basic"]
    username: str
    password: SecretRef


class BearerAuth(Strict):
    type: Literal["bearer"]
    token: SecretRef


class OAuth2Auth(Strict):
    """OAuth 2.0 client credentials grant."""

    type: Literal["oauth2"]
    token_url: str
    client_id: str
    client_secret: SecretRef
    scope: Optional[str] = None


ScimAuth = Annotated[Union[BasicAuth, BearerAuth, OAuth2Auth], Field(discriminator="type")]


class HttpSettings(Strict):
    timeout: float = Field(default=30.0, gt=0, le=600)
    ca_bundle: Optional[str] = None  # a CA file to trust instead of the system's
    verify_tls: bool = True
    allow_insecure_http: bool = False


class Scim2Settings(HttpSettings):
    base_url: str
    auth: ScimAuth
    page_size: int = Field(default=100, ge=1, le=1000)
    update_method: Literal["auto", "patch", "put"] = "auto"
    # How an event batch finds its users' accounts when it does not read the listing: `each`, one
    # filter per user and key (a single `eq`, which servers index); `filter`, a few `or` filters per
    # batch (connectors/scim2/lookup.py), for a server that answers `or` from an index: scim2-server
    # walks every account for each term of an `or`, slower than listing it (docs/scim.md).
    lookup: Literal["each", "filter"] = "each"
    # How an event batch creates a user met for the first time: `lookup`, look its account up first
    # (to adopt one already there); `optimistic`, send the create and adopt on the server's 409
    # uniqueness. Only honoured while `match` is externalId/userName and a probe saw the server refuse
    # a repeated userName (tasks/optimistic.py, docs/scim.md); else the batch looks up as before.
    create: Literal["lookup", "optimistic"] = "lookup"

    @model_validator(mode="after")
    def _urls(self):
        self.base_url = _checked("base_url", self.base_url, self.allow_insecure_http)
        if isinstance(self.auth, OAuth2Auth):
            self.auth.token_url = _checked("auth.token_url", self.auth.token_url, self.allow_insecure_http)
        return self


# --- Google Workspace and Salesforce (fleshed out by their connectors) ---------------------

class GoogleSettings(HttpSettings):
    service_account_key: SecretRef
    admin_email: str
    customer: str = "my_customer"
    api_base_url: str = "https://admin.googleapis.com"
    default_given_name: str = "-"
    default_family_name: str = "-"
    # The user's organizational unit (orgUnitPath) by rule: see models.target_rules.
    org_unit: Optional[Rules] = None
    # Google Workspace licences by role (Enterprise License Manager API).
    licences: list[Grant] = Field(default_factory=list, max_length=50)
    # The users' email aliases by rule (users/{userKey}/aliases): see models.target_rules.AliasRule.
    aliases: list[AliasRule] = Field(default_factory=list, max_length=20)
    # The Licensing API's root; None: https://licensing.googleapis.com, or api_base_url when that is
    # not Google's (the sandbox serves both).
    licensing_base_url: Optional[str] = None

    @model_validator(mode="after")
    def _urls(self):
        self.api_base_url = _checked("api_base_url", self.api_base_url, self.allow_insecure_http)
        if self.licensing_base_url is not None:
            self.licensing_base_url = _checked("licensing_base_url", self.licensing_base_url,
                                               self.allow_insecure_http)
        keys = [g.key for g in self.licences]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"licences: {', '.join(twice)} is listed more than once; give one entry its roles")
        for value in (self.org_unit.literal_values() if self.org_unit else []):
            if not value.startswith("/"):
                raise ValueError(f"org_unit: {value!r} is not an org unit path (it starts with /, such as /Sales)")
        return self

    @property
    def licensing_url(self) -> str:
        if self.licensing_base_url:
            return self.licensing_base_url
        if urlparse(self.api_base_url).hostname == "admin.googleapis.com":
            return "https://licensing.googleapis.com"
        return self.api_base_url


class SalesforceAuth(Strict):
    """How the connector gets a Salesforce access token (OAuth 2.0).

    jwt: client_id, username, private_key (the connected app's certificate key; `audience`
    defaults to the login_url). password: client_id, client_secret, username, password,
    security_token (optional when the login IP is trusted). client_credentials: client_id,
    client_secret (the connected app's run-as user acts). client_id may be a plain consumer key
    or a secret reference.
    """

    type: Literal["jwt", "password", "client_credentials"]
    client_id: SecretRef | str
    client_secret: Optional[SecretRef] = None
    username: Optional[str] = None
    password: Optional[SecretRef] = None
    security_token: Optional[SecretRef] = None
    private_key: Optional[SecretRef] = None
    audience: Optional[str] = None  # jwt only: the `aud` claim when it is not the login_url

    @model_validator(mode="after")
    def _fields_for_type(self):
        needed = {"jwt": ("username", "private_key"), "password": ("client_secret", "username", "password"),
                  "client_credentials": ("client_secret",)}[self.type]
        missing = [f for f in needed if not getattr(self, f)]
        if missing:
            raise ValueError(f"auth type {self.type} needs {', '.join(missing)}")
        return self


class SalesforceSettings(HttpSettings):
    login_url: str = "https://login.salesforce.com"
    api_version: str = Field(default="62.0", pattern=pattern(r"^\d{2,3}\.0$", "a version such as 62.0"))
    auth: SalesforceAuth
    profile: str = "Standard User"
    defaults: dict[str, str] = Field(default_factory=lambda: {
        "TimeZoneSidKey": "America/Los_Angeles", "LocaleSidKey": "en_US",
        "EmailEncodingKey": "UTF-8", "LanguageLocaleKey": "en_US"})
    # Deprecated alias of the connector's `attributes:` section: `Field: key` is `Field: attributes.key`.
    field_map: dict[str, str] = Field(default_factory=dict)
    free_username_on_deprovision: bool = False
    # ProfileId and UserRoleId by rule (names, resolved to ids once per connector), and permission
    # sets per role: see models.target_rules. profile_rules' default, if none, is `profile`.
    profile_rules: Optional[Rules] = None
    role_rules: Optional[Rules] = None
    permission_sets: list[PermissionSetGrant] = Field(default_factory=list, max_length=100)
    # How a user is suspended (deprovision: disable): IsActive = false, or its login frozen
    # (UserLogin.IsFrozen; the licence stays taken, the account can sign in again when thawed).
    suspend_mode: Literal["deactivate", "freeze"] = "deactivate"
    # Before creates, compare the licences they need with UserLicense TotalLicenses - UsedLicenses.
    check_licences: bool = True

    @model_validator(mode="after")
    def _urls(self):
        self.login_url = _checked("login_url", self.login_url, self.allow_insecure_http)
        names = [g.name for g in self.permission_sets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"permission_sets: {', '.join(twice)} is listed more than once; give one entry its roles")
        return self


# --- Connectors and policy ----------------------------------------------------------------

class RetryPolicy(Strict):
    """Exponential backoff with jitter, for transient errors only."""

    attempts: int = Field(default=5, ge=1, le=20)
    base_delay: float = Field(default=1.0, ge=0, le=300)
    max_delay: float = Field(default=60.0, ge=0, le=3600)
    jitter: float = Field(default=0.5, ge=0, le=1)

    def delay(self, tries: int) -> float:
        """The planned wait (before jitter) after `tries` failed tries: base_delay doubled each try, capped
        at max_delay. The one back-off schedule: the retry runner's and the outbox's."""
        return min(self.max_delay, self.base_delay * 2 ** (max(tries, 1) - 1))


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


class IdentityProvider(Strict):
    name: Name
    jit_provisioning: bool = False
    connectors: list[str] = Field(default_factory=list)


class ApiSettings(Strict):
    """The event API (`outbound api`): how senders authenticate, and how large an event may be.

    The default scheme is Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`)
    with any of `webhook_secrets` (several, so that one can be rotated without downtime). Each
    reference must resolve to a `whsec_<base64>` secret, checked when the API starts.
    """

    webhook_secrets: list[SecretRef] = Field(default_factory=list, max_length=8)
    token: Optional[SecretRef] = None  # Authorization: Bearer <token>
    # The old X-Outbound-Signature (HMAC of the body, no timestamp: replayable), only when asked for.
    legacy_signature: bool = False
    hmac_secret: Optional[SecretRef] = None
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    # The SCIM 2.0 service provider at /scim/v2 (Authorization: Bearer <scim_token>); off without it.
    scim_token: Optional[SecretRef] = None
    # Where a SCIM-pushed user's roles come from: their groups' displayNames, `roles`, `entitlements`.
    scim_roles_from: list[Literal["groups", "roles", "entitlements"]] = Field(
        default_factory=lambda: ["groups", "roles"], max_length=3)

    @model_validator(mode="after")
    def _schemes(self):
        if self.hmac_secret and not self.legacy_signature:
            raise ValueError("hmac_secret: only the legacy X-Outbound-Signature scheme uses it, and it is off; "
                             "move senders to webhook_secrets, or set legacy_signature: true to keep it")
        if self.legacy_signature and not self.hmac_secret:
            raise ValueError("legacy_signature: true needs hmac_secret (a secret reference)")
        if len(set(self.webhook_secrets)) != len(self.webhook_secrets):
            raise ValueError("webhook_secrets: the same reference is listed twice")
        return self


class Wso2WebhookSettings(Strict):
    """`POST /v1/webhooks/wso2`: WSO2 Identity Server 7 and Asgardeo webhooks (see docs/sources.md).

    Each secret is the webhook's **Secret** as typed in the WSO2 console (the HMAC key is its UTF-8
    bytes); list two while one is rotated. `claims` adds to (or, naming a default URI, replaces)
    WSO2's default claim dialect: claim URI -> a user field or `attributes.<key>` ("" drops it).
    """

    secrets: list[SecretRef] = Field(min_length=1, max_length=8)
    # Seconds either way from this server's clock; at most an hour, so that a receipt pruned with the
    # events (retention.events_days, a day at least) is of a token refused for its age anyway.
    iat_tolerance: int = Field(default=300, ge=10, le=3600)
    claims: dict[Annotated[str, Field(min_length=1, max_length=255)], str] = Field(default_factory=dict)
    # An entry of a loginSuccess's authenticationMethods -> the identity_providers[].name it stands for.
    federated_authenticators: dict[str, Name] = Field(default_factory=dict)
    # A user store that an IdP's JIT provisioning writes to (the IdP's "Provisioning user store
    # domain") -> that IdP: a user created there arrived by JIT through it.
    jit_user_stores: dict[StoreName, Name] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _claims(self):
        problems = [f"claims.{uri}: {p}" for uri, target in self.claims.items()
                    if (p := claim_target_problem(target))]
        if len(set(self.secrets)) != len(self.secrets):
            problems.append("secrets: the same reference is listed twice")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class LdapBind(Strict):
    dn: str = Field(min_length=1, max_length=1024)
    password: SecretRef


class LdapDisabled(Strict):
    """A directory attribute that marks an account disabled when it holds one of `values` (any value
    when `values` is empty), besides AD's userAccountControl bit 2 and ppolicy's pwdAccountLockedTime."""

    attribute: str = Field(min_length=1, max_length=128)
    values: list[str] = Field(default_factory=list)


LDAP_FIELDS = ("username", "given_name", "family_name", "display_name", "email")


class LdapSourceSettings(Strict):
    """`outbound pull` / the pull-directory deployment: an LDAP directory or Active Directory as the
    source of truth (see docs/sources.md). One directory; its name keys its state in the store."""

    name: Name = "directory"
    url: str
    start_tls: bool = False
    ca_file: Optional[str] = None  # the CA to trust for ldaps:// and StartTLS, instead of the system's
    allow_insecure_ldap: bool = False
    bind: LdapBind
    base_dn: str = Field(min_length=1, max_length=1024)
    group_base_dn: Optional[str] = None  # default: base_dn
    user_filter: str = "(objectClass=inetOrgPerson)"
    group_filter: str = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group))"
    member_attribute: str = "member"
    # The user's stable identity: entryUUID on OpenLDAP, objectGUID on AD; never the DN (it changes on a rename).
    anchor: str = "entryUUID"
    # LDAP attribute -> username | given_name | family_name | display_name | email | attributes.<key>
    attributes: dict[str, str] = Field(default_factory=lambda: {
        "uid": "username", "givenName": "given_name", "sn": "family_name", "cn": "display_name", "mail": "email"})
    user_store: StoreName = "PRIMARY"  # the {UD} of the users pulled
    roles: dict[str, list[str]] = Field(default_factory=dict)  # group DN -> roles (members, nested included)
    disabled: Optional[LdapDisabled] = None
    # modifyTimestamp (OpenLDAP, 389, FreeIPA) or uSNChanged (AD, with the rootDSE's highestCommittedUSN)
    watermark: Literal["modifyTimestamp", "uSNChanged"] = "modifyTimestamp"
    # ad: an incremental pull also reads the tombstones in CN=Deleted Objects (uSNChanged watermark
    # only); None: AD when the watermark is uSNChanged (only AD's rootDSE has highestCommittedUSN);
    # ldap: never read tombstones.
    kind: Optional[Literal["ldap", "ad"]] = None
    # modifyTimestamp only: how far before the watermark an incremental pull reads again (see
    # models.directory.changed_filter); entries read again become no event.
    watermark_overlap_seconds: int = Field(default=60, ge=0, le=86400)
    page_size: int = Field(default=500, ge=1, le=5000)
    timeout: float = Field(default=30.0, gt=0, le=600)
    # A full pull that would delete more users than this stops and deletes nothing (None: 10% of the
    # users linked to the directory, at least 10).
    max_deletions: Optional[int] = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _checks(self):
        problems = []
        parsed = urlparse(self.url)
        if parsed.scheme not in ("ldap", "ldaps") or not parsed.hostname:
            problems.append(f"url: must be an ldaps:// or ldap:// URL, not {self.url!r}")
        elif "@" in parsed.netloc:
            problems.append("url: must not hold credentials; use bind.password, a secret reference")
        elif parsed.scheme == "ldap" and not self.start_tls and not self.allow_insecure_ldap \
                and not _is_loopback(parsed.hostname):
            problems.append("url: plain ldap:// without start_tls is only accepted for loopback addresses "
                            "(use ldaps://, set start_tls: true, or allow_insecure_ldap: true to override)")
        if self.kind == "ad" and self.watermark != "uSNChanged":
            problems.append("kind: ad reads tombstones by uSNChanged; set watermark: uSNChanged")
        if parsed.scheme == "ldaps" and self.start_tls:
            problems.append("start_tls: ldaps:// is TLS already; StartTLS is for ldap:// URLs")
        targets = list(self.attributes.values())
        for attribute, target in self.attributes.items():
            if target not in LDAP_FIELDS and not (target.startswith("attributes.") and len(target) > 11):
                problems.append(f"attributes.{attribute}: {target!r} is not one of {', '.join(LDAP_FIELDS)} "
                                f"or attributes.<key>")
        for target in sorted({t for t in targets if targets.count(t) > 1}):
            problems.append(f"attributes: {target} is mapped from more than one LDAP attribute")
        if "username" not in targets:
            problems.append("attributes: one LDAP attribute must map to username (uid, sAMAccountName, ...)")
        if self.anchor.lower() in ("dn", "distinguishedname"):
            problems.append("anchor: the DN changes when an entry is renamed or moved; use entryUUID or objectGUID")
        for name, value in (("user_filter", self.user_filter), ("group_filter", self.group_filter)):
            if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(")"):
                problems.append(f"{name}: {value!r} is not an LDAP filter in parentheses")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SourceSettings(Strict):
    """Identity providers that push events to `outbound api` in their own format, and the directory
    that `outbound pull` reads."""

    wso2: Optional[Wso2WebhookSettings] = None
    ldap: Optional[LdapSourceSettings] = None


class UserStoreSettings(Strict):
    """A user store's username rule; stores not listed follow WSO2's default (`^[\\S]{3,30}$`)."""

    username_pattern: str = WSO2_DEFAULT_PATTERN
    # What the pattern expects, in words, for the messages that refuse a username.
    username_description: Optional[str] = Field(default=None, max_length=200)

    @field_validator("username_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @property
    def rule(self) -> UsernameRule:
        words = self.username_description or (WSO2_DEFAULT_WORDS if self.username_pattern == WSO2_DEFAULT_PATTERN
                                              else f"the pattern {self.username_pattern} set in the configuration")
        return UsernameRule(self.username_pattern, words)


class EventSettings(Strict):
    """How events for users the store does not know are treated."""

    # False: user.updated/disabled/enabled/roles_changed/deleted for an unknown user is refused (a typo
    # must not provision a stranger). True: such an event creates the user from what it carries.
    upsert_unknown_users: bool = False


class RetentionSettings(Strict):
    """How long run state is kept (`outbound prune`, and the nightly prune-state deployment).

    Unfinished events, and the latest operation per user (or group) and connector, are always kept.
    """

    events_days: int = Field(default=90, ge=1, le=36500)
    operations_days: int = Field(default=90, ge=1, le=36500)
    attempts_days: int = Field(default=30, ge=1, le=36500)
    reconciliation_runs_days: int = Field(default=90, ge=1, le=36500)


class NotificationSettings(Strict):
    """Who hears of a paused deletion-guard approval or a quarantined connector (`outbound setup`).

    `block`: a Prefect notification block as `<block-type-slug>/<block-name>` (the form `Block.load`
    takes), e.g. `slack-webhook/ops-alerts`; create it in the UI (Blocks) or with its class's `.save()`.
    The webhook URL stays in the block, never in this file.
    """

    block: str = Field(pattern=r"^[a-z0-9-]+/[A-Za-z0-9_. -]+$", max_length=255)


class Config(Strict):
    tenant_domain: str = Field(min_length=1, max_length=255)
    connectors: list[ConnectorConfig] = Field(default_factory=list)
    identity_providers: list[IdentityProvider] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    api: Optional[ApiSettings] = None
    user_stores: dict[StoreName, UserStoreSettings] = Field(default_factory=dict)
    events: EventSettings = Field(default_factory=EventSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    sources: SourceSettings = Field(default_factory=SourceSettings)
    group_nesting: GroupNesting = Field(default_factory=GroupNesting)
    notifications: Optional[NotificationSettings] = None

    @model_validator(mode="after")
    def _references(self):
        problems = cross_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def username_rule(self, user_store: str) -> UsernameRule:
        """The username rule of `user_store` (matched without regard to case), else WSO2's default."""
        store = self.user_stores.get(user_store) or next(
            (s for name, s in self.user_stores.items() if name.upper() == user_store.upper()), None)
        return store.rule if store else UsernameRule()

    def connector(self, name: str) -> ConnectorConfig:
        for c in self.connectors:
            if c.name == name:
                return c
        raise KeyError(name)

    def nesting(self, cfg: ConnectorConfig) -> GroupNesting:
        """The group nesting settings of connector `cfg`: its own keys over the top-level ones."""
        if cfg.group_nesting is None:
            return self.group_nesting
        own = cfg.group_nesting.model_dump(include=cfg.group_nesting.model_fields_set)
        return self.group_nesting.model_copy(update=own)

    def idp(self, name: str) -> Optional[IdentityProvider]:
        return next((i for i in self.identity_providers if i.name == name), None)


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    return Path(explicit or os.environ.get("OUTBOUND_CONFIG") or DEFAULT_CONFIG_FILE)


def cross_problems(data: object) -> list[str]:
    """Mistakes between fields (duplicate connector names, unknown references), found on the raw data so
    that they are reported together with the field errors, not after those are fixed."""
    if not isinstance(data, dict):
        return []
    connectors = data.get("connectors") if isinstance(data.get("connectors"), list) else []
    names = [c.get("name") for c in connectors if isinstance(c, dict) and isinstance(c.get("name"), str)]
    problems = []
    for name in sorted({n for n in names if names.count(n) > 1}):
        where = ", ".join(f"connectors[{i}]" for i, c in enumerate(connectors)
                          if isinstance(c, dict) and c.get("name") == name)
        problems.append(f"connectors: the name {name!r} is used more than once ({where}); names must be unique")
    idps = data.get("identity_providers") if isinstance(data.get("identity_providers"), list) else []
    for i, idp in enumerate(idps):
        refs = idp.get("connectors") if isinstance(idp, dict) else None
        unknown = [c for c in refs if isinstance(c, str) and c not in names] if isinstance(refs, list) else []
        if unknown:
            problems.append(f"{field_path(('identity_providers', i, 'connectors'))}: identity provider "
                            f"{idp.get('name')!r} names unknown connectors: {', '.join(unknown)} "
                            f"(configured: {', '.join(names) or 'none'})")
    problems += _source_idp_problems(data, {i.get("name") for i in idps if isinstance(i, dict)})
    return problems


def _source_idp_problems(data: dict, idp_names: set) -> list[str]:
    """The identity providers that sources.wso2 names must be configured."""
    wso2 = (data.get("sources") or {}).get("wso2") if isinstance(data.get("sources"), dict) else None
    if not isinstance(wso2, dict):
        return []
    problems = []
    for section in ("federated_authenticators", "jit_user_stores"):
        entries = wso2.get(section) if isinstance(wso2.get(section), dict) else {}
        for key, idp in entries.items():
            if isinstance(idp, str) and idp not in idp_names:
                problems.append(f"sources.wso2.{section}.{key}: unknown identity provider {idp!r} "
                                f"(configured: {', '.join(sorted(n for n in idp_names if n)) or 'none'})")
    return problems


def parse_config(data: object, source: str = "configuration") -> Config:
    """Validate the configuration; raise InvalidInput naming every mistake at once."""
    cross = cross_problems(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # The model's own cross check only runs when every field is valid: report ours instead.
        fields = [p for p in problems_of(exc) if not p.startswith("(root): ")] if cross else problems_of(exc)
        raise InvalidInput(f"configuration {source}", fields + cross) from None
    return config


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read and validate the configuration file; raise InvalidInput naming every bad field."""
    path = config_path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"configuration {path}", [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InvalidInput(f"configuration {path}", [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(data, dict):
        raise InvalidInput(f"configuration {path}", ["(root): must be a mapping with tenant_domain and connectors"])
    return parse_config(data, str(path))
