"""apply: carry out a plan in chunks through the connector's batch method, recording every outcome.

Never one Prefect task per user: a chunk (hundreds of rows) is one task. A failed row does not stop
the others. Each chunk's operations and the mappings of its creates and links are written in one
transaction with bulk inserts, so a crash between the remote call and that write heals on the next
run: the plan finds the account by its externalId and links it. Every try of a row is recorded too
(one OperationAttempt per try, bulk-inserted in the same transaction), so retries stay visible.
"""

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from prefect import task
from prefect.cache_policies import NO_CACHE

from connectors.base import Account, BatchOp, RemoteGroup
from connectors.errors import AlreadyExists, ConnectorError, DryRunRejected
from connectors.outcome import group_created, outcome_unknown, unless_applied
from models.config import ConnectorConfig, RetryPolicy
from models.db import session_scope
from models.kinds import Action, Intent, OperationStatus
from models.runstate import (accounts_of, link_accounts, operation_row, owner_of_account, pushed_hash,
                             record_attempts, record_operations, unlink_accounts)
from models.suspensions import clear_suspended, record_suspended
from models.tables import utcnow
from tasks import retry
from tasks.history import change_of_row, emit_account_events
from tasks.origin import EventBatch, Origin, Reconciliation
from tasks.plan import group_owned
from tasks.retry import Tries
from tasks.runlog import LOGGED_OUTCOMES, keep_first, outcome_line

log = logging.getLogger("outbound.apply")

DEFAULT_CHUNK = 500
# The members, bound once: the per-row loop compares against these, not `Action.X`.
CREATE, UPDATE, LINK, NONE, DELETE = Action.CREATE, Action.UPDATE, Action.LINK, Action.NONE, Action.DELETE
SUCCEEDED, FAILED, SKIPPED = OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.SKIPPED
UNKNOWN = OperationStatus.OUTCOME_UNKNOWN
PROVISION, SKIP = Intent.PROVISION, Intent.SKIP
MAPPED = (CREATE, Action.RELINK, LINK)  # successes that write a mapping
UNMAPPED = (DELETE,)  # successes that remove one (by remote id)

# Listeners told (done, total) as chunks finish: the CLI's progress bar registers here.
progress_listeners: list[Callable[[int, int], None]] = []


@dataclass
class Counts:
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    outcome_unknown: int = 0  # sent, the answer lost, and the target could not be read to tell
    failures: list[dict] = field(default_factory=list)
    # The operation rows written, kept only for an event batch (its per-user outcomes); a full
    # reconciliation of a million users does not hold them in memory.
    operations: list[dict] = field(default_factory=list)
    # The first outcome lines (line, failed) for the run's log, and how many there were in all.
    lines: list[tuple[str, bool]] = field(default_factory=list)
    line_count: int = 0

    def add(self, other: "Counts") -> None:
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.skipped += other.skipped
        self.outcome_unknown += other.outcome_unknown
        self.failures.extend(other.failures)
        self.operations.extend(other.operations)
        keep_first(self.lines, other.lines)
        self.line_count += other.line_count

    def add_line(self, user: Optional[str], connector: str, operation: str, status: str, dry_run: bool,
                 remote_id: Optional[str] = None, error: Optional[BaseException] = None) -> None:
        self.line_count += 1
        if len(self.lines) < LOGGED_OUTCOMES:
            shown = {SUCCEEDED: "would succeed", FAILED: "would fail"}.get(status, status) if dry_run else status
            self.lines.append((outcome_line(user, connector, operation, shown, remote_id,
                                            f"{_code(error)}: {error}" if error is not None else None),
                               status == FAILED))

    @property
    def not_done(self) -> int:
        """Operations that leave work for a later run: failed, or not known to have applied."""
        return self.failed + self.outcome_unknown

    def as_dict(self) -> dict[str, int]:
        return {"succeeded": self.succeeded, "failed": self.failed, "skipped": self.skipped,
                "outcome_unknown": self.outcome_unknown}


