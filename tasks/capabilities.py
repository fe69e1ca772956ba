"""Refresh capability profiles: probe connectors (read-only) and store what was found.

`outbound check` runs this; a schedule, or the engine after an auth failure, can too:
`refresh([cfg])` probes and stores one connector's profile and returns it.
"""

import logging
from typing import Any, Iterable

from sqlalchemy.exc import SQLAlchemyError

from connectors.probe import check
from models.capabilities import save
from models.config import ConnectorConfig
from models.errors import ProvisioningError

log = logging.getLogger("outbound.capabilities")


class NotStored(ProvisioningError):
    """The profiles were found but the store could not keep them."""

    code = "not_stored"


def refresh(connectors: Iterable[ConnectorConfig]) -> list[dict[str, Any]]:
    """Probe each connector and store its profile; raise NotStored (carrying them) when the store fails."""
    profiles = [check(cfg) for cfg in connectors]
    try:
        for profile in profiles:
            save(profile)
    except SQLAlchemyError as exc:
        log.warning("capability profiles not stored: %s", type(exc).__name__)
        raise NotStored(f"capability profiles not stored: {type(exc).__name__}", profiles) from None
    return profiles
