"""SCIM 2.0 (RFC 7643/7644) connector: payloads with scim2-models, HTTP with requests.

transport (the request choke point, auth refresh, errors), mapping (Account <-> SCIM resources),
users, groups, batch (/Bulk), lookup (a batch's accounts by `or` filters), uniqueness (whether a
create may go without a look-up first); this module puts them together and builds one from configuration.
"""

from connectors.scim2.batch import Batch, match_answers
from connectors.scim2.groups import Groups
from connectors.scim2.lookup import Lookups
from connectors.scim2.transport import filter_eq
from connectors.scim2.uniqueness import Uniqueness
from models.config import Scim2Settings


class Scim2Connector(Batch, Lookups, Groups, Uniqueness):
    """Users and groups on a SCIM 2.0 server; batches through /Bulk when it has one; a batch's
    accounts looked up by `or` filters; whether it refuses a repeated userName, tried once."""


def build(cfg, dry_run: bool = False) -> Scim2Connector:
    """Build the connector for a configuration entry; the only place its secrets are resolved."""
    from connectors.auth import BearerToken, ClientCredentials
    from connectors.http import build_session
    from models.config import BasicAuth, BearerAuth
    from models.secrets import resolve

    settings: Scim2Settings = cfg.scim2
    session = build_session(settings)
    auth = settings.auth
    if isinstance(auth, BearerAuth):
        session.auth = BearerToken(resolve(auth.token))
    elif isinstance(auth, BasicAuth):
        session.auth = (auth.username, resolve(auth.password))
    else:
        session.auth = ClientCredentials(auth.token_url, auth.client_id, resolve(auth.client_secret),
                                         auth.scope, build_session(settings))
    return Scim2Connector(cfg.name, settings, session, dry_run=dry_run, extra_targets=cfg.attribute_map.extra_targets)


__all__ = ["Scim2Connector", "build", "filter_eq", "match_answers"]