def _batch_op(row: dict, accounts: dict[str, Account]) -> Optional[BatchOp]:
    kind = row["op"]
    if kind == CREATE:
        return BatchOp(CREATE, account=accounts[row["local_id"]])
    if kind == UPDATE:
        changes = {f: c["want"] for f, c in (row["changes"] or {}).items()}
        return BatchOp(UPDATE, remote_id=row["remote_id"], changes=changes)
    if kind in (Action.DISABLE, Action.ENABLE, DELETE):
        return BatchOp(kind, remote_id=row["remote_id"])
    return None


def _send_all(connector, ops: list[BatchOp], workers: int) -> list[Any]:
    """Send ops; a failure of the whole call (e.g. the capability probe) is every op's result."""
    try:
        return connector.apply_batch(ops, max_workers=workers)
    except ConnectorError as exc:
        return [exc] * len(ops)


def _with_retries(connector, ops: list[BatchOp], workers: int, policy: RetryPolicy) -> tuple[list[Any], Tries]:
    """Send ops; re-send the transiently failed ones by the retry policy. Return results and every try."""
    # The answer may have been lost after the target applied the op: look before resending.
    return retry.run_batch(lambda batch: _send_all(connector, batch, workers), ops, policy,
                           look=lambda items, results, again: unless_applied(connector, items, results, again),
                           label=f"connector={connector.name}", logger=log)


def _attempt_rows(op_ids: list[int], op_rows: list[dict], tries: list[list[tuple]],
                  task_run_id: Optional[str] = None) -> list[dict]:
    """One OperationAttempt row per try: the earlier ones failed; the last one ended as its operation did."""
    out = []
    for op_id, op, history in zip(op_ids, op_rows, tries):
        for number, (started, finished, error) in enumerate(history, start=1):
            last = number == len(history)
            if last:
                status, code, message = op["status"], op["error_code"], op["error_message"]
            else:
                status, code, message = FAILED, _code(error), str(error)
            out.append({"operation_id": op_id, "number": number, "status": status, "error_code": code,
                        "error_message": message, "flow_run_id": op["flow_run_id"], "task_run_id": task_run_id,
                        "started_at": started, "finished_at": finished})
    return out


def record_rows(session, origin: Origin, op_rows: list[dict], tries: Optional[list[list[tuple]]] = None,
                task_run_id: Optional[str] = None) -> None:
    """Record operation rows, each under the events it answers, with every try of each (`tries`, per row).

    The one place event ids are stamped: every path that records operations (apply, the event batch's
    quiet rows, failures, read-backs) records them here, under its `origin`.
    """
    rows, source = origin.stamp(op_rows)
    sent = [(k, tries[i]) for k, i in enumerate(source) if tries[i]] if tries else []
    if not sent:
        record_operations(session, rows)
        return
    ids = record_operations(session, rows, ids=True)
    record_attempts(session, _attempt_rows([ids[k] for k, _ in sent], [rows[k] for k, _ in sent],
                                           [h for _, h in sent], task_run_id))


def _failed_status(error: BaseException) -> str:
    """FAILED, or OUTCOME_UNKNOWN for a write that may have applied with no read able to tell."""
    return UNKNOWN if outcome_unknown(error) else FAILED


def _would_apply(result: Any) -> Any:
    """A dry-run connector refuses every write with DryRunRejected: that row would have been applied."""
    return None if isinstance(result, DryRunRejected) else result


def _code(error: Optional[BaseException]) -> Optional[str]:
    return getattr(error, "code", type(error).__name__) if error is not None else None


def _adopt(connector, cfg: ConnectorConfig, row: dict) -> Optional[Account]:
    """After a create met AlreadyExists: the account, when it is this user's to link.

    Not when it carries another externalId, nor when it is linked to another local user: the same
    ownership rule as the plan's matching.
    """
    try:
        found = connector.find_user(external_id=row["local_id"], user_name=row["user_name"])
    except ConnectorError:
        return None
    if found is None or (found.external_id and found.external_id != row["local_id"]):
        return None
    with session_scope() as session:
        owner = owner_of_account(session, cfg.name, found.id)
    return found if owner in (None, row["local_id"]) else None


