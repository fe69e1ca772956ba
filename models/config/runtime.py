"""How the engine runs, across connectors: the retry back-off, how long run state is kept, and
who is notified of a paused approval or a quarantined connector."""

from pydantic import Field

from models.config.base import Strict


class RetryPolicy(Strict):
    """Exponential backoff with jitter, for transient errors only."""

    attempts: int = Field(default=5, ge=1, le=20)
    base_delay: float = Field(default=1.0, ge=0, le=300)
    max_delay: float = Field(default=60.0, ge=0, le=3600)
    jitter: float = Field(default=0.5, ge=0, le=1)

    def delay(self, tries: int) -> float:
        """The planned wait (before jitter) after `tries` failed tries: base_delay doubled each try, capped
        at max_delay. The one back-off schedule: the retry runner's and the outbox's."""
        return min(self.max_delay, self.base_delay * 2 ** (max(tries, 1) - 1))


class RetentionSettings(Strict):
    """How long run state is kept (`outbound prune`, and the nightly prune-state deployment).

    Unfinished events, and the latest operation per user (or group) and connector, are always kept.
    """

    events_days: int = Field(default=90, ge=1, le=36500)
    operations_days: int = Field(default=90, ge=1, le=36500)
    attempts_days: int = Field(default=30, ge=1, le=36500)
    reconciliation_runs_days: int = Field(default=90, ge=1, le=36500)


class NotificationSettings(Strict):
    """Who hears of a paused deletion-guard approval or a quarantined connector (`outbound setup`).

    `block`: a Prefect notification block as `<block-type-slug>/<block-name>` (the form `Block.load`
    takes), e.g. `slack-webhook/ops-alerts`; create it in the UI (Blocks) or with its class's `.save()`.
    The webhook URL stays in the block, never in this file.
    """

    block: str = Field(pattern=r"^[a-z0-9-]+/[A-Za-z0-9_. -]+$", max_length=255)
