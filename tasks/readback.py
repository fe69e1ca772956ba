"""Read-back, the event flow's `reconcile` step: read a batch's accounts back, and fix any drift once.

The read-back is the plan again, for the users just provisioned: their accounts as the target now
holds them against the desired state. A target that dropped or rewrote a value shows as plan rows,
applied once through the same executor; each user's read-back is recorded as an operation
`verify` (nothing to fix) or `fix`.

Only what the batch does not already know is read again. A create the target answered with the new
account's id (a /Bulk answer's location, a batch API's id) holds what was sent; an account the plan
found matching (noop) was compared with the target a moment ago, by the provision step itself. Both
are recorded `verify` saying so, with no request. The rest (updates, links, enables, adopted and
settled accounts) are read back by id, or from a listing when that is fewer requests (`observe`).
Reading a burst's creates back cost a second listing of the whole target per batch: 20 pages, 3.1 s
of a 14 s drain of 1,000 users (docs/operations.md).
"""

from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE

from models.config import Config
from models.db import session_scope
from models.kinds import Action, Intent, OperationStatus
from models.runstate import operation_row
from tasks import retry
from tasks.apply import apply_rows, record_rows
from tasks.door import target
from tasks.origin import EventBatch
from tasks.plan import make_plan
from tasks.provision import Outcome, _runtime_ids
from tasks.store_errors import store_errors_plain


# Operations whose own answer (or the plan's comparison just before) tells what the target holds.
_CREATED = "the target's answer to the create named the account made"
KNOWN = {Action.CREATE: _CREATED, Action.RELINK: _CREATED, Action.NOOP: "compared with the target by the provision step"}
READ_BACK = "read back after provisioning"


def verify_batch(connector_name: str, outcomes: list[Outcome], config: Config, run_id: str) -> dict[str, dict]:
    """Read back the accounts provisioned in this batch that no answer vouches for; fix drift once;
    return the drift per user."""
    users = [o.user_id for o in outcomes if o.status == OperationStatus.SUCCEEDED and o.action == Intent.PROVISION and o.user_id]
    if not users:
        return {}
    by_user = {o.user_id: o for o in outcomes}
    origin = EventBatch(run_id, {u: o.events for u, o in by_user.items()})
    # a create vouches for the account only when its answer named it
    unknown = [u for u in users if by_user[u].operation not in KNOWN
               or (by_user[u].operation != Action.NOOP and not by_user[u].remote_id)]
    cfg = config.connector(connector_name)
    flow_run_id, _ = _runtime_ids()
    rows = []
    if unknown:
        with target(cfg, config) as connector, session_scope() as session:
            plan = make_plan(config, cfg, connector, session, unknown)
        rows = [r for r in plan.rows.to_dict(orient="records") if r["local_id"] in set(unknown)]
        for row in rows:
            row["reason"] = f"{READ_BACK}: {row['reason']}"
        if rows:
            with target(cfg, config) as connector:
                apply_rows(rows, plan.desired, cfg, connector, run_id=run_id, policy=config.retry,
                           flow_run_id=flow_run_id, origin=origin)
    drift = {r["local_id"]: r["changes"] or {r["action"]: True} for r in rows}
    checks = [operation_row(cfg.name, u, by_user[u].entity_name, Intent.VERIFY,
                            operation=Action.FIX if u in drift else Action.VERIFY, status=OperationStatus.SUCCEEDED,
                            reason=READ_BACK if u in unknown else KNOWN[by_user[u].operation], remote_id=by_user[u].remote_id,
                            remote_name=by_user[u].remote_name, drift=drift.get(u), flow_run_id=flow_run_id)
              for u in users]
    with session_scope() as session:
        record_rows(session, origin, checks)
    return drift


# The DAG's step is named `reconcile` (resolve-policy → generate-username → provision → reconcile).
@task(name="reconcile", task_run_name="reconcile {connector_name}", cache_policy=NO_CACHE)
@store_errors_plain
def reconcile(connector_name: str, outcomes: list[Outcome], config: Config, run_id: str) -> Optional[dict]:
    """Read the batch's accounts back and fix what differs from the desired state."""
    return retry.run_task(lambda: verify_batch(connector_name, outcomes, config, run_id), config.retry,
                          f"connector={connector_name} read-back")
