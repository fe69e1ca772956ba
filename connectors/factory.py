"""Build connectors from configuration entries, once per process and configuration.

The factory stays off the store, as connectors do: a capability profile (what `outbound check`
stored) is handed in by the caller (tasks/door.py reads it), never read here.
"""

import importlib
import threading
from typing import Callable, Optional

from connectors.base import Connector
from connectors.errors import ConfigError
from models.config import ConnectorConfig
from models.secrets import SecretError

_MODULES = {"scim2": "connectors.scim2", "google": "connectors.google", "salesforce": "connectors.salesforce"}
_cache: dict[tuple[str, str, bool], Connector] = {}
_profiled: set[tuple[str, str, bool]] = set()  # cached connectors that were handed a profile
_lock = threading.Lock()


def get_connector(cfg: ConnectorConfig, dry_run: bool = False,
                  profile: Optional[dict] | Callable[[], Optional[dict]] = None) -> Connector:
    """The connector for `cfg`, reusing its session (and pooled connections) across calls.

    `profile`: the target's stored capabilities, for a connector that acts on them (`uses_profile`);
    without one it asks the target itself. A cached connector built without one takes it later. A
    callable is asked only then, so a connector that already holds its profile costs no store read.
    """
    key = (cfg.name, cfg.model_dump_json(), dry_run)
    with _lock:
        connector = _cache.get(key)
        if connector is None:
            module = importlib.import_module(_MODULES[cfg.type])
            try:
                connector = _cache[key] = module.build(cfg, dry_run=dry_run)
            except SecretError as exc:
                raise ConfigError(f"connector {cfg.name}: {exc}") from None
        if profile is not None and key not in _profiled and connector.capabilities.uses_profile:
            profile = profile() if callable(profile) else profile
            if profile is not None:
                connector.use_profile(profile)
                _profiled.add(key)
        return connector


def evict(cfg: ConnectorConfig) -> None:
    """Forget the connector(s) built for `cfg`, so the next use resolves its secrets afresh
    (after an auth failure, a rotated secret is picked up without restarting the worker)."""
    with _lock:
        for key in [k for k in _cache if k[0] == cfg.name]:
            del _cache[key]
            _profiled.discard(key)


def clear_cache() -> None:
    with _lock:
        _cache.clear()
        _profiled.clear()
