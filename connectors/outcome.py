"""Whether a write whose answer was lost has applied, read from the target: one rule for every connector.

A timeout, a dropped connection, a 5xx after the request went out or a batch answer missing an item
say nothing about the target: the write may have applied. Sending it again blindly repeats a
create (a second account where nothing refuses the same userName) or a group create. So before a
resend the target is read, through the calls every connector has (`find_user`, `get_user`,
`find_group`), and a write found applied counts as done.
"""

from typing import Any, Optional

from connectors.base import BatchOp, RemoteGroup, canonical
from connectors.errors import ConnectorError, NotFound, RateLimited, TransientError
from models.kinds import Action


def known_not_applied(error: BaseException) -> bool:
    """A 429 (or a quota answer) is a refusal before any work: resend without looking."""
    return isinstance(error, RateLimited)


def applied(connector, op: BatchOp) -> tuple[bool, Any]:
    """(whether `op` is already in effect on the target, its result as apply_batch would give it).

    A create: the account found by its externalId (then its userName, when it carries this
    externalId). A delete: the account is gone. An update, disable or enable: the account holds the
    values it sets. Raises ConnectorError when the target cannot be read.
    """
    if op.kind == Action.CREATE:
        account = op.account
        found = connector.find_user(external_id=account.external_id, user_name=account.user_name)
        mine = found is not None and (not account.external_id or found.external_id == account.external_id)
        return mine, found
    if op.kind == Action.DELETE:
        try:
            connector.get_user(op.remote_id)
        except NotFound:
            return True, None
        return False, None
    if op.kind not in (Action.UPDATE, Action.DISABLE, Action.ENABLE):
        return False, None
    current = connector.get_user(op.remote_id)
    want = op.changes if op.kind == Action.UPDATE else {"active": op.kind == Action.ENABLE}
    have = current.managed()
    same = all(_same(key, value, have.get(key)) for key, value in want.items())
    return same, (current if op.kind == Action.UPDATE else None)


def unless_applied(connector, ops: list[BatchOp], results: list[Any], again: list[int]) -> list[int]:
    """Of the ops at `again` about to be sent again, those the target does not show applied.

    Each one found applied gets its result in `results` instead. An op that cannot be looked at
    (the read fails too) is sent again: its error was transient.
    """
    still = []
    for i in again:
        if known_not_applied(results[i]):
            still.append(i)
            continue
        try:
            done, value = applied(connector, ops[i])
        except ConnectorError:
            done, value = False, None
        if done:
            results[i] = value
        else:
            still.append(i)
    return still


def resolve_unknown(connector, ops: list[BatchOp], results: list[Any]) -> list[Any]:
    """`results` with every transient failure the target shows applied replaced by its success."""
    out = list(results)
    unless_applied(connector, ops, out, [i for i, r in enumerate(results) if isinstance(r, TransientError)])
    return out


def group_created(connector, name: str, external_id: Optional[str]) -> Optional[RemoteGroup]:
    """The group a create whose answer was lost made: found by name as the target compares names
    (`find_group` applies `same_group_name`), and by externalId when both carry one."""
    found = connector.find_group(name)
    if found is None or (external_id and found.external_id and found.external_id != external_id):
        return None
    return found


def _same(key: str, want: Any, got: Any) -> bool:
    a, b = canonical(want), canonical(got)
    if key == "email" and isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return a == b