def apply_rows(rows: list[dict], accounts: dict[str, Account], cfg: ConnectorConfig, connector, *,
               run_id: str, policy: RetryPolicy, dry_run: bool = False,
               flow_run_id: Optional[str] = None, origin: Optional[Origin] = None,
               sent: Callable[[], None] = lambda: None) -> Counts:
    """Apply one chunk of plan rows and record each outcome; never raises for one row.

    `origin`: where the rows come from (an event batch); else they are a chunk of the reconciliation `run_id`.
    `sent` is called once every row has been sent and answered (retries included), before the recording.
    """
    origin = origin or Reconciliation(run_id)
    counts = Counts()
    todo = [(i, op) for i, row in enumerate(rows) if (op := _batch_op(row, accounts)) is not None]
    outcomes: list[Any] = [None] * len(rows)
    history: list[list[tuple]] = [[] for _ in rows]  # per row: each try (started, finished, error)
    if todo:
        results, tries = _with_retries(connector, [op for _, op in todo], cfg.max_concurrency or 4, policy)
        for k, ((i, _), result) in enumerate(zip(todo, results)):
            outcomes[i], history[i] = result, tries.history[k]
    sent()
    now = utcnow()
    op_rows, new_maps, gone_remote = [], [], []
    # Suspend, then delete: a deprovisioning's disable starts the clock; an enable or a delete ends it.
    suspended_now, suspension_over = [], []
    for row, result, tried in zip(rows, outcomes, history):
        n = len(tried)
        result = _would_apply(result)
        action, kind = row["action"], row["op"]
        remote_id = row["remote_id"]
        if isinstance(result, AlreadyExists) and kind == CREATE and not dry_run:
            adopted = _adopt(connector, cfg, row)
            if adopted is not None:
                result, action = adopted, LINK
        if isinstance(result, BaseException):
            status = _failed_status(result)
            setattr(counts, status, getattr(counts, status) + 1)
            counts.failures.append({"action": action, "user": row["entity_name"], "error": str(result),
                                    "status": status, "code": _code(result)})
        elif kind == NONE and action != LINK:
            status = SKIPPED
            counts.skipped += 1
        else:
            status = SUCCEEDED
            counts.succeeded += 1
            if isinstance(result, Account) and result.id:
                remote_id = result.id
            if action in MAPPED and row["local_id"] and remote_id:
                account = accounts[row["local_id"]]
                new_maps.append({"local_id": row["local_id"], "remote_id": remote_id,
                                 "remote_name": account.user_name, "pushed_hash": pushed_hash(account.managed())})
            elif kind in UNMAPPED and remote_id:
                gone_remote.append(remote_id)
            elif kind == UPDATE and "user_name" in (row["changes"] or {}) and row["local_id"] in accounts:
                account = accounts[row["local_id"]]  # a rename: the mapping follows the account's new name
                new_maps.append({"local_id": row["local_id"], "remote_id": remote_id,
                                 "remote_name": account.user_name, "pushed_hash": pushed_hash(account.managed())})
            if cfg.staged is not None and row["local_id"] and action != Action.ORPHAN:
                if kind == Action.DISABLE and row.get("decision") == Intent.DEPROVISION and remote_id:
                    suspended_now.append((row["local_id"], remote_id))
                elif kind in (Action.ENABLE, DELETE):
                    suspension_over.append(row["local_id"])
        error = result if isinstance(result, BaseException) else None
        counts.add_line(row["entity_name"], cfg.name, action, status, dry_run, remote_id, error)
        op_rows.append(operation_row(
            cfg.name, row["local_id"] or remote_id or "-", row["entity_name"],
            SKIP if status == SKIPPED else row.get("decision") or PROVISION, event_id=origin.run_event,
            operation=action, status=status, attempts=n, reason=row["reason"], error_code=_code(error),
            error_message=str(error) if error else None, remote_id=remote_id, remote_name=row["user_name"],
            drift=row["changes"], flow_run_id=flow_run_id, started_at=tried[0][0] if tried else now, finished_at=now))
    if dry_run:
        return counts
    if isinstance(origin, EventBatch):  # the batch's outcomes per user are read from its rows
        counts.operations.extend(op_rows)
    with session_scope() as session:  # operations and mappings in one transaction
        link_accounts(session, cfg.name, new_maps)
        if gone_remote:
            unlink_accounts(session, cfg.name, gone_remote)
        record_suspended(session, cfg.name, suspended_now, now)
        clear_suspended(session, cfg.name, suspension_over)
        record_rows(session, origin, op_rows, history)
    if isinstance(origin, Reconciliation):  # its changes in the users' histories (an event batch's: report())
        emit_account_events(cfg.name, map(change_of_row, op_rows), flow_run_id,
                            related=[{"prefect.resource.id": f"outbound.reconciliation.{origin.run_id}",
                                      "prefect.resource.role": "reconciliation"}])
    return counts


