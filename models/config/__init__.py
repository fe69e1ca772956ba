"""The configuration file (YAML), validated by pydantic.

Looked up as `--config PATH`, else `$OUTBOUND_CONFIG`, else `./outbound.yaml`. Secrets inside are
references (see `models.secrets`), resolved only when a connector is built.

One module per job, each importing only those above it (no cycles):
  base        the strict model, the name types, the URL rule (check_url)
  targets     per-target settings: SCIM 2.0, Google Workspace, Salesforce
  connectors  one `connectors:` entry (ConnectorConfig) and its deprovision, nesting, quarantine
  policy      organisation-level triggers, identity providers, user stores' username rules, events
  sources     how identities get in: the event API, WSO2 webhooks, the LDAP pull
  runtime     retry back-off, retention, notifications
  document    the whole file (Config) and the checks across its sections
  load        the file's path, reading the YAML, and the messages naming every bad field

Everything is re-exported here, so `from models.config import X` stays the one import path.
"""

from models.config.base import Name, StoreName, Strict, _checked, _is_loopback, check_url
from models.config.connectors import ConnectorConfig, GroupNesting, QuarantineBackoff, StagedDeprovision
from models.config.document import Config, _source_idp_problems, cross_problems
from models.config.load import DEFAULT_CONFIG_FILE, config_path, load_config, parse_config
from models.config.policy import ORG_TRIGGERS, EventSettings, IdentityProvider, UserStoreSettings
from models.config.runtime import NotificationSettings, RetentionSettings, RetryPolicy
from models.config.sources import (LDAP_FIELDS, ApiSettings, LdapBind, LdapDisabled, LdapSourceSettings,
                                   SourceSettings, Wso2WebhookSettings)
from models.config.targets import (BasicAuth, BearerAuth, GoogleSettings, HttpSettings, OAuth2Auth, SalesforceAuth,
                                   SalesforceSettings, Scim2Settings, ScimAuth)

__all__ = [
    "ApiSettings", "BasicAuth", "BearerAuth", "Config", "ConnectorConfig", "DEFAULT_CONFIG_FILE", "EventSettings",
    "GoogleSettings", "GroupNesting", "HttpSettings", "IdentityProvider", "LDAP_FIELDS", "LdapBind", "LdapDisabled",
    "LdapSourceSettings", "Name", "NotificationSettings", "OAuth2Auth", "ORG_TRIGGERS", "QuarantineBackoff",
    "RetentionSettings", "RetryPolicy", "SalesforceAuth", "SalesforceSettings", "Scim2Settings", "ScimAuth",
    "SourceSettings", "StagedDeprovision", "StoreName", "Strict", "UserStoreSettings", "Wso2WebhookSettings",
    "_checked", "_is_loopback", "_source_idp_problems", "check_url", "config_path", "cross_problems", "load_config",
    "parse_config",
]
