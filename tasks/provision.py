"""provision: carry out one connector's plan for a batch of users, and say what became of each.

A batch is the users of the events a drain claimed: one user at rest, hundreds in a burst. The
decision is the plan's (`tasks.plan`: the policy, the username rule, matching, the comparison), and
the executor is the reconciliation's (`tasks.apply`: the connector's batch method, retries, every
attempt recorded, mappings in the same transaction). Only the target's side is read differently:
lookups of the batch's accounts instead of a full listing.
"""

import logging
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE

from connectors.errors import AuthFailed, ProvisioningError
from connectors.factory import evict
from models.config import Config
from models.db import session_scope
from models.kinds import NOT_DONE, Action, Intent, OperationStatus
from models.locks import LockTimeout
from models.runstate import operation_row, unlink_users
from models.tables import utcnow
from tasks import health, retry
from tasks.apply import Counts, apply_group_rows, apply_rows, record_rows
from tasks.history import emit_account_events
from tasks.door import target
from tasks.optimistic import unseen
from tasks.origin import EventBatch
from tasks.plan import DesiredState, Plan, make_plan
from tasks.runlog import LOGGED_OUTCOMES, artifact_key, log_outcomes, outcome_line, run_logger
from tasks.store_errors import store_errors_plain


log = logging.getLogger("outbound.provision")


@dataclass(frozen=True)
class Outcome:
    """What became of one user on one connector."""

    connector: str
    action: str  # provision | deprovision | skip
    operation: str
    status: str  # succeeded | failed | skipped
    reason: str
    remote_id: Optional[str] = None
    remote_name: Optional[str] = None
    error: Optional[str] = None
    user_id: Optional[str] = None
    entity_name: Optional[str] = None
    code: Optional[str] = None  # the error's code, when it failed
    events: tuple[str, ...] = ()  # the batch's outbox events of the user, oldest first: what it answers


def _runtime_ids() -> tuple[Optional[str], Optional[str]]:
    from prefect.runtime import flow_run, task_run

    return (str(flow_run.id) if flow_run.id else None, str(task_run.id) if task_run.id else None)


def _quiet_rows(plan: Plan, cfg_name: str, touched: set[str], flow_run_id: Optional[str]) -> list[dict]:
    """Operations for the batch's users the plan had nothing to send for: skips, no-ops, conflicts."""
    rows = []
    for local_id, (name, decision) in plan.decisions.items():
        action = decision.action
        if local_id in touched:
            continue
        row = operation_row(cfg_name, local_id, name, action, reason=decision.reason,
                            remote_id=plan.mapped.get(local_id), flow_run_id=flow_run_id)
        if local_id in plan.conflicts:
            error = plan.conflicts[local_id][1]
            row.update(operation=Action.NONE, status=OperationStatus.FAILED, error_code=error.code, error_message=str(error))
        elif action == Intent.PROVISION:
            account = plan.desired.get(local_id)
            row.update(operation=Action.NOOP, status=OperationStatus.SUCCEEDED, remote_name=account.user_name if account else None)
        elif action == Intent.DEPROVISION:
            gone = plan.mapped.get(local_id) not in plan.present
            row.update(operation=Action.GONE if gone else Action.NONE if decision.mode == "none" else Action.NOOP,
                       status=OperationStatus.SUCCEEDED)
        rows.append(row)
    return rows


def _record(rows: list[dict], origin: EventBatch, cfg_name: str) -> None:
    gone = [r["entity_id"] for r in rows if r["operation"] == Action.GONE]
    with session_scope() as session:
        if gone:  # the account is already gone from the target: so is our link to it
            unlink_users(session, cfg_name, gone)
        if rows:
            record_rows(session, origin, rows)


def _refresh_profile(cfg) -> None:
    """After a refused credential, probe the target again so `outbound status` shows what is wrong now."""
    from tasks.capabilities import refresh

    try:
        refresh([cfg])
    except Exception as exc:  # the probe is advice; the batch's own failure is what counts
        log.warning("connector=%s capability profile not refreshed: %s", cfg.name, exc)


