"""Per-target settings: how a connector reaches and authenticates to a SCIM 2.0 server, Google
Workspace or Salesforce, and the target's own options (licences, profiles, org units)."""

from typing import Annotated, Literal, Optional, Union
from urllib.parse import urlparse

from pydantic import Field, model_validator

from models.config.base import Strict, _checked
from models.secrets import SecretRef
from models.target_rules import AliasRule, Grant, PermissionSetGrant, Rules
from models.validation import pattern


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