class SendWindow:
    """At most `size` chunks sending to the target at once; a chunk recording its rows is out of it.

    The chunks in flight used to be counted until their task ended: the target served them side by
    side, so they were answered at about the same time, and then all of them recorded their rows while
    the target had nothing to do (1.75 s idle in a 10,000-user reconciliation,
    `bench/import_reconcile.py --timeline`). Now the next chunk sends while those record.
    """

    def __init__(self, size: int) -> None:
        self._free = threading.BoundedSemaphore(size)

    def enter(self) -> Callable[[], None]:
        """Wait for a place; return the function that gives it back (the first call does, later ones nothing)."""
        self._free.acquire()
        lock, given_back = threading.Lock(), []

        def leave(*_) -> None:
            with lock:
                if not given_back:
                    given_back.append(True)
                    self._free.release()
        return leave


@task(name="apply-chunk", task_run_name="apply {connector_name} rows {first}-{last}", cache_policy=NO_CACHE)
def apply_chunk(connector_name: str, rows: list[dict], accounts: dict[str, Account], cfg: ConnectorConfig,
                run_id: str, policy: RetryPolicy, dry_run: bool, first: int, last: int,
                sent: Callable[[], None] = lambda: None) -> Counts:
    """Apply rows first..last of the plan through the connector's batch method; `sent()` once they are answered."""
    from prefect.runtime import flow_run

    from tasks.door import target

    # Through the one door: each call passes the quarantine gate (Quarantined is transient: the retry
    # loop waits its retry_after) and reports its health, inside a slot of the target's quota.
    with target(cfg, dry_run=dry_run) as connector:
        counts = apply_rows(rows, accounts, cfg, connector, run_id=run_id, policy=policy, dry_run=dry_run,
                            flow_run_id=str(flow_run.id) if flow_run.id else None, sent=sent)
    log.info("connector=%s rows=%d-%d succeeded=%d failed=%d skipped=%d outcome_unknown=%d", connector_name, first,
             last, counts.succeeded, counts.failed, counts.skipped, counts.outcome_unknown)
    return counts


def chunks(rows: list[dict], size: int) -> list[tuple[int, list[dict]]]:
    return [(start, rows[start:start + size]) for start in range(0, len(rows), size)]


# --- groups: after the user rows, so the accounts they add exist ----------------------------

def _group_member_ids(cfg: ConnectorConfig, rows: list[dict]) -> dict[str, Optional[str]]:
    """Each member row's remote account: the planned one, else the mapping the user apply just wrote."""
    pending = [r["local_id"] for r in rows if r["remote_id"] is None and r["local_id"]]
    mapped: dict[str, str] = {}
    if pending:
        with session_scope() as session:
            mapped = accounts_of(session, cfg.name, pending)
    return {r["local_id"]: r["remote_id"] or mapped.get(r["local_id"]) for r in rows if r["local_id"]}


