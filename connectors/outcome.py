"""Whether a write whose answer was lost has applied, read from the target: one rule for every connector.

A timeout, a dropped connection, a 5xx after the request went out or a batch answer missing an item
say nothing about the target: the write may have applied. Sending it again blindly repeats a
create (a second account where nothing refuses the same userName) or a group create. So before a
resend the target is read, through the calls every connector has (`find_user`, `get_user`,
`find_group`), and a write found applied counts as done. A write is sent again only once a read has
shown it absent, or when it was refused before any work (a 429, a connection never made). When the
read fails too (a lost answer and a failed read usually share a cause) the write stays unknown: the
retry runner reads again after its next back-off, and a write still unknown when the tries are spent
ends `outcome_unknown`, for the next run's plan to find and link.
"""

from typing import Any, Callable, Optional

from connectors.base import BatchOp, RemoteGroup
from connectors.errors import ConnectorError, NotFound, OutcomeUnknown, TransientError
from models.compare import same
from models.kinds import Action


def known_not_applied(error: Any) -> bool:
    """An error that says the write did nothing (a 429 or quota answer, a connection never made, no token, a
    refusal, a read that showed it absent): resend without looking."""
    return isinstance(error, BaseException) and not getattr(error, "maybe_applied", False)


def outcome_unknown(result: Any) -> bool:
    """Whether `result` is a write that may have applied with no read yet saying whether it did."""
    return isinstance(result, OutcomeUnknown) and result.maybe_applied


def settle(results: list[Any], i: int, read: Callable[[], tuple[bool, Any]]) -> bool:
    """Read whether the write that met `results[i]` applied; True when it is known not to have (send it again).

    Found applied: `results[i]` becomes its result. Found absent: an error marked not applied. The
    read failing: an OutcomeUnknown (with the read's Retry-After), neither done nor to be resent.
    """
    error = results[i]
    if known_not_applied(error):
        return True
    try:
        done, value = read()
    except NotFound:  # the account or group the write was for is gone: it did not apply
        done, value = False, None
    except ConnectorError as exc:
        results[i] = _unreadable(error, exc)
        return False
    if done:
        results[i] = value
        return False
    results[i] = _absent(error)
    return True


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
    held = all(same(key, value, have.get(key)) for key, value in want.items())
    return held, (current if op.kind == Action.UPDATE else None)


def unless_applied(connector, ops: list[BatchOp], results: list[Any], again: list[int]) -> list[int]:
    """Of the ops at `again` about to be sent again, those known not applied (see `settle`)."""
    return [i for i in again if settle(results, i, lambda: applied(connector, ops[i]))]


def resolve_unknown(connector, ops: list[BatchOp], results: list[Any]) -> list[Any]:
    """`results` with every transient failure settled by one read of the target (see `settle`)."""
    out = list(results)
    unless_applied(connector, ops, out, [i for i, r in enumerate(results) if isinstance(r, TransientError)])
    return out


def _unreadable(error: BaseException, read_error: ConnectorError) -> OutcomeUnknown:
    """The write's error, now also saying that the read which was to tell failed (and when to read again)."""
    write_error = getattr(error, "write_error", None) or str(error)
    unknown = OutcomeUnknown(f"{write_error}; the target could not be read to tell whether it applied "
                             f"({read_error})", retry_after=getattr(read_error, "retry_after", None),
                             status=getattr(error, "status", None))
    unknown.write_error = write_error
    return unknown


def _absent(error: BaseException) -> TransientError:
    """The write's error once a read showed it did not apply: a plain transient failure, safe to resend."""
    write_error = getattr(error, "write_error", None) or str(error)
    return TransientError(f"{write_error}; the target shows it did not apply", status=getattr(error, "status", None),
                          retry_after=getattr(error, "retry_after", None), maybe_applied=False)


def group_created(connector, name: str, external_id: Optional[str]) -> Optional[RemoteGroup]:
    """The group a create whose answer was lost made: found by name as the target compares names
    (`find_group` applies `same_group_name`), and by externalId when both carry one."""
    found = connector.find_group(name)
    if found is None or (external_id and found.external_id and found.external_id != external_id):
        return None
    return found
