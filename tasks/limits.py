"""Per-target quotas shared by every worker: Prefect global concurrency limits `outbound:<connector>`.

`outbound setup` creates them from the configuration: `outbound:<name>` holds `max_concurrency`
slots (operations in flight against the target at once, across all processes), and
`outbound:<name>:rate` is a rate limit (slots decay at `requests_per_second`). A provisioning
operation takes one concurrency slot and `REQUESTS_PER_OPERATION` rate slots around its connector
calls. An acquire costs ~70–125 ms, so nothing is taken when the connector sets no limit, and a
limit that was never created (setup not run) is skipped, not an error.
"""

import logging
import math
from contextlib import ExitStack, contextmanager
from typing import Iterator

from models.config import Config, ConnectorConfig

log = logging.getLogger("outbound.limits")

PREFIX = "outbound:"
# A provision is a lookup, a create or an update and sometimes an enable/disable: ~3 requests.
REQUESTS_PER_OPERATION = 3


@contextmanager
def untagged_tasks() -> Iterator[None]:
    """Task runs started inside carry none of the flow run's tags (the flow run keeps them, for the UI).

    Prefect asks its server for tag concurrency limits before every tagged task run
    (`increment-with-lease`: 0.6 s a chunk of a 10,000-user reconciliation, 0.9-3.8 s a call under
    load), and the target's quota is not a tag limit: it is the `outbound:<connector>` global limit
    the tasks take themselves (`connector_slot`).
    """
    from prefect.context import TagsContext

    with TagsContext(current_tags=set()):
        yield


def limit_name(connector: str) -> str:
    return f"{PREFIX}{connector}"


def rate_limit_name(connector: str) -> str:
    return f"{PREFIX}{connector}:rate"


def wanted_limits(cfg: ConnectorConfig) -> list[tuple[str, int, float | None]]:
    """(name, slots, slot decay per second) for every limit the connector's settings ask for."""
    limits = []
    if cfg.max_concurrency:
        limits.append((limit_name(cfg.name), cfg.max_concurrency, None))
    if cfg.requests_per_second:
        # A bucket of about one second's worth of requests, refilled at requests_per_second.
        slots = max(REQUESTS_PER_OPERATION, math.ceil(cfg.requests_per_second))
        limits.append((rate_limit_name(cfg.name), slots, float(cfg.requests_per_second)))
    return limits


def apply_limits(config: Config, client=None) -> list[tuple[str, int, float | None]]:
    """Create or update the global concurrency limits for every connector (what `outbound setup` does)."""
    from prefect.client.orchestration import get_client

    done = []
    with (get_client(sync_client=True) if client is None else _borrowed(client)) as c:
        for cfg in config.connectors:
            for name, slots, decay in wanted_limits(cfg):
                c.upsert_global_concurrency_limit_by_name(name, slots, slot_decay_per_second=decay)
                done.append((name, slots, decay))
    return done


@contextmanager
def _borrowed(client):
    yield client


@contextmanager
def connector_slot(connector_name: str, config: Config | ConnectorConfig, occupy: int = 1) -> Iterator[None]:
    """Hold a slot of the connector's global limits around its remote calls (a no-op without limits)."""
    if isinstance(config, ConnectorConfig):
        cfg = config
    else:
        try:
            cfg = config.connector(connector_name)
        except KeyError:
            cfg = None
    if cfg is None or not (cfg.max_concurrency or cfg.requests_per_second):
        yield
        return
    from prefect.concurrency.sync import concurrency, rate_limit

    with ExitStack() as stack:
        if cfg.requests_per_second:
            bucket = max(REQUESTS_PER_OPERATION, math.ceil(cfg.requests_per_second))
            rate_limit(rate_limit_name(cfg.name), occupy=min(occupy * REQUESTS_PER_OPERATION, bucket), strict=False)
        if cfg.max_concurrency:
            stack.enter_context(concurrency(limit_name(cfg.name), occupy=occupy, strict=False))
        yield
