"""The target's side of a plan for a batch: its users' candidate accounts, by lookups or a listing.

A full reconciliation lists the whole target (`make_plan`); a batch reads only what its users may
match (`observe`), and whose those accounts are (`_mapped_elsewhere`).
"""

from typing import Optional

import pandas as pd
from sqlmodel import Session

from connectors.base import Account, Lookup, find_each, matching
from models.config import ConnectorConfig
from models.runstate import links_of_accounts
from tasks.plan.wanted import MAPPING_COLUMNS, DesiredState


# A listing page holds ~100 accounts, a lookup costs a request or two per user: a batch reads the
# whole target instead when that is fewer requests (the target is under LIST_RATIO × the batch).
LIST_RATIO = 100
# With batched lookups (`find_users`) a request covers ~50 users' keys (100 eq terms): the listing is
# fewer requests only while the target is under BATCHED_LIST_RATIO × the batch.
BATCHED_LIST_RATIO = 2


def observe(connector, cfg: ConnectorConfig, state: DesiredState, workers: int = 4,
            target_size: Optional[int] = None) -> list[Account]:
    """The target's accounts of a batch of users: by lookups, or from a listing when that is cheaper.

    The candidates by the connector's match keys and the mapped id (`connectors.base.matching`):
    the same ones a full listing would offer the diff, so both paths decide alike. Lookups are the
    connector's batched `find_users` when it has them (a few requests, whatever the target's size),
    else one `find_user` per user over `workers` threads. `target_size`: an estimate of how many
    accounts the target holds (the connector's mappings).
    """
    mapped = dict(zip(state.mappings["local_id"], state.mappings["remote_id"]))
    batch = (set(state.desired["local_id"]) | set(state.deprovision["local_id"])) - state.unseen
    if not batch:
        return []
    keys = _lookups(state, batch, mapped, set(cfg.match))
    batched = connector.capabilities.batched_lookup
    ratio = BATCHED_LIST_RATIO if batched else LIST_RATIO
    if target_size is not None and len(batch) > 1 and target_size < ratio * len(batch):
        return _listed(connector, keys)
    if batched:
        return connector.find_users(keys)
    return find_each(connector, keys, workers)


def _lookups(state: DesiredState, batch: set[str], mapped: dict[str, str], keys: set[str]) -> list[Lookup]:
    """Each user's keys, by the connector's `match`: its mapped id, its id as externalId, the username
    and email its account should have (a user to deprovision has only the first two)."""
    out = []
    for local_id in sorted(batch):
        account = state.accounts.get(local_id)
        out.append(Lookup(remote_id=mapped.get(local_id) or None,
                          external_id=local_id if "external_id" in keys else None,
                          user_name=account.user_name if account is not None and "user_name" in keys else None,
                          email=(account.email or None) if account is not None and "email" in keys else None))
    return out


def _listed(connector, keys: list[Lookup]) -> list[Account]:
    """The batch's candidates out of a full listing: the same accounts the lookups would find."""
    return matching(connector.iter_users(), keys)


def _mapped_elsewhere(session: Session, cfg: ConnectorConfig, remote_ids: list[str], known: pd.DataFrame) -> pd.DataFrame:
    """Mappings of accounts a batch's lookups found, beyond those already read: whose are they?"""
    ids = [r for r in remote_ids if r not in set(known["remote_id"])]
    if not ids:
        return known
    more = pd.DataFrame.from_records(links_of_accounts(session, cfg.name, ids), columns=MAPPING_COLUMNS)
    return pd.concat([known, more], ignore_index=True) if len(more) else known

