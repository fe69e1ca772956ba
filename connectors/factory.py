"""Build connectors from configuration entries, once per process and configuration."""

import importlib
import threading

from connectors.base import Connector
from connectors.errors import ConfigError
from models.config import ConnectorConfig
from models.secrets import SecretError

_MODULES = {"scim2": "connectors.scim2", "google": "connectors.google", "salesforce": "connectors.salesforce"}
_cache: dict[tuple[str, str, bool], Connector] = {}
_lock = threading.Lock()


def get_connector(cfg: ConnectorConfig, dry_run: bool = False) -> Connector:
    """The connector for `cfg`, reusing its session (and pooled connections) across calls."""
    key = (cfg.name, cfg.model_dump_json(), dry_run)
    with _lock:
        connector = _cache.get(key)
        if connector is None:
            module = importlib.import_module(_MODULES[cfg.type])
            try:
                connector = _cache[key] = module.build(cfg, dry_run=dry_run)
            except SecretError as exc:
                raise ConfigError(f"connector {cfg.name}: {exc}") from None
            _use_profile(connector, cfg)
        return connector


def _use_profile(connector: Connector, cfg: ConnectorConfig) -> None:
    """Hand the connector its stored capability profile (from `outbound check`), when it takes one."""
    if not connector.capabilities.uses_profile:
        return
    from models.capabilities import fresh

    row = fresh(cfg.name)
    if row is not None and row.type == cfg.type:
        connector.use_profile(row.capabilities)


def evict(cfg: ConnectorConfig) -> None:
    """Forget the connector(s) built for `cfg`, so the next use resolves its secrets afresh
    (after an auth failure, a rotated secret is picked up without restarting the worker)."""
    with _lock:
        for key in [k for k in _cache if k[0] == cfg.name]:
            del _cache[key]


def clear_cache() -> None:
    with _lock:
        _cache.clear()
