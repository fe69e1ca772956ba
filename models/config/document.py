"""The whole file: `Config`, its sections, and the checks that span sections (unique connector
names, references to connectors and identity providers that must exist)."""

from typing import Optional

from pydantic import Field, model_validator

from models.config.base import Strict, StoreName
from models.config.connectors import ConnectorConfig, GroupNesting
from models.config.policy import EventSettings, IdentityProvider, UserStoreSettings
from models.config.runtime import NotificationSettings, RetentionSettings, RetryPolicy
from models.config.sources import ApiSettings, SourceSettings
from models.usernames import UsernameRule
from models.validation import field_path


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