def _local_group(name: str) -> tuple[str, str]:
    """The local group's (id, name); a configured group nobody has joined yet is created empty."""
    from models.identity import ensure_group

    with session_scope() as session:
        group = ensure_group(session, name)
        return group.id, group.name


def _adopt_group(connector, cfg: ConnectorConfig, name: str, group_id: Optional[str],
                 refused: AlreadyExists) -> RemoteGroup:
    """After a group create met AlreadyExists: the group the target holds under that name (as it
    compares names), when it is ours to link by the plan's rule (`group_owned`); else AlreadyExists
    saying why it was not adopted."""
    try:
        found = connector.find_group(name)
    except ConnectorError as exc:
        raise AlreadyExists(f"{refused}; looking the group up to adopt it failed: {exc}") from exc
    if found is None:
        raise AlreadyExists(f"{refused}; no group named {name} was found to adopt")
    with session_scope() as session:
        owner = owner_of_account(session, cfg.name, found.id, entity_type="group")
    if not group_owned(found, group_id, owner):
        why = (f"it is linked to another local group ({owner})" if owner not in (None, group_id)
               else f"it carries another externalId ({found.external_id})")
        raise AlreadyExists(f"{refused}; group {found.name} ({found.id}) is not adopted: {why}")
    return found


def _members_in_effect(connector, group_remote_id: str, member_ids: list[str], present: bool) -> Optional[bool]:
    """True when every one of `member_ids` is (present) or is not (not present) in the group; else None."""
    have = connector.get_group(group_remote_id).member_ids
    return True if all((m in have) == present for m in member_ids) else None


