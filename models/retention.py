"""Retention: prune run state older than the configured number of days, in a few bulk DELETEs.

What is never pruned: events that are not finished (the sweeper still owes them a run), operations
still running or retrying, the latest operation per (connector, entity) — it is what `outbound runs`
and `explain` show as the entity's last known state — and the latest reconciliation run per
connector. Attempts go after `attempts_days`, or with their operation. Webhook receipts (the token
ids kept to refuse replays) go with the events, after `events_days`: a token that old is refused
for its `iat` anyway.

Each table is pruned in its own transaction (attempts before their operations, for the foreign
key) with set-based statements: one window function over the table, no row-by-row loop, so a
nightly run stays seconds long on millions of rows.
"""

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import and_, delete, func, not_, select

from models.config import RetentionSettings
from models.db import session_scope
from models.kinds import OperationStatus, RunStatus
from models.runstate import FINAL
from models.tables import Event, Operation, OperationAttempt, ReconciliationRun, WebhookReceipt, utcnow

OPEN_OPERATIONS = (OperationStatus.RUNNING, OperationStatus.RETRYING)
OPEN_RECONCILIATIONS = (RunStatus.RUNNING,)  # awaiting-approval ends a CLI run: nothing waits on it


@dataclass(frozen=True)
class Pruned:
    """How many rows were pruned (or, in a dry run, would be)."""

    events: int
    operations: int
    attempts: int
    reconciliation_runs: int
    dry_run: bool
    webhook_receipts: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verb = "would prune" if self.dry_run else "pruned"
        return (f"{verb} {self.events} events, {self.operations} operations, {self.attempts} attempts, "
                f"{self.reconciliation_runs} reconciliation runs, {self.webhook_receipts} webhook receipts")


def _superseded_operations(cutoff: datetime):
    """Ids of finished operations older than `cutoff` that have a newer operation for the same entity."""
    ranked = select(Operation.id, Operation.started_at, Operation.status,
                    func.row_number().over(partition_by=(Operation.connector, Operation.entity_type,
                                                         Operation.entity_id),
                                           order_by=Operation.id.desc()).label("rank")).subquery()
    return select(ranked.c.id).where(ranked.c.rank > 1, ranked.c.started_at < cutoff,
                                     ranked.c.status.not_in(OPEN_OPERATIONS))


def _superseded_reconciliations(cutoff: datetime):
    ranked = select(ReconciliationRun.id, ReconciliationRun.started_at, ReconciliationRun.status,
                    func.row_number().over(partition_by=ReconciliationRun.connector,
                                           order_by=(ReconciliationRun.started_at.desc(),
                                                     ReconciliationRun.id.desc())).label("rank")).subquery()
    return select(ranked.c.id).where(ranked.c.rank > 1, ranked.c.started_at < cutoff,
                                     ranked.c.status.not_in(OPEN_RECONCILIATIONS))


def _count(session, model, condition) -> int:
    return session.execute(select(func.count()).select_from(model).where(condition)).scalar_one()


def _delete(model, condition, dry_run: bool, url: Optional[str]) -> int:
    with session_scope(url) as session:
        if dry_run:
            return _count(session, model, condition)
        return session.execute(delete(model).where(condition).execution_options(synchronize_session=False)).rowcount


def prune(settings: RetentionSettings, *, dry_run: bool = False, now: Optional[datetime] = None,
          url: Optional[str] = None) -> Pruned:
    """Delete (or, with dry_run, count) the run state older than `settings` allows."""
    now = now or utcnow()
    days = timedelta(days=1)
    op_cutoff = now - settings.operations_days * days
    doomed_ops = _superseded_operations(op_cutoff)

    old_attempts = OperationAttempt.started_at < now - settings.attempts_days * days
    attempts = _delete(OperationAttempt, old_attempts, dry_run, url)
    # Then the younger attempts of operations about to go (counted apart in a dry run: nothing was deleted).
    of_doomed = OperationAttempt.operation_id.in_(doomed_ops)
    attempts += _delete(OperationAttempt, and_(of_doomed, not_(old_attempts)) if dry_run else of_doomed, dry_run, url)
    operations = _delete(Operation, Operation.id.in_(doomed_ops), dry_run, url)
    events = _delete(Event, and_(Event.status.in_(FINAL), Event.received_at < now - settings.events_days * days),
                     dry_run, url)
    runs = _delete(ReconciliationRun, ReconciliationRun.id.in_(
        _superseded_reconciliations(now - settings.reconciliation_runs_days * days)), dry_run, url)
    receipts = _delete(WebhookReceipt, WebhookReceipt.received_at < now - settings.events_days * days, dry_run, url)
    return Pruned(events=events, operations=operations, attempts=attempts, reconciliation_runs=runs, dry_run=dry_run,
                  webhook_receipts=receipts)