def record_failure(state: DesiredState, cfg_name: str, run_id: str, exc: BaseException, flow_run_id: Optional[str],
                   task_run_id: Optional[str] = None) -> list[Outcome]:
    """The batch could not be planned on this connector: a failed operation, and its attempt, per user."""
    code = exc.code if isinstance(exc, ProvisioningError) else "busy" if isinstance(exc, LockTimeout) else "internal"
    failed = [Outcome(cfg_name, d.action, Action.NONE, OperationStatus.FAILED, d.reason, error=f"{code}: {exc}",
                      user_id=local_id, entity_name=name, code=code, events=tuple(state.events.get(local_id, ())))
              for local_id, (name, d) in state.decisions.items() if d.action != Intent.SKIP]
    record_failures(failed, run_id, flow_run_id, task_run_id, attempted=True)
    return failed


def record_failures(outcomes: list[Outcome], run_id: str, flow_run_id: Optional[str],
                    task_run_id: Optional[str] = None, attempted: bool = False) -> None:
    """Record each failed outcome as a failed operation for its user's events: the one failure recorder.

    `attempted`: the connector was tried (one failed attempt is recorded per operation); otherwise the
    batch never reached it (no desired state), and the operations show no attempt.
    """
    if not outcomes:
        return
    now = utcnow()
    rows = [operation_row(o.connector, o.user_id, o.entity_name, o.action, reason=o.reason,
                          status=OperationStatus.FAILED, error_code=o.code, error_message=o.error.partition(": ")[2],
                          flow_run_id=flow_run_id, **({"attempts": 1} if attempted else {})) for o in outcomes]
    tries = [[(now, now, None)]] * len(rows) if attempted else None  # the one try ended as its operation did
    with session_scope() as session:
        record_rows(session, EventBatch(run_id, {o.user_id: o.events for o in outcomes}), rows, tries, task_run_id)


def outcomes_of(operations: list[dict]) -> dict[str, Outcome]:
    """One outcome per user from the batch's operation rows: its account's, failed when one of its
    group operations failed (a member change of it; a group create of a group it is in, or of a
    group none of the batch is in: see EventBatch.stamp)."""
    out: dict[str, Outcome] = {}
    for op in operations:
        user = op["entity_id"]
        if op["entity_type"] == "group" or not user:
            continue
        error = f"{op['error_code']}: {op['error_message']}" if op["error_code"] else None
        have = out.get(user)
        mine = Outcome(op["connector"], op["action"], op["operation"] or Action.NONE, op["status"], op["reason"] or "",
                       op["remote_id"], op["remote_name"], error, user, op["entity_name"], op["error_code"])
        if have is None or (mine.status in NOT_DONE and have.status not in NOT_DONE) or have.status == OperationStatus.SKIPPED:
            out[user] = mine
    for op in operations:  # after every account's row, whatever order the rows came in
        if op["entity_type"] != "group" or op["status"] not in NOT_DONE:
            continue
        member = op.get("_member")
        users = (member or tuple(out)) if isinstance(member, tuple) else (member,) if member else ()
        for user in users:
            have = out.get(user)
            if have is not None and have.status not in NOT_DONE:
                out[user] = Outcome(**{**have.__dict__, "status": op["status"], "code": op["error_code"],
                                       "error": f"{op['operation']} {op['remote_name']}: {op['error_code']}: "
                                                f"{op['error_message']}"})
    return out


def _log_outcomes(connector: str, outcomes: list[Outcome]) -> None:
    """One line per user in the run's log (the first ones; the artifact has them all)."""
    log_outcomes([(outcome_line(o.entity_name, o.connector, o.operation, o.status, o.remote_id, o.error, o.reason),
                   o.status in NOT_DONE) for o in outcomes[:LOGGED_OUTCOMES]], len(outcomes), log,
                 f"users on {connector}, in the artifact {artifact_key(connector, 'operations')}")


