"""resolve-policy and generate-username: an event batch's decisions and desired accounts, read from the store.

The rules themselves are pure (`tasks.policy`, `tasks.username`); these two tasks load the batch's
users and what is already provisioned, and hand them to the rules through the planner. The data
rides the DAG: resolve-policy reads the users once and decides once per user and connector, and
its result (`Resolved`) is what each connector's generate-username plans from, not a second read
and a second decision per connector. The batch's outbox events ride along, from resolve-policy to
each connector's desired state, and from there to the operations recorded.
"""

from dataclasses import dataclass, field, replace
from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE

from models.config import Config
from models.db import session_scope
from models.identity import UserView, load_views
from models.runstate import connectors_of_users
from tasks import retry
from tasks.plan import desired_state
from tasks.policy import Decision, resolve
from tasks.store_errors import store_errors_plain


@dataclass(frozen=True)
class Resolved:
    """resolve-policy's result: the batch's users as the store held them, each one's decisions and events."""

    users: list[UserView]
    decisions: dict[str, list[Decision]]  # user id -> one decision per configured connector
    events: dict[str, list[str]] = field(default_factory=dict)  # user id -> its outbox events, oldest first

    def on(self, connector: str) -> dict[str, Decision]:
        """User id -> the decision for `connector`."""
        return {u: d for u, ds in self.decisions.items() for d in ds if d.connector == connector}

    def by_name(self) -> dict[str, list[Decision]]:
        """user@STORE -> the decisions (for the run's log)."""
        return {u.qualified_name: self.decisions[u.id] for u in self.users}


@task(name="resolve-policy", task_run_name="resolve-policy {label}", cache_policy=NO_CACHE)
@store_errors_plain
def resolve_policy(events: dict[str, list[str]], config: Config, label: str = "") -> Resolved:
    """Decide, for every user of the batch and every connector, whether to provision, deprovision or skip, and why.

    `events`: the batch, user id -> its outbox events, oldest first.
    """
    user_ids = list(events)
    with session_scope() as session:
        users = load_views(session, config.tenant_domain, user_ids)
        provisioned = connectors_of_users(session, user_ids)
    return Resolved(users, {u.id: resolve(u, config, provisioned.get(u.id, set())) for u in users}, events)


@task(name="generate-username", task_run_name="generate-username {connector_name}", cache_policy=NO_CACHE)
@store_errors_plain
def generate_username(connector_name: str, user_ids: list[str], config: Config, resolved: Optional[Resolved] = None):
    """The batch's desired accounts on one connector: policy, pattern, collisions, the target's rules.

    `resolved`: resolve-policy's users, decisions and events, planned from as they are (else read again).
    """
    from connectors.factory import get_connector  # every connector's client library: only when a batch runs

    cfg = config.connector(connector_name)
    views, decisions = (resolved.users, resolved.on(cfg.name)) if resolved is not None else (None, None)

    def names():
        with session_scope() as session:
            return desired_state(session, config, cfg, user_ids, check_name=get_connector(cfg).check_user_name,
                                 views=views, decisions=decisions)

    state = retry.run_task(names, config.retry, f"connector={cfg.name} generate-username")
    return replace(state, events=resolved.events) if resolved is not None else state
