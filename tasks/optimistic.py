"""Optimistic create: which of a batch's users are created without looking their account up first.

Looking the target up before a create is only needed to adopt an account already there. When the
target refuses a second account of a userName (SCIM 409 `uniqueness`), the create itself finds that
account: `tasks.apply` adopts it on the refusal (`_adopt`: by externalId, then userName, under the
plan's ownership rules), so the look-up buys nothing but requests. It is safe only when all of:

- the connector asks for it (`scim2.create: optimistic`) and the target was seen refusing a
  repeated userName (`refuses_repeated_user_names`, tried once per connector);
- the connector matches accounts by externalId and userName only: an account matching by email
  would not be refused, and a second account would be made beside it;
- the user is met for the first time (`Batch.first_run`) and has no account linked on the
  connector: no earlier write of ours (an answer lost, a drain killed mid-write) can be on the target
  under another name. Everyone else is looked up, as before.

An unknown outcome is unchanged: a create whose answer was lost is read back before it is sent again
(`connectors.outcome`).
"""

from typing import Iterable

from models.config import ConnectorConfig

SAFE_KEYS = {"external_id", "user_name"}


def creates_first(cfg: ConnectorConfig, connector) -> bool:
    """Whether connector `cfg` may send a first-run user's create without a look-up first."""
    if not connector.capabilities.optimistic_create or not set(cfg.match) <= SAFE_KEYS:
        return False
    return connector.refuses_repeated_user_names()


def unseen(cfg: ConnectorConfig, connector, first_run: Iterable[str], mapped: Iterable[str]) -> frozenset[str]:
    """The users of `first_run` whose accounts need not be looked up before their create (see above)."""
    first_run = set(first_run)
    if not first_run or not creates_first(cfg, connector):
        return frozenset()
    return frozenset(first_run - set(mapped))
