"""Read-back, the event flow's `reconcile` step: read a batch's accounts back, and fix any drift once.

The read-back is the plan again, for the users just provisioned: their accounts as the target now
holds them against the desired state. A target that dropped or rewrote a value shows as plan rows,
applied once through the same executor; each user's read-back is recorded as an operation
`verify` (nothing to fix) or `fix`.
"""

from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE

from connectors.factory import get_connector
from models.config import Config
from models.db import session_scope
from models.kinds import Action, Intent, OperationStatus
from models.runstate import record_operations
from tasks import health, retry
from tasks.apply import apply_rows, event_rows, operation_row
from tasks.limits import connector_slot
from tasks.plan import make_plan
from tasks.provision import Outcome, _runtime_ids
from tasks.store_errors import store_errors_plain


def verify_batch(connector_name: str, outcomes: list[Outcome], events: dict[str, list[str]], config: Config,
                 run_id: str) -> dict[str, dict]:
    """Read back the accounts provisioned in this batch; fix drift once; return the drift per user."""
    users = [o.user_id for o in outcomes if o.status == OperationStatus.SUCCEEDED and o.action == Intent.PROVISION and o.user_id]
    if not users:
        return {}
    cfg = config.connector(connector_name)
    connector = health.guarded(get_connector(cfg), cfg)
    flow_run_id, _ = _runtime_ids()
    with session_scope() as session, connector_slot(cfg.name, config):
        plan = make_plan(config, cfg, connector, session, users)
    rows = [r for r in plan.rows.to_dict(orient="records") if r["local_id"] in set(users)]
    for row in rows:
        row["reason"] = f"read back after provisioning: {row['reason']}"
    if rows:
        with connector_slot(cfg.name, config):
            apply_rows(rows, plan.desired, cfg, connector, run_id=run_id, policy=config.retry,
                       flow_run_id=flow_run_id, events=events)
    drift = {r["local_id"]: r["changes"] or {r["action"]: True} for r in rows}
    by_user = {o.user_id: o for o in outcomes}
    checks = [operation_row(cfg.name, u, by_user[u].entity_name, Intent.VERIFY,
                            operation=Action.FIX if u in drift else Action.VERIFY, status=OperationStatus.SUCCEEDED, reason="read back after provisioning", remote_id=by_user[u].remote_id,
                            remote_name=by_user[u].remote_name, drift=drift.get(u), flow_run_id=flow_run_id)
              for u in users]
    with session_scope() as session:
        record_operations(session, event_rows(checks, events, run_id))
    return drift


# The DAG's step is named `reconcile` (resolve-policy → generate-username → provision → reconcile).
@task(name="reconcile", task_run_name="reconcile {connector_name}", cache_policy=NO_CACHE)
@store_errors_plain
def reconcile(connector_name: str, outcomes: list[Outcome], events: dict[str, list[str]], config: Config,
              run_id: str) -> Optional[dict]:
    """Read the batch's accounts back and fix what differs from the desired state."""
    return retry.run_task(lambda: verify_batch(connector_name, outcomes, events, config, run_id), config.retry,
                          f"connector={connector_name} read-back")
