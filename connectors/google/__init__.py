"""Google Workspace connector: the Admin SDK Directory API v1, with a delegated service account.

Authentication is google-auth's service account flow with domain-wide delegation (`subject` =
the admin to impersonate); the key's own `token_uri` is honoured. transport (the choke point,
pacing, errors), mapping (Account <-> user resource), users, groups, batch, licences, aliases; this module puts them
together and builds one from configuration.
"""

import json

from google.oauth2 import service_account

from connectors.errors import ConfigError
from connectors.google.aliases import Aliased
from connectors.google.mapping import query_value, read_mapped, slugify, write_mapped
from connectors.google.transport import _TokenRequest, authorized_session, error_for, refresh_detail
from models.config import GoogleSettings

SCOPES = ("https://www.googleapis.com/auth/admin.directory.user",
          "https://www.googleapis.com/auth/admin.directory.group")
LICENSING_SCOPE = "https://www.googleapis.com/auth/apps.licensing"


def scopes_for(settings: GoogleSettings) -> tuple[str, ...]:
    """The scopes the connector's token asks for: the licensing scope too when licences are managed."""
    return SCOPES + ((LICENSING_SCOPE,) if settings.licences else ())


class GoogleConnector(Aliased):
    """Users (with their licences and aliases) and groups in a Google Workspace customer; batches through the batch endpoint."""


def _key_info(text: str, connector: str) -> dict:
    try:
        info = json.loads(text)
    except ValueError:
        raise ConfigError(f"connector {connector}: the service account key is not valid JSON") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ConfigError(f"connector {connector}: the service account key is not a service_account JSON key")
    return info


def build(cfg, dry_run: bool = False) -> GoogleConnector:
    """Build the connector for a configuration entry; the only place its key is resolved."""
    from models.config import check_url
    from models.secrets import resolve

    settings: GoogleSettings = cfg.google
    info = _key_info(resolve(settings.service_account_key), cfg.name)
    try:
        token_uri = check_url(info.get("token_uri") or "https://oauth2.googleapis.com/token",
                              settings.allow_insecure_http)
    except ValueError as exc:
        raise ConfigError(f"connector {cfg.name}: the key's token_uri {exc}") from None
    try:
        credentials = service_account.Credentials.from_service_account_info(
            {**info, "token_uri": token_uri}, scopes=list(scopes_for(settings)), subject=settings.admin_email)
    except (ValueError, KeyError, TypeError) as exc:
        # The library's message may quote the key: name the problem's kind only.
        raise ConfigError(f"connector {cfg.name}: the service account key cannot be used "
                          f"({type(exc).__name__}; check client_email, private_key and token_uri)") from None
    return GoogleConnector(cfg.name, settings, authorized_session(credentials, settings), domain=cfg.domain,
                           requests_per_second=cfg.requests_per_second, dry_run=dry_run,
                           extra_targets=cfg.attribute_map.extra_targets)


__all__ = ["SCOPES", "LICENSING_SCOPE", "scopes_for", "GoogleConnector", "build", "authorized_session", "query_value", "slugify", "read_mapped",
           "write_mapped", "error_for", "refresh_detail", "_TokenRequest"]