def apply_group_rows(rows: list[dict], cfg: ConnectorConfig, connector, *, run_id: str, dry_run: bool = False,
                     flow_run_id: Optional[str] = None, origin: Optional[Origin] = None,
                     policy: Optional[RetryPolicy] = None) -> Counts:
    """Apply the plan's group rows: create missing groups, then one add and one remove call per group.

    Each row is recorded as an operation (entity_type="group"); a failed call fails its rows only.
    A call that fails transiently is retried by `policy` like a user row, and, as for a user row,
    the target is read first: a group create whose answer was lost is found by name rather than
    made twice, a member change found in effect is not sent again. On a dry run the connector refuses
    each write (DryRunRejected): its rows count as would-apply, and nothing is recorded. `origin`: as
    for `apply_rows`.
    """
    origin = origin or Reconciliation(run_id)
    policy = policy or RetryPolicy()
    counts, op_rows, group_maps = Counts(), [], []
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row)

    def outcome(row: dict, status: str, group_remote_id: Optional[str], group_id: Optional[str],
                started, error: Optional[BaseException] = None, reason: Optional[str] = None, tries: int = 1,
                member=None) -> None:
        error = _would_apply(error)
        status = SUCCEEDED if status == FAILED and error is None else status
        setattr(counts, status, getattr(counts, status) + 1)
        if error is not None:
            counts.failures.append({"action": row["action"], "user": row["entity_name"], "error": str(error),
                                    "status": status, "code": _code(error)})
        counts.add_line(row["entity_name"], cfg.name, f"{row['action']} {row['group']}", status, dry_run,
                        group_remote_id, error)
        op_rows.append(operation_row(
            cfg.name, group_id or row["group"], row["entity_name"], SKIP if status == SKIPPED else Intent.GROUP,
            event_id=origin.run_event, entity_type="group", operation=row["action"], status=status,
            attempts=0 if status == SKIPPED else tries, reason=reason or row["reason"], error_code=_code(error),
            error_message=str(error) if error else None, remote_id=group_remote_id, remote_name=row["group"],
            flow_run_id=flow_run_id, started_at=started, finished_at=utcnow(),
            _member=row["local_id"] if member is None else member))

    for name, group_rows in by_group.items():
        group_id, group_remote_id = group_rows[0]["group_id"], group_rows[0]["group_remote_id"]
        creates = [r for r in group_rows if r["action"] == Action.GROUP_CREATE]
        failed: Optional[BaseException] = None
        # A create is the concern of the group's members in the batch (see EventBatch.stamp).
        in_group = tuple(sorted({r["local_id"] for r in group_rows if r["local_id"]}))
        for row in creates:
            started, tries, reason = utcnow(), 1, None
            try:
                if not dry_run:
                    group_id = _local_group(name)[0]  # a configured group nobody has joined yet
                try:
                    created, tries = retry.run(lambda: connector.create_group(name, [], external_id=group_id),
                                               policy, look=lambda: group_created(connector, name, group_id))
                except AlreadyExists as exc:  # the target has it (under another case, say): adopt it if ours
                    created = _adopt_group(connector, cfg, name, group_id, exc)
                    reason = f"{row['reason']}; the target already has it as {created.name}: adopted"
                group_remote_id = created.id
            except ConnectorError as exc:  # on a dry run, DryRunRejected: its member rows are not sent either
                failed = exc
            outcome(row, _failed_status(failed) if failed else SUCCEEDED, group_remote_id, group_id, started, failed,
                    reason=reason, tries=tries, member=in_group)
        if group_remote_id and group_id and not dry_run:
            group_maps.append((group_id, group_remote_id, name))
        members = _group_member_ids(cfg, group_rows)
        for action, call in ((Action.MEMBER_ADD, connector.add_members), (Action.MEMBER_REMOVE, connector.remove_members)):
            todo = [r for r in group_rows if r["action"] == action]
            if not dry_run:  # a member whose account was not created (its create failed) is skipped
                for row in [r for r in todo if not members.get(r["local_id"]) and not r["remote_id"]]:
                    outcome(row, SKIPPED, group_remote_id, group_id, utcnow(),
                            reason=f"{row['reason']}; skipped: the account does not exist on {cfg.name}")
                    todo.remove(row)
            if not todo:
                continue
            started, error, tries, status = utcnow(), failed, 1, FAILED  # not sent after a failed group create
            if error is None:
                ids = [r["remote_id"] or members[r["local_id"]] for r in todo]
                try:
                    _, tries = retry.run(lambda: call(group_remote_id, ids), policy, look=lambda: _members_in_effect(
                        connector, group_remote_id, ids, present=action == Action.MEMBER_ADD))
                except ConnectorError as exc:
                    error, status = exc, _failed_status(exc)
            for row in todo:
                outcome(row, status if error else SUCCEEDED, group_remote_id, group_id, started, error,
                        tries=tries)
    if dry_run:
        return counts
    if isinstance(origin, EventBatch):
        counts.operations.extend(op_rows)
    with session_scope() as session:
        link_accounts(session, cfg.name, [{"local_id": group_id, "remote_id": group_remote_id, "remote_name": name,
                                           "pushed_hash": None} for group_id, group_remote_id, name in group_maps],
                      entity_type="group")
        if op_rows:
            record_rows(session, origin, op_rows)
    return counts


@task(name="apply-groups", task_run_name="apply {connector_name} groups", cache_policy=NO_CACHE)
def apply_groups(connector_name: str, rows: list[dict], cfg: ConnectorConfig, run_id: str, dry_run: bool,
                 policy: Optional[RetryPolicy] = None) -> Counts:
    """Apply the plan's group rows (after its user rows)."""
    from prefect.runtime import flow_run

    from tasks.door import target

    with target(cfg, dry_run=dry_run) as connector:
        counts = apply_group_rows(rows, cfg, connector, run_id=run_id, dry_run=dry_run,
                                  flow_run_id=str(flow_run.id) if flow_run.id else None, policy=policy)
    log.info("connector=%s groups rows=%d succeeded=%d failed=%d skipped=%d outcome_unknown=%d", connector_name,
             len(rows), counts.succeeded, counts.failed, counts.skipped, counts.outcome_unknown)
    return counts
