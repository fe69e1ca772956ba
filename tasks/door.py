"""The one door to a target: every remote call of events and reconciliation alike goes through `target()`.

    with target(cfg, config, dry_run=dry_run) as connector:
        connector.apply_batch(ops)

The door applies, in one place:
- dry run: the connector it hands out refuses every write (DryRunRejected), reads go through;
- quarantine (tasks/health.py): each remote call passes the gate and reports its health; a
  quarantined target raises Quarantined (transient: the retry policy waits for its probe);
- the target's quota (tasks/limits.py): a slot of `outbound:<name>` and its rate limit is held for
  the block, when the connector sets limits;
- the capability profile `outbound check` stored, read here and handed to the factory, so
  connectors stay off the store.

`admit(cfg)` is the reconciliation's fail-fast: a reconciliation does not wait out a quarantine (it
would sit in its retry loop for minutes while the other connectors wait); it ends at once, naming
the quarantine and `outbound check --connector <name>`.
"""

from contextlib import contextmanager
from typing import Iterator, Optional

from connectors.errors import ConfigError
from connectors.factory import get_connector
from models.config import Config, ConnectorConfig
from models.errors import ProvisioningError
from tasks import health
from tasks.limits import connector_slot


class TargetQuarantined(ProvisioningError):
    """A reconciliation met its target quarantined: it sends nothing and ends at once (not retried)."""

    code = "quarantined"


def profile_of(cfg: ConnectorConfig) -> Optional[dict]:
    """The target's stored capability profile (from `outbound check`), or None (the connector asks itself)."""
    from models.capabilities import fresh

    row = fresh(cfg.name)
    return row.capabilities if row is not None and row.type == cfg.type else None


def build(cfg: ConnectorConfig, dry_run: bool = False):
    """The bare connector, with its stored profile: for a caller that only checks names, or wraps it itself.

    The profile is read from the store only while the cached connector has none (each chunk of a
    reconciliation and each event batch comes through here)."""
    return get_connector(cfg, dry_run=dry_run, profile=lambda: profile_of(cfg))


def admit(cfg: ConnectorConfig) -> None:
    """Raise TargetQuarantined when the target is quarantined and its probe is not due yet."""
    refused = health.refusal(cfg.name)
    if refused is not None:
        raise TargetQuarantined(
            f"{refused}. Nothing was sent to {cfg.name}; the quarantine lifts by itself when a probe "
            f"succeeds (in {refused.retry_after:.0f} s). Check the target now with `outbound check --connector "
            f"{cfg.name}`, then `outbound reconcile --connector {cfg.name}`") from None


@contextmanager
def target(cfg: ConnectorConfig, config: Optional[Config] = None, *, dry_run: bool = False,
           occupy: int = 1, unit: bool = False) -> Iterator[health.Guarded]:
    """The connector for `cfg` behind the quarantine gate, inside a slot of its quota, for the block.

    `unit`: the caller gates its reads as one unit (`health.check`, then `record_success` or
    `record_failure`), as an event batch's plan does; batch writes still pass the gate each.
    """
    try:
        connector = build(cfg, dry_run=dry_run)
    except KeyError as exc:
        raise ConfigError(f"connector {cfg.name}: unknown type {cfg.type}") from exc
    with connector_slot(cfg.name, config if config is not None else cfg, occupy=occupy):
        yield health.guarded(connector, cfg, unit)


__all__ = ["TargetQuarantined", "admit", "build", "profile_of", "target"]
