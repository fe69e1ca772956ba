"""reconcile (per user): read the account back after provisioning, record and fix any drift."""

from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE

from connectors.base import differences
from connectors.factory import get_connector
from models.config import Config
from models.db import session_scope
from models.identity import UserView
from models.runstate import record
from tasks.limits import connector_slot
from tasks.provision import Outcome, desired_account


def verify_one(outcome: Outcome, user: UserView, config: Config, event_id: Optional[str]) -> Optional[dict]:
    """Compare the target's account with the desired state; push a fix once if they differ."""
    if outcome.status != "succeeded" or outcome.action != "provision" or not outcome.remote_id:
        return None
    cfg = config.connector(outcome.connector)
    connector = get_connector(cfg)
    desired = desired_account(user, outcome.remote_name, cfg)
    with connector_slot(cfg.name, config):  # read-backs count against the target's quota too
        current = connector.get_user(outcome.remote_id)
        drift = differences(desired, current, getattr(connector, "read_only_attributes", ()))
        if drift:
            changes = {k: v for k, v in drift.items() if k != "active"}
            if changes:
                connector.update_user(current.id, changes, current)
            if "active" in drift:
                (connector.enable_user if desired.active else connector.disable_user)(current.id)
    with session_scope() as session:
        record(session, event_id=event_id, connector=cfg.name, entity_id=user.id, entity_name=user.qualified_name,
               action="verify", operation="fix" if drift else "verify", status="succeeded",
               reason="read back after provisioning", remote_id=current.id, remote_name=current.user_name,
               drift={k: {"want": v, "had": current.managed().get(k)} for k, v in drift.items()} or None)
    return drift or None


@task(name="reconcile", task_run_name="reconcile {connector_name}", cache_policy=NO_CACHE)
def reconcile(connector_name: str, outcome: Outcome, user: UserView, config: Config,
              event_id: Optional[str]) -> Optional[dict]:
    """Read the account back and record any difference from the desired state."""
    return verify_one(outcome, user, config, event_id)
