"""How identities get in: the event API (`outbound api`: signatures, tokens, the SCIM service
provider), WSO2 / Asgardeo webhooks, and the LDAP / Active Directory pull."""

from typing import Annotated, Literal, Optional
from urllib.parse import urlparse

from pydantic import Field, model_validator

from models.config.base import Name, Strict, StoreName, _is_loopback
from models.secrets import SecretRef
from models.wso2 import claim_target_problem


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