def provision_batch(connector_name: str, state: DesiredState, config: Config, run_id: str,
                    first_run: frozenset = frozenset()) -> list[Outcome]:
    """Plan the batch on one connector, apply the plan, record every outcome; one outcome per user.

    `first_run`: the batch's users met for the first time (`Batch.first_run`): on a target that
    refuses a repeated userName their creates go without a look-up first (tasks/optimistic.py).
    """
    cfg = config.connector(connector_name)
    origin = EventBatch(run_id, state.events)
    flow_run_id, task_run_id = _runtime_ids()
    # The target's quota, shared by every worker, is held from the first lookup to the last write.
    slot = ExitStack()
    try:
        if any(d.action != Intent.SKIP for _, d in state.decisions.values()):
            health.check(cfg.name)  # raises Quarantined (transient: the retry policy waits), sends nothing
        connector = slot.enter_context(target(cfg, config, occupy=1, unit=True))
        wanted = first_run & set(state.desired["local_id"])  # only a user to provision may be created
        if wanted:
            state = replace(state, unseen=unseen(cfg, connector, wanted, state.mappings["local_id"]))
        with session_scope() as session:
            plan = make_plan(config, cfg, connector, session, state.user_ids, state=state)
    except Exception as exc:  # recorded (one attempt per user) before Prefect decides on a retry
        slot.close()
        health.record_failure(cfg.name, exc, config)
        if isinstance(exc, AuthFailed):
            evict(cfg)  # the next attempt resolves the secrets again: a rotated credential is picked up
            _refresh_profile(cfg)
        failed = record_failure(state, cfg.name, run_id, exc, flow_run_id, task_run_id)
        _log_outcomes(cfg.name, failed)
        report(cfg.name, failed, flow_run_id)
        raise
    health.record_success(cfg.name)
    for problem in plan.problems:
        run_logger(log).warning("connector=%s %s", cfg.name, problem)
    counts = Counts()
    rows = plan.rows.to_dict(orient="records")
    with slot:
        if rows:
            counts.add(apply_rows(rows, plan.desired, cfg, connector, run_id=run_id, policy=config.retry,
                                  flow_run_id=flow_run_id, origin=origin))
        if len(plan.group_rows):
            counts.add(apply_group_rows(plan.group_rows.to_dict(orient="records"), cfg, connector, run_id=run_id,
                                        flow_run_id=flow_run_id, origin=origin, policy=config.retry))
        if plan.followups:  # reports created with their managers: plan them again, the managers' ids exist now
            with session_scope() as session:
                second = make_plan(config, cfg, connector, session, plan.followups)
            again = second.rows.to_dict(orient="records")
            if again:
                counts.add(apply_rows(again, second.desired, cfg, connector, run_id=run_id, policy=config.retry,
                                      flow_run_id=flow_run_id, origin=origin))
    touched = {r["entity_id"] for r in counts.operations if r["entity_type"] == "user"}
    quiet = _quiet_rows(plan, cfg.name, touched, flow_run_id)
    _record(quiet, origin, cfg.name)
    outcomes = [replace(o, events=origin.of(user)) for user, o in outcomes_of(counts.operations + quiet).items()]
    _log_outcomes(cfg.name, outcomes)
    report(cfg.name, outcomes, flow_run_id)
    return outcomes


ARTIFACT_ROWS = 1000


def report(connector: str, outcomes: list[Outcome], flow_run_id: Optional[str]) -> None:
    """A keyed table artifact of the batch's outcomes on this connector, and Prefect events of its changes.

    The events are the ones a reconciliation emits too (`tasks.history`): a user's history across
    event runs and reconciliations is one filter in the Event Feed. Reporting never fails the batch:
    it only tells.
    """
    from prefect.artifacts import create_table_artifact

    try:
        rows = [{"user": o.entity_name, "action": o.action, "operation": o.operation, "status": o.status,
                 "remote_id": o.remote_id or "", "remote_username": o.remote_name or "", "reason": o.reason,
                 "error": o.error or ""} for o in outcomes[:ARTIFACT_ROWS]]
        if rows and flow_run_id:
            create_table_artifact(table=rows, key=artifact_key(connector, "operations"),
                                  description=f"{connector}: {len(outcomes)} users"
                                  + (f" (first {ARTIFACT_ROWS})" if len(outcomes) > ARTIFACT_ROWS else ""))
    except Exception as exc:
        log.warning("connector=%s could not report the batch to Prefect: %s: %s", connector, type(exc).__name__, exc)
    emit_account_events(connector, [{"user": o.entity_name, "operation": o.operation,
                                     "status": o.status, "remote_id": o.remote_id, "remote_username": o.remote_name,
                                     "error": o.error, "events": o.events} for o in outcomes], flow_run_id)


@task(name="provision", task_run_name="provision {connector_name}", cache_policy=NO_CACHE)
@store_errors_plain
def provision(connector_name: str, state: DesiredState, config: Config, run_id: str,
              first_run: frozenset = frozenset()) -> list[Outcome]:
    """Create, update, link, disable or delete the batch's accounts on one connector."""
    # Each failed try is recorded (an operation and its attempt per user) before the runner waits.
    return retry.run_task(lambda: provision_batch(connector_name, state, config, run_id, first_run),
                          config.retry, f"connector={connector_name} provision")
