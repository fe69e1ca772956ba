"""Salesforce connector: User records through the REST API (simple-salesforce), OAuth 2.0 tokens.

auth (the token endpoint), transport (the call choke point, queries, errors), mapping (Account <->
User record), users, batch (sObject Collections); this module puts them together and builds one
from configuration. Salesforce users cannot be deleted: `delete_user` deactivates (and can free
the username). Profile, role and permission sets by rule: `access`. Public groups and queues are out of scope: `capabilities.groups`
is False and the connector has no group calls.
"""

from typing import Optional

from connectors.salesforce.auth import TokenSource
from connectors.salesforce.access import Access
from connectors.salesforce.mapping import freed_username, make_alias, soql_quote
from models.config import SalesforceSettings


class SalesforceConnector(Access):
    """Salesforce Users (with profile, role, permission sets and frozen logins) through the REST API."""


def build(cfg, dry_run: bool = False) -> SalesforceConnector:
    """Build the connector for a configuration entry; the only place its secrets are resolved."""
    from connectors.http import build_session
    from models.secrets import SCHEMES, resolve

    settings: SalesforceSettings = cfg.salesforce
    auth = settings.auth

    def secret(ref: Optional[str]) -> Optional[str]:
        return resolve(ref) if ref else None

    client_id = resolve(auth.client_id) if auth.client_id.startswith(SCHEMES) else auth.client_id
    tokens = TokenSource(settings, build_session(settings, pool_size=2), client_id=client_id,
                         client_secret=secret(auth.client_secret), password=secret(auth.password),
                         security_token=secret(auth.security_token), private_key=secret(auth.private_key))
    return SalesforceConnector(cfg.name, settings, build_session(settings), tokens, dry_run=dry_run,
                               extra_fields=cfg.attribute_map.extra_targets)


__all__ = ["SalesforceConnector", "TokenSource", "build", "freed_username", "make_alias", "soql_quote"]
